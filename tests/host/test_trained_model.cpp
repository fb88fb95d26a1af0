// Checkpoints loaded into a model on a backend (io/trained_model.hpp): which weights, the dtype
// they become, the recorded data facts, the bias that keeps unseen tokens out of samples, and
// Hugging Face model directories (io/hf_checkpoint.hpp).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "../common/reference.hpp"
#include "mdlm/mdlm.hpp"

using namespace mdlm;
namespace fs = std::filesystem;

namespace {

// A checkpoint of a small model whose raw and EMA weights differ everywhere.
LoadedCheckpoint small_checkpoint(const nlohmann::json& state) {
  LoadedCheckpoint c;
  c.model = mdlm::testing::small_dit(30, 8, 2, 1, 4);
  c.training_state = state;
  const DiT model(c.model);
  const ParamLayout& l = model.layout();
  c.tensors.master.assign(static_cast<std::size_t>(l.buffer_elements()), 0.0f);
  c.tensors.ema = c.tensors.master;
  for (const ParamSpec& s : l.specs()) {
    for (std::int64_t k = 0; k < s.numel; ++k) {
      const auto i = static_cast<std::size_t>(s.offset + k);
      c.tensors.master[i] = 1.0f + 1e-3f * static_cast<float>(i % 97);
      c.tensors.ema[i] = -c.tensors.master[i];
    }
  }
  return c;
}

float bias_of(const LoadedCheckpoint& c, const std::vector<float>& w, std::int64_t id) {
  const DiT model(c.model);
  return w[static_cast<std::size_t>(model.layout().spec(model.layout().find("output_layer.linear.bias")).offset + id)];
}

}  // namespace

TEST_CASE("trained model: the EMA or raw weights on the backend, bf16 rounded, the recorded data facts") {
  Host host;
  const LoadedCheckpoint c = small_checkpoint({{"mask_id", 7}, {"tokenizer", "gpt2:data/gpt2"}});
  TrainedModel<Host> ema = to_backend(host, c);
  TrainedModel<Host> raw = to_backend(host, c, CheckpointWeights::Raw);
  const auto n = static_cast<std::size_t>(ema.model.layout().buffer_elements());
  CHECK(std::vector<float>(ema.store.values().data(), ema.store.values().data() + n) == c.tensors.ema);
  CHECK(std::vector<float>(raw.store.values().data(), raw.store.values().data() + n) == c.tensors.master);
  TrainedModel<Host, bf16> half = to_backend<bf16>(host, c);
  const std::vector<bf16> want = cast_vector<bf16>(c.tensors.ema);
  std::int64_t rounded = 0;
  for (std::size_t i = 0; i < n; ++i) {
    CHECK(half.store.values().data()[i].bits == want[i].bits);
    rounded += half.store.values().data()[i].to_float() != c.tensors.ema[i];
  }
  // most weights are not representable in bf16: the values really were rounded
  CHECK(rounded > ema.model.layout().parameter_count() / 2);
  CHECK(ema.mask_id() == 7);
  CHECK(ema.tokenizer() == "gpt2:data/gpt2");
  const LoadedCheckpoint old = small_checkpoint(nlohmann::json::object());  // written before these were recorded
  CHECK(old.mask_id() == 29);
  CHECK(old.tokenizer() == "bytes");

  LoadedCheckpoint bad = c;
  bad.tensors.ema.pop_back();
  CHECK_THROWS_WITH_AS(to_backend(host, bad), doctest::Contains("EMA weights hold"), Error);
}

TEST_CASE("trained model: a run directory or file loads the same model; unseen tokens get their bias lowered") {
  const fs::path dir = fs::temp_directory_path() / "mdlm_trained_model_test";
  fs::remove_all(dir);
  fs::create_directories(dir);
  LoadedCheckpoint c = small_checkpoint({{"unseen_ids", {3, 11}}});
  const DiT model(c.model);
  CheckpointTensors t = c.tensors;
  t.m = t.v = t.master;
  save_checkpoint(dir / "checkpoint.safetensors", c.model, model.layout(), t, c.training_state);
  Host host;
  TrainedModel<Host> from_dir = load_trained_model(host, dir);
  TrainedModel<Host> from_file = load_trained_model(host, dir / "checkpoint.safetensors", CheckpointWeights::Raw);
  CHECK(from_dir.store.value("output_layer.linear.bias").data[3] == bias_of(c, c.tensors.ema, 3));
  CHECK(from_file.store.value("output_layer.linear.bias").data[3] == bias_of(c, c.tensors.master, 3));
  CHECK_THROWS_WITH_AS(load_trained_model(host, dir / "nope.safetensors"), doctest::Contains("nope.safetensors"), Error);

  LoadedCheckpoint lowered = c;
  lower_unseen_token_bias(lowered);
  for (std::int64_t id = 0; id < c.model.vocab; ++id) {
    const bool unseen = id == 3 || id == 11;
    for (auto [w, before] : {std::pair{&lowered.tensors.ema, &c.tensors.ema}, std::pair{&lowered.tensors.master, &c.tensors.master}}) {
      CHECK(bias_of(c, *w, id) == (unseen ? bias_of(c, *before, id) - 1e4f : bias_of(c, *before, id)));
    }
  }
  LoadedCheckpoint outside = small_checkpoint({{"unseen_ids", {30}}});
  CHECK_THROWS_WITH_AS(lower_unseen_token_bias(outside), doctest::Contains("unseen id 30 outside the vocabulary"), Error);
  fs::remove_all(dir);
}

