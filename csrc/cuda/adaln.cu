// CUDA kernels of the adaln family (semantics: csrc/ops.cpp; launchers: cuda/adaln.h). This file: the
// host side (row plans, dispatch over dtype and plan, launchers); the kernels are in adaln_forward.cuh
// and adaln_backward.cuh, their row machinery in adaln_rows.cuh, loads/stores/sums in adaln_device.cuh.
//
// Rows. A row of x (length D) is normalised by one "row group" of threads that holds it in registers:
// K slots of V elements per thread (one 16-byte access per slot when D and every pointer allow, else
// V = 1), at most 16 elements per thread (4 with scalar accesses). Small rows (D <= 256; 128 with
// scalar accesses) go to a power-of-two sub-warp of up to 32 lanes (several rows per warp when D is tiny) and sum with
// shuffles; larger rows take a whole block of up to 512 threads and sum through shared memory. The
// statistics are two-pass in float32 over the registers (sum, then sum of squared deviations), so x is
// read from global memory once. Rows that do not fit (D > 8192 with vector accesses, D > 2048 with
// scalar ones) go to a streaming kernel (one block per row, the row re-read from global memory in
// each pass) that serves any D.
//
// Chunks. Every block works on `rows` consecutive tokens of one sample, so per-sample modulation
// (shift, scale, gate) is loaded once per row group and kept in registers for all its rows.
//
// Deterministic sums. The backward's sums over tokens (per-sample gradients) and over all rows (weight,
// bias) never use atomics: each row group adds its rows' contributions to its own float32 accumulators
// in shared memory (each thread only ever touches its own columns), the groups of a block are then
// added in group order into the block's slice of a workspace, laid out [sample][chunk][slot][D], and a
// second kernel adds the chunks in a fixed order. The chunking depends on the shape only, so two runs
// (on any GPU) give the same bits.
#include <algorithm>
#include <cstdint>

#include "cuda/adaln.h"
#include "cuda/adaln_backward.cuh"
#include "cuda/adaln_forward.cuh"

