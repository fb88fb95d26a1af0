#pragma once
// Samplers of the absorbing-state process (DESIGN §1), for any schedule and any denoiser.
// Each sampler is a type (concept Sampler) with its own options; the functions take it as a
// template parameter and choose the loop at compile time. SamplerSettings holds what they share.
//
//   Ancestral   t -> s on a grid from 1 to t_min (default 1e-5): a masked token stays masked
//               w.p. (1 - alpha_s)/(1 - alpha_t), else takes v ~ p_theta (mask never drawn);
//               unmasked tokens are copied; a final noise-removal step takes the argmax.
//   Cached      the same trajectory, reusing p_theta per sequence while that sequence has not
//               changed (valid only for a time-agnostic denoiser; refused otherwise).
//   Confidence  MaskGIT/LLaDA: draw candidates, unmask the k most confident per step
//               (k = remaining / steps left), or with a threshold, every candidate above it
//               (Fast-dLLM), at least one.
//   ReMdm       ReMDM with the capped schedule sigma_t = min(eta, (1 - alpha_s)/alpha_t):
//               decoded tokens are remasked w.p. sigma_t, masked ones unmask w.p.
//               (alpha_s - (1 - sigma_t) alpha_t)/(1 - alpha_t).
//   FirstHit    one token per network evaluation: the next unmasking time is analytic,
//               1 - alpha_t' = (1 - alpha_t) u^(1/n) for n masked tokens, the position uniform.
// Prompts and infilling: every position that is not the mask id at the start is fixed and
// never changed. All randomness is Philox keyed by (seed, step, position), so cached and
// uncached runs, and every backend, follow the same trajectory.

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "mdlm/core/error.hpp"
#include "mdlm/core/philox.hpp"
#include "mdlm/diffusion/schedule.hpp"
#include "mdlm/sampling/categorical.hpp"

