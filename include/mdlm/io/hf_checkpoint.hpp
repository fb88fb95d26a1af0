#pragma once
// The official pretrained MDLM checkpoints as published on the Hugging Face hub (e.g.
// kuleshov-group/mdlm-owt): a directory holding
//   config.json        model_type "mdlm", vocab_size, model_length, hidden_dim, cond_dim,
//                      n_blocks, n_heads, dropout, time_conditioning
//   model.safetensors  the backbone under the official names (backbone.vocab_embed.embedding,
//                      backbone.blocks.0.attn_qkv.weight, ...) and the RoPE buffer
//                      backbone.rotary_emb.inv_freq (checked against the rotary base, then unused)
// read into a LoadedCheckpoint (io/checkpoint.hpp) whose EMA and raw weights are both the
// published weights, so it runs through to_backend (io/trained_model.hpp) like a checkpoint of
// ours. The training state records what the published models were trained with: the
// log-linear schedule, sequences of model_length, the mask id vocab_size - 1 (50257 for GPT-2).
// Anything that does not match is an mdlm::Error naming the key or tensor.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mdlm/core/error.hpp"
#include "mdlm/io/checkpoint.hpp"
#include "mdlm/io/safetensors.hpp"
#include "mdlm/nn/dit.hpp"

namespace mdlm {

inline constexpr const char* kHfRotaryBuffer = "backbone.rotary_emb.inv_freq";

// A Hugging Face model directory: one that holds config.json.
inline bool is_hf_model_dir(const std::filesystem::path& dir) {
  return std::filesystem::is_directory(dir) && std::filesystem::exists(dir / "config.json");
}

// The model config of a Hugging Face MDLM config.json (the official architecture otherwise:
// MLP ratio 4, RoPE base 10000, LayerNorm eps 1e-5, frequency embedding 256).
inline DiTConfig hf_model_config(const nlohmann::json& j, const std::string& origin) {
  MDLM_CHECK(j.is_object(), origin, ": not a JSON object");
  auto key = [&](const char* k) -> const nlohmann::json& {
    if (!j.contains(k)) MDLM_FAIL(origin, ": missing key '", k, "'");
    return j.at(k);
  };
  auto integer = [&](const char* k) {
    const nlohmann::json& v = key(k);
    MDLM_CHECK(v.is_number_integer() && v.get<std::int64_t>() > 0, origin, ": key '", k, "' must be a positive integer, got ", v.dump());
    return v.get<std::int64_t>();
  };
  const nlohmann::json& type = key("model_type");
  MDLM_CHECK(type.is_string() && type.get<std::string>() == "mdlm", origin, ": key 'model_type' is ", type.dump(), ", expected \"mdlm\"");
  DiTConfig c;
  c.vocab = integer("vocab_size");
  c.hidden = integer("hidden_dim");
  c.cond_dim = integer("cond_dim");
  c.blocks = integer("n_blocks");
  c.heads = integer("n_heads");
  integer("model_length");
  const nlohmann::json& dropout = key("dropout");
  MDLM_CHECK(dropout.is_number(), origin, ": key 'dropout' must be a number, got ", dropout.dump());
  c.dropout = dropout.get<float>();
  const nlohmann::json& tc = key("time_conditioning");
  MDLM_CHECK(tc.is_boolean(), origin, ": key 'time_conditioning' must be true or false, got ", tc.dump());
  c.time_conditioning = tc.get<bool>();
  c.ar = false;
  try {
    c.validate();
  } catch (const Error& e) {
    MDLM_FAIL(origin, ": ", e.what());
  }
  return c;
}

// Reads a Hugging Face MDLM directory. The tokenizer recorded for sampling is GPT-2's: from the
// directory when it holds GPT-2 tokenizer files (vocab.json + merges.txt, tokenizer.json, or
// encoder.json + vocab.bpe), else `gpt2_dir` (the published model directories carry none;
// data/gpt2 of this repository does).
inline LoadedCheckpoint load_hf_checkpoint(const std::filesystem::path& dir, const std::filesystem::path& gpt2_dir = "data/gpt2") {
  namespace fs = std::filesystem;
  const bool own_vocab = (fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt")) || fs::exists(dir / "tokenizer.json") ||
                         (fs::exists(dir / "encoder.json") && fs::exists(dir / "vocab.bpe"));
  const std::string tokenizer = "gpt2:" + (own_vocab ? dir : gpt2_dir).string();
  const std::filesystem::path config_path = dir / "config.json";
  std::ifstream in(config_path);
  MDLM_CHECK(in.good(), "cannot open '", config_path.string(), "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    MDLM_FAIL(config_path.string(), ": invalid JSON (", e.what(), ")");
  }
  LoadedCheckpoint c;
  c.model = hf_model_config(j, config_path.string());
  c.training_state = {{"objective", "mdlm"},          {"schedule", {{"name", "loglinear"}}},
                      {"seq_len", j.at("model_length")}, {"style", "wrap"},
                      {"mask_id", c.model.vocab - 1},   {"tokenizer", tokenizer},
                      {"origin", "huggingface"}};

  const SafeTensors f = SafeTensors::read(dir / "model.safetensors");
  const DiT model(c.model);
  const ParamLayout& layout = model.layout();
  c.tensors.master.assign(static_cast<std::size_t>(layout.buffer_elements()), 0.0f);
  for (const ParamSpec& s : layout.specs()) {
    const std::string name = "backbone." + s.name;
    if (!f.contains(name)) MDLM_FAIL(f.origin(), ": missing tensor '", name, "'");
    const std::vector<float> v = f.get<float>(name, s.shape);
    std::copy(v.begin(), v.end(), c.tensors.master.begin() + s.offset);
  }
  // The RoPE buffer: inv_freq[i] = base^(-2i / head_dim), stored in fp32.
  if (!f.contains(kHfRotaryBuffer)) MDLM_FAIL(f.origin(), ": missing tensor '", kHfRotaryBuffer, "'");
  const std::int64_t half = c.model.head_dim() / 2;
  const std::vector<double> inv_freq = f.get<double>(kHfRotaryBuffer, {half});
  for (std::int64_t i = 0; i < half; ++i) {
    const double want = std::pow(c.model.rope_base, -2.0 * static_cast<double>(i) / static_cast<double>(c.model.head_dim()));
    MDLM_CHECK(std::abs(inv_freq[static_cast<std::size_t>(i)] - want) <= 1e-6 * want, f.origin(), ": tensor '", kHfRotaryBuffer,
               "'[", i, "] = ", inv_freq[static_cast<std::size_t>(i)], ", expected ", want, " (RoPE base ", c.model.rope_base, ")");
  }
  for (const std::string& name : f.names()) {  // nothing the model would silently ignore
    const bool known = name == kHfRotaryBuffer || (name.rfind("backbone.", 0) == 0 && layout.find(name.substr(9)) >= 0);
    MDLM_CHECK(known, f.origin(), ": unexpected tensor '", name, "' (not part of an MDLM backbone of this config)");
  }
  c.tensors.ema = c.tensors.master;
  return c;
}

}  // namespace mdlm
