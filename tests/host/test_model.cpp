// The DiT and AR backbones: parameter counts of the presets, logits parity with the golden
// fp64 fixtures, whole-model gradcheck, initialization, parameter I/O, and the output head's
// padded logits rows (its row stride changes no result).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <variant>
#include <vector>

#include "../common/reference.hpp"
#include "mdlm/mdlm.hpp"

using namespace mdlm;

namespace {
std::string fixture(const std::string& name) { return std::string(MDLM_TEST_FIXTURES) + "/" + name; }

double logits_rel_error(const GoldenFixture& g) {
  DiT model(g.model);
  ParamStore<Host, double> store(model.layout());
  load_params(store, g.file);
  Host host;
  Tape<Host, double> tape(host);
  auto p = store.params();
  DiTInputs in{g.model_input().data(), g.model_input().data(), g.batch, g.seq_len, g.sigma.data()};
  Var<double, Host> logits = model.forward(tape, p, in);
  auto want = g.file.get<double>("outputs.logits", {g.batch, g.seq_len, g.model.vocab});
  double err = 0, scale = 0;
  for (std::int64_t i = 0; i < logits.rows(); ++i) {
    for (std::int64_t j = 0; j < logits.cols(); ++j) {
      err = std::max(err, std::abs(logits.value.data[i * logits.value.ld + j] - want[static_cast<std::size_t>(i * g.model.vocab + j)]));
      scale = std::max(scale, std::abs(want[static_cast<std::size_t>(i * g.model.vocab + j)]));
    }
  }
  return err / scale;
}
}  // namespace

TEST_CASE("parameter counts of the small preset match the official MDLM model") {
  CHECK(DiT(DiTConfig::preset("small", 50258)).layout().parameter_count() == 169627218);  // GPT-2 + mask
  CHECK(DiT(DiTConfig::preset("small", 30522)).layout().parameter_count() == 139292986);  // BERT
  CHECK_THROWS_AS(DiTConfig::preset("huge", 10), Error);
  DiTConfig bad = DiTConfig::preset("tiny", 100);
  bad.heads = 7;
  CHECK_THROWS_AS(DiT{bad}, Error);
}

TEST_CASE("logits match every golden fixture at fp64 (1e-10 relative)") {
  for (const char* name : {"mdlm_tiny.safetensors", "mdlm_tiny_timecond_pad.safetensors", "ar_tiny.safetensors"}) {
    CAPTURE(name);
    CHECK(logits_rel_error(GoldenFixture::load(fixture(name))) < 1e-10);
  }
}

TEST_CASE("gradcheck: whole 2-block DiT (with and without time conditioning) and AR model") {
  for (int variant = 0; variant < 3; ++variant) {
    CAPTURE(variant);
    DiTConfig cfg = mdlm::testing::small_dit(11, 8, 2, 2, 4);
    cfg.freq_dim = 6;
    cfg.time_conditioning = variant == 1;
    cfg.ar = variant == 2;
    cfg.dropout = 0.2f;
    DiT model(cfg);
    ParamStore<Host, double> store(model.layout());
    model.init(store, 3);
    // Non-zero adaLN and output weights so every path carries signal (the init zeroes them).
    Philox rng{5};
    for (std::int64_t i = 0; i < model.layout().buffer_elements(); ++i) {
      store.values().data()[i] += 0.3 * (rng.uniform_double(Purpose::Test, 0, static_cast<std::uint64_t>(i)) - 0.5);
    }
    const std::int64_t batch = 2, seq = 3;
    std::vector<std::int32_t> ids{1, 10, 3, 3, 0, 7};
    std::vector<double> sigma{0.7, 2.5};
    std::vector<GradcheckInput> inputs;
    std::vector<std::vector<double>> grads(model.layout().specs().size());
    for (std::size_t i = 0; i < model.layout().specs().size(); ++i) {
      inputs.push_back({model.layout().spec(static_cast<int>(i)).name, store.value(static_cast<int>(i))});
    }
    GradcheckOptions opt;
    opt.max_elements = 12;
    opt.tape = {true, 9, 4};  // training: dropout on, masks identical across evaluations
    GradcheckResult r = gradcheck(
        [&](Tape<Host, double>& t, const GradcheckLeaves& leaves) {
          return model.forward(t, leaves.params(), DiTInputs{ids.data(), ids.data(), batch, seq, sigma.data()});
        },
        inputs, opt);
    CAPTURE(r.worst_input);
    CAPTURE(r.max_rel_error);
    CHECK(r.passed(1e-7));
  }
}