namespace fastdiff::cuda {
namespace {

// ---------------------------------------------------------------------------------------------------
// Host side: plans and dispatch
// ---------------------------------------------------------------------------------------------------

struct RowPlan {
  int vec;          // elements per access (1: scalar)
  int k;            // accesses (slots) per thread
  int group;        // threads per row
  bool block_rows;  // a block per row (else a sub-warp)
  bool streaming;   // the row does not fit in registers
};

RowPlan plan_rows(int64_t d, int elem_bytes, bool vec_ok) {
  RowPlan p{};
  p.vec = vec_ok ? 16 / elem_bytes : 1;
  const int64_t dv = d / p.vec;
  const int max_elems_warp = p.vec == 1 ? kMaxElemsScalar : kMaxElemsWarp;
  if (dv <= 32 * (max_elems_warp / p.vec)) {  // sub-warp mode
    if (dv <= 32) {
      p.k = 1, p.group = pow2_ceil(std::max<int64_t>(dv, 1));
    } else {
      p.k = pow2_ceil(ceil_div(dv, 32)), p.group = 32;
    }
    return p;
  }
  p.block_rows = true;
  for (int k = 1; k * p.vec <= (p.vec == 1 ? kMaxElemsScalar : kMaxElems); k *= 2) {
    if (ceil_div(dv, k) <= kMaxRowThreads) {
      p.k = k, p.group = static_cast<int>(round_up(ceil_div(dv, k), 32));
      return p;
    }
  }
  p.streaming = true, p.vec = 1, p.k = 1, p.group = kMaxRowThreads;
  return p;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename... P>
bool all_aligned16(const P*... ptrs) {
  return ((ptrs == nullptr || aligned16(ptrs)) && ...);
}

inline int elem_bytes(DType t) { return t == DType::f32 ? 4 : 2; }

// Tokens per chunk of adaln's backward: a function of the shape only. At least 16
// tokens, so that the partial sums (slots * D floats per block) stay small next to the rows a block
// reads; at most ~1024 chunks over the whole batch.
int64_t backward_rows_per_chunk(int64_t batch, int64_t tokens) {
  const int64_t rows = std::max<int64_t>(16, ceil_div(batch * tokens, 1024));
  return std::max<int64_t>(1, std::min(rows, tokens));
}

Chunks make_chunks(int64_t tokens, int64_t rows) {
  Chunks c;
  c.tokens = tokens, c.rows = std::max<int64_t>(rows, 1);
  c.count = ceil_div(tokens, c.rows);
  return c;
}

cudaError_t device_attrs(int* sms, int* smem_optin) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess && sms) e = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess && smem_optin) e = cudaDeviceGetAttribute(smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  return e;
}

constexpr int64_t kMaxGridX = 2147483647;

// Calls Launch<T, V, K, kBlock>::run(plan, args...) for the plan's configuration. Configurations
// beyond the per-thread element limits are never planned and never instantiated.
template <typename T, int V, int K, bool kBlock, template <typename, int, int, bool> class Launch, typename... Args>
cudaError_t run_config(const RowPlan& p, Args&... args) {
  if constexpr (V * K <= (V == 1 ? kMaxElemsScalar : kBlock ? kMaxElems : kMaxElemsWarp)) {
    return Launch<T, V, K, kBlock>::run(p, args...);
  } else {
    return cudaErrorInvalidConfiguration;
  }
}

template <typename T, int V, template <typename, int, int, bool> class Launch, typename... Args>
cudaError_t dispatch_k(const RowPlan& p, Args&... args) {
  switch (p.k * 2 + p.block_rows) {
    case 2: return run_config<T, V, 1, false, Launch>(p, args...);
    case 4: return run_config<T, V, 2, false, Launch>(p, args...);
    case 8: return run_config<T, V, 4, false, Launch>(p, args...);
    case 3: return run_config<T, V, 1, true, Launch>(p, args...);
    case 5: return run_config<T, V, 2, true, Launch>(p, args...);
    case 9: return run_config<T, V, 4, true, Launch>(p, args...);
  }
  return cudaErrorInvalidConfiguration;
}

template <template <typename, int, int, bool> class Launch, typename... Args>
cudaError_t dispatch_rows(DType dt, const RowPlan& p, Args&... args) {
  switch (dt) {
    case DType::f32:
      return p.vec == 1 ? dispatch_k<float, 1, Launch>(p, args...) : dispatch_k<float, 4, Launch>(p, args...);
    case DType::f16:
      return p.vec == 1 ? dispatch_k<__half, 1, Launch>(p, args...) : dispatch_k<__half, 8, Launch>(p, args...);
    case DType::bf16:
      return p.vec == 1 ? dispatch_k<__nv_bfloat16, 1, Launch>(p, args...)
                        : dispatch_k<__nv_bfloat16, 8, Launch>(p, args...);
  }
  return cudaErrorInvalidValue;
}

template <template <typename> class Launch, typename... Args>
cudaError_t dispatch_dtype(DType dt, Args&&... args) {
  switch (dt) {
    case DType::f32: return Launch<float>::run(args...);
    case DType::f16: return Launch<__half>::run(args...);
    case DType::bf16: return Launch<__nv_bfloat16>::run(args...);
  }
  return cudaErrorInvalidValue;
}

// Launch geometry of a row kernel: block size and groups per block for `rows` tokens per chunk.
struct Geometry {
  int threads;
  int groups;
};

Geometry row_geometry(const RowPlan& p, int64_t rows) {
  if (p.block_rows || p.streaming) return {p.group, 1};
  // Sub-warps: up to kWarpModeThreads threads, no more groups than a chunk has rows (whole warps).
  const int64_t want = round_up(std::max<int64_t>(rows, 1) * p.group, 32);
  const int threads = static_cast<int>(std::min<int64_t>(kWarpModeThreads, want));
  return {threads, threads / p.group};
}

struct ForwardLaunch {
  const AdalnForwardArgs* a;
  Chunks ch;
  Geometry geo;
  cudaStream_t stream;
};

template <typename T, int V, int K, bool kBlock>
struct LaunchForward {
  static cudaError_t run(const RowPlan& p, ForwardLaunch& l) {
    adaln_forward_kernel<T, V, K, kBlock><<<static_cast<unsigned>(l.a->batch * l.ch.count), l.geo.threads, 0, l.stream>>>(*l.a, l.ch, p.group);
    return cudaGetLastError();
  }
};

template <typename T>
struct LaunchForwardStreaming {
  static cudaError_t run(ForwardLaunch& l) {
    adaln_forward_streaming_kernel<T><<<static_cast<unsigned>(l.a->batch * l.ch.count), kMaxRowThreads, 0, l.stream>>>(
        *l.a, l.ch);
    return cudaGetLastError();
  }
};

struct BackwardLaunch {
  const AdalnBackwardArgs* a;
  Chunks ch;
  SlotMap sm;
  Geometry geo;
  size_t smem;
  float* workspace;
  cudaStream_t stream;
};

template <typename T, int V, int K, bool kBlock>
struct LaunchBackward {
  static cudaError_t run(const RowPlan& p, BackwardLaunch& l) {
    const auto kernel = adaln_backward_kernel<T, V, K, kBlock>;
    if (l.smem + kSmemReserve > static_cast<size_t>(kDefaultSmem)) {
      const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(l.smem));
      if (e != cudaSuccess) return e;
    }
    kernel<<<static_cast<unsigned>(l.a->batch * l.ch.count), l.geo.threads, l.smem, l.stream>>>(*l.a, l.ch, l.sm,
                                                                                                p.group, l.workspace);
    return cudaGetLastError();
  }
};

