// The training system: token shards, batching and the loader, learning-rate schedules, AdamW and
// EMA, checkpoints (atomic, loadable by name, corrupt files rejected), and the trainer's exact
// resume and NaN stop.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "../common/reference.hpp"
#include "../common/training.hpp"
#include "mdlm/mdlm.hpp"

using namespace mdlm;
namespace fs = std::filesystem;

using mdlm::testing::read_bytes;
using mdlm::testing::small_corpus;
using mdlm::testing::temp_dir;
using mdlm::testing::tiny_run;
using mdlm::testing::write_bytes;

TEST_CASE("shards: round trip in uint16 and uint32, validation of header and ids") {
  const fs::path d = temp_dir("shards");
  std::vector<std::vector<std::int32_t>> docs{{1, 2, 3}, {4}, {}};
  write_shard(d / "a.bin", docs, 300, 299);
  Shard a = Shard::read(d / "a.bin");
  CHECK(a.header.width == 2);
  CHECK(a.header.documents == 3);
  CHECK(a.tokens == std::vector<std::int32_t>{1, 2, 3, 299, 4, 299, 299});
  write_shard(d / "b.bin", docs, 70000, 69999);
  Shard b = Shard::read(d / "b.bin");
  CHECK(b.header.width == 4);
  CHECK(b.tokens.back() == 69999);
  CHECK_THROWS_WITH_AS(write_shard(d / "c.bin", {{5, 400}}, 300, 299), doctest::Contains("token id 400 outside"), Error);

  const std::string bytes = read_bytes(d / "a.bin");
  write_bytes(d / "trunc.bin", bytes.substr(0, bytes.size() - 1));
  CHECK_THROWS_WITH_AS(Shard::read(d / "trunc.bin"), doctest::Contains("trunc.bin: header says 7 tokens"), Error);
  write_bytes(d / "short.bin", bytes.substr(0, 10));
  CHECK_THROWS_WITH_AS(Shard::read(d / "short.bin"), doctest::Contains("too short for a shard header"), Error);
  std::string magic = bytes;
  magic[0] = 'X';
  write_bytes(d / "magic.bin", magic);
  CHECK_THROWS_WITH_AS(Shard::read(d / "magic.bin"), doctest::Contains("bad magic"), Error);
  std::string oob = bytes;
  oob[64] = '\xff';
  oob[65] = '\x7f';  // token 0 = 32767 >= 300
  write_bytes(d / "oob.bin", oob);
  CHECK_THROWS_WITH_AS(Shard::read(d / "oob.bin"), doctest::Contains("token 0 = 32767 is outside the vocabulary of 300"), Error);
  std::string ver = bytes;
  ver[8] = 9;
  write_bytes(d / "ver.bin", ver);
  CHECK_THROWS_WITH_AS(Shard::read(d / "ver.bin"), doctest::Contains("shard version 9"), Error);
  // A count whose byte size wraps around 2^64 (2^63 + 7 tokens of 2 bytes = 14 bytes mod 2^64):
  // before the check divided, this header matched the 78-byte file and resize(2^63 + 7) threw
  // std::length_error instead of mdlm::Error.
  std::string wrap = bytes;
  const std::uint64_t count = (1ULL << 63) + 7;
  std::memcpy(wrap.data() + 16, &count, sizeof count);
  CHECK_THROWS_WITH_AS(Shard::parse(wrap, "wrap.bin"), doctest::Contains("wrap.bin: header says 9223372036854775815 tokens"),
                       Error);
}

TEST_CASE("batching: wrap frames chunks of L-2 with BOS/EOS; pad pads documents and masks PAD") {
  const fs::path d = temp_dir("batching");
  write_shard(d / "s.bin", {{10, 11, 12, 13, 14}, {20, 21}}, 100, 99);
  Shard s = Shard::read(d / "s.bin");
  SpecialTokens sp{97, 99, 98, 96, -1};
  SequenceSet wrap(s, BatchStyle::Wrap, 5, sp);  // chunks of 3 from 9 tokens
  CHECK(wrap.size() == 3);
  std::vector<std::int32_t> ids(5);
  std::vector<double> mask(5);
  wrap.get(1, ids.data(), mask.data());
  CHECK(ids == std::vector<std::int32_t>{97, 13, 14, 99, 99});
  CHECK(mask == std::vector<double>{1, 1, 1, 1, 1});
  SequenceSet pad(s, BatchStyle::Pad, 6, sp);
  CHECK(pad.size() == 2);
  ids.resize(6);
  mask.resize(6);
  pad.get(1, ids.data(), mask.data());
  CHECK(ids == std::vector<std::int32_t>{97, 20, 21, 99, 98, 98});
  CHECK(mask == std::vector<double>{1, 1, 1, 1, 0, 0});
  pad.get(0, ids.data(), mask.data());  // truncated to L - 2
  CHECK(ids == std::vector<std::int32_t>{97, 10, 11, 12, 13, 99});
}

