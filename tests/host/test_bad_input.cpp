// Bad input at every entry point gives an mdlm::Error that names the file, field or flag and the
// value: every input the fuzzers found (fuzz/regressions/TARGET), zero-byte and truncated files
// for every reader, JSON numbers out of range, training and sampling settings out of range, a
// run too large for memory, and resuming with another vocabulary or model.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "../common/reference.hpp"
#include "../common/training.hpp"
#include "../../fuzz/fuzz_check.hpp"
#include "mdlm/mdlm.hpp"
#include "mdlm/tokenizers/all.hpp"

using namespace mdlm;
namespace fs = std::filesystem;

using mdlm::testing::read_bytes;
using mdlm::testing::small_corpus;
using mdlm::testing::temp_dir;
using mdlm::testing::tiny_run;
using mdlm::testing::write_bytes;

namespace {

const fs::path kRepo = MDLM_TEST_REPO;

// The committed inputs under fuzz/regressions/TARGET (each one a finding); at least one.
std::vector<fs::path> fuzz_regressions(const std::string& target) {
  std::vector<fs::path> inputs;
  for (const auto& e : fs::directory_iterator(kRepo / "fuzz" / "regressions" / target)) inputs.push_back(e.path());
  REQUIRE_FALSE(inputs.empty());
  return inputs;
}

// The message of the mdlm::Error `f` throws ("" and a failed check when it throws none).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  FAIL_CHECK("no mdlm::Error was thrown");
  return "";
}

// `text` with its first `from` replaced by `to` (which must be there).
std::string replaced(std::string text, const std::string& from, const std::string& to) {
  const std::size_t at = text.find(from);
  REQUIRE(at != std::string::npos);
  return text.replace(at, from.size(), to);
}

// A tiny run of one step (tests/common/training.hpp).
TrainConfig one_step_run(const fs::path& out) {
  TrainConfig c = tiny_run(out);
  c.steps = 1;
  return c;
}

// Host work leaves FTZ/DAZ set on the thread (backend/host.hpp); the tests after these (bf16
// rounding of denormals) need the thread's mode back as it was.
struct RestoreFpMode {
  unsigned bits = host_fp::flush_bits();
  ~RestoreFpMode() { host_fp::set_flush_denormals(bits != 0); }
};

TrainResult train_on_host(const TrainConfig& c) {
  const RestoreFpMode restore;
  Host host;
  return Trainer<Host, float>().run(host, c);
}

}  // namespace

TEST_CASE("fuzz regressions: every input the fuzzers found is rejected with mdlm::Error") {
  for (const fs::path& p : fuzz_regressions("safetensors")) {
    CAPTURE(p.string());
    CHECK_THROWS_AS(SafeTensors::read(p), Error);
  }
  // Shape (2^32, 2^32, 4) of F32: 2^68 bytes, which wrapped to 0 and matched empty offsets.
  CHECK_THROWS_WITH_AS(SafeTensors::read(kRepo / "fuzz/regressions/safetensors/shape-product-wraps"),
                       doctest::Contains("is too large"), Error);
  for (const fs::path& p : fuzz_regressions("shard")) {
    CAPTURE(p.string());
    CHECK_THROWS_AS(Shard::read(p), Error);
  }
  // Width 4 and a vocabulary past 2^31, whose id 0xFFFFFF00 became negative.
  CHECK_THROWS_WITH_AS(Shard::read(kRepo / "fuzz/regressions/shard/int32-negative-id"), doctest::Contains("ids are int32"), Error);
  for (const fs::path& p : fuzz_regressions("data_meta")) {
    CAPTURE(p.string());
    CHECK_THROWS_AS(DataMeta::parse(read_bytes(p), p.string()), Error);
  }
  // "pad": 999...9258 is a JSON float (1e84); reading it as int32 was undefined behaviour.
  CHECK(error_of([] { DataMeta::parse(read_bytes(kRepo / "fuzz/regressions/data_meta/float-id-overflows-int32"), "m"); })
            .find("m: field 'pad' is 1e+84, expected an integer in [-2147483648, 2147483647]") != std::string::npos);
  for (const fs::path& p : fuzz_regressions("gpt2_vocab")) {  // vocab.json NUL merges.txt, as the target reads it
    CAPTURE(p.string());
    const auto parts = mdlm_fuzz::split_at_nul(read_bytes(p), 2);
    CHECK_THROWS_AS(Gpt2Tokenizer::from_texts(parts[0], "vocab.json", parts.size() > 1 ? parts[1] : "", "merges.txt"), Error);
  }
  // A number too large for a double ("222222222222e2222") made nlohmann throw out_of_range, which
  // escaped as a non-mdlm exception and ended the program.
  CHECK_THROWS_WITH_AS(Gpt2Tokenizer::from_texts(read_bytes(kRepo / "fuzz/regressions/gpt2_vocab/number-overflows-double"), "v.json", "", "m"),
                       doctest::Contains("v.json: invalid JSON ([json.exception.out_of_range.406] number overflow"), Error);
  // 4294967553 = 2^32 + 257 wrapped to the valid EOS id 257: a silent wrong answer.
  CHECK(error_of([] { DataMeta::parse(read_bytes(kRepo / "fuzz/regressions/data_meta/id-wraps-int32"), "m"); })
            .find("field 'eos' is 4294967553") != std::string::npos);
}