template <typename T>
struct LaunchBackwardStreaming {
  static cudaError_t run(BackwardLaunch& l) {
    adaln_backward_streaming_kernel<T><<<static_cast<unsigned>(l.a->batch * l.ch.count), kMaxRowThreads, 0, l.stream>>>(
        *l.a, l.ch, l.sm, l.workspace);
    return cudaGetLastError();
  }
};

template <typename T>
struct LaunchSum {
  static cudaError_t run(const SumArgs& s, int targets, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>(ceil_div(s.dim, kSumCols)),
                    static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(s.batch, 1), FASTDIFF_MAX_GRID_Y)),
                    static_cast<unsigned>(targets));
    sum_partials_kernel<T><<<grid, dim3(kSumCols, kSumLanes), 0, stream>>>(s);
    return cudaGetLastError();
  }
};

bool shape_ok(int64_t batch, int64_t tokens, int64_t dim) {
  return batch >= 0 && tokens >= 0 && dim >= 0 && dim <= (int64_t{1} << 30);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Launchers
// ---------------------------------------------------------------------------------------------------

cudaError_t adaln_forward(const AdalnForwardArgs& a, cudaStream_t stream) {
  if (!shape_ok(a.batch, a.tokens, a.dim)) return cudaErrorInvalidValue;
  const int64_t rows = a.batch * a.tokens;
  if (rows == 0) return cudaSuccess;
  const bool vec_ok = a.dim % (16 / elem_bytes(a.dtype)) == 0 &&
                      all_aligned16(a.x, a.gate, a.h, a.shift, a.scale, a.weight, a.bias, a.x_out, a.out);
  const RowPlan p = plan_rows(a.dim, elem_bytes(a.dtype), vec_ok);
  // Tokens per chunk: enough blocks for two waves of the GPU; more tokens per chunk reuse the
  // per-sample modulation longer. The forward's results do not depend on this choice.
  int sms = 0;
  if (const cudaError_t e = device_attrs(&sms, nullptr); e != cudaSuccess) return e;
  const int block = p.block_rows || p.streaming ? p.group : kWarpModeThreads;
  const int64_t groups = p.block_rows || p.streaming ? 1 : kWarpModeThreads / p.group;
  const int64_t target_blocks = int64_t{2} * sms * std::max(1, 2048 / block);
  const int64_t per_chunk = std::min(a.tokens, std::max<int64_t>(groups, ceil_div(rows, target_blocks)));
  ForwardLaunch l{&a, make_chunks(a.tokens, per_chunk), row_geometry(p, per_chunk), stream};
  if (a.batch * l.ch.count > kMaxGridX) return cudaErrorInvalidConfiguration;
  if (p.streaming) return dispatch_dtype<LaunchForwardStreaming>(a.dtype, l);
  return dispatch_rows<LaunchForward>(a.dtype, p, l);
}

namespace {

SlotMap backward_slots(const AdalnBackwardArgs& a) {
  SlotMap sm{};
  const bool used[kNumSlots] = {!a.shift_per_token, !a.scale_per_token, a.weight != nullptr, a.bias != nullptr,
                                a.h != nullptr && !a.gate_per_token};
  for (int s = 0; s < kNumSlots; ++s) sm.slot[s] = used[s] ? sm.count++ : -1;
  return sm;
}

Chunks backward_chunks(int64_t batch, int64_t tokens) {
  return make_chunks(tokens, backward_rows_per_chunk(batch, tokens));
}

}  // namespace

size_t adaln_backward_workspace_bytes(const AdalnBackwardArgs& a) {
  if (!shape_ok(a.batch, a.tokens, a.dim)) return 0;
  const Chunks ch = backward_chunks(a.batch, a.tokens);
  return static_cast<size_t>(a.batch * ch.count * backward_slots(a).count * a.dim) * sizeof(float);
}

cudaError_t adaln_backward(const AdalnBackwardArgs& a, void* workspace, cudaStream_t stream) {
  if (!shape_ok(a.batch, a.tokens, a.dim)) return cudaErrorInvalidValue;
  if (a.dim == 0) return cudaSuccess;  // every output is empty
  const SlotMap sm = backward_slots(a);
  const Chunks ch = backward_chunks(a.batch, a.tokens);
  if (a.batch * ch.count > kMaxGridX) return cudaErrorInvalidConfiguration;
  float* ws = static_cast<float*>(workspace);
  if (sm.count > 0 && a.batch * ch.count > 0 && ws == nullptr) return cudaErrorInvalidValue;

  if (a.batch * a.tokens > 0) {
    const bool vec_ok =
        a.dim % (16 / elem_bytes(a.dtype)) == 0 &&
        all_aligned16(a.grad_out, a.x, a.scale, a.weight, a.bias, a.grad_x_out, a.gate, a.h, a.grad_x, a.grad_h,
                      a.grad_gate, a.grad_shift, a.grad_scale);
    RowPlan p = plan_rows(a.dim, elem_bytes(a.dtype), vec_ok);
    const Geometry geo = row_geometry(p, ch.rows);
    int smem_optin = 0;
    if (const cudaError_t e = device_attrs(nullptr, &smem_optin); e != cudaSuccess) return e;
    const size_t smem = static_cast<size_t>(geo.groups) * sm.count * a.dim * sizeof(float);
    if (smem + kSmemReserve > static_cast<size_t>(smem_optin)) p.streaming = true;  // accumulators in the workspace
    BackwardLaunch l{&a, ch, sm, geo, smem, ws, stream};
    const cudaError_t e =
        p.streaming ? dispatch_dtype<LaunchBackwardStreaming>(a.dtype, l) : dispatch_rows<LaunchBackward>(a.dtype, p, l);
    if (e != cudaSuccess) return e;
  }
  if (sm.count == 0) return cudaSuccess;

  SumArgs s{};
  s.partial = ws, s.batch = a.batch, s.chunks = a.batch * a.tokens > 0 ? ch.count : 0, s.dim = a.dim;
  s.slots = sm.count;
  void* const outs[kNumSlots] = {a.grad_shift, a.grad_scale, a.grad_weight, a.grad_bias, a.grad_gate};
  int targets = 0;
  for (int k = 0; k < kNumSlots; ++k) {
    if (sm.slot[k] < 0) continue;
    s.target[targets++] = SumTarget{outs[k], sm.slot[k], k == kWeight || k == kBias};
  }
  return dispatch_dtype<LaunchSum>(a.dtype, s, targets, stream);
}

namespace {

// gated_residual geometry: threadIdx.x over up to 256 column vectors, threadIdx.y over tokens.
struct ResidualPlan {
  int vec;
  dim3 block;
  unsigned col_tiles;
};

ResidualPlan plan_residual(const GatedResidualArgs& a) {
  ResidualPlan p{};
  const bool vec_ok = a.dim % (16 / elem_bytes(a.dtype)) == 0 &&
                      all_aligned16(a.x, a.gate, a.h, a.out, a.grad_out, a.grad_gate, a.grad_h);
  p.vec = vec_ok ? 16 / elem_bytes(a.dtype) : 1;
  const int64_t dv = a.dim / p.vec;
  // Short rows: a power of two dividing the warp; else whole warps, at most 256 threads across.
  const int tx = static_cast<int>(dv <= 32 ? pow2_ceil(std::max<int64_t>(dv, 1))
                                           : std::min<int64_t>(kResidualThreads, round_up(dv, 32)));
  p.block = dim3(tx, kResidualThreads / tx);
  p.col_tiles = static_cast<unsigned>(ceil_div(dv, tx));
  return p;
}

// Tokens per chunk of gated_residual's backward: a function of the shape (and of the block's token
// lanes) only, so that its per-sample sums are reproducible; at least 4 tokens per partial.
int64_t residual_backward_rows(const GatedResidualArgs& a, const ResidualPlan& p) {
  const int64_t rows = std::max<int64_t>({4, p.block.y, ceil_div(a.batch * a.tokens, 2048)});
  return std::max<int64_t>(1, std::min(rows, a.tokens));
}

template <typename T>
struct LaunchResidual {
  static cudaError_t run(const GatedResidualArgs& a, const ResidualPlan& p, const Chunks& ch, bool backward,
                         float* ws, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>(a.batch * ch.count), p.col_tiles);
    constexpr int kVec = 16 / sizeof(T);
    if (!backward) {
      if (p.vec == 1) {
        gated_residual_kernel<T, 1><<<grid, p.block, 0, stream>>>(a, ch);
      } else {
        gated_residual_kernel<T, kVec><<<grid, p.block, 0, stream>>>(a, ch);
      }
    } else if (p.vec == 1) {
      gated_residual_backward_kernel<T, 1><<<grid, p.block, 0, stream>>>(a, ch, ws);
    } else {
      gated_residual_backward_kernel<T, kVec><<<grid, p.block, 0, stream>>>(a, ch, ws);
    }
    return cudaGetLastError();
  }
};

bool residual_grid_ok(const GatedResidualArgs& a, const ResidualPlan& p, const Chunks& ch) {
  return a.batch * ch.count <= kMaxGridX && p.col_tiles <= FASTDIFF_MAX_GRID_Y;
}

}  // namespace

