#pragma once
// Golden fixtures (DESIGN §6): safetensors files from an independent fp64 PyTorch reference,
// holding parameters under official names (prefix "backbone."), inputs (inputs.x0, inputs.zt,
// inputs.t, inputs.sigma, inputs.loss_mask), outputs (outputs.logits, outputs.log_probs,
// outputs.loss), gradients (grads.backbone.<name>) and the JSON config in metadata "config".
// Every size is read from the config, so fixtures of other shapes work the same way.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mdlm/io/json_field.hpp"
#include "mdlm/io/safetensors.hpp"
#include "mdlm/nn/dit.hpp"

namespace mdlm {

// The model of a golden-format config, the keys the golden fixtures and the training
// trajectories (io/trajectory.hpp) share: vocab_size, hidden, n_heads, n_blocks, cond_dim,
// mlp_ratio, time_conditioning, causal, layer_norm_eps, rope_base and an optional dropout.
// `at(key)` returns the key's JSON value (throwing, or noting the key, as its caller needs).
template <class At>
DiTConfig fixture_model_config(const nlohmann::json& config, At&& at) {
  DiTConfig m;
  auto integer = [&](const char* k) { return json_number<std::int64_t>(at(k), std::string("config '") + k + "'"); };
  auto number = [&](const char* k) { return json_number<double>(at(k), std::string("config '") + k + "'"); };
  m.vocab = integer("vocab_size");
  m.hidden = integer("hidden");
  m.heads = integer("n_heads");
  m.blocks = integer("n_blocks");
  m.cond_dim = integer("cond_dim");
  m.mlp_ratio = integer("mlp_ratio");
  m.time_conditioning = at("time_conditioning").template get<bool>();
  m.ar = at("causal").template get<bool>();
  m.layer_norm_eps = number("layer_norm_eps");
  m.rope_base = number("rope_base");
  m.dropout = static_cast<float>(config.value("dropout", 0.0));
  return m;
}

struct GoldenFixture {
  SafeTensors file;
  nlohmann::json config;
  DiTConfig model;
  std::int64_t batch = 0, seq_len = 0;
  std::optional<std::int64_t> mask_id;
  std::string loss;  // e.g. "mdlm_continuous_nelbo_token_mean", "ar_token_mean_nll"
  std::vector<std::int32_t> x0, zt;
  std::vector<double> t, sigma, loss_mask;

  static GoldenFixture load(const std::string& path) {
    GoldenFixture g{SafeTensors::read(path), {}, {}, 0, 0, std::nullopt, {}, {}, {}, {}, {}, {}};
    auto it = g.file.metadata().find("config");
    if (it == g.file.metadata().end()) MDLM_FAIL(path, ": no 'config' entry in the safetensors metadata");
    try {
      g.config = nlohmann::json::parse(it->second);
      auto get_int = [&](const char* k) { return json_field<std::int64_t>(g.config, k, path + ": config"); };
      g.model = fixture_model_config(g.config, [&](const char* k) -> const nlohmann::json& { return g.config.at(k); });
      g.batch = get_int("batch");
      g.seq_len = get_int("seq_len");
      if (g.config.contains("mask_id") && !g.config.at("mask_id").is_null()) g.mask_id = get_int("mask_id");
      g.loss = g.config.value("loss", std::string());
    } catch (const nlohmann::json::exception& e) {
      MDLM_FAIL(path, ": bad fixture config: ", e.what());
    }
    g.model.validate();
    const std::vector<std::int64_t> bt{g.batch, g.seq_len}, b{g.batch};
    g.x0 = g.file.get<std::int32_t>("inputs.x0", bt);
    g.zt = g.file.get<std::int32_t>("inputs.zt", bt);
    if (g.file.contains("inputs.t")) g.t = g.file.get<double>("inputs.t", b);
    if (g.file.contains("inputs.sigma")) g.sigma = g.file.get<double>("inputs.sigma", b);
    if (g.file.contains("inputs.loss_mask")) g.loss_mask = g.file.get<double>("inputs.loss_mask", bt);
    return g;
  }

  // The tokens the backbone reads: z_t for MDLM, x for the AR model.
  const std::vector<std::int32_t>& model_input() const { return model.ar ? x0 : zt; }
};

}  // namespace mdlm
