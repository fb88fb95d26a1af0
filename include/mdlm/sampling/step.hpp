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
  int* failed = nullptr;   // backend memory; set to 1 when a row had nothing to draw (NaN logits)
  MDLM_HD bool filtered() const { return top_k > 0 || top_p < 1.0; }
};

// The numbers of one step that the host knows in advance; the device loop reads them from a
// table indexed by a device-side step counter, so one captured CUDA graph serves every step.
struct StepPlan {
  double p_unmask = 0, p_remask = 0;
  std::uint32_t step = 0;
  std::int32_t left = 1;  // steps left including this one (confidence: k = ceil(candidates / left))
};

// With a plan (device memory on CUDA), this step's numbers come from plan[*counter].
MDLM_HD inline void apply_plan(SampleStepArgs& a, const StepPlan* plan, const int* counter) {
  if (plan == nullptr) return;
  const StepPlan p = plan[*counter];
  a.step = p.step;
  a.p_unmask = p.p_unmask;
  a.p_remask = p.p_remask;
}

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

// The Host twins of the CUDA kernels (ops/cuda/sample.cuh), decision for decision: the batched
// sampler (sampling/batched.hpp) runs on either backend with them.

// The exact draw for row r of the logits, top-k/top-p applied.
template <class T>
std::int32_t draw_row(const T* row, const SampleStepArgs& a, std::int64_t r) {
  const TopCut cut = a.filtered() ? find_top_cut([&](std::int64_t v) { return static_cast<float>(to_compute(row[v])); }, a.vocab,
                                                 a.mask_id, a.top_k, a.top_p, a.temperature)
                                  : TopCut{};
  double s;
  return race_row(row, a, static_cast<std::uint64_t>(r), cut, 0, 1, &s);
}

template <class T>
void sample_step(const Host& ctx, MatrixView<const T, Host> logits, std::int32_t* z, const std::uint8_t* fixed,
                 SampleStepArgs a, std::uint8_t* changed, const StepPlan* plan = nullptr, const int* counter = nullptr) {
  apply_plan(a, plan, counter);
  ctx.parallel_for(a.rows, [&](std::int64_t r) {
    if (fixed[r]) return;
    const double u = a.rng.uniform_double(Purpose::Remask, a.step, static_cast<std::uint64_t>(r));
    if (z[r] == a.mask_id) {
      if (u >= a.p_unmask) return;
      const std::int32_t v = draw_row(logits.data + r * logits.ld, a, r);
      if (v < 0) {
        if (a.failed != nullptr) *a.failed = 1;
        return;
      }
      z[r] = v;
    } else if (u < a.p_remask) {
      z[r] = a.mask_id;
    } else {
      return;
    }
    if (changed != nullptr) changed[r / a.len] = 1;
  });
}

