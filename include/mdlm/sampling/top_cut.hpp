#pragma once
// Top-k / top-p (nucleus) filtering without sorting the vocabulary: the kept set is a prefix of
// the order (logit descending, id ascending), described by a cut (key, id) — a token is kept
// when its key is above the cut key, or equal to it with an id at most the cut id. The cut is
// found by radix selection: four 8-bit passes over the logit's order-preserving key, then (only
// when the cut falls inside a run of equal logits, common with bf16) passes over the ids. Each
// pass needs a 256-bin histogram of (count, mass) over the tokens that still match; building it
// is the caller's job (a loop on the Host, a thread block on CUDA), choosing the bin is
// `TopCutSearch::select`, shared by both, so both find the same cut.
//
// Mass is fixed-point, q_v = round(exp((x_v - x_max)/T) * 2^40) as an integer: sums are exact
// and independent of the order of addition (atomics, threads), so Host and CUDA agree on the
// nucleus to the bit (up to the last ulp of exp). filter_logits uses the same rule.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "mdlm/core/config.hpp"
#include "mdlm/core/error.hpp"

namespace mdlm {

// Larger float -> larger unsigned key (total order; -0 sorts just below +0).
MDLM_HD inline std::uint32_t order_key(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return (b & 0x80000000u) != 0 ? ~b : (b | 0x80000000u);
}

// Fixed-point probability mass of a token with weight w = exp(x - x_max) in [0, 1].
MDLM_HD inline std::uint64_t fixed_mass(double w) { return static_cast<std::uint64_t>(w * 1099511627776.0 + 0.5); }
inline constexpr double kFixedMassOne = 1099511627776.0;  // 2^40
// The vocabulary bound that keeps a sum of fixed masses below 2^63.
inline constexpr std::int64_t kMaxFilteredVocab = std::int64_t{1} << 22;

// The mass the nucleus must reach: ceil(p * total), in [1, total].
MDLM_HD inline std::uint64_t top_p_target(double p, std::uint64_t total) {
  const double t = ceil(p * static_cast<double>(total));
  if (!(t >= 1.0)) return 1;
  if (t >= static_cast<double>(total)) return total;
  return static_cast<std::uint64_t>(t);
}

struct TopCut {
  bool all = true;  // no cut: every (unsuppressed) token is kept
  std::uint32_t key = 0;
  std::uint32_t id = 0xffffffffu;
  MDLM_HD bool keeps(std::uint32_t k, std::uint32_t v) const { return all || k > key || (k == key && v <= id); }
};

// The radix selection. Passes 0..3 look at key bits 31..24, 23..16, 15..8, 7..0 (high first,
// bins scanned from the largest); later passes at the id digits of the tokens whose key equals
// the cut key (bins scanned from the smallest id). After every pass, `done` or another pass.
struct TopCutSearch {
  static constexpr std::uint64_t kOff = std::numeric_limits<std::uint64_t>::max();
  std::uint64_t need_count = kOff;  // tokens still to take (top-k)
  std::uint64_t need_mass = kOff;   // fixed mass still to take (top-p), set in pass 0
  double top_p = 1.0;
  std::uint32_t key = 0, id = 0;    // digits chosen so far
  int pass = 0, id_passes = 0;
  bool done = false;
  TopCut cut{};

  // top_k <= 0 and top_p >= 1 mean off; vocab bounds the ids.
  MDLM_HD TopCutSearch(std::int64_t top_k, double p, std::int64_t vocab) : top_p(p) {
    if (top_k > 0) need_count = static_cast<std::uint64_t>(top_k);
    std::uint32_t max_id = static_cast<std::uint32_t>(vocab > 0 ? vocab - 1 : 0);
    while (max_id != 0) ++id_passes, max_id >>= 8;
    if (id_passes == 0) id_passes = 1;
    done = top_k <= 0 && p >= 1.0;
  }
  MDLM_HD bool uses_mass() const { return top_p < 1.0; }
  MDLM_HD bool in_key_passes() const { return pass < 4; }