TEST_CASE("json_number: only values the type holds exactly; the message names the field and the value") {
  using nlohmann::json;
  CHECK(json_number<std::int32_t>(json(-1), "f") == -1);
  CHECK(json_number<std::int64_t>(json(std::uint64_t{1} << 40), "f") == std::int64_t{1} << 40);
  CHECK(json_number<std::uint64_t>(json(std::uint64_t{18446744073709551615u}), "f") == 18446744073709551615u);
  CHECK(json_number<double>(json(3), "f") == 3.0);
  CHECK_THROWS_WITH_AS(json_number<std::int32_t>(json(2147483648LL), "x.json: field 'n'"),
                       doctest::Contains("x.json: field 'n' is 2147483648, expected an integer in [-2147483648, 2147483647]"), Error);
  CHECK_THROWS_WITH_AS(json_number<std::uint64_t>(json(-1), "f"), doctest::Contains("f is -1, expected an integer in [0, "), Error);
  CHECK_THROWS_WITH_AS(json_number<std::int64_t>(json(1.5), "f"), doctest::Contains("f is 1.5, expected an integer"), Error);
  CHECK_THROWS_WITH_AS(json_number<std::int64_t>(json("7"), "f"), doctest::Contains("f is \"7\""), Error);
  CHECK_THROWS_WITH_AS(json_number<float>(json(1e300), "f"), doctest::Contains("f is 1e+300, expected a finite number"), Error);
  CHECK_THROWS_WITH_AS(json_field<std::int64_t>(json::object(), "steps", "a.json"), doctest::Contains("a.json: field 'steps' is missing"),
                       Error);
  CHECK(json_field<std::int64_t>(json::object(), "steps", "a.json", 7) == 7);
}

TEST_CASE("meta.json: the vocabulary size and every special id are checked, naming the field") {
  const std::string good = R"({"tokenizer": "bytes", "vocab_size": 260, "bos": 256, "eos": 257, "pad": 258, "mask": 259, "unk": -1})";
  const DataMeta m = DataMeta::parse(good, "meta.json");
  CHECK(m.vocab_size == 260);
  CHECK(m.specials.mask == 259);
  auto with = [&](const std::string& from, const std::string& to) { return replaced(good, from, to); };
  CHECK_THROWS_WITH_AS(DataMeta::parse(with("\"mask\": 259", "\"mask\": 260"), "d/meta.json"),
                       doctest::Contains("d/meta.json: mask id 260 is outside the vocabulary of 260"), Error);
  CHECK_THROWS_WITH_AS(DataMeta::parse(with("\"unk\": -1", "\"unk\": -2"), "d/meta.json"),
                       doctest::Contains("unk id -2 is outside"), Error);
  CHECK_THROWS_WITH_AS(DataMeta::parse(with("\"vocab_size\": 260", "\"vocab_size\": 0"), "d/meta.json"),
                       doctest::Contains("d/meta.json: vocab_size 0"), Error);
  CHECK_THROWS_WITH_AS(DataMeta::parse(with("\"bos\": 256, ", ""), "d/meta.json"), doctest::Contains("field 'bos' is missing"), Error);
  CHECK_THROWS_WITH_AS(DataMeta::parse("", "d/meta.json"), doctest::Contains("d/meta.json: the file is empty"), Error);
}

