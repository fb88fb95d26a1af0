// Samplers with fixed, known denoisers: the marginals of one ancestral step, the full sampler on
// a factorized target, filters, draws that reach the tail (and the paper-era fp32 draw that does
// not), caching, prompts and infilling, semi-AR lengths, and the other samplers' invariants.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include "mdlm/mdlm.hpp"
#include "../common/reference.hpp"

using namespace mdlm;
using mdlm::testing::random_vector;

namespace {

// A single ancestral step from t_max to t_min, no noise removal.
SamplerSettings one_step(double t_max, double t_min, std::uint64_t seed) {
  SamplerSettings c;
  c.steps = 1;
  c.t_max = t_max;
  c.t_min = t_min;
  c.noise_removal = false;
  c.seed = seed;
  return c;
}

// Every position gets the same fixed distribution over the first vocab-1 tokens (mask last).
FunctionDenoiser<> fixed_denoiser(const std::vector<double>& probs) {
  FunctionDenoiser<> d;
  d.vocab = static_cast<std::int64_t>(probs.size()) + 1;
  d.mask_id = d.vocab - 1;
  d.fn = [probs, d](const std::vector<std::int32_t>& z, std::int64_t, std::int64_t, const std::vector<double>&,
                    std::vector<float>& logits) {
    logits.assign(z.size() * static_cast<std::size_t>(d.vocab), 0.0f);
    for (std::size_t r = 0; r < z.size(); ++r) {
      for (std::size_t v = 0; v < probs.size(); ++v) logits[r * static_cast<std::size_t>(d.vocab) + v] = static_cast<float>(std::log(probs[v]));
      logits[r * static_cast<std::size_t>(d.vocab) + probs.size()] = 5.0f;  // the mask logit: must never be drawn
    }
  };
  return d;
}

// Position-dependent, context-dependent logits (so caching matters): token v at position i
// scores cos(i * v) + 0.3 * (number of unmasked tokens in the sequence).
FunctionDenoiser<> contextual_denoiser(std::int64_t vocab) {
  FunctionDenoiser<> d;
  d.vocab = vocab;
  d.mask_id = vocab - 1;
  d.fn = [d](const std::vector<std::int32_t>& z, std::int64_t n, std::int64_t len, const std::vector<double>&,
             std::vector<float>& logits) {
    logits.assign(z.size() * static_cast<std::size_t>(d.vocab), 0.0f);
    for (std::int64_t b = 0; b < n; ++b) {
      std::int64_t known = 0;
      for (std::int64_t i = 0; i < len; ++i) known += z[static_cast<std::size_t>(b * len + i)] != d.mask_id;
      for (std::int64_t i = 0; i < len; ++i)
        for (std::int64_t v = 0; v < d.vocab; ++v)
          logits[static_cast<std::size_t>((b * len + i) * d.vocab + v)] =
              static_cast<float>(std::cos(static_cast<double>(i * v)) + 0.3 * static_cast<double>(known * (v % 3)));
    }
  };
  return d;
}

// Draws from one token of weight 1 and `tail` tokens of weight w, exact and paper-era fp32;
// returns how many draws of each landed in the tail.
std::pair<int, int> tail_draws(int tail, double w, int draws, std::uint64_t seed) {
  std::vector<double> logw(static_cast<std::size_t>(tail) + 1, std::log(w));
  logw[0] = 0.0;
  int exact_tail = 0, fp32_tail = 0;
#pragma omp parallel for reduction(+ : exact_tail, fp32_tail) schedule(dynamic, 10)
  for (int k = 0; k < draws; ++k) {
    exact_tail += draw_categorical(logw, Philox{seed}, 0, static_cast<std::uint64_t>(k), DrawMode::Exact) != 0;
    fp32_tail += draw_categorical(logw, Philox{seed}, 1, static_cast<std::uint64_t>(k), DrawMode::PaperFp32) != 0;
  }
  return {exact_tail, fp32_tail};
}

void check_binomial(std::int64_t count, std::int64_t n, double p) {
  const double sd = std::sqrt(static_cast<double>(n) * p * (1 - p));
  CAPTURE(count);
  CAPTURE(n * p);
  CHECK(std::abs(static_cast<double>(count) - static_cast<double>(n) * p) < 5 * sd + 1);
}

}  // namespace

