// The training step's status in backend memory (optim/step_status.hpp, TrainStep's device path,
// the Trainer's deferred reads): its functions, bit-identity of the deferred path with the
// per-step host path, and a non-finite step found and skipped on the device.

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../common/training.hpp"
#include "mdlm/mdlm.hpp"

using namespace mdlm;
namespace fs = std::filesystem;
using mdlm::testing::small_corpus;
using mdlm::testing::temp_dir;
using mdlm::testing::tiny_run;

namespace {

bool same_bits(double a, double b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

template <class V>
bool same_bits(const std::vector<V>& a, const std::vector<V>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(V)) == 0);
}

// A DiT small enough to step many times, every weight nonzero, and a fixed batch.
struct SmallModel {
  DiTConfig mc;
  DiT model;
  std::vector<std::int32_t> ids;
  static DiTConfig config() {
    DiTConfig c;
    c.vocab = 40, c.hidden = 16, c.heads = 2, c.blocks = 1, c.cond_dim = 8, c.freq_dim = 16;
    return c;
  }
  SmallModel() : mc(config()), model(mc), ids(2 * 8) {
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>((i * 7 + 3) % 39);
  }
  template <class T>
  void init(Host& ctx, ParamStore<Host, T>& store, AdamW<Host, T>& opt) const {
    const std::int64_t n = model.layout().buffer_elements();
    Philox rng{5};
    std::vector<T> w(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i)
      w[static_cast<std::size_t>(i)] =
          static_cast<T>(0.6 * rng.uniform_double(Purpose::Init, 0, static_cast<std::uint64_t>(i)) - 0.3);
    std::copy(w.begin(), w.end(), store.values().data());
    opt.load(ctx, w, w);
  }
};

// A MaskedDiffusion whose loss of one micro-batch draw (step * accum + micro) is replaced by NaN
// after the forward pass: the gradient stays finite, the loss does not.
struct NanLossAt : MaskedDiffusion<LogLinearSchedule> {
  using Base = MaskedDiffusion<LogLinearSchedule>;
  std::uint32_t draw = 0xffffffffu;
  NanLossAt() = default;
  NanLossAt(Base b, std::uint32_t d) : Base(b), draw(d) {}
  NanLossAt with_mask_id(std::int64_t id) const { return {Base::with_mask_id(id), draw}; }
  template <class B, class T, class G>
  LossOutput<B, T> loss(Tape<B, T, G>& tape, const DiT& model, const Params<B, T, G>& p, const TokenBatch& batch,
                        Philox rng, std::uint32_t step) const {
    LossOutput<B, T> out = Base::loss(tape, model, p, batch, rng, step);
    if (step == draw && tape.recording())
      out.loss.value.data[0] = from_compute<T>(std::numeric_limits<compute_t<T>>::quiet_NaN());
    return out;
  }
};

// The train rows of a run's metrics.jsonl: step -> (loss, grad_norm).
std::map<std::int64_t, std::pair<double, double>> train_rows(const fs::path& dir) {
  std::map<std::int64_t, std::pair<double, double>> rows;
  std::istringstream lines(mdlm::testing::read_bytes(dir / "metrics.jsonl"));
  std::string line;
  while (std::getline(lines, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.at("split") == "train")
      rows[j.at("step").get<std::int64_t>()] = {j.at("loss").get<double>(), j.at("grad_norm").get<double>()};
  }
  return rows;
}

}  // namespace