// Confidence sampler step: every masked position draws a candidate and its probability under
// the filtered distribution (kept_probability's definition); then per sequence the candidates
// ranked by confidence (descending, ties to the earlier position) are unmasked up to
// k = ceil(candidates / left), or with a threshold those at or above it and at least one.
template <class T>
void confidence_step(const Host& ctx, MatrixView<const T, Host> logits, std::int32_t* z, const std::uint8_t* fixed,
                     SampleStepArgs a, double threshold, std::int32_t left, std::int32_t* cand, double* conf,
                     const StepPlan* plan = nullptr, const int* counter = nullptr) {
  apply_plan(a, plan, counter);
  if (plan != nullptr) left = plan[*counter].left;
  ctx.parallel_for(a.rows, [&](std::int64_t r) {
    conf[r] = -1.0;
    if (fixed[r] || z[r] != a.mask_id) return;
    const T* row = logits.data + r * logits.ld;
    auto x = [&](std::int64_t v) { return static_cast<float>(to_compute(row[v])); };
    float mx = -INFINITY;
    for (std::int64_t v = 0; v < a.vocab; ++v)
      if (v != a.mask_id) mx = std::fmax(mx, x(v));
    const TopCut cut = a.filtered() ? find_top_cut(x, a.vocab, a.mask_id, a.top_k, a.top_p, a.temperature) : TopCut{};
    double s;
    const std::int32_t best = race_row(row, a, static_cast<std::uint64_t>(r), cut, 0, 1, &s);
    if (best < 0) {
      if (a.failed != nullptr) *a.failed = 1;
      return;
    }
    std::uint64_t total = 0;
    for (std::int64_t v = 0; v < a.vocab; ++v) {
      if (v == a.mask_id || !cut.keeps(order_key(x(v)), static_cast<std::uint32_t>(v))) continue;
      total += fixed_mass(std::exp((static_cast<double>(x(v)) - static_cast<double>(mx)) / a.temperature));
    }
    cand[r] = best;
    conf[r] = std::exp((static_cast<double>(x(best)) - static_cast<double>(mx)) / a.temperature) * kFixedMassOne /
              static_cast<double>(total);
  });
  ctx.parallel_for(a.rows / a.len, [&](std::int64_t b) {
    const std::int64_t base = b * a.len;
    std::int64_t candidates = 0;
    for (std::int64_t i = 0; i < a.len; ++i) candidates += conf[base + i] >= 0.0;
    if (candidates == 0) return;
    const std::int64_t k = (candidates + left - 1) / left;
    for (std::int64_t i = 0; i < a.len; ++i) {
      const double c = conf[base + i];
      if (c < 0.0) continue;
      std::int64_t rank = 0;
      for (std::int64_t j = 0; j < a.len; ++j) {
        const double o = conf[base + j];
        rank += o >= 0.0 && (o > c || (o == c && j < i));
      }
      if (threshold > 0 ? (rank == 0 || c >= threshold) : rank < k) z[base + i] = cand[base + i];
    }
  });
}

// First-hitting step: in each sequence with m masked positions, the floor(u m)-th of them
// (u = Philox(Remask, step, 2b + 1)) takes its draw.
template <class T>
void first_hit_step(const Host& ctx, MatrixView<const T, Host> logits, std::int32_t* z, SampleStepArgs a,
                    const StepPlan* plan = nullptr, const int* counter = nullptr) {
  apply_plan(a, plan, counter);
  ctx.parallel_for(a.rows / a.len, [&](std::int64_t b) {
    const std::int64_t base = b * a.len;
    std::int64_t masked = 0;
    for (std::int64_t i = 0; i < a.len; ++i) masked += z[base + i] == a.mask_id;
    if (masked == 0) return;
    const double u = a.rng.uniform_double(Purpose::Remask, a.step, static_cast<std::uint64_t>(b) * 2 + 1);
    const auto target = static_cast<std::int64_t>(u * static_cast<double>(masked));
    for (std::int64_t i = 0, seen = 0; i < a.len; ++i) {
      if (z[base + i] != a.mask_id || seen++ != target) continue;
      const std::int32_t v = draw_row(logits.data + (base + i) * logits.ld, a, base + i);
      if (v < 0 && a.failed != nullptr) *a.failed = 1;
      if (v >= 0) z[base + i] = v;
      return;
    }
  });
}

// Noise removal: every still-masked position takes its most likely token (mask excluded).
template <class T>
void argmax_masked(const Host& ctx, MatrixView<const T, Host> logits, std::int32_t* z, std::int32_t mask_id,
                   int* failed = nullptr) {
  ctx.parallel_for(logits.rows, [&](std::int64_t r) {
    if (z[r] != mask_id) return;
    double best = -INFINITY;
    std::int32_t id = -1;
    for (std::int64_t v = 0; v < logits.cols; ++v) {
      const double x = static_cast<float>(to_compute(logits.data[r * logits.ld + v]));
      if (v != mask_id && x > best) best = x, id = static_cast<std::int32_t>(v);
    }
    if (id >= 0) z[r] = id;
    else if (failed != nullptr) *failed = 1;
  });
}

// The batched loop's bookkeeping: this step's sigma row from the table, and the step counter.
inline void loop_begin_step(const Host&, const float* sigma_table, std::int64_t n, const int* counter, float* sigma_now) {
  for (std::int64_t i = 0; i < n; ++i) sigma_now[i] = sigma_table[*counter * n + i];
}
inline void loop_advance(const Host&, int* counter) { ++*counter; }

}  // namespace mdlm