cudaError_t gated_residual_forward(const GatedResidualArgs& a, cudaStream_t stream) {
  if (!shape_ok(a.batch, a.tokens, a.dim)) return cudaErrorInvalidValue;
  if (a.batch * a.tokens * a.dim == 0) return cudaSuccess;
  GatedResidualArgs f = a;
  f.grad_out = nullptr, f.grad_gate = nullptr, f.grad_h = nullptr;
  const ResidualPlan p = plan_residual(f);
  // Tokens per chunk: about two waves of blocks (the forward's results do not depend on it).
  int sms = 0;
  if (const cudaError_t e = device_attrs(&sms, nullptr); e != cudaSuccess) return e;
  const int64_t want_chunks = std::max<int64_t>(1, int64_t{16} * sms / p.col_tiles);
  const int64_t rows = std::max<int64_t>(p.block.y, ceil_div(a.batch * a.tokens, want_chunks));
  const Chunks ch = make_chunks(a.tokens, std::min(rows, a.tokens));
  if (!residual_grid_ok(f, p, ch)) return cudaErrorInvalidConfiguration;
  return dispatch_dtype<LaunchResidual>(a.dtype, f, p, ch, false, static_cast<float*>(nullptr), stream);
}

size_t gated_residual_backward_workspace_bytes(const GatedResidualArgs& a) {
  if (!shape_ok(a.batch, a.tokens, a.dim) || a.gate_per_token) return 0;
  const Chunks ch = make_chunks(a.tokens, residual_backward_rows(a, plan_residual(a)));
  return static_cast<size_t>(a.batch * ch.count * a.dim) * sizeof(float);
}

