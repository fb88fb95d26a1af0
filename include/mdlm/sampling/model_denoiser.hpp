#pragma once
// A trained backbone as a sampler's denoiser: logits of each sequence from its own forward pass
// (batch of one), so a sequence's logits never depend on which other sequences were evaluated
// with it — the cached and uncached samplers see bit-identical p_theta.

#include <cstdint>
#include <vector>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/nn/dit.hpp"
#include "mdlm/nn/params.hpp"
#include "mdlm/sampling/samplers.hpp"

namespace mdlm {

// Satisfies Denoiser on any backend; holds references to the context, model and weights.
template <class B, class T, class G>
struct ModelDenoiser {
  B* ctx;
  const DiT* model;
  ParamStore<B, T, G>* store;
  std::int64_t vocab = 0;
  std::int64_t mask_id = -1;
  bool time_conditioning = false;

  void operator()(const std::vector<std::int32_t>& z, std::int64_t n, std::int64_t len, const std::vector<double>& sigma,
                  std::vector<float>& logits) const {
    logits.resize(static_cast<std::size_t>(n * len * vocab));
    Tape<B, T, G> tape(*ctx);
    tape.set_recording(false);
    for (std::int64_t b = 0; b < n; ++b) {
      tape.reset();
      std::vector<std::int32_t> ids(z.begin() + b * len, z.begin() + (b + 1) * len);
      auto dev = upload(*ctx, ids);
      Var<T, B> out = model->forward(tape, store->params(), DiTInputs{dev.data(), ids.data(), 1, len, &sigma[static_cast<std::size_t>(b)]});
      auto host = download(*ctx, MatrixView<const T, B>(out.value));
      for (std::size_t k = 0; k < host.size(); ++k) logits[static_cast<std::size_t>(b * len * vocab) + k] = static_cast<float>(to_compute(host[k]));
    }
  }
};

template <class B, class T, class G>
ModelDenoiser<B, T, G> model_denoiser(B& ctx, const DiT& model, ParamStore<B, T, G>& store, std::int64_t mask_id) {
  return ModelDenoiser<B, T, G>{&ctx, &model, &store, model.config().vocab, mask_id, model.config().time_conditioning};
}

}  // namespace mdlm