TEST_CASE("step status: clip multiplier, norm, window, sticky flag keeping the first bad step") {
  for (double norm : {0.0, 0.5, 0.999999, 1.0, 2.0, 1e30, std::numeric_limits<double>::infinity()}) {
    for (double clip : {0.0, 0.25, 1.0, 5.0}) {
      const double expect = clip > 0 ? std::min(1.0, clip / (norm + 1e-6)) : 1.0;
      CHECK(same_bits(clip_multiplier(norm, clip), expect));
    }
  }
  CHECK(clip_multiplier(std::nan(""), 1.0) == 1.0);  // as std::min(1.0, NaN) is
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  CHECK(step_status_finite(1.5));
  CHECK(step_status_finite(-0.0));
  CHECK(!step_status_finite(nan));
  CHECK(!step_status_finite(inf));
  CHECK(!step_status_finite(-inf));

  Host host;
  StepStatus s;
  std::vector<double> window(8, -1.0);
  const float l1[1] = {3.0f}, l2[1] = {5.0f};
  step_status_add_loss(host, &s, l1, 2, true);
  step_status_add_loss(host, &s, l2, 2, false);
  CHECK(s.loss == 0.0 + 3.0 / 2.0 + 5.0 / 2.0);
  s.sumsq = 16.0;
  step_status_finish(host, &s, 1.0, 1, window.data());
  CHECK(s.norm == 4.0);
  CHECK(same_bits(s.multiplier, 1.0 / (4.0 + 1e-6)));
  CHECK(s.bad == 0);
  CHECK(window[0] == 4.0);
  CHECK(window[1] == 4.0);
  // A new step starts the loss again (the first micro-batch), keeps the flag clear.
  step_status_add_loss(host, &s, l1, 1, true);
  s.sumsq = 0.25;
  step_status_finish(host, &s, 1.0, 2, window.data() + 2);
  CHECK(s.loss == 3.0);
  CHECK(s.multiplier == 1.0);
  CHECK(s.bad == 0);
  // A NaN loss at step 3: flagged, with its numbers.
  const double bad_loss[1] = {nan};
  step_status_add_loss(host, &s, bad_loss, 1, true);
  s.sumsq = 1.0;
  step_status_finish(host, &s, 1.0, 3, window.data() + 4);
  CHECK(s.bad == 1);
  CHECK(s.bad_step == 3);
  CHECK(std::isnan(s.bad_loss));
  CHECK(s.bad_norm == 1.0);
  CHECK(std::isnan(window[4]));
  // An infinite norm at step 4 with a finite loss: the flag stays, the first bad step is kept.
  step_status_add_loss(host, &s, l2, 1, true);
  s.sumsq = inf;
  step_status_finish(host, &s, 1.0, 4, window.data() + 6);
  CHECK(s.bad == 1);
  CHECK(s.bad_step == 3);
  CHECK(std::isnan(s.bad_loss));
  CHECK(s.bad_norm == 1.0);
  CHECK(window[6] == 5.0);
  CHECK(window[7] == inf);
}

TEST_CASE("step status: the Host sum of squares into preallocated partials is the host-returning one, bit for bit") {
  Host host;
  for (std::int64_t n : {0, 1, 4095, 4096, 4097, 20000}) {
    CAPTURE(n);
    std::vector<float> g(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i)
      g[static_cast<std::size_t>(i)] = static_cast<float>(std::sin(0.37 * static_cast<double>(i)) * 3.0);
    std::vector<double> partial(static_cast<std::size_t>(sum_of_squares_partials(host, n)));
    CHECK(partial.size() == static_cast<std::size_t>(std::max<std::int64_t>(1, (n + 4095) / 4096)));
    StepStatus s;
    sum_of_squares_into(host, g.data(), n, partial.data(), step_status_sumsq(&s));
    CHECK(same_bits(s.sumsq, sum_of_squares(host, g.data(), n)));
    double ref = 0;  // chunks of 4096, each summed in order, then the chunks in order
    for (std::int64_t c = 0; c * 4096 < n; ++c) {
      double part = 0;
      for (std::int64_t i = c * 4096; i < std::min(n, (c + 1) * 4096); ++i)
        part += static_cast<double>(g[static_cast<std::size_t>(i)]) * g[static_cast<std::size_t>(i)];
      ref += part;
    }
    CHECK(same_bits(s.sumsq, ref));
  }
}

