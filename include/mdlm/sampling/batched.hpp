#pragma once
// Every sampler of samplers.hpp on a whole batch held in backend memory: z, the step's numbers
// and the logits stay on the backend (the GPU with CUDA); one batched forward pass per step,
// then the fused step kernels (ops/cuda/sample.cuh on CUDA, their Host twins in step.hpp)
// reading the logits in place. Same randomness as samplers.hpp (Philox keyed by step and
// position), same decisions: on the Host, sample_batched gives sample()'s tokens exactly.
//
// The step's numbers (unmask/remask probabilities, Philox step, steps left, sigma per sequence)
// are computed up front into a table (StepTable); the kernels read row *counter of it and a last
// kernel advances the counter. So every step launches the same kernels with the same arguments,
// and StepReplay<Cuda> (cuda_sampler.cuh) can capture one step as a CUDA graph and replay it.
// The cached sampler's batch changes from step to step (only the sequences that changed are
// evaluated, into a logits cache), so it always runs step by step.

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/nn/dit.hpp"
#include "mdlm/nn/params.hpp"
#include "mdlm/sampling/samplers.hpp"
#include "mdlm/sampling/step.hpp"

namespace mdlm {

// Runs the steps of a batched sampling loop; this one eagerly. The CUDA specialization
// (sampling/cuda_sampler.cuh) replays a captured graph from the second step on.
template <class B>
struct StepReplay {
  StepReplay(B&, bool) {}
  template <class Body, class Prepare>
  void step(std::int64_t, Body&& body, Prepare&&, SampleResult&) {
    body();
  }
};

namespace sampling_detail {

// The per-step table: plan rows and sigma (steps x n); first-hit also the active sequences.
template <class Schedule>
struct StepTable {
  std::vector<StepPlan> steps;
  std::vector<float> sigma;
  std::vector<std::int64_t> active;  // sequences evaluated with effect at each step