TEST_CASE("one ancestral step: stay masked w.p. (1-a_s)/(1-a_t), else p_theta (a_s - a_t)/(1 - a_t)") {
  const std::vector<double> p{0.1, 0.2, 0.3, 0.4};
  FunctionDenoiser<> d = fixed_denoiser(p);
  LogLinearSchedule sched;
  SamplerSettings cfg = one_step(0.8, 0.5, 3);
  const std::int64_t n = 400, len = 100;
  SampleResult r = sample(d, sched, Ancestral{}, cfg, std::vector<std::int32_t>(static_cast<std::size_t>(n * len), 4), n, len);
  const double stay = sched.move_chance(0.5) / sched.move_chance(0.8);
  std::vector<std::int64_t> count(5, 0);
  for (std::int32_t v : r.ids) count[static_cast<std::size_t>(v)]++;
  check_binomial(count[4], n * len, stay);
  for (int v = 0; v < 4; ++v) check_binomial(count[static_cast<std::size_t>(v)], n * len, p[static_cast<std::size_t>(v)] * (1 - stay));
}

TEST_CASE("the full ancestral sampler reproduces a factorized target's marginals; mask is never emitted") {
  const std::vector<double> p{0.05, 0.15, 0.3, 0.5};
  FunctionDenoiser<> d = fixed_denoiser(p);
  SamplerSettings cfg;
  cfg.steps = 32;
  cfg.seed = 11;
  const std::int64_t n = 500, len = 40;
  SampleResult r = sample(d, LogLinearSchedule{}, Ancestral{}, cfg, std::vector<std::int32_t>(static_cast<std::size_t>(n * len), 4), n, len);
  std::vector<std::int64_t> count(5, 0);
  for (std::int32_t v : r.ids) count[static_cast<std::size_t>(v)]++;
  CHECK(count[4] == 0);
  for (int v = 0; v < 4; ++v) check_binomial(count[static_cast<std::size_t>(v)], n * len, p[static_cast<std::size_t>(v)]);
  CHECK(r.nfe_sequences <= n * 33);  // a sequence is evaluated while it still has masks
  CHECK(r.nfe_calls <= 33);
}

TEST_CASE("top-k and top-p never emit filtered tokens; temperature sharpens") {
  const std::vector<double> p{0.02, 0.08, 0.1, 0.3, 0.5};
  FunctionDenoiser<> d = fixed_denoiser(p);
  const std::int64_t n = 200, len = 20;
  SamplerSettings cfg;
  cfg.steps = 8;
  cfg.filters.top_k = 2;
  SampleResult r = sample(d, LogLinearSchedule{}, Ancestral{}, cfg, std::vector<std::int32_t>(static_cast<std::size_t>(n * len), 5), n, len);
  for (std::int32_t v : r.ids) REQUIRE((v == 3 || v == 4));
  cfg.filters = {};
  cfg.filters.top_p = 0.85;  // keeps {4, 3, 2}: 0.5 + 0.3 + 0.1 >= 0.85
  r = sample(d, LogLinearSchedule{}, Ancestral{}, cfg, std::vector<std::int32_t>(static_cast<std::size_t>(n * len), 5), n, len);
  std::set<std::int32_t> seen(r.ids.begin(), r.ids.end());
  CHECK(seen == std::set<std::int32_t>{2, 3, 4});
  cfg.filters = {};
  cfg.filters.temperature = 0.25;
  r = sample(d, LogLinearSchedule{}, Ancestral{}, cfg, std::vector<std::int32_t>(static_cast<std::size_t>(n * len), 5), n, len);
  std::int64_t top = 0;
  for (std::int32_t v : r.ids) top += v == 4;
  CHECK(static_cast<double>(top) / static_cast<double>(n * len) > 0.85);  // p^4 normalized: 0.5^4/(sum) = 0.87
}

