#pragma once
// The ancestral and ReMDM samplers with the whole batch on the GPU: one batched forward pass per
// step, then the fused step kernel (ops/cuda/sample.cuh) reading the logits in place; z stays on
// the device. Same randomness as the Host samplers (Philox keyed by step and position). The
// cached, confidence and first-hit samplers and top-k/top-p filters run through sample() (Host
// draws, any backend's model via model_denoiser).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <vector>

#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/nn/dit.hpp"
#include "mdlm/nn/params.hpp"
#include "mdlm/ops/cuda/sample.cuh"
#include "mdlm/sampling/samplers.hpp"

namespace mdlm {

template <class Schedule, class T, class G>
SampleResult sample_on_device(Cuda& ctx, const DiT& model, ParamStore<Cuda, T, G>& store, std::int64_t mask_id,
                              const Schedule& sched, const SamplerConfig& cfg, std::vector<std::int32_t> init, std::int64_t n,
                              std::int64_t len) {
  const auto t0 = std::chrono::steady_clock::now();
  MDLM_CHECK(cfg.kind == SamplerKind::Ancestral || cfg.kind == SamplerKind::ReMdm,
             "the on-device sampler runs ancestral and remdm; use sample() for the others");
  MDLM_CHECK(cfg.filters.top_k <= 0 && cfg.filters.top_p >= 1, "top-k/top-p are not fused on the device; use sample()");
  MDLM_CHECK(cfg.draw == DrawMode::Exact, "the device step draws exactly; the paper-era fp32 draw runs through sample()");
  const std::int64_t rows = n * len, vocab = model.config().vocab;
  MDLM_CHECK(static_cast<std::int64_t>(init.size()) == rows, "sampler: ", init.size(), " initial tokens for ", n, " x ", len);
  std::vector<std::uint8_t> fixed(init.size());
  for (std::size_t r = 0; r < init.size(); ++r) fixed[r] = init[r] != mask_id;
  auto dz = upload(ctx, init);
  auto dfixed = upload(ctx, fixed);
  auto dchanged = upload(ctx, std::vector<std::uint8_t>(static_cast<std::size_t>(n), 0));
  Tape<Cuda, T, G> tape(ctx);
  tape.set_recording(false);
  SampleResult res;
  std::vector<std::int32_t> host_z = init;
  const double span = cfg.t_max - cfg.t_min;
  auto forward = [&](double t) {
    tape.reset();
    host_z = to_host(ctx, dz.view());
    std::vector<double> sigma(static_cast<std::size_t>(n), model.config().time_conditioning ? sched.sigma(t) : 0.0);
    ++res.nfe_calls;
    res.nfe_sequences += n;
    return model.forward(tape, store.params(), DiTInputs{dz.data(), host_z.data(), n, len, sigma.data()});
  };
  for (std::int64_t step = 0; step < cfg.steps; ++step) {
    const double t = cfg.t_max - span * static_cast<double>(step) / static_cast<double>(cfg.steps);
    const double s = cfg.t_max - span * static_cast<double>(step + 1) / static_cast<double>(cfg.steps);
    Var<T, Cuda> logits = forward(t);
    const double move_t = sched.move_chance(t), move_s = sched.move_chance(s);
    SampleStepArgs a;
    a.rows = rows;
    a.vocab = vocab;
    a.len = len;
    a.mask_id = static_cast<std::int32_t>(mask_id);
    a.rng = Philox{cfg.seed};
    a.step = static_cast<std::uint32_t>(step);
    a.temperature = cfg.filters.temperature;
    a.p_unmask = move_t > 0 ? (move_t - move_s) / move_t : 1.0;
    if (cfg.kind == SamplerKind::ReMdm && step < cfg.steps - 1) {
      const double a_t = 1.0 - move_t, a_s = 1.0 - move_s;
      a.p_remask = a_t > 0 ? std::min(cfg.remdm_eta, move_s / a_t) : 0.0;
      a.p_unmask = move_t > 0 ? std::clamp((a_s - (1.0 - a.p_remask) * a_t) / move_t, 0.0, 1.0) : 1.0;
    }
    sample_step(ctx, MatrixView<const T, Cuda>(logits.value), dz.data(), dfixed.data(), a, dchanged.data());
  }
  host_z = to_host(ctx, dz.view());
  if (cfg.noise_removal && std::find(host_z.begin(), host_z.end(), static_cast<std::int32_t>(mask_id)) != host_z.end()) {
    Var<T, Cuda> logits = forward(cfg.t_min);
    const auto l = download(ctx, MatrixView<const T, Cuda>(logits.value));
    std::vector<double> row(static_cast<std::size_t>(vocab));
    for (std::int64_t r = 0; r < rows; ++r) {
      if (host_z[static_cast<std::size_t>(r)] != mask_id) continue;
      for (std::int64_t v = 0; v < vocab; ++v) row[static_cast<std::size_t>(v)] = v == mask_id ? -INFINITY : static_cast<double>(to_compute(l[static_cast<std::size_t>(r * vocab + v)]));
      host_z[static_cast<std::size_t>(r)] = argmax_with_prob(row).first;
    }
  }
  res.ids = std::move(host_z);
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace mdlm
