// The masked-diffusion core: schedules, time sampling, the absorbing forward process, the
// fused SUBS loss against the unfused path, head trimming, and the composed objectives.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "../common/reference.hpp"
#include "mdlm/mdlm.hpp"

using namespace mdlm;

namespace {

template <class S>
void check_schedule(const S& s) {
  const std::string name = S::name();
  CAPTURE(name);
  double prev_alpha = 2.0;
  for (int i = 0; i <= 1000; ++i) {
    const double t = i / 1000.0;
    CAPTURE(t);
    const double sg = s.sigma(t), ds = s.dsigma(t), a = s.alpha(t), m = s.move_chance(t);
    REQUIRE(std::isfinite(sg));
    REQUIRE(std::isfinite(ds));
    REQUIRE(std::isfinite(a));
    REQUIRE(std::isfinite(m));
    CHECK(a == doctest::Approx(std::exp(-sg)).epsilon(1e-12));
    CHECK(m == doctest::Approx(1.0 - a).epsilon(1e-9).scale(1e-12));
    CHECK(a <= prev_alpha);  // monotone non-increasing
    prev_alpha = a;
    if (t > 0) {
      const double w = s.loss_weight(t);
      REQUIRE(std::isfinite(w));
      CHECK(w == doctest::Approx(ds / std::expm1(sg)).epsilon(1e-9));  // sigma' / expm1(sigma)
    }
    if (t > 1e-3 && t < 1 - 1e-3) {
      const double h = 1e-6;
      CHECK(ds == doctest::Approx((s.sigma(t + h) - s.sigma(t - h)) / (2 * h)).epsilon(1e-6));
      CHECK(s.t_of_alpha(a) == doctest::Approx(t).epsilon(1e-8));
    }
  }
  CHECK(s.alpha(0.0) > s.alpha(1.0));
}

}  // namespace

TEST_CASE("schedules: closed forms against numerical derivatives, monotone, finite on [0, 1]") {
  check_schedule(LogLinearSchedule{});
  check_schedule(CosineSchedule{});
  check_schedule(LinearSchedule{});
  check_schedule(GeometricSchedule{});
  check_schedule(PolynomialSchedule{2.0});
  check_schedule(PolynomialSchedule{1.0});
}

TEST_CASE("log-linear: the NELBO weight is exactly 1/t; 1 - alpha_t = (1 - eps) t") {
  LogLinearSchedule s;
  for (double t : {1e-6, 1e-3, 0.25, 0.5, 0.999, 1.0}) {
    CHECK(s.loss_weight(t) == 1.0 / t);
    CHECK(s.dsigma(t) / std::expm1(s.sigma(t)) == doctest::Approx(1.0 / t).epsilon(1e-10));
    CHECK(s.move_chance(t) == doctest::Approx((1 - 1e-3) * t).epsilon(1e-15));
  }
  // Near t -> 0 sigma keeps full relative precision (log1p, not log(1 - x)).
  CHECK(s.sigma(1e-12) == doctest::Approx((1 - 1e-3) * 1e-12).epsilon(1e-9));
}

TEST_CASE("discrete-time weight tends to the continuous-time weight") {
  LogLinearSchedule ll;
  CosineSchedule cs;
  for (double t : {0.1, 0.5, 0.9}) {
    CHECK(discrete_loss_weight(ll, t, 100000) == doctest::Approx(ll.loss_weight(t)).epsilon(1e-4));
    CHECK(discrete_loss_weight(cs, t, 100000) == doctest::Approx(cs.loss_weight(t)).epsilon(1e-4));
  }
  // With alpha linear in t (log-linear, eps = 0) the discrete weight is exactly 1/t for any T.
  CHECK(discrete_loss_weight(LogLinearSchedule{0.0}, 0.25, 4) == doctest::Approx(4.0));
}

TEST_CASE("time sampling: stratified covers every stratum once; uniform; discrete grid") {
  const double eps = 1e-3;
  Philox rng{7};
  for (std::uint32_t step = 0; step < 20; ++step) {
    auto t = sample_times(rng, step, 8, TimeSampling::Stratified, eps);
    std::vector<int> strata(8, 0);
    for (double v : t) {
      REQUIRE(v >= eps);
      REQUIRE(v < 1.0);
      strata[static_cast<std::size_t>(std::floor((v - eps) / (1 - eps) * 8))]++;
    }
    for (int c : strata) CHECK(c == 1);
  }
  double sum = 0;
  const int n = 20000;
  auto u = sample_times(rng, 3, n, TimeSampling::Uniform, eps);
  for (double v : u) sum += v;
  CHECK(std::abs(sum / n - (0.5 * (1 - eps) + eps)) < 0.01);
  auto d = sample_times(rng, 4, 100, TimeSampling::Uniform, eps, 10);
  for (double v : d) {
    CHECK(v > 0.0);
    CHECK(v <= 1.0);
    CHECK(std::abs(v * 10 - std::round(v * 10)) < 1e-9);
  }
  CHECK(sample_times(rng, 5, 4, TimeSampling::Stratified, eps) == sample_times(rng, 5, 4, TimeSampling::Stratified, eps));
}