TEST_CASE("exact draws reach the tail; the paper-era fp32 draw does not") {
  // The largest uniform Philox gives (1 - 2^-53) maps to an exponential variate <= 1e-15.
  CHECK(exponential_from_words(0xffffffffu, 0xfffff7ffu) <= 1e-15);
  CHECK(exponential_from_words(0xffffffffu, 0xfffff7ffu) > 0.0);
  // One token of weight 1 and 100,000 of weight 1e-7: the tail holds 1e-2 / 1.01 ~ 0.99%.
  const int draws = 5000;
  const auto [exact_tail, fp32_tail] = tail_draws(100000, 1e-7, draws, 77);
  const double exact = static_cast<double>(exact_tail) / draws, fp32 = static_cast<double>(fp32_tail) / draws;
  CAPTURE(exact);
  CAPTURE(fp32);
  CHECK(exact > 0.005);
  CHECK(exact < 0.015);
  // fp32 noise is a grid (u <= 1 - 2^-24, so E >= 6e-8): for weights of 1e-7 it only distorts the
  // tail (expected 0.73% instead of 0.99%, from summing over the grid); it cannot reach below it.
  CHECK(fp32 < exact);
  MESSAGE("tail frequency over 5000 draws: exact " << exact << ", paper-era fp32 " << fp32);
}

TEST_CASE("tokens below fp32's noise floor: exact draws find them, the fp32 draw practically never") {
  // One token of weight 1 and 500,000 of weight 2e-8 (tail mass 1%): a tail token can win under
  // fp32 noise only if E_top > 5e7 * E_tail >= 3, i.e. about 0.16% of the time; exact draws: 1%.
  const auto [exact_tail, fp32_tail] = tail_draws(500000, 2e-8, 1000, 78);
  CAPTURE(exact_tail);
  CAPTURE(fp32_tail);
  CHECK(exact_tail >= 4);  // Poisson(10)
  CHECK(exact_tail <= 20);
  CHECK(fp32_tail < exact_tail);
  CHECK(fp32_tail <= 5);   // Poisson(1.6)
  MESSAGE("tail draws out of 1000 (expected 10): exact " << exact_tail << ", paper-era fp32 " << fp32_tail);
}

TEST_CASE("caching gives identical samples with fewer network evaluations when steps > length") {
  FunctionDenoiser<> d = contextual_denoiser(9);
  const std::int64_t n = 6, len = 12;
  SamplerSettings cfg;
  cfg.steps = 64;
  cfg.seed = 5;
  std::vector<std::int32_t> init(static_cast<std::size_t>(n * len), 8);
  SampleResult plain = sample(d, LogLinearSchedule{}, Ancestral{}, cfg, init, n, len);
  SampleResult cached = sample(d, LogLinearSchedule{}, Cached{}, cfg, init, n, len);
  CHECK(cached.ids == plain.ids);
  CHECK(cached.nfe_sequences < plain.nfe_sequences);
  CHECK(cached.nfe_sequences <= n * (len + 1));  // at most one evaluation per change (+ the first)
  d.time_conditioning = true;
  CHECK_THROWS_WITH_AS(sample(d, LogLinearSchedule{}, Cached{}, cfg, init, n, len), doctest::Contains("time-agnostic"), Error);
}

