// Scalar load/store between storage types and float32, written so that GCC vectorises loops over
// them (F16C for half on the avx2 build, integer shifts for bfloat16).
#pragma once

#include <cstdint>
#include <cstring>

#include "dtype.h"

namespace fastdiff::cpu {

using half = _Float16;
struct bf16 {
  uint16_t bits;
};

inline float to_float(float v) { return v; }
inline float to_float(half v) { return static_cast<float>(v); }
inline float to_float(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename T>
inline T from_float(float v);
template <>
inline float from_float<float>(float v) { return v; }
template <>
inline half from_float<half>(float v) { return static_cast<half>(v); }
template <>
inline bf16 from_float<bf16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  // Round to nearest even; NaN stays a quiet NaN.
  uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return bf16{static_cast<uint16_t>(nan ? 0x7FC0u : rounded)};
}

inline float load_float(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(p)[i];
    case DType::f16: return to_float(static_cast<const half*>(p)[i]);
    case DType::bf16: return to_float(static_cast<const bf16*>(p)[i]);
  }
  return 0.0f;
}

// Chunk length of the float scratch buffers the kernels stage through: long enough for the
// vector loops, short enough to stay in L1.
constexpr int64_t kChunk = 256;

}  // namespace fastdiff::cpu
