#pragma once
// Runs a golden fixture through the library — forward, SUBS/AR loss, backward — on the Host
// backend in fp64 or fp32 and reports, for every output and gradient, the max absolute error
// and the max error relative to the reference tensor's largest magnitude.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

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

// T = double or float on the Host backend.
template <class T>
GoldenReport check_golden(const GoldenFixture& g) {
  DiT model(g.model);
  ParamStore<Host, T> store(model.layout());
  load_params(store, g.file);
  Host host;
  Tape<Host, T> tape(host);
  auto p = store.params();
  const auto& ids = g.model_input();
  Var<T, Host> logits = model.forward(tape, p, DiTInputs{ids.data(), ids.data(), g.batch, g.seq_len, g.sigma.data()});
  GoldenReport rep;
  const std::int64_t n = g.batch * g.seq_len, vocab = g.model.vocab;
  rep.tensors.push_back(detail::compare("outputs.logits", logits.value.data, n, vocab, logits.value.ld,
                                        g.file.get<double>("outputs.logits", {g.batch, g.seq_len, vocab})));

  std::vector<double> mask = g.loss_mask.empty() ? std::vector<double>(static_cast<std::size_t>(n), 1.0) : g.loss_mask;
  SubsTargets targets;
  if (g.model.ar) {
    targets = ar_targets(g.x0, mask, g.seq_len);
  } else {
    MDLM_CHECK(g.mask_id.has_value(), g.file.origin(), ": an MDLM fixture needs a mask_id");
    MDLM_CHECK(g.config.value("schedule", std::string("loglinear")) == "loglinear", g.file.origin(),
               ": schedule '", g.config.value("schedule", std::string()), "' is not supported by check-fixture");
    MDLM_CHECK(g.t.size() == static_cast<std::size_t>(g.batch), g.file.origin(), ": inputs.t is needed for the loss");
    LogLinearSchedule sched{g.config.value("eps", 1e-3)};
    std::vector<double> w(g.t.size());
    for (std::size_t b = 0; b < w.size(); ++b) w[b] = sched.loss_weight(g.t[b]);
    targets = SubsTargets::make(g.x0, g.zt, mask, w, g.seq_len, *g.mask_id);
    if (g.file.contains("outputs.log_probs")) {
      std::vector<T> lp(static_cast<std::size_t>(n * vocab));
      subs_log_probs(host, MatrixView<const T, Host>(logits.value), g.zt.data(), *g.mask_id,
                     MatrixView<T, Host>(lp.data(), n, vocab));
      rep.tensors.push_back(detail::compare("outputs.log_probs", lp.data(), n, vocab, vocab,
                                            g.file.get<double>("outputs.log_probs", {g.batch, g.seq_len, vocab})));
    }
  }
  Var<T, Host> loss = CrossEntropyOp<Host, T>::forward(tape, logits, targets.rows());
  rep.tensors.push_back(detail::compare("outputs.loss", loss.value.data, 1, 1, 1, g.file.get<double>("outputs.loss")));
  const T one = 1;
  tape.backward(loss, MatrixView<const T, Host>(&one, 1, 1));
  for (const ParamSpec& s : model.layout().specs()) {
    const std::string name = "grads.backbone." + s.name;
    if (!g.file.contains(name)) continue;
    auto grad = store.grad(s.name);
    rep.tensors.push_back(detail::compare(name, grad.data, grad.rows, grad.cols, grad.ld, g.file.get<double>(name, s.shape)));
  }
  return rep;
}

}  // namespace mdlm