TEST_CASE("prompted and infilled positions are never altered, by any sampler") {
  FunctionDenoiser<> d = contextual_denoiser(9);
  const std::int64_t n = 4, len = 16;
  std::vector<std::int32_t> init(static_cast<std::size_t>(n * len), 8);
  for (std::int64_t b = 0; b < n; ++b) {
    init[static_cast<std::size_t>(b * len + 0)] = 1;  // a prompt
    init[static_cast<std::size_t>(b * len + 1)] = 2;
    init[static_cast<std::size_t>(b * len + 9)] = 7;  // an infilled span
    init[static_cast<std::size_t>(b * len + 10)] = 0;
  }
  const std::vector<mdlm::testing::AnySampler> samplers{Ancestral{}, Cached{}, Confidence{}, ReMdm{0.5}, FirstHit{}};
  for (std::size_t kind = 0; kind < samplers.size(); ++kind) {
    CAPTURE(kind);
    SamplerSettings cfg;
    cfg.steps = 20;
    std::visit([&](const auto& sampler) {
      SampleResult r = sample(d, LogLinearSchedule{}, sampler, cfg, init, n, len);
      for (std::size_t k = 0; k < init.size(); ++k) {
        if (init[k] != 8) REQUIRE(r.ids[k] == init[k]);
        REQUIRE(r.ids[k] != 8);  // nothing left masked
      }
      if constexpr (std::same_as<std::decay_t<decltype(sampler)>, FirstHit>) CHECK(r.nfe_sequences == n * (len - 4));  // one token per evaluation
    }, samplers[kind]);
  }
}

TEST_CASE("confidence sampling unmasks k = remaining / steps-left per step; threshold mode at least one") {
  FunctionDenoiser<> d = contextual_denoiser(9);
  const std::int64_t n = 2, len = 10;
  SamplerSettings cfg;
  cfg.steps = 5;
  cfg.noise_removal = false;
  SampleResult r = sample(d, LogLinearSchedule{}, Confidence{}, cfg, std::vector<std::int32_t>(static_cast<std::size_t>(n * len), 8), n, len);
  for (std::int32_t v : r.ids) CHECK(v != 8);  // 10 tokens in 5 steps of 2
  CHECK(r.nfe_calls == 5);
  const Confidence threshold{0.999};  // nothing is that confident: one token per step
  cfg.steps = 3;
  r = sample(d, LogLinearSchedule{}, threshold, cfg, std::vector<std::int32_t>(static_cast<std::size_t>(n * len), 8), n, len);
  std::int64_t masked = 0;
  for (std::int32_t v : r.ids) masked += v == 8;
  CHECK(masked == n * (len - 3));
}

TEST_CASE("semi-autoregressive generation has the requested length and keeps its prompt") {
  FunctionDenoiser<> d = contextual_denoiser(9);
  SamplerSettings cfg;
  cfg.steps = 8;
  const std::vector<std::int32_t> prompt{3, 1, 4};
  SampleResult r = sample_semi_ar(d, LogLinearSchedule{}, Ancestral{}, cfg, prompt, 2, 50, 16, 6);
  REQUIRE(r.ids.size() == 100);
  for (std::int64_t b = 0; b < 2; ++b) {
    for (std::size_t k = 0; k < prompt.size(); ++k) CHECK(r.ids[static_cast<std::size_t>(b * 50) + k] == prompt[k]);
  }
  for (std::int32_t v : r.ids) CHECK(v != 8);
  CHECK_THROWS_AS(sample_semi_ar(d, LogLinearSchedule{}, Ancestral{}, cfg, prompt, 1, 50, 16, 0), Error);
}

TEST_CASE("per-sample unigram entropy") {
  std::vector<std::int32_t> same(8, 3), two{1, 2, 1, 2};
  CHECK(unigram_entropy(same.data(), 8) == 0.0);
  CHECK(unigram_entropy(two.data(), 4) == doctest::Approx(std::log(2.0)));
}

