#pragma once
// A trained model ready to run on any backend: a checkpoint's backbone with its weights in a
// ParamStore<B, T> (on the GPU for Cuda; bf16 values rounded from the fp32 checkpoint, compute
// in fp32), and the run's training state (schedule, sequence length, tokenizer, mask id).
// Evaluation, sampling and the examples load checkpoints through this one place:
//
//   LoadedCheckpoint c = read_checkpoint("out/run");   // or a Hugging Face MDLM directory
//   TrainedModel<Cuda, bf16> m = to_backend<bf16>(ctx, c);     // or <float> on Host
//   evaluate(ctx, objective, m.model, m.store.params(), ...);  // sample_batched(ctx, m.model, m.store, ...)

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "mdlm/core/bf16.hpp"
#include "mdlm/io/checkpoint.hpp"
#include "mdlm/io/hf_checkpoint.hpp"
#include "mdlm/nn/dit.hpp"
#include "mdlm/nn/params.hpp"

namespace mdlm {

// Which weights of a checkpoint run: the EMA weights (what validation uses) or the raw ones.
enum class CheckpointWeights { Ema, Raw };

// A checkpoint file as given, or checkpoint.safetensors inside a run directory.
inline std::filesystem::path checkpoint_file(const std::filesystem::path& dir_or_file) {
  return std::filesystem::is_directory(dir_or_file) ? dir_or_file / "checkpoint.safetensors" : dir_or_file;
}

// The weights and training state of a run directory or checkpoint file of ours, or of a
// Hugging Face MDLM directory (config.json + model.safetensors; io/hf_checkpoint.hpp).
inline LoadedCheckpoint read_checkpoint(const std::filesystem::path& path) {
  if (is_hf_model_dir(path)) return load_hf_checkpoint(path);
  return load_checkpoint(checkpoint_file(path), /*with_optimizer=*/false);
}

// Gradients of a model that only runs forward: fp32 for bf16 values, else T.
template <class T>
using trained_grad_t = std::conditional_t<std::is_same_v<T, bf16>, float, T>;

template <class B, class T = float>
struct TrainedModel {
  DiT model;
  ParamStore<B, T, trained_grad_t<T>> store;
  nlohmann::json training_state;  // the run's record: "schedule", "seq_len", "tokenizer", "mask_id", ...

  const DiTConfig& config() const { return model.config(); }
  std::int64_t mask_id() const { return recorded_mask_id(training_state, model.config()); }
  std::string tokenizer() const { return recorded_tokenizer(training_state); }
};

// The checkpoint's EMA (or raw) weights as a model on backend B with values of type T.
template <class T = float, class B>
TrainedModel<B, T> to_backend(B& ctx, const LoadedCheckpoint& c, CheckpointWeights which = CheckpointWeights::Ema) {
  DiT model(c.model);
  ParamStore<B, T, trained_grad_t<T>> store(model.layout());
  TrainedModel<B, T> m{std::move(model), std::move(store), c.training_state};
  const std::vector<float>& weights = which == CheckpointWeights::Ema ? c.tensors.ema : c.tensors.master;
  const std::int64_t n = m.model.layout().buffer_elements();
  MDLM_CHECK(static_cast<std::int64_t>(weights.size()) == n, "checkpoint: ",
             which == CheckpointWeights::Ema ? "EMA" : "raw", " weights hold ", weights.size(), " values for a model of ", n);
  if constexpr (std::is_same_v<T, float>) {
    upload_into(ctx, weights.data(), n, m.store.values().data());
  } else {
    const std::vector<T> values = cast_vector<T>(weights);
    upload_into(ctx, values.data(), n, m.store.values().data());
  }
  return m;
}

// Reads a checkpoint (read_checkpoint: a file, a run directory or a Hugging Face directory) and
// puts its EMA (or raw) weights on B as T.
template <class T = float, class B>
TrainedModel<B, T> load_trained_model(B& ctx, const std::filesystem::path& path, CheckpointWeights which = CheckpointWeights::Ema) {
  return to_backend<T>(ctx, read_checkpoint(path), which);
}

// Keeps tokens the training data never contained out of samples: the trainer records them as
// "unseen_ids"; their output bias is lowered by 1e4 in both weight sets, which leaves every
// other token's probability as the renormalized rest. A checkpoint without the record is unchanged.
inline void lower_unseen_token_bias(LoadedCheckpoint& c) {
  if (!c.training_state.contains("unseen_ids")) return;
  const DiT model(c.model);
  const int i = model.layout().find("output_layer.linear.bias");
  MDLM_CHECK(i >= 0, "checkpoint: the model has no output_layer.linear.bias");
  const ParamSpec& bias = model.layout().spec(i);
  for (std::int32_t id : c.training_state.at("unseen_ids").get<std::vector<std::int32_t>>()) {
    MDLM_CHECK(id >= 0 && id < bias.numel, "checkpoint: unseen id ", id, " outside the vocabulary");
    for (std::vector<float>* w : {&c.tensors.master, &c.tensors.ema}) {
      if (!w->empty()) (*w)[static_cast<std::size_t>(bias.offset + id)] -= 1e4f;
    }
  }
}

}  // namespace mdlm