cudaError_t gated_residual_backward(const GatedResidualArgs& a, void* workspace, cudaStream_t stream) {
  if (!shape_ok(a.batch, a.tokens, a.dim)) return cudaErrorInvalidValue;
  if (a.dim == 0) return cudaSuccess;
  GatedResidualArgs bw = a;
  bw.x = nullptr, bw.out = nullptr;
  const ResidualPlan p = plan_residual(bw);
  const Chunks ch = make_chunks(a.tokens, residual_backward_rows(a, p));
  if (!residual_grid_ok(bw, p, ch)) return cudaErrorInvalidConfiguration;
  float* const ws = static_cast<float*>(workspace);
  const bool sums = !a.gate_per_token;
  if (sums && a.batch * a.tokens > 0 && ws == nullptr) return cudaErrorInvalidValue;
  if (a.batch * a.tokens > 0) {
    const cudaError_t e = dispatch_dtype<LaunchResidual>(a.dtype, bw, p, ch, true, ws, stream);
    if (e != cudaSuccess) return e;
  }
  if (!sums) return cudaSuccess;
  SumArgs s{};
  s.partial = ws, s.batch = a.batch, s.chunks = a.batch * a.tokens > 0 ? ch.count : 0, s.dim = a.dim, s.slots = 1;
  s.target[0] = SumTarget{a.grad_gate, 0, 0};
  return dispatch_dtype<LaunchSum>(a.dtype, s, 1, stream);
}

}  // namespace fastdiff::cuda