namespace mdlm {

// A denoiser: logits (n * L * V, row-major float) for n sequences of length L at noise levels
// sigma (n), with its vocabulary, mask id and whether it reads sigma. The trained backbone
// (model_denoiser(), any backend) is one; FunctionDenoiser wraps any callable.
template <class D>
concept Denoiser = requires(const D& d, const std::vector<std::int32_t>& z, std::int64_t n, std::int64_t len,
                            const std::vector<double>& sigma, std::vector<float>& logits) {
  { d.vocab } -> std::convertible_to<std::int64_t>;
  { d.mask_id } -> std::convertible_to<std::int64_t>;
  { d.time_conditioning } -> std::convertible_to<bool>;
  d(z, n, len, sigma, logits);
};

using DenoiserFunction = std::function<void(const std::vector<std::int32_t>& z, std::int64_t n, std::int64_t len,
                                            const std::vector<double>& sigma, std::vector<float>& logits)>;

// Any callable (a lambda, a std::function) as a Denoiser.
template <class F = DenoiserFunction>
struct FunctionDenoiser {
  std::int64_t vocab = 0;
  std::int64_t mask_id = -1;
  bool time_conditioning = false;
  F fn;
  void operator()(const std::vector<std::int32_t>& z, std::int64_t n, std::int64_t len, const std::vector<double>& sigma,
                  std::vector<float>& logits) const {
    fn(z, n, len, sigma, logits);
  }
};

// The ancestral / ReMDM decisions of one step t -> s: a masked token unmasks w.p. p_unmask, a
// decoded one is remasked w.p. p_remask (ReMDM only; never at the last step).
struct StepProbabilities {
  double p_unmask = 1.0, p_remask = 0.0;
};

// The ancestral step from move chances 1 - alpha_t and 1 - alpha_s.
inline StepProbabilities ancestral_probabilities(double move_t, double move_s) {
  StepProbabilities p;
  p.p_unmask = move_t > 0 ? (move_t - move_s) / move_t : 1.0;  // (alpha_s - alpha_t) / (1 - alpha_t)
  return p;
}

// The samplers: each a type with its own options. A sampler says how a grid step t -> s moves
// (probabilities), whether it reuses a sequence's logits while it has not changed
// (caches_logits), whether decoded tokens can be remasked (remasks), and checks its options
// (validate). Confidence and FirstHit replace the per-token step by their own rule.
// One named requirement per member, so a type that misses one is rejected naming it.
namespace sampler_detail {
template <class S> concept has_caches_logits = requires { { S::caches_logits } -> std::convertible_to<bool>; };
template <class S> concept has_remasks = requires { { S::remasks } -> std::convertible_to<bool>; };
template <class S> concept has_validate = requires(const S& s) { { s.validate() } -> std::same_as<void>; };
template <class S>
concept has_probabilities = requires(const S& s, double move_t, double move_s) {
  { s.probabilities(move_t, move_s) } -> std::same_as<StepProbabilities>;
};
}  // namespace sampler_detail

template <class S>
concept Sampler = std::copyable<S> && sampler_detail::has_caches_logits<S> && sampler_detail::has_remasks<S> &&
                  sampler_detail::has_validate<S> && sampler_detail::has_probabilities<S>;

// t -> s: a masked token stays masked w.p. (1 - alpha_s)/(1 - alpha_t), else takes v ~ p_theta.
struct Ancestral {
  static constexpr bool caches_logits = false, remasks = false;
  void validate() const {}
  StepProbabilities probabilities(double move_t, double move_s) const { return ancestral_probabilities(move_t, move_s); }
};

// The ancestral trajectory, reusing p_theta per sequence while it has not changed (valid only
// for a time-agnostic denoiser; refused otherwise).
struct Cached {
  static constexpr bool caches_logits = true, remasks = false;
  void validate() const {}
  StepProbabilities probabilities(double move_t, double move_s) const { return ancestral_probabilities(move_t, move_s); }
};

// MaskGIT/LLaDA: unmask the k most confident candidates per step, or with threshold > 0 every
// candidate above it (Fast-dLLM), at least one.
struct Confidence {
  double threshold = 0.0;
  static constexpr bool caches_logits = false, remasks = false;
  void validate() const {
    if (!(threshold >= 0)) MDLM_FAIL("sampler: threshold (--threshold) is ", threshold, ": must be >= 0 (0: off)");
  }
  StepProbabilities probabilities(double move_t, double move_s) const { return ancestral_probabilities(move_t, move_s); }
};

// ReMDM with the capped schedule sigma_t = min(eta, (1 - alpha_s)/alpha_t).
struct ReMdm {
  double eta = 0.02;
  static constexpr bool caches_logits = false, remasks = true;
  void validate() const {
    if (!(eta >= 0)) MDLM_FAIL("sampler: remdm_eta is ", eta, ": must be >= 0");
  }
  StepProbabilities probabilities(double move_t, double move_s) const {
    StepProbabilities p = ancestral_probabilities(move_t, move_s);
    const double a_t = 1.0 - move_t, a_s = 1.0 - move_s;
    p.p_remask = a_t > 0 ? std::min(eta, move_s / a_t) : 0.0;
    p.p_unmask = move_t > 0 ? std::clamp((a_s - (1.0 - p.p_remask) * a_t) / move_t, 0.0, 1.0) : 1.0;
    return p;
  }
};

// One token per network evaluation at analytic unmasking times (no grid, no noise removal).
struct FirstHit {
  static constexpr bool caches_logits = false, remasks = false;
  void validate() const {}
  StepProbabilities probabilities(double move_t, double move_s) const { return ancestral_probabilities(move_t, move_s); }
};

// The settings every sampler shares.
struct SamplerSettings {
  std::int64_t steps = 128;
  double t_max = 1.0;       // the grid runs from t_max down to t_min
  double t_min = 1e-5;
  Filters filters{};
  DrawMode draw = DrawMode::Exact;
  std::uint64_t seed = 0;
  bool noise_removal = true;
  bool cuda_graph = true;   // device sampler: replay the step as a captured CUDA graph