  // Whether a token takes part in this pass, and its bin.
  MDLM_HD bool matches(std::uint32_t k, std::uint32_t v) const {
    if (pass < 4) return pass == 0 || (k >> (32 - 8 * pass)) == (key >> (32 - 8 * pass));
    if (k != key) return false;
    const int p = pass - 4, shift = 8 * (id_passes - p);
    return p == 0 || (v >> shift) == (id >> shift);  // shift <= 24 for p >= 1
  }
  MDLM_HD unsigned bin(std::uint32_t k, std::uint32_t v) const {
    if (pass < 4) return (k >> (24 - 8 * pass)) & 255u;
    return (v >> (8 * (id_passes - 1 - (pass - 4)))) & 255u;
  }

  // Chooses the bin holding the end of the kept prefix from this pass's histogram.
  MDLM_HD void select(const std::uint32_t* count, const std::uint64_t* mass) {
    if (pass < 4) {
      if (pass == 0 && uses_mass()) {
        std::uint64_t total = 0;
        for (int b = 0; b < 256; ++b) total += mass[b];
        need_mass = top_p_target(top_p, total);
      }
      for (int b = 255; b >= 0; --b) {
        const bool by_count = need_count != kOff && count[b] >= need_count;
        const bool by_mass = need_mass != kOff && mass[b] >= need_mass;
        if (by_count || by_mass) {
          key |= static_cast<std::uint32_t>(b) << (24 - 8 * pass);
          if (pass == 3) {  // the cut key is known: how many of its equal-logit tokens to keep
            std::uint64_t take = count[b];
            if (need_count != kOff && need_count < take) take = need_count;
            if (need_mass != kOff && mass[b] > 0) {
              const std::uint64_t q = mass[b] / count[b];  // equal logits have equal mass
              const std::uint64_t by_q = (need_mass + q - 1) / q;
              if (by_q < take) take = by_q;
            }
            cut.all = false;
            cut.key = key;
            if (take >= count[b]) {
              done = true;
            } else {
              need_count = take;  // now: the take-th smallest id among the ties
              need_mass = kOff;
            }
          }
          ++pass;
          return;
        }
        if (need_count != kOff) need_count -= count[b];
        if (need_mass != kOff) need_mass -= mass[b];
      }
      done = true;  // k and p reach past every token: keep all
      cut = TopCut{};
      return;
    }
    const int p = pass - 4;
    for (int b = 0; b < 256; ++b) {
      if (count[b] >= need_count) {
        id |= static_cast<std::uint32_t>(b) << (8 * (id_passes - 1 - p));
        break;
      }
      need_count -= count[b];
    }
    ++pass;
    if (pass - 4 == id_passes) {
      cut.id = id;
      done = true;
    }
  }
};

// The Host loop around TopCutSearch for one row of logits (mask id `suppressed` excluded).
template <class GetLogit>
TopCut find_top_cut(GetLogit logit, std::int64_t vocab, std::int64_t suppressed, std::int64_t top_k, double top_p,
                    double temperature) {
  MDLM_CHECK(vocab <= kMaxFilteredVocab, "top-k/top-p: vocabulary ", vocab, " above ", kMaxFilteredVocab);
  TopCutSearch s(top_k, top_p, vocab);
  float mx = -INFINITY;
  if (s.uses_mass()) {
    for (std::int64_t v = 0; v < vocab; ++v)
      if (v != suppressed) mx = std::fmax(mx, logit(v));
  }
  std::uint32_t count[256];
  std::uint64_t mass[256];
  while (!s.done) {
    for (int b = 0; b < 256; ++b) count[b] = 0, mass[b] = 0;
    for (std::int64_t v = 0; v < vocab; ++v) {
      if (v == suppressed) continue;
      const float x = logit(v);
      const std::uint32_t k = order_key(x);
      if (!s.matches(k, static_cast<std::uint32_t>(v))) continue;
      const unsigned b = s.bin(k, static_cast<std::uint32_t>(v));
      ++count[b];
      if (s.uses_mass() && s.in_key_passes())
        mass[b] += fixed_mass(std::exp((static_cast<double>(x) - static_cast<double>(mx)) / temperature));
    }
    s.select(count, mass);
  }
  return s.cut;
}

}  // namespace mdlm