TEST_CASE("loader: each epoch is a permutation; a saved position replays the same batches") {
  const fs::path d = temp_dir("loader");
  std::vector<std::vector<std::int32_t>> docs;
  for (int i = 0; i < 10; ++i) docs.push_back({i});
  write_shard(d / "s.bin", docs, 50, 49);
  Shard s = Shard::read(d / "s.bin");
  SequenceSet set(s, BatchStyle::Pad, 3, SpecialTokens{48, 49, 47, 46, -1});
  Loader a(set, 7);
  std::vector<std::int32_t> ids;
  std::vector<double> mask;
  std::multiset<std::int32_t> seen;
  for (int k = 0; k < 5; ++k) {
    a.next(2, ids, mask);
    seen.insert(ids[1]);
    seen.insert(ids[4]);
  }
  CHECK(seen == std::multiset<std::int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  a.next(3, ids, mask);  // into epoch 1
  const LoaderPosition pos = a.position();
  CHECK(pos.epoch == 1);
  std::vector<std::int32_t> expect;
  a.next(4, expect, mask);
  Loader b(set, 7);
  b.set_position(pos);
  b.next(4, ids, mask);
  CHECK(ids == expect);
}

TEST_CASE("data-parallel reading: the ranks' slices of every global batch are the one-process batch, no sequence twice in an epoch") {
  const fs::path d = temp_dir("loader_slices");
  std::vector<std::vector<std::int32_t>> docs;
  for (int i = 0; i < 13; ++i) docs.push_back({i});  // 13 sequences: epochs end inside global batches of 5
  write_shard(d / "s.bin", docs, 50, 49);
  Shard s = Shard::read(d / "s.bin");
  SequenceSet set(s, BatchStyle::Pad, 3, SpecialTokens{48, 49, 47, 46, -1});
  const std::int64_t batch = 5, steps = 6;
  std::vector<std::int32_t> ids, one_process;
  std::vector<double> mask;
  Loader single(set, 11);
  for (std::int64_t k = 0; k < steps; ++k) {
    single.next(batch, ids, mask);
    for (std::int64_t b = 0; b < batch; ++b) one_process.push_back(ids[static_cast<std::size_t>(b * 3 + 1)]);
  }
  for (int ranks : {1, 2, 3, 5}) {
    CAPTURE(ranks);
    std::vector<Loader> loaders(static_cast<std::size_t>(ranks), Loader(set, 11));
    std::vector<std::int32_t> read;  // every rank's sequences, in rank order per step
    for (std::int64_t k = 0; k < steps; ++k) {
      std::int64_t covered = 0;
      for (int r = 0; r < ranks; ++r) {
        const BatchSlice slice = BatchSlice::of(batch, r, ranks);
        CHECK(slice.first == covered);  // contiguous, in rank order
        CHECK((slice.count == batch / ranks || slice.count == batch / ranks + 1));
        covered += slice.count;
        loaders[static_cast<std::size_t>(r)].next_slice(batch, slice.first, slice.count, ids, mask);
        REQUIRE(ids.size() == static_cast<std::size_t>(slice.count * 3));
        for (std::int64_t b = 0; b < slice.count; ++b) read.push_back(ids[static_cast<std::size_t>(b * 3 + 1)]);
      }
      CHECK(covered == batch);
    }
    CHECK(read == one_process);
    for (int epoch = 0; epoch < 2; ++epoch) {  // each epoch reads every sequence exactly once
      std::vector<std::int32_t> e(read.begin() + epoch * 13, read.begin() + (epoch + 1) * 13);
      std::sort(e.begin(), e.end());
      for (int i = 0; i < 13; ++i) CHECK(e[static_cast<std::size_t>(i)] == i);
    }
    for (const Loader& l : loaders) {  // the position does not depend on the number of ranks
      CHECK(l.position().epoch == single.position().epoch);
      CHECK(l.position().index == single.position().index);
    }
  }
  CHECK_THROWS_WITH_AS(BatchSlice::of(2, 0, 3), doctest::Contains("a global batch of 2 sequences cannot be split over 3 ranks"), Error);
}

TEST_CASE("learning-rate schedules and the EMA warm-up") {
  LrSchedule c{LrSchedule::Kind::Constant, 1e-3, 10, 100, 0.1};
  CHECK(c.at(1) == doctest::Approx(1e-4));
  CHECK(c.at(10) == doctest::Approx(1e-3));
  CHECK(c.at(1000) == doctest::Approx(1e-3));
  LrSchedule cos{LrSchedule::Kind::Cosine, 1e-3, 10, 110, 0.1};
  CHECK(cos.at(10) == doctest::Approx(1e-3));
  CHECK(cos.at(60) == doctest::Approx(0.55e-3));
  CHECK(cos.at(110) == doctest::Approx(1e-4));
  CHECK(ema_decay_at(0.9999, 0) == doctest::Approx(0.1));
  CHECK(ema_decay_at(0.9999, 90) == doctest::Approx(0.91));
  CHECK(ema_decay_at(0.9999, 1000000) == 0.9999);
}

TEST_CASE("AdamW: one step matches the closed form; clipping scales the gradient; EMA follows") {
  Host host;
  AdamWConfig cfg{0.1, 0.9, 0.999, 1e-8, 0.01};
  AdamW<Host> opt(2, cfg, 0.5);
  opt.load(host, {1.0f, -2.0f}, {1.0f, -2.0f});
  std::vector<float> grad{0.5f, -4.0f}, value(2);
  const double norm = opt.grad_norm(host, grad.data());
  CHECK(norm == doctest::Approx(std::sqrt(0.25 + 16.0)));
  opt.update(host, grad.data(), value.data(), 0.1, norm, 1.0);
  // After bias correction m_hat = g, v_hat = g^2: the step is lr * (sign(g) + wd * w).
  const double s = 1.0 / norm;  // clip to norm 1
  CHECK(value[0] == doctest::Approx(1.0 - 0.1 * (0.5 * s / (0.5 * s + 1e-8) + 0.01 * 1.0)).epsilon(1e-6));
  CHECK(value[1] == doctest::Approx(-2.0 - 0.1 * (-1.0 + 0.01 * -2.0)).epsilon(1e-6));
  // EMA with the warm-up decay min(0.5, 2/11) = 2/11 at the first update.
  const double d = 2.0 / 11.0;
  CHECK(opt.ema()[0] == doctest::Approx(d * 1.0 + (1 - d) * value[0]).epsilon(1e-6));
}

TEST_CASE("checkpoints: official names and dtypes, round trip, corrupt files rejected, writes atomic") {
  DiTConfig cfg = mdlm::testing::small_dit(30, 8, 2, 1, 4);
  DiT model(cfg);
  const ParamLayout& l = model.layout();
  CheckpointTensors t;
  for (auto* v : {&t.master, &t.ema, &t.m, &t.v}) v->assign(static_cast<std::size_t>(l.buffer_elements()), 0.0f);
  for (const ParamSpec& s : l.specs()) {  // padding between parameters stays zero (it is not saved)
    for (std::int64_t k = 0; k < s.numel; ++k) {
      const auto i = static_cast<std::size_t>(s.offset + k);
      t.master[i] = static_cast<float>(i % 7), t.ema[i] = 0.5f, t.m[i] = 1e-3f;
    }
  }
  const fs::path d = temp_dir("ckpt");
  save_checkpoint(d / "c.safetensors", cfg, l, t, {{"step", 5}});
  CHECK_FALSE(fs::exists(d / "c.safetensors.tmp"));
  SafeTensors f = SafeTensors::read(d / "c.safetensors");
  CHECK(f.info("backbone.blocks.0.attn_qkv.weight").shape == std::vector<std::int64_t>{24, 8});
  CHECK(f.info("backbone.blocks.0.attn_qkv.weight").dtype == DType::F32);
  CHECK(f.contains("ema.backbone.vocab_embed.embedding"));
  CHECK(f.contains("optimizer.exp_avg_sq.backbone.output_layer.linear.bias"));
  ParamStore<Host, float> store(l);  // fixture-style loading by name
  load_params(store, f);
  CHECK(store.value("blocks.0.norm1.weight").data[3] == t.master[static_cast<std::size_t>(l.spec(l.find("blocks.0.norm1.weight")).offset + 3)]);
  LoadedCheckpoint c = load_checkpoint(d / "c.safetensors");
  CHECK(c.training_state["step"] == 5);
  CHECK(c.tensors.master == t.master);
  CHECK(c.tensors.m == t.m);
  CHECK(model_config_json(c.model) == model_config_json(cfg));
  const std::string bytes = read_bytes(d / "c.safetensors");
  write_bytes(d / "trunc.safetensors", bytes.substr(0, bytes.size() - 100));
  CHECK_THROWS_AS(load_checkpoint(d / "trunc.safetensors"), Error);
  std::string flipped = bytes;
  flipped[bytes.find("mdlm-checkpoint-v1")] = 'X';
  write_bytes(d / "flip.safetensors", flipped);
  CHECK_THROWS_WITH_AS(load_checkpoint(d / "flip.safetensors"), doctest::Contains("format 'Xdlm-checkpoint-v1'"), Error);
  CHECK_THROWS_AS(save_checkpoint(d / "missing" / "c.safetensors", cfg, l, t, {}), Error);
  CHECK(load_checkpoint(d / "c.safetensors").tensors.master == t.master);  // the good one is untouched
}

TEST_CASE("trainer: a run stopped at step k and resumed gives exactly the same losses and weights") {
  const fs::path full_dir = temp_dir("full"), split_dir = temp_dir("split");
  TrainConfig full = tiny_run(full_dir);
  Host host;
  TrainResult whole = Trainer<Host, float, float>{}.run(host, full);
  REQUIRE(whole.losses.size() == 6);
  TrainConfig first = tiny_run(split_dir);
  first.stop_after = 3;
  TrainResult a = Trainer<Host, float, float>{}.run(host, first);
  CHECK(a.last_step == 3);
  TrainConfig second = tiny_run(split_dir);
  second.resume = true;
  TrainResult b = Trainer<Host, float, float>{}.run(host, second);
  REQUIRE(b.losses.size() == 3);
  for (int i = 0; i < 3; ++i) {
    CHECK(std::memcmp(&a.losses[static_cast<std::size_t>(i)], &whole.losses[static_cast<std::size_t>(i)], sizeof(double)) == 0);
    CHECK(std::memcmp(&b.losses[static_cast<std::size_t>(i)], &whole.losses[static_cast<std::size_t>(i + 3)], sizeof(double)) == 0);
  }
  CHECK(load_checkpoint(full_dir / "checkpoint.safetensors").tensors.master ==
        load_checkpoint(split_dir / "checkpoint.safetensors").tensors.master);
  CHECK(whole.valid.nats == b.valid.nats);
  // The checkpoint lists the ids the training data never contains (samplers keep them out).
  const auto unseen = load_checkpoint(full_dir / "checkpoint.safetensors").training_state.at("unseen_ids").get<std::vector<int>>();
  CHECK(std::find(unseen.begin(), unseen.end(), 0) != unseen.end());    // NUL: not in the KJV
  CHECK(std::find(unseen.begin(), unseen.end(), 'e') == unseen.end());  // 'e' is
  for (int special : {256, 257, 259})  // BOS, EOS (the framing) and the mask id: never listed
    CHECK(std::find(unseen.begin(), unseen.end(), special) == unseen.end());
  CHECK(unseen.size() > 150);
  // What a run leaves to look at.
  CHECK(fs::exists(full_dir / "metrics.jsonl"));
  CHECK(fs::exists(full_dir / "metrics.csv"));
  CHECK(read_bytes(full_dir / "loss.svg").find("<polyline") != std::string::npos);
}

TEST_CASE("trainer: a non-finite loss stops the run with a clear message, keeping the last good checkpoint") {
  const fs::path dir = temp_dir("nan");
  TrainConfig c = tiny_run(dir);
  c.lr.peak = 1e300;  // (a NaN learning rate is refused up front) the first update overflows the fp32 weights
  c.lr.warmup = 0;
  c.save_every = 1;
  Host host;
  using HostTrainer = Trainer<Host, float, float>;
  CHECK_THROWS_WITH_AS(HostTrainer{}.run(host, c), doctest::Contains("non-finite loss at step 2"), Error);
  LoadedCheckpoint k = load_checkpoint(dir / "checkpoint.safetensors");
  CHECK(k.training_state["step"] == 1);
}

TEST_CASE("trainer: MDLM on a tiny corpus learns (validation NELBO falls), AR too") {
  auto learns = [](auto objective, const std::string& name) {
    using Obj = decltype(objective);
    CAPTURE(name);
    TrainConfig c = tiny_run(temp_dir("learn_" + name));
    c.steps = 1;
    Host host;
    const double before = Trainer<Host, float, float, Obj>{objective}.run(host, c).valid.nats;
    c = tiny_run(temp_dir("learn2_" + name));
    c.steps = 40;
    c.ema = 0.0;  // evaluate the current weights
    const double after = Trainer<Host, float, float, Obj>{objective}.run(host, c).valid.nats;
    CHECK(after < before - 0.5);
    CHECK(load_checkpoint(c.out_dir / "checkpoint.safetensors", false).training_state.at("objective") == name);
  };
  learns(MaskedDiffusion<LogLinearSchedule>{}, "mdlm");
  learns(Autoregressive{}, "ar");
}

namespace user {
// A schedule written outside the library: 1 - alpha_t = (1 - eps) t^2, with its own name and
// JSON record (found by ADL).
struct SquareSchedule {
  double eps = 1e-3;
  static constexpr const char* name() { return "square"; }
  double move_chance(double t) const { return (1.0 - eps) * t * t; }
  double alpha(double t) const { return 1.0 - move_chance(t); }
  double sigma(double t) const { return -std::log1p(-move_chance(t)); }
  double dsigma(double t) const { return (1.0 - eps) * 2.0 * t / alpha(t); }
  double loss_weight(double t) const { return 2.0 / t; }
  double t_of_alpha(double a) const { return std::sqrt((1.0 - a) / (1.0 - eps)); }
};
inline void to_json(nlohmann::json& j, const SquareSchedule& s) { j = {{"eps", s.eps}}; }
// No name(), no to_json: recorded as "custom".
struct BareSchedule {
  double sigma(double t) const { return -std::log1p(-0.999 * t); }
  double dsigma(double t) const { return 0.999 / (1.0 - 0.999 * t); }
  double alpha(double t) const { return 1.0 - 0.999 * t; }
  double move_chance(double t) const { return 0.999 * t; }
  double loss_weight(double t) const { return 1.0 / t; }
  double t_of_alpha(double a) const { return (1.0 - a) / 0.999; }
};
}  // namespace user

static_assert(NoiseSchedule<user::SquareSchedule> && NoiseSchedule<user::BareSchedule>);
static_assert(!NoiseSchedule<int>);

TEST_CASE("trainer: any schedule type (the five shipped and a user's own) trains, is recorded, and validation uses it") {
  const fs::path data = small_corpus();
  const DataMeta meta = DataMeta::read(data);
  const Shard valid = Shard::read(data / "valid.bin");
  // The validation bound of a checkpoint's EMA weights under the objective `obj`, as the trainer computes it.
  auto eval_with = [&](const auto& obj, const TrainConfig& c) {
    LoadedCheckpoint k = load_checkpoint(c.out_dir / "checkpoint.safetensors", false);
    DiT model(k.model);
    ParamStore<Host, float> store(model.layout());
    std::copy(k.tensors.ema.begin(), k.tensors.ema.end(), store.values().data());
    SequenceSet set(valid, BatchStyle::Wrap, c.seq_len, meta.specials);
    Host host;
    return evaluate(host, obj.with_mask_id(meta.specials.mask), model, store.params(), set, c.batch, c.eval_batches, c.seed + 1).nats;
  };
  auto run = [&](auto schedule, const nlohmann::json& want) {
    using S = decltype(schedule);
    using Obj = MaskedDiffusion<S>;
    const std::string name = want.at("name").get<std::string>();
    CAPTURE(name);
    TrainConfig c = tiny_run(temp_dir("sched_" + name));
    c.steps = 2;
    Host host;
    const TrainResult r = Trainer<Host, float, float, Obj>{Obj{schedule}}.run(host, c);
    CHECK(std::isfinite(r.valid.nats));
    const nlohmann::json state = load_checkpoint(c.out_dir / "checkpoint.safetensors", false).training_state;
    CHECK(state.at("objective") == "mdlm");
    CHECK(state.at("schedule") == want);
    // Validation used this schedule: re-evaluating with it reproduces the number, with log-linear it does not.
    CHECK(eval_with(Obj{schedule}, c) == r.valid.nats);
    if (name != "loglinear" && name != "custom") CHECK(eval_with(MaskedDiffusion<LogLinearSchedule>{}, c) != r.valid.nats);
    return r.valid.nats;
  };
  run(LogLinearSchedule{}, {{"name", "loglinear"}, {"eps", 1e-3}});
  run(CosineSchedule{0.01}, {{"name", "cosine"}, {"eps", 0.01}});
  run(LinearSchedule{0.0, 5.0}, {{"name", "linear"}, {"sigma_min", 0.0}, {"sigma_max", 5.0}});
  run(GeometricSchedule{1e-3, 2.0}, {{"name", "geometric"}, {"sigma_min", 1e-3}, {"sigma_max", 2.0}});
  run(PolynomialSchedule{2.0, 1e-3}, {{"name", "polynomial"}, {"w", 2.0}, {"eps", 1e-3}});
  run(user::SquareSchedule{}, {{"name", "square"}, {"eps", 1e-3}});
  run(user::BareSchedule{}, {{"name", "custom"}});
  // A resumed run must use the schedule it started with.
  TrainConfig c = tiny_run(temp_dir("sched_resume"));
  c.steps = 2;
  c.stop_after = 1;
  Host host;
  Trainer<Host, float, float, MaskedDiffusion<CosineSchedule>>{}.run(host, c);
  c.resume = true;
  c.stop_after = 0;
  using LogLinearTrainer = Trainer<Host, float, float>;
  CHECK_THROWS_WITH_AS(LogLinearTrainer{}.run(host, c), doctest::Contains("the checkpoint's schedule"), Error);
  CHECK(Trainer<Host, float, float, MaskedDiffusion<CosineSchedule>>{}.run(host, c).last_step == 2);
}

TEST_CASE("schedule_record: the shipped schedules round-trip through JSON") {
  const nlohmann::json j = schedule_record(PolynomialSchedule{3.0, 0.01});
  CHECK(j == nlohmann::json{{"name", "polynomial"}, {"w", 3.0}, {"eps", 0.01}});
  const PolynomialSchedule p = j.get<PolynomialSchedule>();
  CHECK(p.w == 3.0);
  CHECK(p.eps == 0.01);
  CHECK(nlohmann::json{{"name", "cosine"}}.get<CosineSchedule>().eps == 1e-3);  // missing keys keep the defaults
}

TEST_CASE("trainer: resuming after a crash cuts the metrics back to the checkpoint's step, so no step appears twice") {
  const fs::path whole_dir = temp_dir("metrics_whole"), crash_dir = temp_dir("metrics_crash");
  Host host;
  TrainConfig whole = tiny_run(whole_dir);
  whole.log_every = 1;
  TrainResult w = Trainer<Host, float, float>{}.run(host, whole);
  REQUIRE(w.losses.size() == 6);

  // Steps 1-2, checkpoint at 2; then steps 3-4 logged and a checkpoint at 4 that the "crash"
  // takes away again: the files now hold rows the resumed run will write once more.
  TrainConfig a = tiny_run(crash_dir);
  a.log_every = 1;
  a.stop_after = 2;
  Trainer<Host, float, float>{}.run(host, a);
  fs::copy_file(crash_dir / "checkpoint.safetensors", crash_dir / "step2.safetensors");
  a.resume = true;
  Trainer<Host, float, float>{}.run(host, a);
  fs::rename(crash_dir / "step2.safetensors", crash_dir / "checkpoint.safetensors");
  {  // and a torn last line, as a kill in the middle of a write leaves
    std::ofstream torn(crash_dir / "metrics.jsonl", std::ios::app);
    torn << "{\"step\":5,\"split\":\"tra";
  }
  TrainConfig b = tiny_run(crash_dir);
  b.log_every = 1;
  b.resume = true;
  Trainer<Host, float, float>{}.run(host, b);

  auto rows = [](const fs::path& dir) {
    std::vector<std::pair<std::int64_t, double>> out;
    std::ifstream in(dir / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line);
      if (j.at("split") == "train") out.emplace_back(j.at("step").get<std::int64_t>(), j.at("loss").get<double>());
    }
    return out;
  };
  const auto got = rows(crash_dir), want = rows(whole_dir);
  REQUIRE(want.size() == 6);
  REQUIRE(got.size() == 6);  // steps 1..6 once each (steps 3 and 4 were written twice before the cut)
  for (std::size_t i = 0; i < 6; ++i) {
    CHECK(got[i].first == static_cast<std::int64_t>(i + 1));
    CHECK(got[i].second == want[i].second);  // and the resumed run's rows are the uninterrupted run's
  }
  // The CSV is rebuilt the same way: the header, one row per step, the final validation.
  const std::string csv = read_bytes(crash_dir / "metrics.csv");
  CHECK(csv.rfind("step,split,loss", 0) == 0);
  std::istringstream lines(csv);
  std::string line;
  std::vector<std::string> train_rows;
  while (std::getline(lines, line))
    if (line.find(",train,") != std::string::npos) train_rows.push_back(line.substr(0, line.find(',')));
  CHECK(train_rows == std::vector<std::string>{"1", "2", "3", "4", "5", "6"});
}

