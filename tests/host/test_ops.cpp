// Every op's backward against central finite differences (fp64, Host), plus the tape's
// gradient bookkeeping.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "../common/reference.hpp"
#include "mdlm/mdlm.hpp"

using namespace mdlm;
using mdlm::testing::random_vector;
using V = Var<double, Host>;
using TapeH = Tape<Host, double>;

namespace {

// Owns the values of one gradcheck input.
struct Input {
  std::string name;
  std::vector<double> data;
  std::int64_t rows, cols;
  Input(std::string n, std::int64_t r, std::int64_t c, std::uint64_t seed, double scale = 1.0)
      : name(std::move(n)), data(random_vector<double>(static_cast<std::size_t>(r * c), seed)), rows(r), cols(c) {
    for (auto& v : data) v *= scale;
  }
  GradcheckInput view() { return {name, MatrixView<double, Host>(data.data(), rows, cols)}; }
};

template <class Build>
void expect_gradients(Build&& build, std::vector<Input*> inputs, GradcheckOptions opt = {}) {
  std::vector<GradcheckInput> views;
  for (Input* in : inputs) views.push_back(in->view());
  GradcheckResult r = gradcheck(build, views, opt);
  CAPTURE(r.worst_input);
  CAPTURE(r.max_rel_error);
  CHECK(r.elements_checked > 0);
  CHECK(r.max_rel_error < 1e-7);
}

}  // namespace

TEST_CASE("gradcheck: Linear with bias, without bias, with fused GELU") {
  Input x("x", 6, 5, 1), w("w", 7, 5, 2), b("b", 1, 7, 3);
  expect_gradients([](TapeH& t, const GradcheckLeaves& g) { return LinearOp<Host, double>::forward(t, g.var(0), g.param(1), g.param(2)); },
                   {&x, &w, &b});
  expect_gradients([](TapeH& t, const GradcheckLeaves& g) { return LinearOp<Host, double>::forward(t, g.var(0), g.param(1), {}); },
                   {&x, &w});
  expect_gradients(
      [](TapeH& t, const GradcheckLeaves& g) { return LinearOp<Host, double>::forward(t, g.var(0), g.param(1), g.param(2), /*gelu=*/true); },
      {&x, &w, &b});
}

TEST_CASE("gradcheck: LayerNorm fused with adaLN modulation, and plain") {
  const std::int64_t batches = 2, seq = 3, c = 6;
  Input x("x", batches * seq, c, 4, 2.0), w("w", 1, c, 5), shift("shift", batches, c, 6), scale("scale", batches, c, 7);
  expect_gradients(
      [&](TapeH& t, const GradcheckLeaves& g) {
        return LayerNormModulateOp<Host, double>::forward(t, g.var(0), g.param(1), g.var(2), g.var(3), seq, 1e-5);
      },
      {&x, &w, &shift, &scale});
  expect_gradients(
      [&](TapeH& t, const GradcheckLeaves& g) { return LayerNormModulateOp<Host, double>::forward(t, g.var(0), g.param(1), V{}, V{}, seq, 1e-5); },
      {&x, &w});
}

TEST_CASE("gradcheck: gated residual with and without dropout, and ungated") {
  const std::int64_t batches = 2, seq = 4, c = 5;
  Input x("x", batches * seq, c, 8), y("y", batches * seq, c, 9), gate("gate", batches, c, 10);
  auto gated = [&](TapeH& t, const GradcheckLeaves& g) { return GatedResidualOp<Host, double>::forward(t, g.var(0), g.var(1), g.var(2), seq, 0.3f); };
  expect_gradients(gated, {&x, &y, &gate});  // not training: no dropout
  GradcheckOptions drop;
  drop.tape = {true, 11, 2};
  expect_gradients(gated, {&x, &y, &gate}, drop);
  expect_gradients([&](TapeH& t, const GradcheckLeaves& g) { return GatedResidualOp<Host, double>::forward(t, g.var(0), g.var(1), V{}, seq); },
                   {&x, &y});
}

TEST_CASE("dropout: keeps about 1 - p of the branch, scaled by 1 / (1 - p), same mask on every backend call") {
  Host host;
  TapeH tape(host);
  tape.options = {true, 5, 1};
  const std::int64_t rows = 64, cols = 64;
  std::vector<double> zeros(rows * cols, 0.0), ones(rows * cols, 1.0);
  V x = tape.constant(MatrixView<double, Host>(zeros.data(), rows, cols));
  V y = tape.constant(MatrixView<double, Host>(ones.data(), rows, cols));
  V out = GatedResidualOp<Host, double>::forward(tape, x, y, V{}, rows, 0.25f);
  std::int64_t kept = 0;
  for (std::int64_t i = 0; i < rows * cols; ++i) {
    const double v = out.value.data[i];
    REQUIRE((v == 0.0 || std::abs(v - 1.0 / 0.75) < 1e-12));
    kept += v != 0.0;
  }
  // 4096 Bernoulli(0.75): sd = 27.7; allow 5 sd.
  CHECK(std::abs(static_cast<double>(kept) - 3072.0) < 140);
}