  template <Sampler S>
  StepTable(const Schedule& sched, const S& sampler, const SamplerSettings& cfg, bool time_conditioning, const std::vector<std::int32_t>& init,
             std::int64_t n, std::int64_t len, std::int64_t mask_id) {
    auto sig = [&](double t) { return time_conditioning ? static_cast<float>(sched.sigma(t)) : 0.0f; };
    if constexpr (std::same_as<S, FirstHit>) {
      std::vector<std::int64_t> masked(static_cast<std::size_t>(n), 0);
      for (std::int64_t b = 0; b < n; ++b)
        for (std::int64_t i = 0; i < len; ++i) masked[static_cast<std::size_t>(b)] += init[static_cast<std::size_t>(b * len + i)] == mask_id;
      const std::int64_t total = *std::max_element(masked.begin(), masked.end());
      std::vector<double> t(static_cast<std::size_t>(n), cfg.t_max);
      const Philox rng{cfg.seed};
      for (std::int64_t step = 0; step < total; ++step) {
        std::int64_t act = 0;
        for (std::int64_t b = 0; b < n; ++b) {
          const std::int64_t m = masked[static_cast<std::size_t>(b)] - step;
          if (m <= 0) {
            sigma.push_back(0.0f);
            continue;
          }
          ++act;
          double& tb = t[static_cast<std::size_t>(b)];
          tb = first_hit_next_time(sched, rng, static_cast<std::uint32_t>(step), b, tb, m);
          sigma.push_back(sig(tb));
        }
        steps.push_back(StepPlan{0.0, 0.0, static_cast<std::uint32_t>(step), 1});
        active.push_back(act);
      }
    } else {
      for (std::int64_t step = 0; step < cfg.steps; ++step) {
        const StepProbabilities pr = step_probabilities(sched, sampler, cfg, step);
        steps.push_back(StepPlan{pr.p_unmask, pr.p_remask, static_cast<std::uint32_t>(step),
                                 static_cast<std::int32_t>(cfg.steps - step)});
        sigma.insert(sigma.end(), static_cast<std::size_t>(n), sig(grid_time(cfg, step)));
        active.push_back(n);
      }
    }
  }
};

}  // namespace sampling_detail

template <Sampler S, class B, class Schedule, class T, class G>
SampleResult sample_batched(B& ctx, const DiT& model, ParamStore<B, T, G>& store, std::int64_t mask_id,
                              const Schedule& sched, const S& sampler, const SamplerSettings& cfg, std::vector<std::int32_t> init, std::int64_t n,
                              std::int64_t len) {
  static_assert(check_schedule<Schedule>(), "sample_batched(): the schedule must satisfy mdlm::NoiseSchedule");
  using namespace sampling_detail;
  const auto t0 = std::chrono::steady_clock::now();
  const std::int64_t rows = n * len, vocab = model.config().vocab;
  const bool tc = model.config().time_conditioning;
  MDLM_CHECK(cfg.draw == DrawMode::Exact, "the device sampler draws exactly; the paper-era fp32 draw runs through sample()");
  MDLM_CHECK(!S::caches_logits || !tc,
             "the cached sampler needs a time-agnostic denoiser (this model is time-conditioned)");
  cfg.validate();
  sampler.validate();
  MDLM_CHECK(mask_id >= 0 && mask_id < vocab, "sampler: mask id ", mask_id, " outside the vocabulary");
  MDLM_CHECK(n > 0 && len > 0, "sampler: ", n, " sequences of length ", len, " (both must be positive)");
  MDLM_CHECK(static_cast<std::int64_t>(init.size()) == rows, "sampler: ", init.size(), " initial tokens for ", n, " x ", len);
  check_token_ids(init.data(), rows, vocab);
  std::vector<std::uint8_t> fixed(init.size());
  for (std::size_t r = 0; r < init.size(); ++r) fixed[r] = init[r] != mask_id;
  auto has_mask = [&](const std::vector<std::int32_t>& z, std::int64_t b) {
    return std::find(z.begin() + b * len, z.begin() + (b + 1) * len, static_cast<std::int32_t>(mask_id)) != z.begin() + (b + 1) * len;
  };

  SampleStepArgs a;
  a.rows = rows;
  a.vocab = vocab;
  a.len = len;
  a.mask_id = static_cast<std::int32_t>(mask_id);
  a.rng = Philox{cfg.seed};
  a.temperature = cfg.filters.temperature;
  a.top_k = cfg.filters.top_k;
  a.top_p = cfg.filters.top_p;
  MDLM_CHECK(!a.filtered() || vocab <= kMaxFilteredVocab, "top-k/top-p: vocabulary ", vocab, " above ", kMaxFilteredVocab);

  const StepTable<Schedule> plan(sched, sampler, cfg, tc, init, n, len, mask_id);
  const auto n_steps = static_cast<std::int64_t>(plan.steps.size());
  auto dz = upload(ctx, init);
  auto dfixed = upload(ctx, fixed);
  auto dplan = upload(ctx, plan.steps.empty() ? std::vector<StepPlan>(1) : plan.steps);
  auto dsigma_table = upload(ctx, plan.sigma.empty() ? std::vector<float>(1) : plan.sigma);
  auto dsigma = upload(ctx, std::vector<float>(static_cast<std::size_t>(n), 0.0f));
  auto dcounter = upload(ctx, std::vector<int>{0});
  auto dfailed = upload(ctx, std::vector<int>{0});
  a.failed = dfailed.data();
  constexpr bool confidence = std::same_as<S, Confidence>;
  Buffer<std::int32_t, B> dcand(confidence ? rows : 0);
  Buffer<double, B> dconf(confidence ? rows : 0);
  Tape<B, T, G> tape(ctx);
  tape.set_recording(false);
  SampleResult res;

  auto forward_all = [&]() {  // the whole batch at this step's sigma (device-resident inputs)
    tape.reset();
    DiTInputs in{dz.data(), nullptr, n, len, nullptr, true, dsigma.data()};
    return model.forward(tape, store.params(), in);
  };
  auto step_body = [&]() {
    loop_begin_step(ctx, dsigma_table.data(), n, dcounter.data(), dsigma.data());
    Var<T, B> logits = forward_all();
    const MatrixView<const T, B> lv(logits.value);
    if constexpr (confidence) {
      confidence_step(ctx, lv, dz.data(), dfixed.data(), a, sampler.threshold, 1, dcand.data(), dconf.data(), dplan.data(), dcounter.data());
    } else if constexpr (std::same_as<S, FirstHit>) {
      first_hit_step(ctx, lv, dz.data(), a, dplan.data(), dcounter.data());
    } else {
      sample_step(ctx, lv, dz.data(), dfixed.data(), a, nullptr, dplan.data(), dcounter.data());
    }
    loop_advance(ctx, dcounter.data());
  };

  std::vector<std::int32_t> host_z = init;
  if constexpr (S::caches_logits) {
    // eager: evaluate only the sequences that changed, into a device cache of every row's logits
    Buffer<T, B> cache(Shape{rows, vocab});
    auto dchanged = upload(ctx, std::vector<std::uint8_t>(static_cast<std::size_t>(n), 1));
    std::vector<std::uint8_t> dirty(static_cast<std::size_t>(n), 1);
    auto evaluate_into_cache = [&]() {
      std::vector<std::int64_t> which;
      for (std::int64_t b = 0; b < n; ++b)
        if (dirty[static_cast<std::size_t>(b)] && has_mask(host_z, b)) which.push_back(b);
      if (which.empty()) return;
      std::vector<std::int32_t> sub;
      for (std::int64_t b : which) sub.insert(sub.end(), host_z.begin() + b * len, host_z.begin() + (b + 1) * len);
      auto dsub = upload(ctx, sub);
      tape.reset();
      Var<T, B> out = model.forward(tape, store.params(), DiTInputs{dsub.data(), sub.data(), static_cast<std::int64_t>(which.size()), len});
      for (std::size_t j = 0; j < which.size(); ++j) {
        copy(ctx, MatrixView<const T, B>(out.value.data + static_cast<std::int64_t>(j) * len * out.value.ld, len, vocab, out.value.ld),
             MatrixView<T, B>(cache.data() + which[j] * len * vocab, len, vocab));
      }
      ++res.nfe_calls;
      res.nfe_sequences += static_cast<std::int64_t>(which.size());
    };
    const MatrixView<const T, B> cv(cache.data(), rows, vocab);
    for (std::int64_t step = 0; step < n_steps; ++step) {
      evaluate_into_cache();
      fill_zero(ctx, MatrixView<std::uint8_t, B>(dchanged.data(), 1, n));
      SampleStepArgs sa = a;
      sa.step = plan.steps[static_cast<std::size_t>(step)].step;
      sa.p_unmask = plan.steps[static_cast<std::size_t>(step)].p_unmask;
      sample_step(ctx, cv, dz.data(), dfixed.data(), sa, dchanged.data());
      dirty = download(ctx, MatrixView<const std::uint8_t, B>(dchanged.data(), 1, n));
      host_z = download(ctx, MatrixView<const std::int32_t, B>(dz.data(), 1, rows));
    }
    if (cfg.noise_removal && std::find(host_z.begin(), host_z.end(), static_cast<std::int32_t>(mask_id)) != host_z.end()) {
      evaluate_into_cache();
      argmax_masked(ctx, cv, dz.data(), static_cast<std::int32_t>(mask_id), dfailed.data());
    }
  } else {
    StepReplay<B> replay(ctx, cfg.cuda_graph && n_steps >= 2);
    for (std::int64_t step = 0; step < n_steps; ++step) {
      ++res.nfe_calls;
      res.nfe_sequences += plan.active[static_cast<std::size_t>(step)];
      replay.step(step, step_body, [&] { tape.reset(); }, res);
    }
    host_z = download(ctx, MatrixView<const std::int32_t, B>(dz.data(), 1, rows));
    if (cfg.noise_removal && !std::same_as<S, FirstHit> &&
        std::find(host_z.begin(), host_z.end(), static_cast<std::int32_t>(mask_id)) != host_z.end()) {
      upload_into(ctx, std::vector<float>(static_cast<std::size_t>(n), tc ? static_cast<float>(sched.sigma(cfg.t_min)) : 0.0f).data(), n,
                  dsigma.data());
      Var<T, B> logits = forward_all();
      argmax_masked(ctx, MatrixView<const T, B>(logits.value), dz.data(), static_cast<std::int32_t>(mask_id), dfailed.data());
      ++res.nfe_calls;
      for (std::int64_t b = 0; b < n; ++b) res.nfe_sequences += has_mask(host_z, b);
    }
  }
  MDLM_CHECK(download(ctx, MatrixView<const int, B>(dfailed.data(), 1, 1))[0] == 0,
             "sampler: a position had no finite logit to draw from (the model produced NaN or Inf logits)");
  res.ids = download(ctx, MatrixView<const std::int32_t, B>(dz.data(), 1, rows));
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace mdlm