TEST_CASE("initialization: zero adaLN and output layer, unit norms, U(+-1/sqrt(d)) embedding, reproducible") {
  DiTConfig cfg = DiTConfig::preset("tiny", 300);
  cfg.blocks = 2;
  DiT model(cfg);
  ParamStore<Host, float> a(model.layout()), b(model.layout());
  model.init(a, 42);
  model.init(b, 42);
  for (const ParamSpec& s : model.layout().specs()) {
    CAPTURE(s.name);
    const float* v = a.value(s.name).data;
    float mx = 0;
    for (std::int64_t k = 0; k < s.numel; ++k) mx = std::max(mx, std::abs(v[k]));
    if (s.name.find("adaLN") != std::string::npos || s.name.rfind("output_layer.linear", 0) == 0) CHECK(mx == 0.0f);
    else if (s.name.find("norm") != std::string::npos) CHECK(v[0] == 1.0f);
    else if (s.name == "vocab_embed.embedding") {
      CHECK(mx <= 1.0f / std::sqrt(512.0f));
      CHECK(mx > 0.9f / std::sqrt(512.0f));
    } else {
      CHECK(mx > 0.0f);
    }
    CHECK(std::equal(v, v + s.numel, b.value(s.name).data));
  }
}

TEST_CASE("parameters round-trip through safetensors under official names") {
  auto g = GoldenFixture::load(fixture("mdlm_tiny.safetensors"));
  DiT model(g.model);
  ParamStore<Host, double> store(model.layout());
  load_params(store, g.file);
  SafeTensorsWriter w;
  add_params(w, store);
  SafeTensors back = SafeTensors::parse(w.serialize(), "memory");
  CHECK(back.contains("backbone.blocks.1.adaLN_modulation.weight"));
  CHECK(back.info("backbone.vocab_embed.embedding").shape == std::vector<std::int64_t>{38, 32});
  ParamStore<Host, double> again(model.layout());
  load_params(again, back);
  CHECK(std::equal(store.values().data(), store.values().data() + model.layout().buffer_elements(), again.values().data()));
  // A file without one of the parameters is rejected by name.
  SafeTensorsWriter partial;
  std::vector<double> one{1.0};
  partial.add("backbone.vocab_embed.embedding", {1}, one.data());
  CHECK_THROWS_WITH_AS(load_params(again, SafeTensors::parse(partial.serialize(), "partial.safetensors")),
                       doctest::Contains("shape [1], expected [38, 32]"), Error);
}

TEST_CASE("loss, log-probs and every gradient match the golden fixtures (fp64 1e-10, fp32 1e-5)") {
  for (const char* name : {"mdlm_tiny.safetensors", "mdlm_tiny_timecond_pad.safetensors", "ar_tiny.safetensors"}) {
    CAPTURE(name);
    auto g = GoldenFixture::load(fixture(name));
    Host host;
    GoldenReport r64 = check_golden<Host, double>(host, g);
    CHECK(r64.tensors.size() >= (g.model.ar ? 22u : 32u));  // logits, loss, (log-probs), every gradient
    for (const TensorError& e : r64.tensors) {
      CAPTURE(e.name);
      CHECK(e.max_rel < 1e-10);
    }
    GoldenReport r32 = check_golden<Host, float>(host, g);
    for (const TensorError& e : r32.tensors) {
      CAPTURE(e.name);
      CHECK(e.max_rel < 1e-5);
    }
  }
}