TEST_CASE("gradcheck: RoPE on q and k (v passes through)") {
  const std::int64_t seq = 5, heads = 2, d = 4;
  Input qkv("qkv", 2 * seq, 3 * heads * d, 12);
  expect_gradients([&](TapeH& t, const GradcheckLeaves& g) { return RopeOp<Host, double>::forward(t, g.var(0), seq, heads, 10000.0); },
                   {&qkv});
}

TEST_CASE("RoPE rotates pairs (i, i + D/2) by t * base^(-2i/D) and leaves position 0 and v alone") {
  Host host;
  TapeH tape(host);
  const std::int64_t seq = 3, heads = 1, d = 4;
  std::vector<double> qkv(static_cast<std::size_t>(seq * 3 * d));
  for (std::size_t i = 0; i < qkv.size(); ++i) qkv[i] = static_cast<double>(i % 7) - 3.0;
  V in = tape.constant(MatrixView<double, Host>(qkv.data(), seq, 3 * d));
  V out = RopeOp<Host, double>::forward(tape, in, seq, heads, 100.0);
  for (std::int64_t c = 0; c < 3 * d; ++c) CHECK(out.value.data[c] == qkv[static_cast<std::size_t>(c)]);  // t = 0
  const std::int64_t t = 2, i = 1;  // theta = 2 * 100^(-2/4) = 0.2
  const double th = 0.2, a = qkv[static_cast<std::size_t>(t * 3 * d + i)], b = qkv[static_cast<std::size_t>(t * 3 * d + i + 2)];
  CHECK(out.value.data[t * 3 * d + i] == doctest::Approx(a * std::cos(th) - b * std::sin(th)).epsilon(1e-14));
  CHECK(out.value.data[t * 3 * d + i + 2] == doctest::Approx(b * std::cos(th) + a * std::sin(th)).epsilon(1e-14));
  for (std::int64_t c = 2 * d; c < 3 * d; ++c) CHECK(out.value.data[t * 3 * d + c] == qkv[static_cast<std::size_t>(t * 3 * d + c)]);
}

TEST_CASE("gradcheck: attention, bidirectional and causal") {
  const std::int64_t seq = 4, heads = 2, d = 3;
  Input qkv("qkv", 2 * seq, 3 * heads * d, 13);
  for (bool causal : {false, true}) {
    CAPTURE(causal);
    expect_gradients(
        [&](TapeH& t, const GradcheckLeaves& g) { return AttentionOp<Host, double>::forward(t, g.var(0), seq, heads, causal); },
        {&qkv});
  }
}

TEST_CASE("causal attention: the first position attends only to itself; rows sum to one") {
  Host host;
  TapeH tape(host);
  const std::int64_t seq = 3, heads = 1, d = 2;
  auto qkv = random_vector<double>(static_cast<std::size_t>(seq * 3 * d), 21);
  V in = tape.constant(MatrixView<double, Host>(qkv.data(), seq, 3 * d));
  V out = AttentionOp<Host, double>::forward(tape, in, seq, heads, true);
  for (std::int64_t e = 0; e < d; ++e) CHECK(out.value.data[e] == doctest::Approx(qkv[static_cast<std::size_t>(2 * d + e)]));
}

TEST_CASE("gradcheck: embedding (table), SiLU") {
  Input table("table", 5, 3, 14), x("x", 4, 3, 15, 3.0);
  std::vector<std::int32_t> ids{4, 0, 4, 2, 1, 4};
  expect_gradients(
      [&](TapeH& t, const GradcheckLeaves& g) {
        return EmbeddingOp<Host, double>::forward(t, ids.data(), ids.data(), static_cast<std::int64_t>(ids.size()), g.param(0));
      },
      {&table});
  expect_gradients([&](TapeH& t, const GradcheckLeaves& g) { return SiluOp<Host, double>::forward(t, g.var(0)); }, {&x});
}