TEST_CASE("zero-byte and truncated files: every reader names the file") {
  const fs::path d = temp_dir("truncated");
  // Each reader with a real file it accepts (as a check that the cut, not the file, is refused).
  // line_list: a list of lines with no count (merges.txt, vocab.txt), where a cut at a line end
  // is a valid shorter file; only cuts that leave it empty or without its required tokens show.
  struct Reader {
    std::string name;
    fs::path good;
    std::function<void(const fs::path&)> read;
    bool line_list = false;
  };
  const fs::path gpt2 = kRepo / "data" / "gpt2", ckpt = kRepo / "fuzz" / "corpus" / "checkpoint" / "mdlm.safetensors";
  const fs::path corpus = small_corpus();
  const std::vector<Reader> readers = {
      {"checkpoint.safetensors", ckpt, [](const fs::path& p) { (void)load_checkpoint(p); }},
      {"fixture.safetensors", kRepo / "tests" / "fixtures" / "mdlm_tiny.safetensors",
       [](const fs::path& p) { (void)GoldenFixture::load(p.string()); }},
      {"train.bin", corpus / "train.bin", [](const fs::path& p) { (void)Shard::read(p); }},
      {"meta.json", corpus / "meta.json", [](const fs::path& p) { (void)DataMeta::read(p.parent_path()); }},
      {"encoder.json", gpt2 / "encoder.json", [&](const fs::path& p) { (void)Gpt2Tokenizer::from_files(p, gpt2 / "vocab.bpe"); }},
      {"vocab.bpe", gpt2 / "vocab.bpe", [&](const fs::path& p) { (void)Gpt2Tokenizer::from_files(gpt2 / "encoder.json", p); }, true},
      {"tokenizer.json", kRepo / "fuzz" / "corpus" / "tokenizer_json" / "cut8.json",
       [](const fs::path& p) { (void)Gpt2Tokenizer::from_tokenizer_json(p); }},
      {"vocab.txt", kRepo / "fuzz" / "corpus" / "wordpiece_vocab" / "cut.txt",
       [](const fs::path& p) { (void)WordPieceTokenizer::from_vocab_file(p); }, true},
  };
  for (const Reader& r : readers) {
    CAPTURE(r.name);
    const fs::path dir = d / r.name;
    fs::create_directories(dir);
    const fs::path p = dir / r.name;
    const std::string bytes = read_bytes(r.good);
    REQUIRE(bytes.size() > 16);
    write_bytes(p, bytes);
    CHECK_NOTHROW(r.read(p));
    // Zero bytes, a cut inside the header or first line, and a cut in the middle.
    for (std::size_t keep : {std::size_t{0}, std::size_t{5}, bytes.size() / 2}) {
      if (r.line_list && keep > 5) continue;
      CAPTURE(keep);
      write_bytes(p, bytes.substr(0, keep));
      CHECK(error_of([&] { r.read(p); }).find(p.string()) != std::string::npos);
    }
  }
}

TEST_CASE("checkpoints: a config that does not match the tensors is refused before anything is allocated") {
  const fs::path src = kRepo / "fuzz" / "corpus" / "checkpoint" / "mdlm.safetensors";
  const SafeTensors good = SafeTensors::read(src);
  auto with_config = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json cfg = nlohmann::json::parse(good.metadata().at("config"));
    edit(cfg);
    SafeTensorsWriter w;
    for (const std::string& name : good.names()) {
      const auto v = good.get<float>(name);
      w.add(name, good.info(name).shape, v.data());
    }
    for (const auto& [k, v] : good.metadata()) w.set_metadata(k, k == "config" ? cfg.dump() : v);
    const fs::path p = temp_dir("ckpt_config") / "c.safetensors";
    w.write(p);
    return p;
  };
  CHECK_NOTHROW(load_checkpoint(with_config([](nlohmann::json&) {})));
  // 4000 blocks (within DiTConfig's bounds) in a file of a few dozen tensors.
  CHECK_THROWS_WITH_AS(load_checkpoint(with_config([](nlohmann::json& c) { c["n_blocks"] = 4000; })),
                       doctest::Contains("the config says 4000 blocks but the file holds only"), Error);
  // A hidden size of 2^20 would need terabytes: the shapes disagree first.
  CHECK_THROWS_WITH_AS(load_checkpoint(with_config([](nlohmann::json& c) { c["hidden"] = 1 << 20; })),
                       doctest::Contains("has shape [4, 2], the config needs [4, 1048576]"), Error);
  CHECK_THROWS_WITH_AS(load_checkpoint(with_config([](nlohmann::json& c) { c["hidden"] = std::int64_t{1} << 40; })),
                       doctest::Contains("DiT sizes out of range"), Error);
  CHECK_THROWS_WITH_AS(load_checkpoint(with_config([](nlohmann::json& c) { c["n_heads"] = 1.5; })),
                       doctest::Contains("field 'n_heads' is 1.5"), Error);
}

