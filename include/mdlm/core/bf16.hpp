#pragma once
// bfloat16 storage type usable in host and device code. Layout-compatible with CUDA's
// __nv_bfloat16 (one uint16). Conversions from float round to nearest even exactly as
// CUDA's __float2bfloat16_rn does: NaN becomes the canonical 0x7FFF, infinities and
// denormals are kept, overflow rounds to infinity. On sm_80+ the device path is the
// hardware cvt.rn.bf16.f32, which gives the same bits (checked by tests/cuda).

#include <cstdint>
#include <cstring>
#include <vector>

#include "mdlm/core/config.hpp"

namespace mdlm {

struct bf16 {
  std::uint16_t bits = 0;

  bf16() = default;
  MDLM_HD explicit bf16(float f) : bits(from_float_bits(f)) {}

  MDLM_HD static bf16 from_bits(std::uint16_t b) {
    bf16 r;
    r.bits = b;
    return r;
  }

  MDLM_HD static std::uint16_t from_float_bits(float f) {
#if MDLM_ON_DEVICE && __CUDA_ARCH__ >= 800
    std::uint16_t r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
#else
    std::uint32_t x = float_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // any NaN -> canonical NaN
    // Round to nearest even on the 16 dropped bits: add 0x7fff plus the lsb of the kept part.
    // Overflow of the exponent correctly carries into infinity.
    std::uint32_t lsb = (x >> 16) & 1u;
    return static_cast<std::uint16_t>((x + 0x7fffu + lsb) >> 16);
#endif
  }

  MDLM_HD float to_float() const { return bits_to_float(static_cast<std::uint32_t>(bits) << 16); }
  MDLM_HD explicit operator float() const { return to_float(); }

  MDLM_HD static std::uint32_t float_to_bits(float f) {
#if MDLM_ON_DEVICE
    return __float_as_uint(f);
#else
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
#endif
  }
  MDLM_HD static float bits_to_float(std::uint32_t u) {
#if MDLM_ON_DEVICE
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
#endif
  }

  friend MDLM_HD bool operator==(bf16 a, bf16 b) { return a.bits == b.bits; }
};

static_assert(sizeof(bf16) == 2, "bf16 must be two bytes");

// The arithmetic type kernels compute in: fp32 for fp32 and bf16 storage, fp64 for fp64.
template <class T>
struct ComputeType {
  using type = float;
};
template <>
struct ComputeType<double> {
  using type = double;
};
template <class T>
using compute_t = typename ComputeType<T>::type;

// Storage <-> compute conversions used by kernels templated on the storage type.
template <class T>
MDLM_HD inline compute_t<T> to_compute(T v) {
  return static_cast<compute_t<T>>(v);
}
template <>
MDLM_HD inline float to_compute<bf16>(bf16 v) {
  return v.to_float();
}
template <class T>
MDLM_HD inline T from_compute(compute_t<T> v) {
  return static_cast<T>(v);
}
template <>
MDLM_HD inline bf16 from_compute<bf16>(float v) {
  return bf16(v);
}

// Element-wise conversion of a host vector between storage types (double <-> float <-> bf16),
// through the compute types: for moving reference data in and out of T-typed buffers.
template <class To, class From>
std::vector<To> cast_vector(const std::vector<From>& v) {
  std::vector<To> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = from_compute<To>(static_cast<compute_t<To>>(to_compute(v[i])));
  return out;
}

}  // namespace mdlm
