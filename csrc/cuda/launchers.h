// Torch-free entry points of the CUDA kernels (csrc/cuda/*.cu), called by csrc/cuda/bindings.cpp.
// Pointers are device pointers to contiguous storage; sizes are element counts. Launchers enqueue
// work on `stream` and return the launch status: they never synchronise, never allocate (scratch
// space comes from the caller) and launch nothing when there is nothing to compute.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "dtype.h"
#include "guidance_args.h"
#include "sampler_update_args.h"

namespace fastdiff::cuda {

// The parameter structs are the ones the CPU kernels take (csrc/<family>_args.h).
using ::fastdiff::GuidanceParams;
using ::fastdiff::UpdateParams;

// out[b] = factor[b] * (u[b] + s_b (c[b] - u[b])), out (B, n) in p.dtype.
cudaError_t launch_guidance_combine(const GuidanceParams& p, void* out, cudaStream_t stream);

// Scratch bytes launch_guidance_rescale_factor needs for (batch, per_sample).
size_t guidance_rescale_workspace_bytes(int64_t batch, int64_t per_sample);

// out[b] = 1 - rescale + rescale * std(c[b]) / std(guided[b]) (population std; ratio 1 where
// std(guided[b]) = 0), out (B,) float32. p.factor is ignored. `workspace` holds at least
// guidance_rescale_workspace_bytes(p.batch, p.per_sample) bytes, 16-byte aligned. Deterministic: a
// fixed partition into chunks and fixed reduction trees, no atomics.
cudaError_t launch_guidance_rescale_factor(const GuidanceParams& p, double rescale, void* workspace, float* out,
                                           cudaStream_t stream);

// One fused solver step (see the sampler_update schema in csrc/ops.cpp).
// out = x_next (B, n) in x_dtype; history[slot] = d when 0 <= slot < K. The coefficient row is read
// on the device, so the host never learns (or waits for) its values.
cudaError_t launch_sampler_update(const UpdateParams& p, void* out, cudaStream_t stream);

}  // namespace fastdiff::cuda