TEST_CASE("the radix-selected top-k/top-p cut keeps exactly the tokens filter_logits keeps") {
  // fp32 logits, bf16-rounded logits (long runs of equal values) and a flat row, at several
  // vocabulary sizes, temperatures, k and p (including cuts inside a run of ties)
  std::int64_t rows = 0, cut_in_ties = 0;
  for (std::int64_t vocab : {3, 17, 300, 50258}) {
    for (int kind = 0; kind < 3; ++kind) {
      auto raw = random_vector<float>(static_cast<std::size_t>(vocab), 77 + static_cast<std::uint64_t>(vocab), static_cast<std::uint32_t>(kind));
      std::vector<float> logits(raw.size());
      for (std::size_t v = 0; v < raw.size(); ++v) {
        const float x = 6.0f * raw[v];
        logits[v] = kind == 0 ? x : kind == 1 ? to_compute(bf16(x)) : 0.25f;
      }
      const std::int64_t mask = vocab - 1;
      for (double temperature : {1.0, 0.7}) {
        for (std::int64_t k : {0L, 1L, 2L, 5L, 100L, vocab + 3}) {
          for (double p : {1.0, 0.999999, 0.9, 0.5, 1e-9}) {
            if (k == 0 && p >= 1) continue;
            Filters f;
            f.temperature = temperature;
            f.top_k = k;
            f.top_p = p;
            std::vector<double> want;
            filter_logits(logits.data(), vocab, mask, f, want);
            const TopCut cut = find_top_cut([&](std::int64_t v) { return logits[static_cast<std::size_t>(v)]; }, vocab, mask, k, p,
                                            temperature);
            std::int64_t kept = 0, mismatches = 0;
            for (std::int64_t v = 0; v < vocab; ++v) {
              if (v == mask) continue;
              const bool keeps = cut.keeps(order_key(logits[static_cast<std::size_t>(v)]), static_cast<std::uint32_t>(v));
              mismatches += keeps != std::isfinite(want[static_cast<std::size_t>(v)]);
              kept += keeps;
            }
            INFO("vocab ", vocab, " kind ", kind, " T ", temperature, " k ", k, " p ", p, " kept ", kept);
            CHECK(mismatches == 0);
            CHECK(kept >= 1);
            if (k > 0) CHECK(kept <= k);
            cut_in_ties += !cut.all && cut.id != 0xffffffffu;
            ++rows;
          }
        }
      }
    }
  }
  CHECK(rows > 300);
  CHECK(cut_in_ties > 10);  // the id passes were exercised
}

TEST_CASE("order_key orders floats like <, fixed masses sum exactly") {
  const std::vector<float> xs{-INFINITY, -3.3e38f, -2.0f, -1e-30f, -0.0f, 0.0f, 1e-30f, 1.0f, 1.5f, 3.4e38f, INFINITY};
  for (std::size_t i = 0; i + 1 < xs.size(); ++i) CHECK(order_key(xs[i]) < order_key(xs[i + 1]));
  CHECK(fixed_mass(1.0) == (std::uint64_t{1} << 40));
  CHECK(fixed_mass(0.0) == 0);
  CHECK(top_p_target(0.5, 10) == 5);
  CHECK(top_p_target(0.51, 10) == 6);
  CHECK(top_p_target(1e-30, 10) == 1);
}

TEST_CASE("the fused sampler step (the CUDA kernel's Host twin) takes the same decisions as the sampler") {
  FunctionDenoiser<> d = contextual_denoiser(11);
  const std::int64_t n = 8, len = 20;
  std::vector<std::int32_t> init(static_cast<std::size_t>(n * len), 10);
  init[3] = 4;  // one fixed position
  SamplerSettings cfg = one_step(0.9, 0.4, 21);
  cfg.filters.temperature = 0.7;
  SampleResult want = sample(d, LogLinearSchedule{}, Ancestral{}, cfg, init, n, len);
  std::vector<float> logits;
  d.fn(init, n, len, std::vector<double>(static_cast<std::size_t>(n), 0.0), logits);
  std::vector<std::int32_t> z = init;
  std::vector<std::uint8_t> fixed(z.size()), changed(static_cast<std::size_t>(n), 0);
  for (std::size_t r = 0; r < z.size(); ++r) fixed[r] = init[r] != 10;
  LogLinearSchedule s;
  SampleStepArgs a;
  a.rows = n * len;
  a.vocab = 11;
  a.len = len;
  a.mask_id = 10;
  a.rng = Philox{21};
  a.step = 0;
  a.p_unmask = (s.move_chance(0.9) - s.move_chance(0.4)) / s.move_chance(0.9);
  a.temperature = 0.7;
  sample_step(Host{}, MatrixView<const float, Host>(logits.data(), n * len, 11), z.data(), fixed.data(), a, changed.data());
  CHECK(z == want.ids);
  for (std::int64_t b = 0; b < n; ++b) CHECK(changed[static_cast<std::size_t>(b)] == 1);

  for (auto [k, p] : {std::pair{3L, 1.0}, std::pair{0L, 0.6}, std::pair{4L, 0.8}}) {  // with top-k / top-p
    cfg.filters.top_k = a.top_k = k;
    cfg.filters.top_p = a.top_p = p;
    want = sample(d, LogLinearSchedule{}, Ancestral{}, cfg, init, n, len);
    z = init;
    sample_step(Host{}, MatrixView<const float, Host>(logits.data(), n * len, 11), z.data(), fixed.data(), a, changed.data());
    CHECK(z == want.ids);
  }
}

