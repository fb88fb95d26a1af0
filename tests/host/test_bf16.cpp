#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "mdlm/mdlm.hpp"

#if MDLM_TEST_CUDA_BF16_HOST
#include <cuda_bf16.h>
#endif

using namespace mdlm;

namespace {

float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Reference round-to-nearest-even written from the definition (not bit tricks): pick the
// nearer of the two bf16 neighbours by exact double arithmetic, ties to the even mantissa,
// rounding past the largest finite value to infinity. Returns the 16-bit pattern.
std::uint16_t rne_reference(std::uint32_t x) {
  const float f = from_bits(x);
  if (std::isnan(f)) return 0x7fff;
  if (std::isinf(f)) return static_cast<std::uint16_t>(x >> 16);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t mag = x & 0x7fffffffu;
  const std::uint16_t lo = static_cast<std::uint16_t>(mag >> 16);  // truncation toward zero
  const double v = std::fabs(static_cast<double>(f));
  const double lo_v = static_cast<double>(from_bits(static_cast<std::uint32_t>(lo) << 16));
  // The next bf16 magnitude above lo; past 0x7f7f the exponent would continue to 2^128.
  const double hi_v = lo == 0x7f7f ? std::ldexp(1.0, 128)
                                   : static_cast<double>(from_bits(static_cast<std::uint32_t>(lo + 1) << 16));
  const double dlo = v - lo_v, dhi = hi_v - v;
  std::uint16_t pick;
  if (dlo < dhi) pick = lo;
  else if (dhi < dlo) pick = static_cast<std::uint16_t>(lo + 1);
  else pick = (lo & 1u) ? static_cast<std::uint16_t>(lo + 1) : lo;
  return static_cast<std::uint16_t>(sign | pick);  // lo + 1 == 0x7f80 is infinity
}

std::uint16_t ours(std::uint32_t x) { return bf16(from_bits(x)).bits; }

}  // namespace

TEST_CASE("bf16: NaN, infinities, zeros, overflow") {
  CHECK(ours(0x7fc00000u) == 0x7fff);  // quiet NaN -> canonical NaN
  CHECK(ours(0xffc00001u) == 0x7fff);  // negative NaN with payload -> canonical NaN
  CHECK(ours(0x7f800001u) == 0x7fff);  // signalling NaN whose payload lives in the low bits
  CHECK(ours(0x7f800000u) == 0x7f80);  // +inf
  CHECK(ours(0xff800000u) == 0xff80);  // -inf
  CHECK(ours(0x00000000u) == 0x0000);
  CHECK(ours(0x80000000u) == 0x8000);  // -0 keeps its sign
  CHECK(ours(0x7f7fffffu) == 0x7f80);  // FLT_MAX rounds up to +inf
  CHECK(ours(0xff7fffffu) == 0xff80);
  CHECK(ours(0x7f7f7fffu) == 0x7f7f);  // just below the overflow midpoint stays finite
  CHECK(ours(0x7f7f8000u) == 0x7f80);  // the midpoint ties to even = infinity
}

TEST_CASE("bf16: ties round to even, others to nearest") {
  CHECK(ours(0x3f808000u) == 0x3f80);  // tie, lower neighbour even
  CHECK(ours(0x3f818000u) == 0x3f82);  // tie, upper neighbour even
  CHECK(ours(0x3f808001u) == 0x3f81);  // just above the tie
  CHECK(ours(0x3f807fffu) == 0x3f80);  // just below the tie
  CHECK(ours(0xbf818000u) == 0xbf82);  // negative ties mirror positive ones
  CHECK(bf16(1.0f).bits == 0x3f80);
  CHECK(bf16(-2.5f).to_float() == -2.5f);
}

TEST_CASE("bf16: denormals are kept and rounded like normals") {
  CHECK(ours(0x00000001u) == 0x0000);  // smallest float denormal rounds to +0
  CHECK(ours(0x00008000u) == 0x0000);  // tie to even (0)
  CHECK(ours(0x00018000u) == 0x0002);  // tie to even (2)
  CHECK(ours(0x0000ffffu) == 0x0001);
  CHECK(ours(0x80010000u) == 0x8001);  // exact negative denormal
  CHECK(ours(0x007fffffu) == 0x0080);  // largest denormal rounds up to the smallest normal
  CHECK(bf16::from_bits(0x0001).to_float() == from_bits(0x00010000u));
}

TEST_CASE("bf16 -> float is exact and float -> bf16 -> float round-trips every bf16") {
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    bf16 h = bf16::from_bits(static_cast<std::uint16_t>(b));
    float f = h.to_float();
    std::uint32_t fb;
    std::memcpy(&fb, &f, 4);
    REQUIRE(fb == b << 16);
    const bool nan = (b & 0x7fffu) > 0x7f80u;
    REQUIRE(bf16(f).bits == (nan ? 0x7fffu : b));
  }
}

TEST_CASE("bf16 matches the definition of round-to-nearest-even on many bit patterns") {
  // Every 251st pattern of the whole 32-bit space (17 M, all exponents and signs), plus 4 M
  // random patterns from Philox, plus the 2^17 patterns around every tie of two exponents.
  std::uint64_t mismatches = 0;
  for (std::uint64_t x = 0; x <= 0xffffffffull; x += 251) {
    mismatches += ours(static_cast<std::uint32_t>(x)) != rne_reference(static_cast<std::uint32_t>(x));
  }
  Philox rng{2024};
  for (std::uint64_t i = 0; i < (1u << 20); ++i) {
    U32x4 b = rng.block(Purpose::Test, 3, i);
    for (std::uint32_t x : b.v) mismatches += ours(x) != rne_reference(x);
  }
  for (std::uint32_t hi : {0x3f80u, 0x0000u}) {
    for (std::uint32_t lo = 0; lo < 0x20000u; ++lo) {
      std::uint32_t x = (hi << 16) + lo;
      mismatches += ours(x) != rne_reference(x);
    }
  }
  CHECK(mismatches == 0);
}

#if MDLM_TEST_CUDA_BF16_HOST
TEST_CASE("bf16 is bit-identical to CUDA's host __float2bfloat16_rn") {
  std::uint64_t mismatches = 0, checked = 0;
  auto cuda_bits = [](std::uint32_t x) {
    __nv_bfloat16 h = __float2bfloat16_rn(from_bits(x));
    std::uint16_t r;
    std::memcpy(&r, &h, 2);
    return r;
  };
  for (std::uint64_t x = 0; x <= 0xffffffffull; x += 1009) {
    mismatches += ours(static_cast<std::uint32_t>(x)) != cuda_bits(static_cast<std::uint32_t>(x));
    ++checked;
  }
  for (std::uint32_t x : {0x7fc00000u, 0xffc00001u, 0x7f800001u, 0x7f7fffffu, 0x00008000u, 0x00018000u, 0x3f808000u}) {
    mismatches += ours(x) != cuda_bits(x);
  }
  CHECK(checked > 4000000);
  CHECK(mismatches == 0);
}
#endif