// A one-rank communicator that keeps a copy of every range whose all-reduce is started.
struct StartRecorder : SingleProcess {
  const double* base = nullptr;
  std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
  std::vector<std::vector<double>> copies;
  int finishes = 0;
  template <class B, class V>
  void start_all_reduce_sum(B&, V* data, std::int64_t n) {
    ranges.push_back({data - base, data - base + n});
    copies.emplace_back(data, data + n);
  }
  template <class B>
  void finish_all_reduces(B&) { ++finishes; }
};

TEST_CASE("data-parallel all-reduce overlaps the backward pass: each DiT part's gradients start once, when final") {
  for (bool ar : {false, true}) {
    for (std::int64_t accum : {1, 2}) {
      CAPTURE(ar);
      CAPTURE(accum);
      DiTConfig mc;
      mc.vocab = 40, mc.hidden = 16, mc.heads = 2, mc.blocks = 3, mc.cond_dim = 8, mc.freq_dim = 16, mc.ar = ar;
      mc.time_conditioning = true;
      const DiT model(mc);
      const ParamLayout& layout = model.layout();
      const std::int64_t n = layout.buffer_elements();
      Host ctx;
      ParamStore<Host, double> store(layout);
      Philox rng{5};  // every weight nonzero (DiT's init zeroes adaLN and the head): every gradient is nonzero
      for (std::int64_t i = 0; i < n; ++i) store.values().data()[i] = 0.6 * rng.uniform_double(Purpose::Init, 0, static_cast<std::uint64_t>(i)) - 0.3;
      AdamW<Host, double> opt(n, AdamWConfig{}, 0.9);
      StartRecorder rec;
      rec.base = store.grads().data();
      TrainStep<Host, double, double, StartRecorder> step(ctx, store, opt, rec, ZeroSharding{}, /*bucket_bytes=*/64);
      DiffusionOptions o;
      o.mask_id = 39;
      const MaskedDiffusion<LogLinearSchedule> mdlm(LogLinearSchedule{}, o);
      const std::int64_t batch = 2, len = 8;
      std::vector<std::int32_t> ids(static_cast<std::size_t>(batch * len));
      for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>((i * 7 + 3) % 39);
      step.gradient(accum, [&](Tape<Host, double, double>& tape, std::int64_t micro) {
        TokenBatch tb{ids.data(), batch, len, nullptr};
        return ar ? Autoregressive{}.loss(tape, model, store.params(), tb)
                  : mdlm.loss(tape, model, store.params(), tb, Philox{3}, static_cast<std::uint32_t>(micro));
      });
      // The output layer, then blocks 2, 1, 0 as the backward pass reaches their marks (each
      // part exceeds the 64-byte bucket), then the embedding and timestep MLP after it.
      const auto at = [&](const std::string& name) { return layout.spec(layout.find(name)).offset; };
      const std::vector<std::pair<std::int64_t, std::int64_t>> expect{
          {at("output_layer.norm_final.weight"), n},
          {at("blocks.2.norm1.weight"), at("output_layer.norm_final.weight")},
          {at("blocks.1.norm1.weight"), at("blocks.2.norm1.weight")},
          {at("blocks.0.norm1.weight"), at("blocks.1.norm1.weight")},
          {0, at("blocks.0.norm1.weight")}};
      CHECK(rec.ranges == expect);
      CHECK(step.started_buckets() == expect);
      CHECK(rec.finishes == 1);
      // Each range was final when started: its copy is the gradient after the whole step.
      for (std::size_t k = 0; k < rec.ranges.size() && k < expect.size(); ++k) {
        CAPTURE(k);
        const double* final_grad = store.grads().data() + rec.ranges[k].first;
        const std::vector<double> now(final_grad, final_grad + (rec.ranges[k].second - rec.ranges[k].first));
        CHECK(rec.copies[k] == now);
        CHECK(std::any_of(now.begin(), now.end(), [](double g) { return g != 0; }));
      }
    }
  }
}