TEST_CASE("inference forward (tape not recording, no saved attention probabilities) == training forward, bit for bit") {
  Host host;
  for (bool ar : {false, true}) {
    for (bool tc : {false, true}) {
      if (ar && tc) continue;
      DiTConfig cfg = mdlm::testing::sampler_test_dit(tc);
      cfg.ar = ar;
      DiT model(cfg);
      ParamStore<Host, float> store(model.layout());
      mdlm::testing::init_sampler_test_model(model, store);
      std::vector<std::int32_t> ids(3 * 16);
      for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>((i * 7) % 29);
      const std::vector<double> sigma{0.5, 1.5, 3.0};
      auto run = [&](bool recording) {
        Tape<Host, float> tape(host);
        tape.set_recording(recording);
        auto out = model.forward(tape, store.params(), DiTInputs{ids.data(), ids.data(), 3, 16, sigma.data()});
        const std::size_t used = tape.values_used();
        return std::pair{download(host, MatrixView<const float, Host>(out.value)), used};
      };
      const auto [train, train_bytes] = run(true);
      const auto [infer, infer_bytes] = run(false);
      CAPTURE(ar);
      CAPTURE(tc);
      CHECK(infer == train);
      CHECK(infer_bytes < train_bytes);  // the (B, H, T, T) probabilities were not allocated
    }
  }
}

namespace {
// A RangeHook that logs "+name" for every opened range and "-" for every closed one.
struct RangeLog {
  std::vector<std::string> events;
  int depth = 0;
  bool underflow = false;
  RangeHook hook() {
    return {this,
            [](void* self, const char* name) {
              auto& log = *static_cast<RangeLog*>(self);
              log.events.push_back(std::string("+") + name);
              ++log.depth;
            },
            [](void* self) {
              auto& log = *static_cast<RangeLog*>(self);
              log.events.push_back("-");
              log.underflow |= --log.depth < 0;
            }};
  }
};
std::vector<std::string> opened(std::vector<std::string>::const_iterator from, std::vector<std::string>::const_iterator to,
                                const std::vector<std::string>& names) {
  std::vector<std::string> out;
  for (auto it = from; it != to; ++it)
    if (std::find(names.begin(), names.end(), it->substr(1)) != names.end() && (*it)[0] == '+') out.push_back(it->substr(1));
  return out;
}
}  // namespace

TEST_CASE("profiling ranges: every layer and op is named in the forward pass and again around its backward, balanced") {
  DiTConfig cfg = mdlm::testing::small_dit(21, 16, 2, 2, 8);
  cfg.time_conditioning = true;
  DiT model(cfg);
  ParamStore<Host, double> store(model.layout());
  model.init(store, 1);
  Host host;
  Tape<Host, double> tape(host);
  CHECK(!tape.ranges.on());  // the Host has no ranges of its own
  RangeLog log;
  tape.ranges = log.hook();
  const std::int64_t batch = 2, len = 8;
  std::vector<std::int32_t> x0(static_cast<std::size_t>(batch * len));
  for (std::size_t i = 0; i < x0.size(); ++i) x0[i] = static_cast<std::int32_t>((i * 3 + 1) % 20);
  DiffusionOptions opt;
  opt.mask_id = 20;
  auto out = MaskedDiffusion<LogLinearSchedule>(LogLinearSchedule{}, opt)
                 .loss(tape, model, store.params(), TokenBatch{x0.data(), batch, len, nullptr}, Philox{1}, 0);
  CHECK(log.depth == 0);
  const std::size_t forward_events = log.events.size();
  const double one = 1;
  tape.backward(out.loss, MatrixView<const double, Host>(&one, 1, 1));
  CHECK(log.depth == 0);
  CHECK(!log.underflow);
  const auto mid = log.events.begin() + static_cast<std::ptrdiff_t>(forward_events);
  const std::vector<std::string> layers{"sigma_map", "block 0", "block 1", "output_layer", "head"};
  CHECK(opened(log.events.begin(), mid, layers) == layers);
  CHECK(opened(mid, log.events.end(), layers) == std::vector<std::string>{"head", "output_layer", "block 1", "block 0", "sigma_map"});
  for (const char* op : {"embedding", "linear", "silu", "layernorm_modulate", "rope", "attention", "gated_residual",
                         "gather_rows", "cross_entropy"}) {
    CAPTURE(op);
    const std::string e = std::string("+") + op;
    const auto in_forward = std::count(log.events.begin(), mid, e), in_backward = std::count(mid, log.events.end(), e);
    CHECK(in_forward > 0);
    CHECK(in_backward == in_forward);
  }
  // The backward of block 1 runs inside its range: its ops' ranges open between "+block 1" and its close.
  const auto b1 = std::find(mid, log.events.end(), "+block 1");
  REQUIRE(b1 != log.events.end());
  CHECK(*(b1 + 1) == "+gated_residual");  // its last forward op, first backward
}