TEST_CASE("forward process: the masked fraction matches 1 - alpha_t; unmasked tokens are x0") {
  const std::int64_t batch = 64, len = 1024;
  const std::int32_t mask_id = 1000;
  std::vector<std::int32_t> x0(static_cast<std::size_t>(batch * len)), zt(x0.size());
  for (std::size_t i = 0; i < x0.size(); ++i) x0[i] = static_cast<std::int32_t>(i % 997);
  LogLinearSchedule s;
  auto t = sample_times(Philox{11}, 0, batch, TimeSampling::Stratified, s.eps);
  std::vector<double> move(t.size());
  for (std::size_t b = 0; b < t.size(); ++b) move[b] = s.move_chance(t[b]);
  absorbing_mask(Host{}, x0.data(), move.data(), batch * len, len, Philox{11}, 0, mask_id, zt.data());
  double worst_z = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    std::int64_t masked = 0;
    for (std::int64_t i = 0; i < len; ++i) {
      const std::size_t r = static_cast<std::size_t>(b * len + i);
      if (zt[r] == mask_id) ++masked;
      else REQUIRE(zt[r] == x0[r]);
    }
    const double p = move[static_cast<std::size_t>(b)], sd = std::sqrt(len * p * (1 - p)) + 1e-9;
    worst_z = std::max(worst_z, std::abs(static_cast<double>(masked) - len * p) / sd);
  }
  CHECK(worst_z < 4.5);  // 64 binomial counts: all within 4.5 standard deviations
}