TEST_CASE("the batched sampler (the device loop, on the Host kernels) gives sample()'s tokens for every sampler") {
  // fp64 model: sample() evaluates one sequence at a time, the batched loop all at once, and fp32
  // GEMMs round differently with the batch size; such 1e-7 differences flip the confidence
  // sampler's ranking at near-ties (masked positions see nearly the same context). In fp64 they
  // vanish when the logits are read as floats, so both loops see the same logits.
  Host host;
  const std::int64_t n = 4, len = 24;
  const auto init = mdlm::testing::sampler_test_init();
  for (bool tc : {false, true}) {
    DiT model(mdlm::testing::sampler_test_dit(tc));
    ParamStore<Host, double> store(model.layout());
    mdlm::testing::init_sampler_test_model(model, store);
    for (const auto& c : mdlm::testing::sampler_cases()) {
      std::visit([&](const auto& sampler) {
        using S = std::decay_t<decltype(sampler)>;
        const SamplerSettings& sc = c.cfg;
        if (tc && std::same_as<S, Cached>) {
          CHECK_THROWS_AS(sample_batched(host, model, store, 29, LogLinearSchedule{}, sampler, sc, init, n, len), Error);
          return;
        }
        INFO("time conditioning ", tc, ", sampler ", std::string(c.name));
        SampleResult want = sample(model_denoiser(host, model, store, 29), LogLinearSchedule{}, sampler, sc, init, n, len);
        SampleResult got = sample_batched(host, model, store, 29, LogLinearSchedule{}, sampler, sc, init, n, len);
        CHECK(got.ids == want.ids);
        CHECK(got.ids[0] == 3);
        CHECK(got.ids[30] == 7);
        CHECK(std::find(got.ids.begin(), got.ids.end(), 29) == got.ids.end());
        if (std::same_as<S, Cached>) CHECK(got.nfe_sequences == want.nfe_sequences);
        if (std::same_as<S, FirstHit>) CHECK(got.nfe_sequences == want.nfe_sequences);
      }, c.sampler);
    }
  }
}

TEST_CASE("NaN logits stop the samplers with mdlm::Error instead of emitting invalid ids") {
  Host host;
  DiT model(mdlm::testing::sampler_test_dit(false));
  ParamStore<Host, float> store(model.layout());
  mdlm::testing::init_sampler_test_model(model, store);
  std::fill(store.values().data(), store.values().data() + model.layout().buffer_elements(), NAN);
  const auto init = mdlm::testing::sampler_test_init();
  for (const auto& c : mdlm::testing::sampler_cases()) {
    INFO("sampler ", std::string(c.name));
    std::visit([&](const auto& sampler) {
      CHECK_THROWS_WITH_AS(sample_batched(host, model, store, 29, LogLinearSchedule{}, sampler, c.cfg, init, 4, 24),
                           doctest::Contains("finite logit"), Error);
      CHECK_THROWS_WITH_AS(sample(model_denoiser(host, model, store, 29), LogLinearSchedule{}, sampler, c.cfg, init, 4, 24),
                           doctest::Contains("finite weight"), Error);
    }, c.sampler);
  }
}