TEST_CASE("step status: AdamW and EMA read the multiplier from the status and skip a bad step") {
  Host host;
  const std::int64_t n = 3000;
  std::vector<double> w(n), grad(n);
  for (std::int64_t i = 0; i < n; ++i) {
    w[static_cast<std::size_t>(i)] = std::cos(0.1 * static_cast<double>(i));
    grad[static_cast<std::size_t>(i)] = std::sin(0.3 * static_cast<double>(i));
  }
  AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  AdamW<Host, double> a(n, cfg, 0.99), b(n, cfg, 0.99);
  a.load(host, w, w);
  b.load(host, w, w);
  std::vector<double> va(n), vb(n);
  const double norm = std::sqrt(sum_of_squares(host, grad.data(), n));
  StepStatus s;
  s.norm = norm;
  s.multiplier = clip_multiplier(norm, 0.5);
  REQUIRE(s.multiplier < 1.0);
  a.update(host, grad.data(), va.data(), 1e-2, norm, 0.5);
  b.update(host, grad.data(), vb.data(), 1e-2, &s);
  const auto all = [&](AdamW<Host, double>& o) {
    std::vector<double> v(o.master(), o.master() + n);
    v.insert(v.end(), o.ema(), o.ema() + n);
    v.insert(v.end(), o.m(), o.m() + n);
    v.insert(v.end(), o.v(), o.v() + n);
    return v;
  };
  CHECK(same_bits(all(a), all(b)));
  CHECK(same_bits(va, vb));
  // A bad status: nothing changes (master, moments, EMA, the values written).
  const std::vector<double> before = all(b), values_before = vb;
  s.bad = 1;
  b.update(host, grad.data(), vb.data(), 1e-2, &s);
  CHECK(same_bits(all(b), before));
  CHECK(same_bits(vb, values_before));
}

TEST_CASE("train step: the device path read every few steps is bit-identical to the per-step host path, clipping on") {
  const SmallModel sm;
  const ParamLayout& layout = sm.model.layout();
  const std::int64_t n = layout.buffer_elements();
  DiffusionOptions o;
  o.mask_id = 39;
  const MaskedDiffusion<LogLinearSchedule> mdlm(LogLinearSchedule{}, o);
  const double clip = 0.05;  // below the norms: the multiplier matters
  const std::int64_t steps = 7, accum = 2;
  Host ctx;
  auto micro_loss = [&](ParamStore<Host, double>& store, std::int64_t step) {
    return [&, step](Tape<Host, double, double>& tape, std::int64_t micro) {
      TokenBatch tb{sm.ids.data(), 2, 8, nullptr};
      return mdlm.loss(tape, sm.model, store.params(), tb, Philox{3}, static_cast<std::uint32_t>(step * accum + micro));
    };
  };
  // The host path: gradient() returns the loss and norm each step, apply() clips with it.
  ParamStore<Host, double> s1(layout);
  AdamW<Host, double> o1(n, AdamWConfig{}, 0.9);
  sm.init(ctx, s1, o1);
  TrainStep<Host, double, double> t1(ctx, s1, o1);
  std::vector<double> loss1, norm1;
  for (std::int64_t k = 1; k <= steps; ++k) {
    const auto g = t1.gradient(accum, micro_loss(s1, k));
    loss1.push_back(g.loss);
    norm1.push_back(g.norm);
    t1.apply(1e-2, g.norm, clip);
  }
  // The device path, read after steps 3, 6, 7 (the window grows past its first capacity).
  ParamStore<Host, double> s2(layout);
  AdamW<Host, double> o2(n, AdamWConfig{}, 0.9);
  sm.init(ctx, s2, o2);
  TrainStep<Host, double, double> t2(ctx, s2, o2);
  std::vector<double> loss2, norm2;
  for (std::int64_t k = 1; k <= steps; ++k) {
    t2.device_gradient(accum, micro_loss(s2, k), k, clip);
    t2.device_apply(1e-2);
    if (k % 3 == 0 || k == steps) {
      const auto r = t2.read_status();
      CHECK(!r.bad);
      CHECK(r.loss.size() == (k == steps ? 1u : 3u));
      loss2.insert(loss2.end(), r.loss.begin(), r.loss.end());
      norm2.insert(norm2.end(), r.norm.begin(), r.norm.end());
      CHECK(same_bits(r.status.norm, r.norm.back()));
      CHECK(same_bits(r.status.multiplier, clip_multiplier(r.norm.back(), clip)));
    }
  }
  CHECK(norm1.front() > clip);
  CHECK(same_bits(loss1, loss2));
  CHECK(same_bits(norm1, norm2));
  CHECK(
      same_bits(std::vector<double>(o1.master(), o1.master() + n), std::vector<double>(o2.master(), o2.master() + n)));
  CHECK(same_bits(std::vector<double>(o1.ema(), o1.ema() + n), std::vector<double>(o2.ema(), o2.ema() + n)));
  CHECK(same_bits(std::vector<double>(o1.m(), o1.m() + n), std::vector<double>(o2.m(), o2.m() + n)));
  CHECK(same_bits(std::vector<double>(o1.v(), o1.v() + n), std::vector<double>(o2.v(), o2.v() + n)));
  CHECK(same_bits(std::vector<double>(s1.values().data(), s1.values().data() + n),
                  std::vector<double>(s2.values().data(), s2.values().data() + n)));
}