TEST_CASE("embedding rejects out-of-range token ids with the position and value") {
  Host host;
  TapeH tape(host);
  std::vector<double> table(10, 0.0);
  std::vector<std::int32_t> ids{1, 5};
  Param<double, double, Host> tv{MatrixView<double, Host>(table.data(), 5, 2), {}};
  try {
    EmbeddingOp<Host, double>::forward(tape, ids.data(), ids.data(), 2, tv);
    FAIL("no exception");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("token id 5 at position 1 is out of range for vocabulary size 5") != std::string::npos);
  }
}

TEST_CASE("tape: fan-out gradients add up, slices write into their parent's gradient") {
  // y = silu(x) + x (through a residual), checked by gradcheck: x's gradient has two writers.
  Input x("x", 3, 4, 16);
  expect_gradients(
      [](TapeH& t, const GradcheckLeaves& g) {
        V x = g.var(0);
        V s = SiluOp<Host, double>::forward(t, x);
        return GatedResidualOp<Host, double>::forward(t, x, s, V{}, 3);
      },
      {&x});
  // Slices: a Linear produces (N, 2C); both halves feed a gated residual as gate and branch.
  Input c("c", 2, 3, 17), w("w", 8, 3, 18), base("base", 2, 4, 19);
  expect_gradients(
      [](TapeH& t, const GradcheckLeaves& g) {
        V mod = LinearOp<Host, double>::forward(t, g.var(0), g.param(1), {});
        V gate = t.slice_cols(mod, 0, 4), y = t.slice_cols(mod, 4, 4);
        return GatedResidualOp<Host, double>::forward(t, g.var(2), y, gate, 1);
      },
      {&c, &w, &base});
  // An unused slice reads as zero gradient.
  expect_gradients(
      [](TapeH& t, const GradcheckLeaves& g) {
        V mod = LinearOp<Host, double>::forward(t, g.var(0), g.param(1), {});
        V y = t.slice_cols(mod, 4, 4);
        return GatedResidualOp<Host, double>::forward(t, g.var(2), y, V{}, 1);
      },
      {&c, &w, &base});
}

namespace {

// max |a - b| / max |ref| over one tensor (0 when both are all zero).
template <class T>
double rel_max_error(const std::vector<T>& got, const std::vector<T>& ref) {
  double err = 0, mag = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(got[i]) - static_cast<double>(ref[i])));
    mag = std::max(mag, std::abs(static_cast<double>(ref[i])));
  }
  return mag > 0 ? err / mag : err;
}

// One attention problem: qkv (B*T, 3C) with a padded leading dimension, dout (B*T, C).
template <class T>
struct AttentionCase {
  std::int64_t batches, seq, heads, d, cdim, ld;
  std::vector<T> qkv, dout, dqkv_init;
  AttentionCase(std::int64_t b, std::int64_t t, std::int64_t h, std::int64_t dd, std::uint64_t seed)
      : batches(b), seq(t), heads(h), d(dd), cdim(h * dd), ld(3 * h * dd + 5) {
    qkv = random_vector<T>(static_cast<std::size_t>(b * t * ld), seed);
    for (auto& x : qkv) x *= T(2);  // peaked enough that the softmax is not uniform
    dout = random_vector<T>(static_cast<std::size_t>(b * t * cdim), seed + 1);
    dqkv_init = random_vector<T>(static_cast<std::size_t>(b * t * 3 * cdim), seed + 2);
  }
  MatrixView<const T, Host> qkv_view() const { return {qkv.data(), batches * seq, 3 * cdim, ld}; }
  MatrixView<const T, Host> dout_view() const { return {dout.data(), batches * seq, cdim}; }

  struct Result {
    std::vector<T> out, probs, out_inference, dqkv, dqkv_acc;
  };
  template <bool Reference>
  Result run(const Host& host, bool causal) const {
    Result r;
    r.out.assign(static_cast<std::size_t>(batches * seq * cdim), T(0));
    r.out_inference = r.out;
    r.probs.assign(static_cast<std::size_t>(batches * heads * seq * seq), T(-7));
    MatrixView<T, Host> out(r.out.data(), batches * seq, cdim), out_inf(r.out_inference.data(), batches * seq, cdim);
    r.dqkv.assign(dqkv_init.size(), T(99));
    r.dqkv_acc = dqkv_init;
    MatrixView<T, Host> dqkv(r.dqkv.data(), batches * seq, 3 * cdim), dqkv_acc(r.dqkv_acc.data(), batches * seq, 3 * cdim);
    if constexpr (Reference) {
      attention_forward_reference<T>(host, qkv_view(), seq, heads, causal, r.probs.data(), out);
      attention_forward_reference<T>(host, qkv_view(), seq, heads, causal, nullptr, out_inf);
      attention_backward_reference<T>(host, dout_view(), qkv_view(), r.probs.data(), seq, heads, causal, dqkv, false);
      attention_backward_reference<T>(host, dout_view(), qkv_view(), r.probs.data(), seq, heads, causal, dqkv_acc, true);
    } else {
      attention_forward<T>(host, qkv_view(), seq, heads, causal, r.probs.data(), out);
      attention_forward<T>(host, qkv_view(), seq, heads, causal, nullptr, out_inf);
      attention_backward<T>(host, dout_view(), qkv_view(), r.probs.data(), seq, heads, causal, dqkv, false);
      attention_backward<T>(host, dout_view(), qkv_view(), r.probs.data(), seq, heads, causal, dqkv_acc, true);
    }
    return r;
  }
};