TEST_CASE("training settings out of range name the field, the flag and the value, before any file is read") {
  TrainConfig c;
  c.data_dir = "/nonexistent";
  auto refused = [&](const std::function<void(TrainConfig&)>& edit) {
    TrainConfig bad = c;
    edit(bad);
    return error_of([&] { train_on_host(bad); });
  };
  CHECK(refused([](TrainConfig& t) { t.seq_len = 0; }).find("train: seq_len (--seq-len) is 0: must be at least 3") != std::string::npos);
  CHECK(refused([](TrainConfig& t) { t.steps = -5; }).find("steps (--steps) is -5: must be positive") != std::string::npos);
  CHECK(refused([](TrainConfig& t) { t.batch = 0; }).find("batch (--batch) is 0") != std::string::npos);
  CHECK(refused([](TrainConfig& t) { t.log_every = 0; }).find("log_every (--log-every) is 0") != std::string::npos);
  CHECK(refused([](TrainConfig& t) { t.ema = 1; }).find("ema (--ema) is 1: must be in [0, 1)") != std::string::npos);
  CHECK(refused([](TrainConfig& t) { t.lr.peak = -1e-3; }).find("lr.peak (--lr) is -0.001") != std::string::npos);
  CHECK(refused([](TrainConfig& t) { t.stop_after = -1; }).find("stop_after (--stop-after) is -1") != std::string::npos);
  // In range, the first error is the missing data.
  CHECK(refused([](TrainConfig&) {}).find("cannot open '/nonexistent/meta.json'") != std::string::npos);
}

TEST_CASE("training: a batch that cannot fit in memory is refused before it is allocated") {
  TrainConfig c = one_step_run(temp_dir("too_big"));
  c.model.vocab = 260;  // the data's (the trainer takes it from meta.json)
  const DiT model(c.model);
  const double one = training_bytes_lower_bound(c, model.layout(), 4, 4, 4);
  c.batch = 1000;
  CHECK(training_bytes_lower_bound(c, model.layout(), 4, 4, 4) > one);  // grows with the batch
  c.batch = std::int64_t{1} << 40;
  const double have = static_cast<double>(MemoryOps<Host>::available_bytes());
  CHECK(have > 0);
  REQUIRE(training_bytes_lower_bound(c, model.layout(), 4, 4, 4) > have);
  CHECK(error_of([&] { train_on_host(c); }).find("train: --batch 1099511627776 x --seq-len 24 with this model needs at least") !=
        std::string::npos);
  CHECK_FALSE(fs::exists(c.out_dir / "checkpoint.safetensors"));
}

TEST_CASE("resume: data of another vocabulary, or another model config, is refused naming both") {
  const fs::path out = temp_dir("resume_mismatch");
  TrainConfig c = one_step_run(out);
  train_on_host(c);
  REQUIRE(fs::exists(out / "checkpoint.safetensors"));
  // The same shards under a meta.json of a larger vocabulary.
  const fs::path other = temp_dir("resume_mismatch_data");
  for (const char* f : {"train.bin", "valid.bin"}) fs::copy_file(small_corpus() / f, other / f);
  write_bytes(other / "meta.json", replaced(read_bytes(small_corpus() / "meta.json"), "\"vocab_size\": 260", "\"vocab_size\": 300"));
  TrainConfig r = c;
  r.resume = true;
  r.steps = 2;
  r.data_dir = other;
  const std::string vocab_error = error_of([&] { train_on_host(r); });
  CHECK(vocab_error.find("--resume: the data's vocabulary (300, " + (other / "meta.json").string() + ") differs from the checkpoint's (260") !=
        std::string::npos);
  r.data_dir = c.data_dir;
  r.model.hidden = 32;
  CHECK(error_of([&] { train_on_host(r); }).find("the checkpoint's model config") != std::string::npos);
}