TEST_CASE(
    "train step: a NaN loss at step k is reported as step k at the next read, its update and later ones skipped") {
  const SmallModel sm;
  const ParamLayout& layout = sm.model.layout();
  const std::int64_t n = layout.buffer_elements();
  DiffusionOptions o;
  o.mask_id = 39;
  const NanLossAt nan_at(MaskedDiffusion<LogLinearSchedule>(LogLinearSchedule{}, o),
                         /*draw=*/4 * 2 + 1);  // step 4, micro 1
  Host ctx;
  ParamStore<Host, float> store(layout);
  AdamW<Host, float> opt(n, AdamWConfig{}, 0.9);
  sm.init(ctx, store, opt);
  TrainStep<Host, float, float> step(ctx, store, opt);
  std::vector<float> master, ema, m, v, values;
  for (std::int64_t k = 1; k <= 5; ++k) {
    step.device_gradient(
        2,
        [&](Tape<Host, float, float>& tape, std::int64_t micro) {
          TokenBatch tb{sm.ids.data(), 2, 8, nullptr};
          return nan_at.loss(tape, sm.model, store.params(), tb, Philox{3}, static_cast<std::uint32_t>(k * 2 + micro));
        },
        k, 1.0);
    step.device_apply(1e-2);
    if (k == 3) {  // the state after step k - 1 (Host memory: looking changes nothing)
      master.assign(opt.master(), opt.master() + n);
      ema.assign(opt.ema(), opt.ema() + n);
      m.assign(opt.m(), opt.m() + n);
      v.assign(opt.v(), opt.v() + n);
      values.assign(store.values().data(), store.values().data() + n);
    }
  }
  const auto r = step.read_status();
  CHECK(r.bad);
  CHECK(r.status.bad_step == 4);
  CHECK(std::isnan(r.status.bad_loss));
  CHECK(std::isfinite(r.status.bad_norm));  // the gradient was finite: only the loss was not
  REQUIRE(r.loss.size() == 5);
  CHECK(std::isfinite(r.loss[2]));
  CHECK(std::isnan(r.loss[3]));
  CHECK(same_bits(master, std::vector<float>(opt.master(), opt.master() + n)));
  CHECK(same_bits(ema, std::vector<float>(opt.ema(), opt.ema() + n)));
  CHECK(same_bits(m, std::vector<float>(opt.m(), opt.m() + n)));
  CHECK(same_bits(v, std::vector<float>(opt.v(), opt.v() + n)));
  CHECK(same_bits(values, std::vector<float>(store.values().data(), store.values().data() + n)));
}