// dQ, dK, dV column blocks of a (B*T, 3C) gradient.
template <class T>
std::vector<T> grad_part(const std::vector<T>& g, std::int64_t cdim, int part) {
  std::vector<T> out;
  for (std::size_t row = 0; row < g.size() / static_cast<std::size_t>(3 * cdim); ++row)
    for (std::int64_t c = 0; c < cdim; ++c) out.push_back(g[row * static_cast<std::size_t>(3 * cdim) + static_cast<std::size_t>(part * cdim + c)]);
  return out;
}

// Runs check(case, causal) on attention cases of 2 sequences of 3 heads for every length in
// `lengths`, head dims 8, 16, 32, 64 and both directions (seeds from `seed` upwards).
template <class T, class Check>
void for_each_attention_case(std::initializer_list<std::int64_t> lengths, std::uint64_t seed, Check&& check) {
  for (std::int64_t seq : lengths) {
    for (std::int64_t d : {8, 16, 32, 64}) {
      for (bool causal : {false, true}) {
        CAPTURE(seq);
        CAPTURE(d);
        CAPTURE(causal);
        check(AttentionCase<T>(2, seq, 3, d, seed++), causal);
      }
    }
  }
}

// dQ, dK and dV of written and accumulated gradients against the reference's.
template <class Got, class Ref>
void check_attention_gradients(const Got& got, const Ref& ref, std::int64_t cdim, double tol) {
  for (int part = 0; part < 3; ++part) {
    CAPTURE(part);  // 0 dQ, 1 dK, 2 dV
    CHECK(rel_max_error(grad_part(got.dqkv, cdim, part), grad_part(ref.dqkv, cdim, part)) < tol);
    CHECK(rel_max_error(grad_part(got.dqkv_acc, cdim, part), grad_part(ref.dqkv_acc, cdim, part)) < tol);
  }
}

template <class T>
void check_gemm_attention_matches_reference(double tol) {
  Host host;
  for_each_attention_case<T>({1, 7, 64, 130}, 100, [&](const AttentionCase<T>& c, bool causal) {
    const std::int64_t seq = c.seq;
    const auto ref = c.template run<true>(host, causal);
    const auto got = c.template run<false>(host, causal);
    CHECK(rel_max_error(got.out, ref.out) < tol);
    CHECK(rel_max_error(got.probs, ref.probs) < tol);
    CHECK(got.out_inference == got.out);  // inference (no saved probabilities): the same bits
    if (causal) {  // the saved-probabilities contract: exact zeros above the diagonal
      bool zeros = true;
      for (std::int64_t bh = 0; bh < 2 * 3; ++bh)
        for (std::int64_t i = 0; i < seq; ++i)
          for (std::int64_t j = i + 1; j < seq; ++j) zeros = zeros && got.probs[static_cast<std::size_t>((bh * seq + i) * seq + j)] == T(0);
      CHECK(zeros);
    }
    check_attention_gradients(got, ref, c.cdim, tol);
  });
}

}  // namespace

TEST_CASE("Host GEMM attention equals the reference: output, probabilities, dQ, dK, dV (fp32, fp64)") {
  check_gemm_attention_matches_reference<float>(1e-5);
  check_gemm_attention_matches_reference<double>(1e-12);
}

TEST_CASE("Host GEMM attention: the same bits on every run and thread count") {
  for (bool causal : {false, true}) {
    CAPTURE(causal);
    const AttentionCase<float> c(3, 130, 4, 32, 7);
    Host one;
    one.threads = 1;
    const auto base = c.run<false>(one, causal);
    for (int threads : {1, 2, 3, 5}) {
      CAPTURE(threads);
      Host host;
      host.threads = threads;
      const auto r = c.run<false>(host, causal);
      CHECK(r.out == base.out);
      CHECK(r.probs == base.probs);
      CHECK(r.out_inference == base.out_inference);
      CHECK(r.dqkv == base.dqkv);
      CHECK(r.dqkv_acc == base.dqkv_acc);
    }
  }
}

