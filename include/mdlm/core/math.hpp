#pragma once
// Elementary math shared by Host loops and device kernels, written so the Host's loops over it
// vectorize: exp without a libm call (exp_of) and fixed-order lane sums (host_lane_sum).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "mdlm/core/config.hpp"

namespace mdlm {

// exp(x) for fp32 on the Host without a call into libm, so loops over it vectorize (AVX-512:
// 16 lanes): x = n ln2 + r with |r| <= ln2/2 (Cody-Waite, two-part ln2), e^r by its degree-7
// Taylor polynomial (truncation < 1e-8 relative), times 2^n through the exponent bits. Within
// 2 ulp of expf over the clamped range [-87.3, 88]: outside it the result saturates at
// e^-87.3 (~1.2e-38) or e^88 (~1.7e38) instead of reaching 0 or inf, which the sigmoid below
// turns into 1 and 0 all the same (1 / (1 + 1.7e38) is a denormal, and the Host flushes those).
inline float host_expf(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);
  const float n = __builtin_rintf(x * 1.44269504088896341f);  // round(x / ln2)
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // ln2 = 0.693359375 - 2.12194440e-4
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const std::uint32_t bits = static_cast<std::uint32_t>(static_cast<std::int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

MDLM_HD inline float exp_of(float x) {
#if MDLM_ON_DEVICE
  return expf(x);
#else
  return host_expf(x);
#endif
}

MDLM_HD inline double exp_of(double x) { return ::exp(x); }

// Correctly rounded square roots (IEEE) with one name on host and device.
MDLM_HD inline float sqrt_of(float x) { return ::sqrtf(x); }
MDLM_HD inline double sqrt_of(double x) { return ::sqrt(x); }

// Sum of f(i) for i in [0, n), accumulated in kHostLanes interleaved partial sums (lane l takes
// i = l, l + kHostLanes, ...) that are then added in lane order: one fixed order, so the same
// bits on every run and thread count, and loops the compiler vectorizes (a single running sum
// is a chain of dependent adds it must not reorder).
inline constexpr int kHostLanes = 16;

template <class C, class F>
inline C host_lane_sum(std::int64_t n, F&& f) {
  C acc[kHostLanes] = {};
  std::int64_t i = 0;
  for (; i + kHostLanes <= n; i += kHostLanes)
    for (int l = 0; l < kHostLanes; ++l) acc[l] += f(i + l);
  for (int l = 0; i + l < n; ++l) acc[l] += f(i + l);
  C s = 0;
  for (int l = 0; l < kHostLanes; ++l) s += acc[l];
  return s;
}

// Largest of f(i) for i in [0, n) (n > 0), -inf for n = 0; lane-parallel like host_lane_sum.
template <class C, class F>
inline C host_lane_max(std::int64_t n, F&& f) {
  C acc[kHostLanes];
  for (int l = 0; l < kHostLanes; ++l) acc[l] = -std::numeric_limits<C>::infinity();
  std::int64_t i = 0;
  for (; i + kHostLanes <= n; i += kHostLanes)
    for (int l = 0; l < kHostLanes; ++l) {
      const C v = f(i + l);
      acc[l] = v > acc[l] ? v : acc[l];
    }
  for (int l = 0; i + l < n; ++l) {
    const C v = f(i + l);
    acc[l] = v > acc[l] ? v : acc[l];
  }
  C m = acc[0];
  for (int l = 1; l < kHostLanes; ++l) m = acc[l] > m ? acc[l] : m;
  return m;
}

}  // namespace mdlm
