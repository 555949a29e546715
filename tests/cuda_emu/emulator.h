// A host emulator of CUDA blocks, so the CUDA kernels' index, fragment and reduction arithmetic can
// run (and be checked against float64) without a GPU.
//
// run_block runs one CUDA block: every thread is a fiber (ucontext) on one OS thread, switched only
// at barriers, so a block executes deterministically. The kernels' primitives (declared in
// attention_primitives.cuh under FASTDIFF_ATTN_EMULATE) are implemented here from their PTX ISA
// specification, independently of how the kernels use them:
//   ldmatrix .x1/.x2/.x4 [.trans]: lanes 8i..8i+7 address the rows of matrix i; lane l receives row
//     l/4, elements 2(l%4), 2(l%4)+1 (of the transpose with .trans);
//   mma m16n8k16 / m16n8k8 (f16, bf16 -> f32): the fragment layouts of "Matrix Fragments for mma",
//     products accumulated in double (a tensor core's float32 accumulation is at least as exact
//     as the kernels' tolerance needs);
//   shfl.xor, bar.warp.sync, bar.sync: barriers over the warp / block (a thread that never arrives
//     is reported as a deadlock);
//   cp.async: copies are deferred until the cp.async.wait_group that must complete them, so a
//     kernel that reads shared memory before waiting reads stale (poisoned) data.
// Every warp-collective call checks that all 32 lanes made the same call; ldmatrix and cp.async
// check that their shared addresses lie inside the block's shared memory and are 16-byte aligned.
// Violations abort with a message.
//
// Plain __global__ kernels (csrc/cuda/*.cu, compiled as host C++ through cuda_host.h) run through
// launch_grid: it checks the launch configuration as the CUDA runtime would (block and grid
// dimension limits, dynamic shared memory against the 48 KiB default or the kernel's
// cudaFuncSetAttribute opt-in), runs the grid block by block, and serves threadIdx / blockIdx /
// blockDim / gridDim, the mask-aware warp shuffles and barriers, and dynamic shared memory
// (poisoned with 0xFF bytes, bounds checked after each block).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace fastdiff::cuda::emu {

// Runs body(tid) for tid in [0, threads) as one block whose dynamic shared memory is
// [smem, smem + smem_bytes). threads must be a multiple of 32.
void run_block(int threads, char* smem, size_t smem_bytes, const std::function<void(int)>& body);

struct Counters {
  uint64_t mma = 0, ldmatrix = 0, cp_async = 0, block_barriers = 0, shuffles = 0, launches = 0, blocks = 0;
};
Counters& counters();

// ---- plain __global__ kernels ----------------------------------------------------------------------
struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// Runs `thread` (one CUDA thread: reads its indices through thread_idx() etc.) for every thread of a
// grid, or records cudaErrorInvalidConfiguration / cudaErrorInvalidValue for cudaGetLastError and
// runs nothing when the runtime would refuse the launch. `kernel` identifies the kernel for
// cudaFuncSetAttribute.
void launch_grid(const void* kernel, Dim3 grid, Dim3 block, size_t dynamic_smem, const std::function<void()>& thread);

Dim3 thread_idx();
Dim3 block_idx();
Dim3 block_dim();
Dim3 grid_dim();
char* dynamic_smem_base();

// A warp shuffle over the lanes in `mask` (the calling lane among them): returns the 8 bytes `bits`
// of the source lane, which must be in `mask`. kind 0: xor (arg = lane mask), 1: down (arg = delta),
// within segments of `width` lanes (a lane whose source falls outside its segment gets its own value).
uint64_t shfl_sync(unsigned mask, uint64_t bits, int kind, int arg, int width);
// __syncthreads(): every thread of the block (a thread that has exited never arrives: deadlock).
void block_sync();
// __syncwarp(mask): the lanes of `mask` wait for each other.
void warp_sync_mask(unsigned mask);

// Device properties the launchers query (cudaDeviceGetAttribute), settable to exercise their plans.
struct Device {
  int sm_count = 132;                 // H100 SXM
  int smem_optin = 227 * 1024;        // cudaDevAttrMaxSharedMemoryPerBlockOptin
  unsigned max_grid_y = 65535;        // gridDim.y limit (the launchers' FASTDIFF_MAX_GRID_Y); .z stays 65535
  int64_t max_blocks = 8192;          // the elementwise launchers' grid cap (FASTDIFF_MAX_BLOCKS)
};
Device& device();

}  // namespace fastdiff::cuda::emu
