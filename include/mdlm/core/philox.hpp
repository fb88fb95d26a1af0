#pragma once
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based RNG shared by the Host and CUDA backends. A draw is a pure function of
// (seed, purpose, step, index), so both backends produce identical time samples, masks,
// dropout and sampling noise, and any draw can be recomputed without state.
//
// Keying: key = seed (two 32-bit words); counter = (index lo, index hi, step, purpose).

#include <cstdint>

#include "mdlm/core/config.hpp"

namespace mdlm {

struct U32x2 {
  std::uint32_t v[2];
};
struct U32x4 {
  std::uint32_t v[4];
};

namespace philox_detail {
inline constexpr std::uint32_t kMul0 = 0xD2511F53u;
inline constexpr std::uint32_t kMul1 = 0xCD9E8D57u;
inline constexpr std::uint32_t kWeyl0 = 0x9E3779B9u;  // golden ratio
inline constexpr std::uint32_t kWeyl1 = 0xBB67AE85u;  // sqrt(3) - 1

MDLM_HD inline void mulhilo(std::uint32_t a, std::uint32_t b, std::uint32_t& hi,
                            std::uint32_t& lo) {
  std::uint64_t p = static_cast<std::uint64_t>(a) * b;
  hi = static_cast<std::uint32_t>(p >> 32);
  lo = static_cast<std::uint32_t>(p);
}
}  // namespace philox_detail

// The raw block function: Rounds rounds of Philox4x32 (10 is the standard, Crush-resistant).
template <int Rounds = 10>
MDLM_HD inline U32x4 philox4x32(U32x4 ctr, U32x2 key) {
  using namespace philox_detail;
MDLM_UNROLL
  for (int r = 0; r < Rounds; ++r) {
    if (r > 0) {
      key.v[0] += kWeyl0;
      key.v[1] += kWeyl1;
    }
    std::uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, ctr.v[0], hi0, lo0);
    mulhilo(kMul1, ctr.v[2], hi1, lo1);
    ctr = U32x4{{hi1 ^ ctr.v[1] ^ key.v[0], lo1, hi0 ^ ctr.v[3] ^ key.v[1], lo0}};
  }
  return ctr;
}

// What a draw is for. Separate purposes never share counters, so adding a new use of
// randomness cannot change the draws of an existing one.
enum class Purpose : std::uint32_t {
  Test = 0,
  Init = 1,          // parameter initialization
  Time = 2,          // diffusion time t per sequence
  Mask = 3,          // absorbing-mask decisions per token
  Dropout = 4,       // dropout masks
  Sampling = 5,      // sampler noise (unmask decisions, categorical draws)
  Shuffle = 6,       // data loader order
  Remask = 7,        // remasking samplers
};

// Uniform float in [0, 1) from the top 24 bits of a word: every value is a multiple of 2^-24.
MDLM_HD inline float u01_float(std::uint32_t w) {
  return static_cast<float>(w >> 8) * 5.9604644775390625e-8f;  // 2^-24
}
// Uniform double in [0, 1) with 53 random bits from two words.
MDLM_HD inline double u01_double(std::uint32_t hi, std::uint32_t lo) {
  std::uint64_t bits = (static_cast<std::uint64_t>(hi) << 21) ^ (lo >> 11);  // 32 + 21 bits
  return static_cast<double>(bits) * 1.1102230246251565404236316680908203125e-16;  // 2^-53
}
// Uniform double in (0, 1]: 1 - u01_double. Safe to take the log of (never 0); its smallest
// value is 2^-53 and its largest below 1 is 1 - 2^-53, so -log(u) reaches down to ~1.1e-16.
MDLM_HD inline double u01_double_open0(std::uint32_t hi, std::uint32_t lo) {
  std::uint64_t bits = (static_cast<std::uint64_t>(hi) << 21) ^ (lo >> 11);
  return static_cast<double>(bits + 1) * 1.1102230246251565404236316680908203125e-16;
}

// A seeded stream family. Cheap to copy into kernels (8 bytes).
struct Philox {
  std::uint64_t seed = 0;

  // Four independent 32-bit words for (purpose, step, index).
  MDLM_HD U32x4 block(Purpose purpose, std::uint32_t step, std::uint64_t index) const {
    U32x4 ctr{{static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32), step,
               static_cast<std::uint32_t>(purpose)}};
    U32x2 key{{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}};
    return philox4x32<10>(ctr, key);
  }
  MDLM_HD float uniform_float(Purpose purpose, std::uint32_t step, std::uint64_t index) const {
    return u01_float(block(purpose, step, index).v[0]);
  }
  MDLM_HD double uniform_double(Purpose purpose, std::uint32_t step, std::uint64_t index) const {
    U32x4 b = block(purpose, step, index);
    return u01_double(b.v[0], b.v[1]);
  }
};

// The blocks of n (<= kPhiloxLanes) consecutive indices first, first + 1, ... at once, word w of
// block first + l in words[w][l]: the same bits as Philox::block, computed lane-parallel so the
// compiler turns the rounds into vector multiplies (vpmuludq) on the Host. Unused lanes are
// computed too (their words are unspecified).
inline constexpr int kPhiloxLanes = 16;

inline void philox_blocks(const Philox& rng, Purpose purpose, std::uint32_t step, std::uint64_t first,
                          std::uint32_t (&words)[4][kPhiloxLanes]) {
  using namespace philox_detail;
  std::uint32_t c0[kPhiloxLanes], c1[kPhiloxLanes], c2[kPhiloxLanes], c3[kPhiloxLanes];
  for (int l = 0; l < kPhiloxLanes; ++l) {
    const std::uint64_t index = first + static_cast<std::uint64_t>(l);
    c0[l] = static_cast<std::uint32_t>(index);
    c1[l] = static_cast<std::uint32_t>(index >> 32);
    c2[l] = step;
    c3[l] = static_cast<std::uint32_t>(purpose);
  }
  std::uint32_t k0 = static_cast<std::uint32_t>(rng.seed), k1 = static_cast<std::uint32_t>(rng.seed >> 32);
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    for (int l = 0; l < kPhiloxLanes; ++l) {
      const std::uint64_t p0 = static_cast<std::uint64_t>(kMul0) * c0[l];
      const std::uint64_t p1 = static_cast<std::uint64_t>(kMul1) * c2[l];
      c0[l] = static_cast<std::uint32_t>(p1 >> 32) ^ c1[l] ^ k0;
      c1[l] = static_cast<std::uint32_t>(p1);
      c2[l] = static_cast<std::uint32_t>(p0 >> 32) ^ c3[l] ^ k1;
      c3[l] = static_cast<std::uint32_t>(p0);
    }
  }
  for (int l = 0; l < kPhiloxLanes; ++l) {
    words[0][l] = c0[l];
    words[1][l] = c1[l];
    words[2][l] = c2[l];
    words[3][l] = c3[l];
  }
}

}  // namespace mdlm
