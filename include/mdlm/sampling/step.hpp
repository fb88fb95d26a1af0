#pragma once
// One step of the ancestral / ReMDM sampler over a batch of positions, as a kernel with the same
// contract on every backend (Host here, CUDA in ops/cuda/sample.cuh): for each position r that
// is not fixed, with u = Philox(Remask, step, r):
//   masked    -> if u < p_unmask: z[r] = exact categorical draw from logits[r] / temperature
//                (mask id excluded; Philox(Sampling, step, r) noise, as draw_categorical)
//   unmasked  -> if u < p_remask: z[r] = mask (ReMDM; 0 for the ancestral sampler)
// changed[r / len] is set to 1 when a position of that sequence changed. Top-k/top-p restrict
// the draw to the tokens kept by the radix-selected cut (top_cut.hpp), the same set as
// filter_logits keeps.

#include <cmath>
#include <cstdint>
#include <vector>

#include "mdlm/backend/host.hpp"
#include "mdlm/core/philox.hpp"
#include "mdlm/sampling/categorical.hpp"
#include "mdlm/sampling/top_cut.hpp"

namespace mdlm {

struct SampleStepArgs {
  std::int64_t rows = 0, vocab = 0, len = 1;
  std::int32_t mask_id = -1;
  Philox rng{};
  std::uint32_t step = 0;
  double p_unmask = 0, p_remask = 0, temperature = 1;
  std::int64_t top_k = 0;  // 0: off
  double top_p = 1.0;      // 1: off
  MDLM_HD bool filtered() const { return top_k > 0 || top_p < 1.0; }
};

// The numbers of one step that the host knows in advance; the device loop reads them from a
// table indexed by a device-side step counter, so one captured CUDA graph serves every step.
struct StepPlan {
  double p_unmask = 0, p_remask = 0;
  std::uint32_t step = 0;
  std::int32_t left = 1;  // steps left including this one (confidence: k = ceil(candidates / left))
};

// The exact race over one row of logits (the same arithmetic as draw_categorical), over the
// tokens the top-k/top-p cut keeps; a thread takes v_begin, v_begin + v_step, ... (in pairs).
template <class T>
MDLM_HD inline std::int32_t race_row(const T* logits, const SampleStepArgs& a, std::uint64_t row, const TopCut& cut,
                                     std::int64_t v_begin, std::int64_t v_step, double* best_score) {
  std::int32_t best = -1;
  double bs = -INFINITY;
  const auto vocab = static_cast<std::uint64_t>(a.vocab);
  for (std::uint64_t v = static_cast<std::uint64_t>(v_begin) * 2; v < vocab; v += static_cast<std::uint64_t>(v_step) * 2) {
    const U32x4 b = a.rng.block(Purpose::Sampling, a.step, row * ((vocab + 1) / 2) + v / 2);
    for (std::uint64_t k = 0; k < 2 && v + k < vocab; ++k) {
      if (static_cast<std::int64_t>(v + k) == a.mask_id) continue;
      const float x = static_cast<float>(to_compute(logits[v + k]));
      if (!cut.all && !cut.keeps(order_key(x), static_cast<std::uint32_t>(v + k))) continue;
      const double lw = static_cast<double>(x) / a.temperature;
      const double score = lw - log(-log(u01_double_open0(b.v[2 * k], b.v[2 * k + 1])));
      if (score > bs) bs = score, best = static_cast<std::int32_t>(v + k);
    }
  }
  *best_score = bs;
  return best;
}

template <class T>
void sample_step(const Host& ctx, MatrixView<const T, Host> logits, std::int32_t* z, const std::uint8_t* fixed,
                 SampleStepArgs a, std::uint8_t* changed) {
  ctx.parallel_for(a.rows, [&](std::int64_t r) {
    if (fixed[r]) return;
    const double u = a.rng.uniform_double(Purpose::Remask, a.step, static_cast<std::uint64_t>(r));
    if (z[r] == a.mask_id) {
      if (u >= a.p_unmask) return;
      const T* row = logits.data + r * logits.ld;
      const TopCut cut = a.filtered() ? find_top_cut([&](std::int64_t v) { return static_cast<float>(to_compute(row[v])); },
                                                     a.vocab, a.mask_id, a.top_k, a.top_p, a.temperature)
                                      : TopCut{};
      double s;
      z[r] = race_row(row, a, static_cast<std::uint64_t>(r), cut, 0, 1, &s);
      changed[r / a.len] = 1;
    } else if (u < a.p_remask) {
      z[r] = a.mask_id;
      changed[r / a.len] = 1;
    }
  });
}

}  // namespace mdlm