namespace {

// The flash twin on one AttentionCase: output, log-sum-exp, inference output, dqkv written and
// added (the case's dqkv_init), like AttentionCase::run.
template <class T>
struct FlashResult {
  std::vector<T> out, lse, out_inference, dqkv, dqkv_acc;
};
template <class T>
FlashResult<T> run_flash(const Host& host, const AttentionCase<T>& c, bool causal) {
  FlashResult<T> r;
  const std::int64_t rows = c.batches * c.seq;
  r.out.assign(static_cast<std::size_t>(rows * c.cdim), T(0));
  r.out_inference = r.out;
  r.lse.assign(static_cast<std::size_t>(c.batches * c.heads * c.seq), T(-7));
  std::vector<T> delta(r.lse.size(), T(-7));
  MatrixView<T, Host> out(r.out.data(), rows, c.cdim), out_inf(r.out_inference.data(), rows, c.cdim);
  flash_attention_forward<T>(host, c.qkv_view(), c.seq, c.heads, causal, r.lse.data(), out);
  flash_attention_forward<T>(host, c.qkv_view(), c.seq, c.heads, causal, nullptr, out_inf);
  r.dqkv.assign(c.dqkv_init.size(), T(99));
  r.dqkv_acc = c.dqkv_init;
  MatrixView<T, Host> dqkv(r.dqkv.data(), rows, 3 * c.cdim), dqkv_acc(r.dqkv_acc.data(), rows, 3 * c.cdim);
  const MatrixView<const T, Host> saved_out(r.out.data(), rows, c.cdim);
  flash_attention_backward<T>(host, c.dout_view(), c.qkv_view(), saved_out, r.lse.data(), delta.data(), c.seq, c.heads,
                              causal, dqkv, false);
  flash_attention_backward<T>(host, c.dout_view(), c.qkv_view(), saved_out, r.lse.data(), delta.data(), c.seq, c.heads,
                              causal, dqkv_acc, true);
  return r;
}

template <class T>
void check_flash_attention_matches_reference(double tol) {
  Host host;
  // T = 1, 7, 33 (one partial block), 100 and 130 (a full block and a partial one; three blocks).
  for_each_attention_case<T>({1, 7, 33, 100, 130}, 300, [&](const AttentionCase<T>& c, bool causal) {
    const auto ref = c.template run<true>(host, causal);
    const auto got = run_flash<T>(host, c, causal);
    CHECK(rel_max_error(got.out, ref.out) < tol);
    CHECK(got.out_inference == got.out);  // inference (nothing saved): the same bits
    const auto lse_ref = mdlm::testing::attention_lse_ref(c.qkv.data(), c.ld, c.batches, c.seq, c.heads, c.d, causal);
    CHECK(rel_max_error(std::vector<double>(got.lse.begin(), got.lse.end()), lse_ref) < tol);
    check_attention_gradients(got, ref, c.cdim, tol);
  });
}

}  // namespace

TEST_CASE("Host flash attention (tiled twin) equals the reference: output, log-sum-exp, dQ, dK, dV (fp32, fp64)") {
  check_flash_attention_matches_reference<float>(1e-5);
  check_flash_attention_matches_reference<double>(1e-12);
}

TEST_CASE("Host flash attention: the same bits on every run and thread count") {
  for (bool causal : {false, true}) {
    CAPTURE(causal);
    const AttentionCase<float> c(3, 130, 4, 32, 8);
    Host one;
    one.threads = 1;
    const auto base = run_flash<float>(one, c, causal);
    for (int threads : {2, 3, 5}) {
      CAPTURE(threads);
      Host host;
      host.threads = threads;
      const auto r = run_flash<float>(host, c, causal);
      CHECK(r.out == base.out);
      CHECK(r.lse == base.lse);
      CHECK(r.dqkv == base.dqkv);
      CHECK(r.dqkv_acc == base.dqkv_acc);
    }
  }
}

TEST_CASE("gradcheck: flash attention op, bidirectional and causal, within one key block and across blocks") {
  const std::int64_t heads = 2, d = 3;
  for (std::int64_t seq : {4, 70}) {
    Input qkv("qkv", 2 * seq, 3 * heads * d, 17);
    for (bool causal : {false, true}) {
      CAPTURE(seq);
      CAPTURE(causal);
      expect_gradients(
          [&](TapeH& t, const GradcheckLeaves& g) {
            return FlashAttentionOp<Host, double>::forward(t, g.var(0), seq, heads, causal);
          },
          {&qkv});
    }
  }
}
