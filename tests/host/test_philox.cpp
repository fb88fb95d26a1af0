#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include "mdlm/mdlm.hpp"

using namespace mdlm;

namespace {
struct Kat {
  U32x4 ctr;
  U32x2 key;
  U32x4 expected;
};
void check_equal(U32x4 got, U32x4 want) {
  for (int i = 0; i < 4; ++i) CHECK(got.v[i] == want.v[i]);
}
}  // namespace

// Known-answer vectors from Random123's tests/kat_vectors (D. E. Shaw Research).
TEST_CASE("Philox4x32-10 matches the Random123 known-answer vectors") {
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, {{0, 0}}, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
       {{0xffffffffu, 0xffffffffu}},
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
       {{0xa4093822u, 0x299f31d0u}},
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const Kat& k : kats) check_equal(philox4x32<10>(k.ctr, k.key), k.expected);
}

TEST_CASE("Philox4x32-7 matches its known-answer vector (round count is a parameter)") {
  check_equal(philox4x32<7>(U32x4{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
                            U32x2{{0xa4093822u, 0x299f31d0u}}),
              U32x4{{0x4dfccabau, 0x190a87f0u, 0xc47362bau, 0xb6b5242au}});
}

TEST_CASE("Philox keying: seed is the key; (index, step, purpose) is the counter") {
  Philox rng{0x299f31d0a4093822ull};
  // index = 0x85a308d3243f6a88, step = 0x13198a2e, purpose = 0x03707344 reproduces the KAT.
  U32x4 b = rng.block(static_cast<Purpose>(0x03707344u), 0x13198a2eu, 0x85a308d3243f6a88ull);
  check_equal(b, U32x4{{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}});
  // Streams for different purposes, steps, indices and seeds differ.
  std::set<std::uint32_t> firsts;
  for (std::uint32_t p = 0; p < 8; ++p)
    for (std::uint32_t s = 0; s < 8; ++s)
      for (std::uint64_t i = 0; i < 8; ++i) firsts.insert(rng.block(static_cast<Purpose>(p), s, i).v[0]);
  CHECK(firsts.size() == 512);
  CHECK(Philox{1}.block(Purpose::Mask, 0, 0).v[0] != Philox{2}.block(Purpose::Mask, 0, 0).v[0]);
}

TEST_CASE("uniform conversions: ranges, resolution and extremes") {
  CHECK(u01_float(0) == 0.0f);
  CHECK(u01_float(0xffffffffu) < 1.0f);
  CHECK(u01_float(0xffffffffu) == 1.0f - std::ldexp(1.0f, -24));
  CHECK(u01_double(0, 0) == 0.0);
  CHECK(u01_double(0xffffffffu, 0xffffffffu) == 1.0 - std::ldexp(1.0, -53));
  CHECK(u01_double_open0(0, 0) == std::ldexp(1.0, -53));
  CHECK(u01_double_open0(0xffffffffu, 0xffffffffu) == 1.0);
  // -log of the largest open uniform below 1 is ~1.1e-16: exponential noise reaches the tail.
  CHECK(-std::log(u01_double_open0(0xffffffffu, 0xfffff7ffu)) <= 1e-15);
  // The low word contributes its top 21 bits: doubles are not all multiples of 2^-32.
  CHECK(u01_double(0, 0x00000800u) == std::ldexp(1.0, -53));
}

TEST_CASE("uniform draws are uniform (chi-square over 64 bins) with mean 1/2") {
  Philox rng{12345};
  const int n = 200000, bins = 64;
  std::vector<int> fcount(bins, 0), dcount(bins, 0);
  double fsum = 0, dsum = 0;
  for (int i = 0; i < n; ++i) {
    float f = rng.uniform_float(Purpose::Test, 7, static_cast<std::uint64_t>(i));
    double d = rng.uniform_double(Purpose::Test, 8, static_cast<std::uint64_t>(i));
    REQUIRE(f >= 0.0f);
    REQUIRE(f < 1.0f);
    REQUIRE(d >= 0.0);
    REQUIRE(d < 1.0);
    fsum += f;
    dsum += d;
    fcount[static_cast<int>(f * bins)]++;
    dcount[static_cast<int>(d * bins)]++;
  }
  auto chi2 = [&](const std::vector<int>& c) {
    double e = static_cast<double>(n) / bins, s = 0;
    for (int x : c) s += (x - e) * (x - e) / e;
    return s;
  };
  // 63 degrees of freedom: the 99.99% quantile is about 115.
  CHECK(chi2(fcount) < 115);
  CHECK(chi2(dcount) < 115);
  // Mean of n uniforms has sd 1/sqrt(12 n) ~ 6.5e-4; allow 5 sd.
  CHECK(std::abs(fsum / n - 0.5) < 3.3e-3);
  CHECK(std::abs(dsum / n - 0.5) < 3.3e-3);
}