namespace {
// What a model computes with its output head's logits rows `multiple` apart
// (DiTConfig::head_ld_multiple): the logits' stride and valid columns, and per loss (MDLM with
// the trimmed and the full head, or AR; and the head's cross-entropy with NaN in the pad
// columns) its value and the whole parameter gradient.
template <class T>
struct HeadLdResult {
  std::int64_t ld = 0;
  std::vector<T> logits;
  std::vector<T> losses;
  std::vector<std::vector<T>> grads;
};

template <class T>
HeadLdResult<T> head_ld_run(DiTConfig cfg, std::int64_t multiple) {
  cfg.head_ld_multiple = multiple;
  DiT model(cfg);
  ParamStore<Host, T> store(model.layout());
  model.init(store, 5);
  Philox jitter{7};  // the head and adaLN are zero at init: jitter so they shape the logits
  for (std::int64_t i = 0; i < model.layout().buffer_elements(); ++i) {
    store.values().data()[i] += static_cast<T>(0.2 * (jitter.uniform_double(Purpose::Test, 0, static_cast<std::uint64_t>(i)) - 0.5));
  }
  Host host;
  const std::int64_t batch = 3, len = 8, n = batch * len, mask_id = cfg.vocab - 1;
  std::vector<std::int32_t> x0(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < x0.size(); ++i) x0[i] = static_cast<std::int32_t>((i * 13 + 5) % static_cast<std::size_t>(mask_id));
  const std::vector<double> sigma{0.4, 1.1, 2.5};
  const TapeOptions training{true, 17, 3};  // dropout on: the draws must not move either
  HeadLdResult<T> r;
  {
    Tape<Host, T> tape(host);
    tape.set_recording(false);
    auto logits = model.forward(tape, store.params(), DiTInputs{x0.data(), x0.data(), batch, len, sigma.data()});
    r.ld = logits.value.ld;
    r.logits = download(host, MatrixView<const T, Host>(logits.value));
  }
  auto record = [&](auto&& loss_on) {  // loss_on(tape) -> the (1, 1) loss variable
    store.zero_grad(host);
    Tape<Host, T> tape(host);
    tape.options = training;
    Var<T, Host> loss = loss_on(tape);
    const T one = 1;
    tape.backward(loss, MatrixView<const T, Host>(&one, 1, 1));
    r.losses.push_back(loss.value.data[0]);
    r.grads.push_back(download(host, MatrixView<const T, Host>(store.grads().data(), 1, model.layout().buffer_elements())));
  };
  std::vector<LossOutput<Host, T>> keep;  // the buffers the tapes read until backward
  if (cfg.ar) {
    record([&](Tape<Host, T>& tape) { return keep.emplace_back(Autoregressive{}.loss(tape, model, store.params(), TokenBatch{x0.data(), batch, len})).loss; });
  } else {
    for (bool trim : {true, false}) {
      DiffusionOptions opt;
      opt.mask_id = mask_id;
      opt.trim_head = trim;
      MaskedDiffusion<LogLinearSchedule> objective(LogLinearSchedule{}, opt);
      record([&](Tape<Host, T>& tape) {
        return keep.emplace_back(objective.loss(tape, model, store.params(), TokenBatch{x0.data(), batch, len}, Philox{23}, 4)).loss;
      });
    }
  }
  // The head's cross-entropy with NaN written into the pad columns after the head's GEMM: any
  // read of the pad (softmax, the in-place dlogits, the backward GEMMs, the bias-gradient sum)
  // would make the loss or a gradient NaN.
  std::vector<std::int32_t> target(static_cast<std::size_t>(n));
  std::vector<double> coef(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    target[static_cast<std::size_t>(i)] = x0[static_cast<std::size_t>((i * 5) % n)];
    coef[static_cast<std::size_t>(i)] = i % 4 == 1 ? 0.0 : 1.0 / static_cast<double>(i + 2);
  }
  record([&](Tape<Host, T>& tape) {
    Var<T, Host> logits = model.head(tape, store.params(), model.hidden(tape, store.params(), DiTInputs{x0.data(), x0.data(), batch, len, sigma.data()}));
    for (std::int64_t i = 0; i < logits.rows(); ++i)
      for (std::int64_t v = logits.cols(); v < logits.value.ld; ++v) logits.value.data[i * logits.value.ld + v] = std::numeric_limits<T>::quiet_NaN();
    return CrossEntropyOp<Host, T>::forward(tape, logits, {target.data(), coef.data(), cfg.ar ? -1 : mask_id});
  });
  return r;
}

template <class T>
void check_head_ld_changes_no_bit(const DiTConfig& cfg) {
  const HeadLdResult<T> want = head_ld_run<T>(cfg, 1);
  CHECK(want.ld == cfg.vocab);
  for (std::int64_t multiple : {8, 128}) {
    CAPTURE(multiple);
    const HeadLdResult<T> got = head_ld_run<T>(cfg, multiple);
    CHECK(got.ld == (cfg.vocab + multiple - 1) / multiple * multiple);
    CHECK(got.ld > cfg.vocab);  // the stride did change
    CHECK(got.logits == want.logits);
    REQUIRE(got.losses.size() == want.losses.size());
    for (std::size_t k = 0; k < want.losses.size(); ++k) {
      CAPTURE(k);
      CHECK(std::isfinite(static_cast<double>(got.losses[k])));
      CHECK(got.losses[k] == want.losses[k]);
      CHECK(got.grads[k] == want.grads[k]);
      CHECK(std::all_of(got.grads[k].begin(), got.grads[k].end(), [](T g) { return std::isfinite(static_cast<double>(g)); }));
    }
  }
}
}  // namespace