namespace {

// A Hugging Face style MDLM directory (config.json + model.safetensors with backbone.* and the
// RoPE buffer) holding a golden fixture's weights; `edit` changes the config or the tensors first.
struct HfDir {
  fs::path dir;
  GoldenFixture g;
  nlohmann::json config;
  std::map<std::string, std::vector<double>> tensors;
  std::map<std::string, std::vector<std::int64_t>> shapes;

  explicit HfDir(const std::string& name)
      : dir(fs::temp_directory_path() / ("mdlm_hf_dir_" + name)), g(GoldenFixture::load(MDLM_TEST_FIXTURES "/mdlm_tiny.safetensors")) {
    config = {{"model_type", "mdlm"},      {"vocab_size", g.model.vocab},   {"model_length", g.seq_len},
              {"hidden_dim", g.model.hidden}, {"cond_dim", g.model.cond_dim}, {"n_blocks", g.model.blocks},
              {"n_heads", g.model.heads},   {"dropout", 0.1},               {"time_conditioning", g.model.time_conditioning}};
    const DiT model(g.model);
    for (const ParamSpec& s : model.layout().specs()) {
      tensors["backbone." + s.name] = g.file.get<double>("backbone." + s.name, s.shape);
      shapes["backbone." + s.name] = s.shape;
    }
    const std::int64_t half = g.model.head_dim() / 2;
    for (std::int64_t i = 0; i < half; ++i) {  // as PyTorch computes it: 1 / base^(2i/d) in fp32
      tensors[kHfRotaryBuffer].push_back(static_cast<float>(1.0 / std::pow(10000.0, 2.0 * static_cast<double>(i) / static_cast<double>(g.model.head_dim()))));
    }
    shapes[kHfRotaryBuffer] = {half};
  }
  fs::path write() const {
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::ofstream(dir / "config.json") << config.dump(2);
    SafeTensorsWriter w;
    for (const auto& [name, v] : tensors) w.add(name, shapes.at(name), v.data(), DType::F32);
    w.write(dir / "model.safetensors");
    return dir;
  }
};

}  // namespace

TEST_CASE("Hugging Face directory: config.json and model.safetensors load as a checkpoint; mismatches name the key or tensor") {
  HfDir hf("ok");
  const fs::path dir = hf.write();
  CHECK(is_hf_model_dir(dir));
  CHECK_FALSE(is_hf_model_dir(dir / "model.safetensors"));
  const LoadedCheckpoint c = read_checkpoint(dir);
  CHECK(c.model.vocab == hf.g.model.vocab);
  CHECK(c.model.hidden == hf.g.model.hidden);
  CHECK(c.model.heads == hf.g.model.heads);
  CHECK(c.model.blocks == hf.g.model.blocks);
  CHECK(c.model.cond_dim == hf.g.model.cond_dim);
  CHECK(c.model.dropout == doctest::Approx(0.1));
  CHECK_FALSE(c.model.ar);
  CHECK(c.mask_id() == hf.g.model.vocab - 1);  // 50257 for the published GPT-2 models
  CHECK(c.tokenizer() == "gpt2:data/gpt2");
  CHECK(c.training_state.at("seq_len") == hf.g.seq_len);
  CHECK(c.training_state.at("schedule").at("name") == "loglinear");
  CHECK(c.tensors.ema == c.tensors.master);
  Host host;
  TrainedModel<Host> m = load_trained_model(host, dir);
  for (const ParamSpec& s : m.model.layout().specs()) {
    const std::vector<double>& want = hf.tensors.at("backbone." + s.name);
    const auto got = m.store.value(s.name);
    for (std::int64_t k = 0; k < s.numel; ++k) REQUIRE(got.data[k] == static_cast<float>(want[static_cast<std::size_t>(k)]));
  }

  auto fails_with = [](HfDir& bad, const std::string& message) {
    CHECK_THROWS_WITH_AS(read_checkpoint(bad.write()), doctest::Contains(message.c_str()), Error);
    fs::remove_all(bad.dir);
  };
  HfDir type("type");
  type.config["model_type"] = "bert";
  fails_with(type, "key 'model_type' is \"bert\", expected \"mdlm\"");
  HfDir key("key");
  key.config.erase("n_heads");
  fails_with(key, "missing key 'n_heads'");
  HfDir negative("negative");
  negative.config["n_blocks"] = -2;
  fails_with(negative, "key 'n_blocks' must be a positive integer, got -2");
  HfDir width("width");
  width.config["hidden_dim"] = 2 * hf.g.model.hidden;
  fails_with(width, "tensor 'backbone.vocab_embed.embedding' has shape");
  HfDir missing("missing");
  missing.tensors.erase("backbone.blocks.1.attn_qkv.weight");
  fails_with(missing, "missing tensor 'backbone.blocks.1.attn_qkv.weight'");
  HfDir rotary("rotary");
  rotary.tensors[kHfRotaryBuffer][1] *= 2;  // another RoPE base
  fails_with(rotary, "tensor 'backbone.rotary_emb.inv_freq'[1]");
  HfDir no_rotary("no_rotary");
  no_rotary.tensors.erase(kHfRotaryBuffer);
  fails_with(no_rotary, "missing tensor 'backbone.rotary_emb.inv_freq'");
  HfDir extra("extra");
  extra.tensors["backbone.blocks.9.norm1.weight"] = {1.0};
  extra.shapes["backbone.blocks.9.norm1.weight"] = {1};
  fails_with(extra, "unexpected tensor 'backbone.blocks.9.norm1.weight'");
  fs::remove_all(dir);
}