TEST_CASE(
    "trainer: logging every few steps gives the per-step run's losses, norms, metrics rows and checkpoint, bit for "
    "bit") {
  Host host;
  using HostTrainer = Trainer<Host, float, float>;
  TrainConfig every = tiny_run(temp_dir("status_log1"));
  every.log_every = 1;
  every.clip = 0.05;  // the multiplier below 1 on some steps
  TrainConfig sparse = tiny_run(temp_dir("status_log4"));
  sparse.log_every = 4;
  sparse.clip = every.clip;
  sparse.save_every = 5;  // a read before a checkpoint that is not a logging step
  const TrainResult a = HostTrainer{}.run(host, every);
  const TrainResult b = HostTrainer{}.run(host, sparse);
  REQUIRE(a.losses.size() == 6);
  CHECK(same_bits(a.losses, b.losses));
  CHECK(same_bits(a.valid.nats, b.valid.nats));
  const auto rows_a = train_rows(every.out_dir), rows_b = train_rows(sparse.out_dir);
  CHECK(rows_a.size() == 6);
  REQUIRE(rows_b.size() == 2);  // steps 4 and 6
  for (std::int64_t s : {4, 6}) {
    CAPTURE(s);
    CHECK(same_bits(rows_b.at(s).second, rows_a.at(s).second));  // the step's gradient norm
  }
  // The logged loss is the mean since the last log line.
  CHECK(same_bits(rows_b.at(4).first, (((a.losses[0] + a.losses[1]) + a.losses[2]) + a.losses[3]) / 4.0));
  CHECK(same_bits(rows_b.at(6).first, (a.losses[4] + a.losses[5]) / 2.0));
  const LoadedCheckpoint ca = load_checkpoint(every.out_dir / "checkpoint.safetensors");
  const LoadedCheckpoint cb = load_checkpoint(sparse.out_dir / "checkpoint.safetensors");
  CHECK(ca.tensors.master == cb.tensors.master);
  CHECK(ca.tensors.ema == cb.tensors.ema);
  CHECK(ca.tensors.m == cb.tensors.m);
  CHECK(ca.tensors.v == cb.tensors.v);
}

TEST_CASE("trainer: a NaN loss at step 3 with log_every 5 names step 3 and keeps the step-2 checkpoint") {
  const fs::path dir = temp_dir("status_nan3");
  TrainConfig c = tiny_run(dir);
  c.log_every = 5;
  c.save_every = 2;  // step 2 saved; step 4's save reads first and stops
  Host host;
  const NanLossAt objective(MaskedDiffusion<LogLinearSchedule>(LogLinearSchedule{}),
                            /*draw=*/3 * 2 + 0);  // step 3, micro 0
  std::string message;
  try {
    Trainer<Host, float, float, NanLossAt>{objective}.run(host, c);
  } catch (const Error& e) {
    message = e.what();
  }
  CAPTURE(message);
  CHECK(message.find("non-finite loss at step 3 (loss ") != std::string::npos);
  CHECK(message.find("stopped before applying the update; the last good checkpoint is '") != std::string::npos);
  CHECK(message.find("' (step 2)") != std::string::npos);
  const LoadedCheckpoint k = load_checkpoint(dir / "checkpoint.safetensors");
  CHECK(k.training_state["step"] == 2);
  // The checkpoint is the one a clean run writes at step 2.
  TrainConfig clean = tiny_run(temp_dir("status_clean2"));
  clean.stop_after = 2;
  Trainer<Host, float, float>{}.run(host, clean);
  CHECK(load_checkpoint(clean.out_dir / "checkpoint.safetensors").tensors.master == k.tensors.master);
}