TEST_CASE("sampling: prompts with ids outside the vocabulary and settings out of range, in every sampler") {
  const RestoreFpMode restore;
  Host host;
  DiT model(mdlm::testing::sampler_test_dit(false));
  ParamStore<Host, float> store(model.layout());
  mdlm::testing::init_sampler_test_model(model, store);
  const std::int64_t vocab = model.config().vocab, n = 4, len = 24;
  const auto d = model_denoiser(host, model, store, 29);
  std::vector<std::int32_t> init = mdlm::testing::sampler_test_init();
  SamplerSettings cfg;
  cfg.steps = 4;
  auto both = [&](const std::vector<std::int32_t>& z, const SamplerSettings& sc) {
    return std::vector<std::string>{error_of([&] { sample(d, LogLinearSchedule{}, Ancestral{}, sc, z, n, len); }),
                                    error_of([&] { sample_batched(host, model, store, 29, LogLinearSchedule{}, Ancestral{}, sc, z, n, len); })};
  };
  std::vector<std::int32_t> bad = init;
  bad[5] = static_cast<std::int32_t>(vocab);
  for (const std::string& e : both(bad, cfg)) CHECK(e.find(std::to_string(vocab)) != std::string::npos);
  bad[5] = -3;
  for (const std::string& e : both(bad, cfg)) CHECK(e.find("-3 at position 5") != std::string::npos);
  auto with = [&](const std::function<void(SamplerSettings&)>& edit) {
    SamplerSettings sc = cfg;
    edit(sc);
    return sc;
  };
  for (const std::string& e : both(init, with([](SamplerSettings& s) { s.filters.top_p = 1.5; })))
    CHECK(e.find("sampler: top-p (--top-p) is 1.5: must be in (0, 1]") != std::string::npos);
  for (const std::string& e : both(init, with([](SamplerSettings& s) { s.filters.top_p = 0; })))
    CHECK(e.find("top-p (--top-p) is 0") != std::string::npos);
  for (const std::string& e : both(init, with([](SamplerSettings& s) { s.steps = -2; })))
    CHECK(e.find("sampler: steps (--steps) is -2: must be positive") != std::string::npos);
  for (const std::string& e : both(init, with([](SamplerSettings& s) { s.filters.temperature = 0; })))
    CHECK(e.find("temperature (--temperature) is 0") != std::string::npos);
  for (const std::string& e : both(init, with([](SamplerSettings& s) { s.filters.top_k = -1; })))
    CHECK(e.find("top-k (--top-k) is -1") != std::string::npos);
  // A prompt longer than the window of semi-autoregressive sampling.
  const std::vector<std::int32_t> long_prompt(static_cast<std::size_t>(len), 3);
  CHECK(error_of([&] { sample_semi_ar(d, LogLinearSchedule{}, Ancestral{}, cfg, long_prompt, 1, 2 * len, len, len / 2); })
            .find("the prompt (24 tokens) must be shorter than the window (24)") != std::string::npos);
}

TEST_CASE("tokenizer.json: values of the wrong JSON type are mdlm::Error, not a JSON library exception") {
  const std::string good = read_bytes(kRepo / "fuzz" / "corpus" / "tokenizer_json" / "cut8.json");
  CHECK_NOTHROW(Gpt2Tokenizer::from_tokenizer_json_text(good, "t.json"));
  auto with = [&](const std::string& from, const std::string& to) { return replaced(good, from, to); };
  CHECK_THROWS_WITH_AS(Gpt2Tokenizer::from_tokenizer_json_text(with("\"type\": \"BPE\"", "\"type\": 7"), "t.json"),
                       doctest::Contains("t.json: not a BPE tokenizer.json"), Error);
  CHECK_THROWS_WITH_AS(Gpt2Tokenizer::from_tokenizer_json_text(with("\"content\": \"<|endoftext|>\"", "\"content\": 3"), "t.json"),
                       doctest::Contains("t.json: added token content 3 is not a string"), Error);
}