TEST_CASE("gradient buckets: buckets fill from the buffer's end, reports outside an armed pass are ignored, overlaps are errors") {
  Host ctx;
  std::vector<double> grads(100, 0.0);
  StartRecorder rec;
  rec.base = grads.data();
  GradientBuckets<StartRecorder, Host, double> buckets(rec, ctx, grads.data(), 100, /*bucket_bytes=*/30 * 8);
  buckets.ready(80, 100);  // not armed: ignored
  CHECK(rec.ranges.empty());
  buckets.arm();
  buckets.ready(80, 100);  // 20 < 30 elements: waits
  CHECK(rec.ranges.empty());
  buckets.ready(40, 60);   // final, but not adjacent to the started part
  CHECK(rec.ranges.empty());
  buckets.ready(60, 80);   // [40, 100) final: one bucket of 60
  REQUIRE(rec.ranges.size() == 1);
  CHECK(rec.ranges[0] == std::pair<std::int64_t, std::int64_t>{40, 100});
  CHECK_THROWS_WITH_AS(buckets.ready(50, 55), doctest::Contains("[50, 55) were reported final twice"), Error);
  buckets.ready(0, 10);
  CHECK_THROWS_WITH_AS(buckets.ready(5, 12), doctest::Contains("reported final twice"), Error);
  CHECK_THROWS_WITH_AS(buckets.ready(30, 101), doctest::Contains("outside the gradient buffer of 100 elements"), Error);
  buckets.finish();  // the rest, [0, 40), in one
  CHECK(buckets.started() == std::vector<std::pair<std::int64_t, std::int64_t>>{{40, 100}, {0, 40}});
  CHECK(rec.finishes == 1);
  buckets.finish();  // not armed: nothing more
  CHECK(rec.finishes == 1);
}

