#pragma once
// Training checkpoints: one safetensors file holding
//   backbone.<name>                     fp32 master weights under the official MDLM names
//   ema.backbone.<name>                 EMA weights
//   optimizer.exp_avg.backbone.<name>   AdamW first moment
//   optimizer.exp_avg_sq.backbone.<name> AdamW second moment
// and metadata: "format" = "mdlm-checkpoint-v1", "config" (the model config in the golden
// fixture's JSON form, so fixture tooling can read it) and "training_state" (step, loader
// position, seeds, the run's configuration, the tokenizer spec). Written to a temporary file and
// renamed, so a crash or a full disk never leaves a broken checkpoint under the final name.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mdlm/io/json_field.hpp"
#include "mdlm/io/safetensors.hpp"
#include "mdlm/nn/dit.hpp"
#include "mdlm/nn/params.hpp"

namespace mdlm {

inline constexpr const char* kCheckpointFormat = "mdlm-checkpoint-v1";

inline nlohmann::json model_config_json(const DiTConfig& c) {
  return {{"vocab_size", c.vocab}, {"hidden", c.hidden},     {"n_heads", c.heads},
          {"n_blocks", c.blocks},  {"cond_dim", c.cond_dim}, {"mlp_ratio", c.mlp_ratio},
          {"freq_dim", c.freq_dim}, {"time_conditioning", c.time_conditioning}, {"causal", c.ar},
          {"layer_norm_eps", c.layer_norm_eps}, {"rope_base", c.rope_base}, {"dropout", c.dropout}};
}

inline DiTConfig model_config_from_json(const nlohmann::json& j, const std::string& origin) {
  try {
    DiTConfig c;
    const std::string where = origin + ": model config";
    c.vocab = json_field<std::int64_t>(j, "vocab_size", where);
    c.hidden = json_field<std::int64_t>(j, "hidden", where);
    c.heads = json_field<std::int64_t>(j, "n_heads", where);
    c.blocks = json_field<std::int64_t>(j, "n_blocks", where);
    c.cond_dim = json_field<std::int64_t>(j, "cond_dim", where);
    c.mlp_ratio = json_field<std::int64_t>(j, "mlp_ratio", where);
    c.freq_dim = json_field<std::int64_t>(j, "freq_dim", where, 256);
    c.time_conditioning = j.at("time_conditioning").get<bool>();
    c.ar = j.at("causal").get<bool>();
    c.layer_norm_eps = json_field<double>(j, "layer_norm_eps", where, 1e-5);
    c.rope_base = json_field<double>(j, "rope_base", where, 10000.0);
    c.dropout = json_field<float>(j, "dropout", where, 0.0f);
    c.validate();
    return c;
  } catch (const nlohmann::json::exception& e) {
    MDLM_FAIL(origin, ": bad model config: ", e.what());
  }
}

// Host copies of the four parameter-shaped buffers (ParamLayout order, with its padding).
struct CheckpointTensors {
  std::vector<float> master, ema, m, v;
};

inline void save_checkpoint(const std::filesystem::path& path, const DiTConfig& model, const ParamLayout& layout,
                            const CheckpointTensors& t, const nlohmann::json& training_state) {
  SafeTensorsWriter w;
  auto add_all = [&](const std::string& prefix, const std::vector<float>& buf) {
    MDLM_CHECK(static_cast<std::int64_t>(buf.size()) == layout.buffer_elements(), "checkpoint: buffer of ", buf.size(),
               " for a layout of ", layout.buffer_elements());
    for (const ParamSpec& s : layout.specs()) w.add(prefix + s.name, s.shape, buf.data() + s.offset);
  };
  add_all("backbone.", t.master);
  add_all("ema.backbone.", t.ema);
  add_all("optimizer.exp_avg.backbone.", t.m);
  add_all("optimizer.exp_avg_sq.backbone.", t.v);
  w.set_metadata("format", kCheckpointFormat);
  w.set_metadata("config", model_config_json(model).dump());
  w.set_metadata("training_state", training_state.dump());
  w.write(path);
}

// What a run records about its data: the mask token (older checkpoints: the last id) and the
// tokenizer spec the data was prepared with (tokenizers/all.hpp, with_tokenizer).
inline std::int64_t recorded_mask_id(const nlohmann::json& training_state, const DiTConfig& model) {
  return training_state.value("mask_id", model.vocab - 1);
}
inline std::string recorded_tokenizer(const nlohmann::json& training_state) {
  return training_state.value("tokenizer", std::string("bytes"));
}

struct LoadedCheckpoint {
  DiTConfig model;
  nlohmann::json training_state;
  CheckpointTensors tensors;
  std::int64_t mask_id() const { return recorded_mask_id(training_state, model); }
  std::string tokenizer() const { return recorded_tokenizer(training_state); }
};

// A checkpoint from a parsed safetensors file; `origin` names it in errors (the file's path).
// Every tensor is checked for presence and shape (mdlm::Error otherwise) before any buffer is
// allocated, so a config that claims a huge model cannot allocate more than the file holds.
// `with_optimizer` false reads only the weights (backbone and EMA).
inline LoadedCheckpoint parse_checkpoint(const SafeTensors& f, const std::string& origin, bool with_optimizer = true) {
  auto meta = [&](const char* key) {
    auto it = f.metadata().find(key);
    if (it == f.metadata().end()) MDLM_FAIL(origin, ": no '", key, "' metadata: not an mdlm checkpoint");
    return it->second;
  };
  if (meta("format") != kCheckpointFormat) MDLM_FAIL(origin, ": format '", meta("format"), "', expected ", kCheckpointFormat);
  LoadedCheckpoint c;
  try {
    c.model = model_config_from_json(nlohmann::json::parse(meta("config")), origin);
    c.training_state = nlohmann::json::parse(meta("training_state"));
  } catch (const nlohmann::json::exception& e) {
    MDLM_FAIL(origin, ": corrupt metadata: ", e.what());
  }
  // Each block has tensors of its own: more blocks than tensors cannot match (and building the
  // layout of a config claiming billions of blocks would not finish).
  if (c.model.blocks > static_cast<std::int64_t>(f.names().size())) {
    MDLM_FAIL(origin, ": the config says ", c.model.blocks, " blocks but the file holds only ", f.names().size(), " tensors");
  }
  DiT model(c.model);
  const ParamLayout& layout = model.layout();
  std::vector<std::string> prefixes{"backbone.", "ema.backbone."};
  if (with_optimizer) prefixes.insert(prefixes.end(), {"optimizer.exp_avg.backbone.", "optimizer.exp_avg_sq.backbone."});
  for (const std::string& prefix : prefixes) {
    for (const ParamSpec& s : layout.specs()) {
      const std::string name = prefix + s.name;
      if (!f.contains(name)) MDLM_FAIL(origin, ": missing tensor '", name, "'");
      if (f.info(name).shape != s.shape) {
        MDLM_FAIL(origin, ": tensor '", name, "' has shape ", SafeTensors::shape_str(f.info(name).shape), ", the config needs ",
                  SafeTensors::shape_str(s.shape));
      }
    }
  }
  auto read_all = [&](const std::string& prefix, std::vector<float>& buf) {
    buf.assign(static_cast<std::size_t>(layout.buffer_elements()), 0.0f);
    for (const ParamSpec& s : layout.specs()) {
      auto v = f.get<float>(prefix + s.name, s.shape);
      std::copy(v.begin(), v.end(), buf.begin() + s.offset);
    }
  };
  read_all("backbone.", c.tensors.master);
  read_all("ema.backbone.", c.tensors.ema);
  if (with_optimizer) {
    read_all("optimizer.exp_avg.backbone.", c.tensors.m);
    read_all("optimizer.exp_avg_sq.backbone.", c.tensors.v);
  }
  return c;
}

// Reads a checkpoint file (see parse_checkpoint).
inline LoadedCheckpoint load_checkpoint(const std::filesystem::path& path, bool with_optimizer = true) {
  return parse_checkpoint(SafeTensors::read(path), path.string(), with_optimizer);
}

}  // namespace mdlm