TEST_CASE("fused SUBS loss equals the unfused path (materialized log-probs), and its gradient is exact") {
  const std::int64_t n = 12, vocab = 9, len = 4;
  const std::int32_t mask_id = 8;
  auto logits = mdlm::testing::random_vector<double>(static_cast<std::size_t>(n * vocab), 3);
  for (auto& v : logits) v *= 3;
  std::vector<std::int32_t> x0{1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4};
  std::vector<std::int32_t> zt{8, 2, 8, 8, 5, 8, 7, 0, 8, 8, 8, 4};
  std::vector<double> mask{1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0};
  std::vector<double> w{1 / 0.3, 1 / 0.7, 1 / 0.9};
  SubsTargets tg = SubsTargets::make(x0, zt, mask, w, len, mask_id);
  Host host;
  std::vector<double> lse(static_cast<std::size_t>(n));
  double fused = 0;
  cross_entropy_forward(host, MatrixView<const double, Host>(logits.data(), n, vocab), tg.rows(), lse.data(), &fused);
  std::vector<double> lp(static_cast<std::size_t>(n * vocab));
  subs_log_probs(host, MatrixView<const double, Host>(logits.data(), n, vocab), zt.data(), mask_id,
                 MatrixView<double, Host>(lp.data(), n, vocab));
  double unfused = 0, count = 0;
  for (double m : mask) count += m;
  for (std::int64_t r = 0; r < n; ++r) {
    unfused += -lp[static_cast<std::size_t>(r * vocab + x0[static_cast<std::size_t>(r)])] * w[static_cast<std::size_t>(r / len)] *
               mask[static_cast<std::size_t>(r)] / count;
  }
  CHECK(fused == doctest::Approx(unfused).epsilon(1e-13));
  // Unmasked rows carry over: zero loss there because log p[x0] = log 1 = 0.
  CHECK(lp[static_cast<std::size_t>(1 * vocab + 2)] == 0.0);
  GradcheckResult r = gradcheck(
      [&](Tape<Host, double>& t, const GradcheckLeaves& l) { return CrossEntropyOp<Host, double>::forward(t, l.var(0), tg.rows()); },
      {{"logits", MatrixView<double, Host>(logits.data(), n, vocab)}});
  CAPTURE(r.max_rel_error);
  CHECK(r.passed(1e-8));

  // The logits' gradient is written over the logits when they are an op's output (one (M, V)
  // buffer instead of two), and it is the gradient written into a separate buffer.
  const double one = 1;
  std::vector<double> g_in_place(logits.size(), 0.0), g_separate(logits.size(), 0.0);
  std::vector<std::int32_t> every_row(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) every_row[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
  Tape<Host, double> t1(host), t2(host);
  auto x = t1.leaf(MatrixView<double, Host>(logits.data(), n, vocab), MatrixView<double, Host>(g_in_place.data(), n, vocab));
  auto copied = GatherRowsOp<Host, double>::forward(t1, x, every_row.data(), every_row.data(), n);
  t1.backward(CrossEntropyOp<Host, double>::forward(t1, copied, tg.rows()), MatrixView<const double, Host>(&one, 1, 1));
  CHECK(t1.grad_out(copied).data == copied.value.data);
  auto y = t2.leaf(MatrixView<double, Host>(logits.data(), n, vocab), MatrixView<double, Host>(g_separate.data(), n, vocab));
  t2.backward(CrossEntropyOp<Host, double>::forward(t2, y, tg.rows()), MatrixView<const double, Host>(&one, 1, 1));
  CHECK(g_in_place == g_separate);
  CHECK(std::any_of(g_separate.begin(), g_separate.end(), [](double g) { return g != 0; }));
}

TEST_CASE("MaskedDiffusion: padded head rows take few distinct counts over 1,000 steps (a bounded GEMM plan cache)") {
  DiTConfig cfg = mdlm::testing::small_dit(21, 16, 2, 1, 8);
  DiT model(cfg);
  ParamStore<Host, float> store(model.layout());
  model.init(store, 1);
  const std::int64_t batch = 4, len = 64, n = batch * len;
  std::vector<std::int32_t> x0(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < x0.size(); ++i) x0[i] = static_cast<std::int32_t>((i * 7 + 1) % 20);
  DiffusionOptions opt;
  opt.mask_id = 20;
  opt.head_row_multiple = 32;
  MaskedDiffusion<LogLinearSchedule> obj(LogLinearSchedule{}, opt);
  Host host;
  Tape<Host, float> tape(host);
  tape.set_recording(false);
  std::set<std::int64_t> padded, masked;
  for (std::uint32_t step = 0; step < 1000; ++step) {
    tape.reset();
    auto out = obj.loss(tape, model, store.params(), TokenBatch{x0.data(), batch, len, nullptr}, Philox{4}, step);
    padded.insert(out.head_rows);
    masked.insert(out.masked);
    CHECK((out.head_rows % 32 == 0 || out.head_rows == n));
    CHECK(out.head_rows >= out.masked);
    CHECK(out.head_rows < out.masked + 32);
  }
  CHECK(padded.size() <= static_cast<std::size_t>(n / 32 + 1));
  CHECK(masked.size() > 3 * padded.size());  // unpadded, the head would take many more shapes
}

TEST_CASE("MaskedDiffusion: head trimming and its row padding change nothing but the work; draws are reproducible") {
  DiTConfig cfg = mdlm::testing::small_dit(21, 16, 2, 2, 8);
  cfg.dropout = 0.0f;
  DiT model(cfg);
  // 0: the head on every row; 1: on the masked rows; 2: on the masked rows padded to a multiple
  // of 16 with weight-0 rows (what CUDA does with 128).
  std::vector<ParamStore<Host, double>> stores;
  for (int k = 0; k < 3; ++k) stores.emplace_back(model.layout());
  ParamStore<Host, double>& full = stores[0];
  model.init(full, 1);
  Philox jitter{2};
  for (std::int64_t i = 0; i < model.layout().buffer_elements(); ++i) {
    full.values().data()[i] += 0.1 * (jitter.uniform_double(Purpose::Test, 0, static_cast<std::uint64_t>(i)) - 0.5);
    for (int k = 1; k < 3; ++k) stores[static_cast<std::size_t>(k)].values().data()[i] = full.values().data()[i];
  }
  const std::int64_t batch = 4, len = 16;
  std::vector<std::int32_t> x0(static_cast<std::size_t>(batch * len));
  for (std::size_t i = 0; i < x0.size(); ++i) x0[i] = static_cast<std::int32_t>((i * 5 + 3) % 20);
  TokenBatch tb{x0.data(), batch, len, nullptr};
  DiffusionOptions opt;
  opt.mask_id = 20;
  Host host;
  double loss[3];
  std::int64_t head_rows[3], masked = 0;
  for (int k = 0; k < 3; ++k) {
    opt.trim_head = k > 0;
    opt.head_row_multiple = k == 2 ? 16 : 0;  // 0: the Host's default, 1
    MaskedDiffusion<LogLinearSchedule> obj(LogLinearSchedule{}, opt);
    Tape<Host, double> tape(host);
    ParamStore<Host, double>& store = stores[static_cast<std::size_t>(k)];
    auto out = obj.loss(tape, model, store.params(), tb, Philox{9}, 5);
    loss[k] = out.loss.value.data[0];
    head_rows[k] = out.head_rows;
    masked = out.masked;
    CHECK(out.masked > 0);
    CHECK(out.loss_tokens == batch * len);
    const double one = 1;
    tape.backward(out.loss, MatrixView<const double, Host>(&one, 1, 1));
  }
  CHECK(loss[0] == doctest::Approx(loss[1]).epsilon(1e-13));
  CHECK(loss[2] == loss[1]);  // weight-0 rows add exact zeros
  CHECK(head_rows[0] == batch * len);
  CHECK(head_rows[1] == masked);  // only masked rows
  CHECK(head_rows[2] == std::min(batch * len, (masked + 15) / 16 * 16));
  CHECK(head_rows[2] > head_rows[1]);
  for (int k = 1; k < 3; ++k) {
    double gerr = 0, gscale = 0;
    for (std::int64_t i = 0; i < model.layout().buffer_elements(); ++i) {
      gerr = std::max(gerr, std::abs(full.grads().data()[i] - stores[static_cast<std::size_t>(k)].grads().data()[i]));
      gscale = std::max(gscale, std::abs(full.grads().data()[i]));
    }
    CHECK(gerr / gscale < 1e-12);
  }
  // Same seed and step: same draws; another step: other draws.
  MaskedDiffusion<LogLinearSchedule> obj(LogLinearSchedule{}, opt);
  Tape<Host, double> t1(host), t2(host), t3(host);
  auto a = obj.loss(t1, model, full.params(), tb, Philox{9}, 5);
  auto b = obj.loss(t2, model, full.params(), tb, Philox{9}, 5);
  auto c = obj.loss(t3, model, full.params(), tb, Philox{9}, 6);
  CHECK(a.zt == b.zt);
  CHECK(a.t == b.t);
  CHECK(a.loss.value.data[0] == b.loss.value.data[0]);
  CHECK(a.zt != c.zt);
}

TEST_CASE("objectives check their backbone and inputs") {
  DiTConfig cfg = mdlm::testing::small_dit(10, 8, 2, 1, 4);
  DiT dit(cfg);
  cfg.ar = true;
  DiT ar(cfg);
  ParamStore<Host, double> pd(dit.layout()), pa(ar.layout());
  std::vector<std::int32_t> x{1, 2, 3, 4};
  TokenBatch tb{x.data(), 1, 4, nullptr};
  Host host;
  Tape<Host, double> tape(host);
  DiffusionOptions opt;
  opt.mask_id = 9;
  MaskedDiffusion<LogLinearSchedule> obj(LogLinearSchedule{}, opt);
  CHECK_THROWS_WITH_AS(obj.loss(tape, ar, pa.params(), tb, Philox{1}, 0), doctest::Contains("needs a DiT backbone"), Error);
  CHECK_THROWS_WITH_AS(Autoregressive{}.loss(tape, dit, pd.params(), tb), doctest::Contains("AR (causal) backbone"), Error);
  opt.mask_id = 10;
  CHECK_THROWS_WITH_AS(MaskedDiffusion<LogLinearSchedule>(LogLinearSchedule{}, opt).loss(tape, dit, pd.params(), tb, Philox{1}, 0),
                       doctest::Contains("outside the model vocabulary"), Error);
  std::vector<double> none{0, 0, 0, 0};
  TokenBatch empty{x.data(), 1, 4, none.data()};
  CHECK_THROWS_WITH_AS(Autoregressive{}.loss(tape, ar, pa.params(), empty), doctest::Contains("selects no target"), Error);
  std::vector<std::int32_t> bad{1, 2, 30, 4};
  TokenBatch oob{bad.data(), 1, 4, nullptr};
  CHECK_THROWS_WITH_AS(Autoregressive{}.loss(tape, ar, pa.params(), oob), doctest::Contains("token id 30 at position 2"), Error);
}

TEST_CASE("golden fixtures also match with the untrimmed head") {
  for (const char* name : {"mdlm_tiny.safetensors", "mdlm_tiny_timecond_pad.safetensors"}) {
    CAPTURE(name);
    Host host;
    auto g = GoldenFixture::load(std::string(MDLM_TEST_FIXTURES) + "/" + name);
    for (const TensorError& e : check_golden<Host, double>(host, g, /*trim_head=*/false).tensors) {
      CAPTURE(e.name);
      CHECK(e.max_rel < 1e-10);
    }
  }
}