// A clock whose marks are 0, 1, 2, ... milliseconds: every range's time is known exactly.
struct TickClock {
  using Mark = double;
  double next = 0;
  Mark mark() { return next++; }
  double ms(Mark from, Mark to) const { return to - from; }
  void wait() const {}
  void recycle() const {}
};

TEST_CASE("step profile: inclusive and exclusive milliseconds per range, per step, that add up to the step") {
  StepProfile<TickClock> profile;
  RangeHook hook = profile.hook();
  for (int step = 0; step < 2; ++step) {
    profile.phase("forward");
    hook.push(hook.target, "block 0");  // mark 0
    hook.push(hook.target, "linear");   // 1
    hook.pop(hook.target);              // 2: linear 1 ms
    hook.push(hook.target, "linear");   // 3
    hook.pop(hook.target);              // 4: linear 1 ms
    hook.pop(hook.target);              // 5: block 0 5 ms, 3 of its own
    profile.phase("backward");
    hook.push(hook.target, "linear");   // 6
    hook.pop(hook.target);              // 7
    profile.end_step();
  }
  CHECK(profile.steps() == 2);
  const auto rows = profile.rows();
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].name == "forward/block 0");  // by exclusive time
  CHECK(rows[0].inclusive_ms == 5);
  CHECK(rows[0].exclusive_ms == 3);
  CHECK(rows[0].calls == 1);
  CHECK(rows[1].name == "forward/linear");
  CHECK(rows[1].inclusive_ms == 2);  // two calls of 1 ms per step
  CHECK(rows[1].exclusive_ms == 2);
  CHECK(rows[1].calls == 2);
  CHECK(rows[2].name == "backward/linear");
  CHECK(rows[2].exclusive_ms == 1);
  const std::string table = profile.table(8.0, 4.0);
  const std::size_t outside = table.find("(outside every range)");
  REQUIRE(outside != std::string::npos);
  CHECK(table.substr(outside, table.find('\n', outside) - outside).find(" 2.000 ") != std::string::npos);  // 8 - (3 + 2 + 1)
  CHECK(table.find("step 8.000 ms against a budget of 4.000 ms (2.00x)") != std::string::npos);
  hook.push(hook.target, "open");
  CHECK_THROWS_WITH_AS(profile.end_step(), doctest::Contains("1 ranges still open"), Error);
  hook.pop(hook.target);
  CHECK_THROWS_WITH_AS(hook.pop(hook.target), doctest::Contains("closed that was never opened"), Error);
}
