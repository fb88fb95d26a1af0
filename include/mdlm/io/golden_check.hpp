#pragma once
// Runs a golden fixture through the library — forward, SUBS/AR loss, backward — on the Host
// backend in fp64 or fp32 and reports, for every output and gradient, the max absolute error
// and the max error relative to the reference tensor's largest magnitude.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "mdlm/diffusion/masked_diffusion.hpp"
#include "mdlm/diffusion/schedule.hpp"
#include "mdlm/diffusion/subs_loss.hpp"
#include "mdlm/io/golden.hpp"
#include "mdlm/nn/dit.hpp"

namespace mdlm {

struct TensorError {
  std::string name;
  double max_abs = 0;
  double max_rel = 0;  // max_abs / max |reference|
  std::int64_t numel = 0;
};

struct GoldenReport {
  std::vector<TensorError> tensors;
  double worst_rel() const {
    double w = 0;
    for (const auto& t : tensors) w = std::max(w, t.max_rel);
    return w;
  }
};

namespace detail {
template <class T>
TensorError compare(const std::string& name, const T* got, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                    const std::vector<double>& want) {
  MDLM_CHECK(static_cast<std::int64_t>(want.size()) == rows * cols, "reference '", name, "' has ", want.size(),
             " elements, computed ", rows * cols);
  TensorError e{name, 0, 0, rows * cols};
  double scale = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const double w = want[static_cast<std::size_t>(r * cols + c)];
      const double g = static_cast<double>(got[r * ld + c]);
      e.max_abs = std::max(e.max_abs, std::isnan(g) ? INFINITY : std::abs(g - w));
      scale = std::max(scale, std::abs(w));
    }
  }
  e.max_rel = scale > 0 ? e.max_abs / scale : e.max_abs;
  return e;
}
}  // namespace detail

// Calls f(schedule) with the schedule a fixture config names ("schedule", with "eps",
// "sigma_min", "sigma_max", "w" where the schedule has them).
template <class F>
void with_schedule(const nlohmann::json& cfg, const std::string& origin, F&& f) {
  const std::string name = cfg.value("schedule", std::string("loglinear"));
  if (name == "loglinear") f(LogLinearSchedule{cfg.value("eps", 1e-3)});
  else if (name == "cosine") f(CosineSchedule{cfg.value("eps", 1e-3)});
  else if (name == "linear") f(LinearSchedule{cfg.value("sigma_min", 0.0), cfg.value("sigma_max", 10.0)});
  else if (name == "geometric") f(GeometricSchedule{cfg.value("sigma_min", 1e-3), cfg.value("sigma_max", 1.0)});
  else if (name == "polynomial") f(PolynomialSchedule{cfg.value("w", 1.0), cfg.value("eps", 1e-3)});
  else MDLM_FAIL(origin, ": unknown schedule '", name, "'");
}

// trim_head: run the output head only on the rows that carry loss (the default in training).
template <class B, class T, class G = T>
GoldenReport check_golden(B& ctx, const GoldenFixture& g, bool trim_head = true) {
  DiT model(g.model);
  const ParamLayout& layout = model.layout();
  ParamStore<B, T, G> store(layout);
  {  // parameters: fixture (fp64) -> T on the host -> the backend's parameter buffer
    std::vector<T> host(static_cast<std::size_t>(layout.buffer_elements()), from_compute<T>(0));
    for (const ParamSpec& s : layout.specs()) {
      const std::string name = "backbone." + s.name;
      if (!g.file.contains(name)) MDLM_FAIL(g.file.origin(), ": missing parameter '", name, "'");
      auto v = cast_vector<T>(g.file.get<double>(name, s.shape));
      std::copy(v.begin(), v.end(), host.begin() + s.offset);
    }
    upload_into(ctx, host.data(), layout.buffer_elements(), store.values().data());
  }
  const auto& ids = g.model_input();
  GoldenReport rep;
  const std::int64_t n = g.batch * g.seq_len, vocab = g.model.vocab;
  std::vector<double> got_logits;
  {  // logits of the whole batch (a forward-only pass)
    Tape<B, T, G> tape(ctx);
    tape.set_recording(false);
    auto dev_ids = upload(ctx, ids);
    Var<T, B> logits =
        model.forward(tape, store.params(), DiTInputs{dev_ids.data(), ids.data(), g.batch, g.seq_len, g.sigma.data()});
    got_logits = cast_vector<double>(download(ctx, MatrixView<const T, B>(logits.value)));
  }
  rep.tensors.push_back(detail::compare("outputs.logits", got_logits.data(), n, vocab, vocab,
                                        g.file.get<double>("outputs.logits", {g.batch, g.seq_len, vocab})));

  // The loss through the library's objectives, on the fixture's t and z_t.
  Tape<B, T, G> tape(ctx);
  TokenBatch batch{g.x0.data(), g.batch, g.seq_len, g.loss_mask.empty() ? nullptr : g.loss_mask.data()};
  LossOutput<B, T> out;
  if (g.model.ar) {
    out = Autoregressive{}.loss(tape, model, store.params(), batch);
  } else {
    MDLM_CHECK(g.mask_id.has_value(), g.file.origin(), ": an MDLM fixture needs a mask_id");
    MDLM_CHECK(g.t.size() == static_cast<std::size_t>(g.batch), g.file.origin(), ": inputs.t is needed for the loss");
    DiffusionOptions opt;
    opt.mask_id = *g.mask_id;
    opt.trim_head = trim_head;
    opt.discrete_steps = g.config.value("T", 0);
    with_schedule(g.config, g.file.origin(), [&](auto schedule) {
      MaskedDiffusion<decltype(schedule)> objective(schedule, opt);
      out = objective.loss_at(tape, model, store.params(), batch, g.t, g.zt);
    });
    if (g.model.time_conditioning && !g.sigma.empty()) {  // the objective's sigma(t) must be the fixture's
      rep.tensors.push_back(detail::compare("inputs.sigma", out.sigma.data(), g.batch, 1, 1, g.sigma));
    }
    if (g.file.contains("outputs.log_probs")) {  // from the downloaded logits, in fp64 on the host
      std::vector<double> lp(static_cast<std::size_t>(n * vocab));
      subs_log_probs(Host{}, MatrixView<const double, Host>(got_logits.data(), n, vocab), g.zt.data(), *g.mask_id,
                     MatrixView<double, Host>(lp.data(), n, vocab));
      rep.tensors.push_back(detail::compare("outputs.log_probs", lp.data(), n, vocab, vocab,
                                            g.file.get<double>("outputs.log_probs", {g.batch, g.seq_len, vocab})));
    }
  }
  const std::vector<double> got_loss = cast_vector<double>(download(ctx, MatrixView<const T, B>(out.loss.value)));
  rep.tensors.push_back(detail::compare("outputs.loss", got_loss.data(), 1, 1, 1, g.file.get<double>("outputs.loss")));
  auto one = upload(ctx, std::vector<T>{from_compute<T>(1)});
  tape.backward(out.loss, MatrixView<const T, B>(one.data(), 1, 1));
  for (const ParamSpec& s : layout.specs()) {
    const std::string name = "grads.backbone." + s.name;
    if (!g.file.contains(name)) continue;
    const auto grad = cast_vector<double>(download(ctx, MatrixView<const G, B>(store.grad(s.name))));
    rep.tensors.push_back(detail::compare(name, grad.data(), s.rows(), s.cols(), s.cols(), g.file.get<double>(name, s.shape)));
  }
  return rep;
}

}  // namespace mdlm
