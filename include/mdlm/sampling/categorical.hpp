#pragma once
// Exact categorical draws and the logits filters.
//
// The draw is an exponential race: token v wins if E_v / p_v is smallest, E_v = -log(U_v)
// exponential, U_v a 53-bit uniform in (0, 1] from Philox; in log space the winner maximizes
// log p_v - log E_v (Gumbel-max). In fp64 the largest uniform below 1 is 1 - 2^-53, so E reaches
// down to 1.1e-16 and tokens far in the tail keep their exact probability. The paper-era fp32
// Gumbel draw (official MDLM: argmax p / (1e-10 - log(u + 1e-10)) with fp32 uniforms) is kept as
// DrawMode::PaperFp32 for reproduction: its uniforms stop at 1 - 2^-24, so E >= 6e-8 and any token
// less than ~6e-8 as likely as the top one can never be drawn.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "mdlm/core/error.hpp"
#include "mdlm/core/philox.hpp"
#include "mdlm/sampling/top_cut.hpp"

namespace mdlm {

enum class DrawMode { Exact, PaperFp32 };

// -log(u) for the 53-bit uniform in (0, 1] built from two Philox words.
inline double exponential_from_words(std::uint32_t hi, std::uint32_t lo) { return -std::log(u01_double_open0(hi, lo)); }

struct Filters {
  double temperature = 1.0;  // > 0
  std::int64_t top_k = 0;    // 0: off
  double top_p = 1.0;        // 1: off
};

// Turns a row of logits into log-weights (unnormalized log-probabilities) after temperature,
// top-k and top-p; removed tokens (and `suppressed`, the mask id) get -inf.
inline void filter_logits(const float* logits, std::int64_t vocab, std::int64_t suppressed, const Filters& f,
                          std::vector<double>& out) {
  MDLM_CHECK(f.temperature > 0, "temperature ", f.temperature, " must be positive");
  MDLM_CHECK(f.top_p > 0 && f.top_p <= 1, "top-p ", f.top_p, " must be in (0, 1]");
  out.resize(static_cast<std::size_t>(vocab));
  for (std::int64_t v = 0; v < vocab; ++v) {
    out[static_cast<std::size_t>(v)] = v == suppressed ? -INFINITY : static_cast<double>(logits[v]) / f.temperature;
  }
  if (f.top_k <= 0 && f.top_p >= 1) return;
  std::vector<std::int64_t> order(static_cast<std::size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    const double x = out[static_cast<std::size_t>(a)], y = out[static_cast<std::size_t>(b)];
    return x > y || (x == y && a < b);
  });
  std::int64_t keep = vocab;
  if (f.top_k > 0) keep = std::min(keep, f.top_k);
  if (f.top_p < 1) {  // smallest prefix whose (fixed-point, see top_cut.hpp) mass reaches top_p
    const float mx = logits[order[0]];
    auto q = [&](std::int64_t v) {
      return fixed_mass(std::exp((static_cast<double>(logits[v]) - static_cast<double>(mx)) / f.temperature));
    };
    std::uint64_t total = 0;
    for (std::int64_t v = 0; v < vocab; ++v)
      if (v != suppressed) total += q(v);
    const std::uint64_t target = top_p_target(f.top_p, total);
    std::uint64_t cum = 0;
    std::int64_t n = 0;
    while (n < keep) {
      const std::int64_t v = order[static_cast<std::size_t>(n)];
      if (!std::isfinite(out[static_cast<std::size_t>(v)])) break;
      cum += q(v);
      ++n;
      if (cum >= target) break;
    }
    keep = std::max<std::int64_t>(n, 1);
  }
  for (std::int64_t k = keep; k < vocab; ++k) out[static_cast<std::size_t>(order[static_cast<std::size_t>(k)])] = -INFINITY;
}

// Draws from the distribution proportional to exp(logw) with Philox noise for (step, row).
inline std::int32_t draw_categorical(const std::vector<double>& logw, Philox rng, std::uint32_t step, std::uint64_t row,
                                     DrawMode mode = DrawMode::Exact) {
  const auto vocab = static_cast<std::uint64_t>(logw.size());
  std::int32_t best = -1;
  if (mode == DrawMode::Exact) {
    double best_score = -INFINITY;
    for (std::uint64_t v = 0; v < vocab; v += 2) {  // one Philox block gives the noise of two tokens
      const U32x4 b = rng.block(Purpose::Sampling, step, row * ((vocab + 1) / 2) + v / 2);
      for (std::uint64_t k = 0; k < 2 && v + k < vocab; ++k) {
        const double lw = logw[v + k];
        if (!std::isfinite(lw)) continue;
        const double score = lw - std::log(exponential_from_words(b.v[2 * k], b.v[2 * k + 1]));
        if (score > best_score) best_score = score, best = static_cast<std::int32_t>(v + k);
      }
    }
  } else {  // official MDLM, fp32: argmax p / (1e-10 - log(u + 1e-10)), u a 24-bit fp32 uniform
    double mx = -INFINITY;
    for (double x : logw) mx = std::max(mx, x);
    float best_score = -1.0f;
    U32x4 block{};
    for (std::uint64_t v = 0; v < vocab; ++v) {
      if (v % 4 == 0) block = rng.block(Purpose::Sampling, step, row * ((vocab + 3) / 4) + v / 4);  // 4 tokens per block
      const float p = std::isfinite(logw[v]) ? static_cast<float>(std::exp(logw[v] - mx)) : 0.0f;
      const float u = u01_float(block.v[v % 4]);
      const float g = 1e-10f - std::log(u + 1e-10f);
      const float score = p / g;
      if (score > best_score) best_score = score, best = static_cast<std::int32_t>(v);
    }
  }
  MDLM_CHECK(best >= 0, "draw: no token has a finite weight to draw from (NaN or Inf logits)");
  return best;
}

// Probability of token v under the filtered distribution (logw from filter_logits on `logits`):
// exp((x_v - x_max)/T) over the fixed-point total of the kept tokens' masses (top_cut.hpp), the
// definition the CUDA confidence kernel uses, so both rank candidates identically.
inline double kept_probability(const float* logits, const std::vector<double>& logw, std::int64_t v, double temperature) {
  float mx = -INFINITY;
  for (std::size_t u = 0; u < logw.size(); ++u)
    if (std::isfinite(logw[u])) mx = std::fmax(mx, logits[u]);
  std::uint64_t total = 0;
  for (std::size_t u = 0; u < logw.size(); ++u)
    if (std::isfinite(logw[u])) total += fixed_mass(std::exp((static_cast<double>(logits[u]) - static_cast<double>(mx)) / temperature));
  return std::exp((static_cast<double>(logits[v]) - static_cast<double>(mx)) / temperature) * kFixedMassOne /
         static_cast<double>(total);
}

// Probability of the most likely kept token and its id (confidence-ordered samplers).
inline std::pair<std::int32_t, double> argmax_with_prob(const std::vector<double>& logw) {
  std::int32_t best = 0;
  double mx = -INFINITY;
  for (std::size_t v = 0; v < logw.size(); ++v) {
    if (logw[v] > mx) mx = logw[v], best = static_cast<std::int32_t>(v);
  }
  double total = 0;
  for (double x : logw) total += std::isfinite(x) ? std::exp(x - mx) : 0.0;
  return {best, 1.0 / total};
}

}  // namespace mdlm