TEST_CASE("output head: padded logits rows (ld multiple 1, 8, 128) change no bit of the logits, losses or gradients") {
  // Vocabularies 37 and 131 are multiples of neither 8 nor 128: every multiple moves the stride.
  for (std::int64_t vocab : {37, 131}) {
    for (bool ar : {false, true}) {
      DiTConfig cfg = mdlm::testing::small_dit(vocab, 16, 2, 2, 8);
      cfg.ar = ar;
      cfg.time_conditioning = !ar;
      CAPTURE(vocab);
      CAPTURE(ar);
      check_head_ld_changes_no_bit<double>(cfg);
      check_head_ld_changes_no_bit<float>(cfg);
    }
  }
  CHECK(DiT(DiTConfig::preset("small", 50258)).head_ld<Host>() == 50258);  // the Host's default: compact
  DiTConfig bad = mdlm::testing::small_dit(37, 16, 2, 1, 8);
  bad.head_ld_multiple = -1;
  CHECK_THROWS_AS(DiT{bad}, Error);
}

TEST_CASE("output head: padded logits rows leave the samplers' tokens unchanged") {
  Host host;
  const std::int64_t n = 4, len = 24;
  const auto init = mdlm::testing::sampler_test_init();
  for (const auto& c : mdlm::testing::sampler_cases()) {
    std::visit([&](const auto& sampler) {
      INFO("sampler ", std::string(c.name));
      std::vector<std::int32_t> batched[2], single[2];
      for (int k = 0; k < 2; ++k) {
        DiTConfig cfg = mdlm::testing::sampler_test_dit(false);
        cfg.head_ld_multiple = k == 0 ? 1 : 128;  // vocab 30: rows 30 or 128 apart
        DiT model(cfg);
        ParamStore<Host, float> store(model.layout());
        mdlm::testing::init_sampler_test_model(model, store);
        batched[k] = sample_batched(host, model, store, 29, LogLinearSchedule{}, sampler, c.cfg, init, n, len).ids;
        single[k] = sample(model_denoiser(host, model, store, 29), LogLinearSchedule{}, sampler, c.cfg, init, n, len).ids;
      }
      CHECK(batched[1] == batched[0]);
      CHECK(single[1] == single[0]);
    }, c.sampler);
  }
}
