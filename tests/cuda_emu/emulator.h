// A host emulator for the warp primitives of csrc/cuda/attention_kernels.cuh, so the CUDA attention
// kernels' index and tensor-core fragment arithmetic can run (and be checked) without a GPU.
//
// run_block runs one CUDA block: every thread is a fiber (ucontext) on one OS thread, switched only
// at barriers, so a block executes deterministically. The kernels' primitives (declared in
// attention_kernels.cuh under FASTDIFF_ATTN_EMULATE) are implemented here from their PTX ISA
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
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace fastdiff::cuda::emu {

// Runs body(tid) for tid in [0, threads) as one block whose dynamic shared memory is
// [smem, smem + smem_bytes). threads must be a multiple of 32.
void run_block(int threads, char* smem, size_t smem_bytes, const std::function<void(int)>& body);

struct Counters {
  uint64_t mma = 0, ldmatrix = 0, cp_async = 0, block_barriers = 0;
};
Counters& counters();

}  // namespace fastdiff::cuda::emu