  // Every setting in range (every sampler calls it); an error names the field, its
  // `mdlm sample` flag where it has one, and the value.
  void validate() const {
    auto require = [](bool ok, const char* field, auto value, const char* rule) {
      if (!ok) MDLM_FAIL("sampler: ", field, " is ", value, ": ", rule);
    };
    require(steps > 0, "steps (--steps)", steps, "must be positive");
    require(filters.temperature > 0 && std::isfinite(filters.temperature), "temperature (--temperature)",
            filters.temperature, "must be positive");
    require(filters.top_p > 0 && filters.top_p <= 1, "top-p (--top-p)", filters.top_p, "must be in (0, 1]");
    require(filters.top_k >= 0, "top-k (--top-k)", filters.top_k, "must be >= 0 (0: off)");
    require(t_max > 0 && t_max <= 1, "t_max", t_max, "must be in (0, 1]");
    require(t_min >= 0 && t_min < t_max, "t_min", t_min, "must be in [0, t_max)");
  }
};

struct SampleResult {
  std::vector<std::int32_t> ids;  // n * L
  std::int64_t nfe_calls = 0;     // network calls (each on the sequences that needed it)
  std::int64_t nfe_sequences = 0; // sequence evaluations
  double seconds = 0;
  bool cuda_graph = false;  // device sampler: the loop ran as a CUDA graph
  std::string note;         // e.g. why graph capture was not used
};

// Entropy (nats) of the token frequencies within one sample: low values flag repetition.
inline double unigram_entropy(const std::int32_t* ids, std::int64_t n) {
  std::vector<std::int32_t> s(ids, ids + n);
  std::sort(s.begin(), s.end());
  double h = 0;
  for (std::size_t i = 0; i < s.size();) {
    std::size_t j = i;
    while (j < s.size() && s[j] == s[i]) ++j;
    const double p = static_cast<double>(j - i) / static_cast<double>(n);
    h -= p * std::log(p);
    i = j;
  }
  return h;
}

// The grid time of a step: t_max at step 0 down to t_min at step `steps`.
inline double grid_time(const SamplerSettings& cfg, std::int64_t step) {
  return cfg.t_max - (cfg.t_max - cfg.t_min) * static_cast<double>(step) / static_cast<double>(cfg.steps);
}

// The sampler's decisions of grid step `step` under the schedule.
template <Sampler S, class Schedule>
StepProbabilities step_probabilities(const Schedule& sched, const S& sampler, const SamplerSettings& cfg, std::int64_t step) {
  StepProbabilities p = sampler.probabilities(sched.move_chance(grid_time(cfg, step)), sched.move_chance(grid_time(cfg, step + 1)));
  if (step == cfg.steps - 1) p.p_remask = 0.0;  // the last step only unmasks
  return p;
}

// First-hitting sampler: from time t with `masked` tokens left, the next one unmasks at t'
// with 1 - alpha_t' = (1 - alpha_t) u^(1/masked), u = Philox(Remask, step, 2b).
template <class Schedule>
double first_hit_next_time(const Schedule& sched, const Philox& rng, std::uint32_t step, std::int64_t b, double t,
                           std::int64_t masked) {
  const double u = rng.uniform_double(Purpose::Remask, step, static_cast<std::uint64_t>(b) * 2);
  const double move = sched.move_chance(t) * std::pow(u, 1.0 / static_cast<double>(masked));
  return std::clamp(sched.t_of_alpha(1.0 - move), 0.0, 1.0);
}

namespace sampling_detail {

// Evaluates the sequences marked in `need` and stores their logits in `cache`.
template <Denoiser D>
void evaluate(const D& d, const std::vector<std::int32_t>& z, std::int64_t n, std::int64_t len,
                     const std::vector<bool>& need, double sigma, std::vector<float>& cache, SampleResult& res) {
  std::vector<std::int64_t> which;
  for (std::int64_t b = 0; b < n; ++b)
    if (need[static_cast<std::size_t>(b)]) which.push_back(b);
  if (which.empty()) return;
  std::vector<std::int32_t> sub(which.size() * static_cast<std::size_t>(len));
  for (std::size_t k = 0; k < which.size(); ++k)
    std::copy(z.begin() + which[k] * len, z.begin() + (which[k] + 1) * len, sub.begin() + static_cast<std::ptrdiff_t>(k) * len);
  std::vector<float> out;
  d(sub, static_cast<std::int64_t>(which.size()), len, std::vector<double>(which.size(), d.time_conditioning ? sigma : 0.0), out);
  MDLM_CHECK(out.size() == sub.size() * static_cast<std::size_t>(d.vocab), "denoiser returned ", out.size(), " logits for ",
             sub.size(), " tokens of vocabulary ", d.vocab);
  const std::size_t row = static_cast<std::size_t>(len * d.vocab);
  for (std::size_t k = 0; k < which.size(); ++k)
    std::copy(out.begin() + static_cast<std::ptrdiff_t>(k * row), out.begin() + static_cast<std::ptrdiff_t>((k + 1) * row),
              cache.begin() + which[k] * static_cast<std::ptrdiff_t>(row));
  ++res.nfe_calls;
  res.nfe_sequences += static_cast<std::int64_t>(which.size());
}

}  // namespace sampling_detail

// Samples n sequences of length len starting from `init` (mask id = to generate).
template <Denoiser D, class Schedule, Sampler S>
SampleResult sample(const D& d, const Schedule& sched, const S& sampler, const SamplerSettings& cfg,
                    std::vector<std::int32_t> init, std::int64_t n, std::int64_t len) {
  static_assert(check_schedule<Schedule>(), "sample(): the schedule must satisfy mdlm::NoiseSchedule");
  using namespace sampling_detail;
  const auto t_start = std::chrono::steady_clock::now();
  MDLM_CHECK(d.mask_id >= 0 && d.mask_id < d.vocab, "sampler: mask id ", d.mask_id, " outside the vocabulary");
  cfg.validate();
  sampler.validate();
  MDLM_CHECK(n > 0 && len > 0, "sampler: ", n, " sequences of length ", len, " (both must be positive)");
  MDLM_CHECK(static_cast<std::int64_t>(init.size()) == n * len, "sampler: ", init.size(), " initial tokens for ", n, " x ", len);
  MDLM_CHECK(!S::caches_logits || !d.time_conditioning,
             "the cached sampler needs a time-agnostic denoiser (this model is time-conditioned)");
  for (std::size_t r = 0; r < init.size(); ++r) {
    MDLM_CHECK(init[r] >= 0 && init[r] < d.vocab, "sampler: token ", init[r], " at position ", r, " outside the vocabulary");
  }
  SampleResult res;
  std::vector<std::int32_t> z = std::move(init);
  const std::vector<bool> fixed = [&] {
    std::vector<bool> f(z.size());
    for (std::size_t r = 0; r < z.size(); ++r) f[r] = z[r] != d.mask_id;
    return f;
  }();
  const Philox rng{cfg.seed};
  const auto V = d.vocab;
  std::vector<float> logits(static_cast<std::size_t>(n * len * V));
  std::vector<bool> dirty(static_cast<std::size_t>(n), true), need(static_cast<std::size_t>(n));
  std::vector<double> logw;
  auto has_mask = [&](std::int64_t b) {
    for (std::int64_t i = 0; i < len; ++i)
      if (z[static_cast<std::size_t>(b * len + i)] == d.mask_id) return true;
    return false;
  };
  auto row_logw = [&](std::int64_t r) {
    filter_logits(logits.data() + r * V, V, d.mask_id, cfg.filters, logw);
    return logw;
  };

  if constexpr (std::same_as<S, FirstHit>) {
    std::vector<double> t(static_cast<std::size_t>(n), cfg.t_max);
    for (std::uint32_t step = 0;; ++step) {
      bool any = false;
      for (std::int64_t b = 0; b < n; ++b) any |= (need[static_cast<std::size_t>(b)] = has_mask(b));
      if (!any) break;
      // all sequences share the network call at their own times (one sigma per call here: the
      // denoiser is evaluated per sequence group; time-conditioned models get each sequence's t)
      for (std::int64_t b = 0; b < n; ++b) {
        if (!need[static_cast<std::size_t>(b)]) continue;
        std::int64_t masked = 0;
        for (std::int64_t i = 0; i < len; ++i) masked += z[static_cast<std::size_t>(b * len + i)] == d.mask_id;
        t[static_cast<std::size_t>(b)] = first_hit_next_time(sched, rng, step, b, t[static_cast<std::size_t>(b)], masked);
        std::vector<bool> one(static_cast<std::size_t>(n), false);
        one[static_cast<std::size_t>(b)] = true;
        evaluate(d, z, n, len, one, sched.sigma(t[static_cast<std::size_t>(b)]), logits, res);
        const auto pick = static_cast<std::int64_t>(rng.uniform_double(Purpose::Remask, step, static_cast<std::uint64_t>(b) * 2 + 1) *
                                                    static_cast<double>(masked));
        std::int64_t seen = 0;
        for (std::int64_t i = 0; i < len; ++i) {
          const std::int64_t r = b * len + i;
          if (z[static_cast<std::size_t>(r)] != d.mask_id) continue;
          if (seen++ == pick) {
            z[static_cast<std::size_t>(r)] = draw_categorical(row_logw(r), rng, step, static_cast<std::uint64_t>(r), cfg.draw);
            break;
          }
        }
      }
    }
  } else {
    for (std::int64_t step = 0; step < cfg.steps; ++step) {
      const double t = grid_time(cfg, step);
      const auto st = static_cast<std::uint32_t>(step);
      for (std::int64_t b = 0; b < n; ++b) {
        const bool masks = has_mask(b) || S::remasks;
        need[static_cast<std::size_t>(b)] = masks && (!S::caches_logits || dirty[static_cast<std::size_t>(b)]);
      }
      evaluate(d, z, n, len, need, sched.sigma(t), logits, res);
      std::fill(dirty.begin(), dirty.end(), false);
      if constexpr (std::same_as<S, Confidence>) {
        for (std::int64_t b = 0; b < n; ++b) {
          std::vector<std::pair<double, std::int64_t>> cand;  // (confidence, position)
          std::vector<std::int32_t> token(static_cast<std::size_t>(len), -1);
          for (std::int64_t i = 0; i < len; ++i) {
            const std::int64_t r = b * len + i;
            if (z[static_cast<std::size_t>(r)] != d.mask_id) continue;
            const auto& w = row_logw(r);
            const std::int32_t v = draw_categorical(w, rng, st, static_cast<std::uint64_t>(r), cfg.draw);
            cand.push_back({kept_probability(logits.data() + r * V, w, v, cfg.filters.temperature), i});
            token[static_cast<std::size_t>(i)] = v;
          }
          if (cand.empty()) continue;
          std::stable_sort(cand.begin(), cand.end(), [](const auto& a, const auto& c) { return a.first > c.first; });
          std::size_t k;
          if (sampler.threshold > 0) {
            k = 1;
            while (k < cand.size() && cand[k].first >= sampler.threshold) ++k;
          } else {
            const auto left = static_cast<std::size_t>(cfg.steps - step);
            k = (cand.size() + left - 1) / left;
          }
          for (std::size_t j = 0; j < k; ++j) {
            const std::int64_t i = cand[j].second;
            z[static_cast<std::size_t>(b * len + i)] = token[static_cast<std::size_t>(i)];
          }
          dirty[static_cast<std::size_t>(b)] = true;
        }
        continue;
      }
      const auto [p_unmask, p_remask] = step_probabilities(sched, sampler, cfg, step);
      for (std::int64_t r = 0; r < n * len; ++r) {
        if (fixed[static_cast<std::size_t>(r)]) continue;
        const double u = rng.uniform_double(Purpose::Remask, st, static_cast<std::uint64_t>(r));
        if (z[static_cast<std::size_t>(r)] == d.mask_id) {
          if (u < p_unmask) {
            z[static_cast<std::size_t>(r)] = draw_categorical(row_logw(r), rng, st, static_cast<std::uint64_t>(r), cfg.draw);
            dirty[static_cast<std::size_t>(r / len)] = true;
          }
        } else if (u < p_remask) {
          z[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(d.mask_id);
          dirty[static_cast<std::size_t>(r / len)] = true;
        }
      }
    }
    if (cfg.noise_removal) {  // whatever is still masked takes the argmax at t_min
      for (std::int64_t b = 0; b < n; ++b) need[static_cast<std::size_t>(b)] = has_mask(b) && (!S::caches_logits || dirty[static_cast<std::size_t>(b)]);
      evaluate(d, z, n, len, need, sched.sigma(cfg.t_min), logits, res);
      for (std::int64_t r = 0; r < n * len; ++r) {
        if (z[static_cast<std::size_t>(r)] == d.mask_id) z[static_cast<std::size_t>(r)] = argmax_with_prob(row_logw(r)).first;
      }
    }
  }
  res.ids = std::move(z);
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return res;
}

// Semi-autoregressive generation of `total` tokens per sequence: a window of L tokens, moved
// by `stride` S; each new window keeps the previous window's last L - S tokens as fixed prefix
// and generates S new ones. `prompt` (any length, may be empty) starts the first window.
// `run_window(init, settings)` samples n windows (any sampler, any backend: sample() or
// sample_on_device()); `mask_id` marks the positions to generate.
template <class RunWindow>
SampleResult sample_semi_ar(RunWindow&& run_window, std::int64_t mask_id, const SamplerSettings& cfg,
                            const std::vector<std::int32_t>& prompt, std::int64_t n, std::int64_t total, std::int64_t window,
                            std::int64_t stride) {
  MDLM_CHECK(stride > 0 && stride <= window, "semi-AR: stride ", stride, " must be in [1, window ", window, "]");
  MDLM_CHECK(static_cast<std::int64_t>(prompt.size()) < window, "semi-AR: the prompt (", prompt.size(),
             " tokens) must be shorter than the window (", window, ")");
  MDLM_CHECK(total >= window, "semi-AR: length ", total, " is shorter than the window ", window);
  SampleResult out;
  std::vector<std::vector<std::int32_t>> seqs(static_cast<std::size_t>(n));
  std::vector<std::int32_t> init(static_cast<std::size_t>(n * window), static_cast<std::int32_t>(mask_id));
  for (std::int64_t b = 0; b < n; ++b) std::copy(prompt.begin(), prompt.end(), init.begin() + b * window);
  SamplerSettings c = cfg;
  for (std::int64_t round = 0;; ++round) {
    c.seed = cfg.seed + static_cast<std::uint64_t>(round) * 0x9E3779B97F4A7C15ull;
    SampleResult r = run_window(init, c);
    out.nfe_calls += r.nfe_calls;
    out.nfe_sequences += r.nfe_sequences;
    out.seconds += r.seconds;
    for (std::int64_t b = 0; b < n; ++b) {
      auto& s = seqs[static_cast<std::size_t>(b)];
      const auto first = round == 0 ? r.ids.begin() + b * window : r.ids.begin() + b * window + (window - stride);
      s.insert(s.end(), first, r.ids.begin() + (b + 1) * window);
    }
    if (static_cast<std::int64_t>(seqs[0].size()) >= total) break;
    for (std::int64_t b = 0; b < n; ++b) {  // next window: the last L - S tokens, then S masks
      const auto& s = seqs[static_cast<std::size_t>(b)];
      std::fill(init.begin() + b * window, init.begin() + (b + 1) * window, static_cast<std::int32_t>(mask_id));
      std::copy(s.end() - (window - stride), s.end(), init.begin() + b * window);
    }
  }
  for (auto& s : seqs) {
    s.resize(static_cast<std::size_t>(total));
    out.ids.insert(out.ids.end(), s.begin(), s.end());
  }
  return out;
}

template <Denoiser D, class Schedule, Sampler S>
SampleResult sample_semi_ar(const D& d, const Schedule& sched, const S& sampler, const SamplerSettings& cfg,
                            const std::vector<std::int32_t>& prompt, std::int64_t n, std::int64_t total, std::int64_t window,
                            std::int64_t stride) {
  return sample_semi_ar([&](const std::vector<std::int32_t>& init, const SamplerSettings& c) { return sample(d, sched, sampler, c, init, n, window); },
                        d.mask_id, cfg, prompt, n, total, window, stride);
}

}  // namespace mdlm
