// The fused gated residual + LayerNorm + adaLN op (ops/residual_layernorm.hpp) against the
// unfused Host ops it replaces (GatedResidualOp, then LayerNormModulateOp): outputs and every
// gradient, with dropout on and off, with and without adaLN and gate, odd widths, several
// sequences; plus a gradcheck.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../common/reference.hpp"
#include "mdlm/mdlm.hpp"

using namespace mdlm;
using mdlm::testing::random_vector;

namespace {

struct Case {
  std::int64_t batches, seq, cols;
  bool modulated, gated, dropout;
  bool x_leaf;  // x a leaf (its gradient accumulates) or an intermediate (written first by the op)
};

template <class T>
double max_rel_diff(const std::vector<T>& a, const std::vector<T>& b) {
  double scale = 1e-30, diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  }
  return diff / scale;
}

// Values and gradients of one run of either graph.
template <class T>
struct Run {
  std::vector<T> out, xn, h, dx0, dx1, dy, dgate, dw, dshift, dscale;
};

template <class T>
Run<T> run(const Case& k, bool fused) {
  using V = Var<T, Host>;
  Host host;
  Tape<Host, T> tape(host, 1 << 22);
  tape.options = {k.dropout, 99, 5};
  const std::int64_t rows = k.batches * k.seq, c = k.cols;
  const auto n = static_cast<std::size_t>(rows * c), nb = static_cast<std::size_t>(k.batches * c);
  std::vector<T> x0 = random_vector<T>(n, 1), x1 = random_vector<T>(n, 2), y = random_vector<T>(n, 3);
  std::vector<T> gate = random_vector<T>(nb, 4), shift = random_vector<T>(nb, 5), scale = random_vector<T>(nb, 6);
  std::vector<T> w = random_vector<T>(static_cast<std::size_t>(c), 7), gate2 = random_vector<T>(nb, 8);
  std::vector<T> dout = random_vector<T>(n, 9);
  for (auto& v : x0) v = static_cast<T>(v * T(2) + T(0.5));  // a mean away from zero
  for (auto& v : w) v = static_cast<T>(v + T(1));
  Run<T> r;
  r.dx0.assign(n, T(0));
  r.dx1.assign(n, T(0));
  r.dy.assign(n, T(0));
  r.dgate.assign(nb, T(0));
  r.dshift.assign(nb, T(0));
  r.dscale.assign(nb, T(0));
  r.dw.assign(static_cast<std::size_t>(c), T(0));
  auto leaf = [&](std::vector<T>& v, std::vector<T>& g, std::int64_t rr) {
    return tape.leaf(MatrixView<T, Host>(v.data(), rr, c), MatrixView<T, Host>(g.data(), rr, c));
  };
  V vx0 = leaf(x0, r.dx0, rows), vy = leaf(y, r.dy, rows);
  V x = vx0;
  if (!k.x_leaf) x = GatedResidualOp<Host, T>::forward(tape, vx0, leaf(x1, r.dx1, rows), V{}, k.seq);
  V vg = k.gated ? leaf(gate, r.dgate, k.batches) : V{};
  V vsh = k.modulated ? leaf(shift, r.dshift, k.batches) : V{};
  V vsc = k.modulated ? leaf(scale, r.dscale, k.batches) : V{};
  Param<T, T, Host> pw{MatrixView<T, Host>(w.data(), 1, c), MatrixView<T, Host>(r.dw.data(), 1, c)};
  V xn, h;
  const float p = 0.25f;
  if (fused) {
    auto o = ResidualLayerNormOp<Host, T>::forward(tape, x, vy, vg, k.seq, p, pw, vsh, vsc, 1e-5);
    xn = o.x;
    h = o.h;
  } else {
    xn = GatedResidualOp<Host, T>::forward(tape, x, vy, vg, k.seq, p);
    h = LayerNormModulateOp<Host, T>::forward(tape, xn, pw, vsh, vsc, k.seq, 1e-5);
  }
  // Different upstream gradients for h and xn: out = h + gate2 * xn.
  V out = GatedResidualOp<Host, T>::forward(tape, h, xn, tape.constant(MatrixView<T, Host>(gate2.data(), k.batches, c)),
                                            k.seq);
  auto copy_out = [&](V v) {
    std::vector<T> o(n);
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t j = 0; j < c; ++j) o[static_cast<std::size_t>(i * c + j)] = v.value.data[i * v.value.ld + j];
    return o;
  };
  r.out = copy_out(out);
  r.xn = copy_out(xn);
  r.h = copy_out(h);
  tape.backward(out, MatrixView<const T, Host>(dout.data(), rows, c));
  return r;
}

template <class T>
void check_case(const Case& k, double tol) {
  CAPTURE(k.batches);
  CAPTURE(k.seq);
  CAPTURE(k.cols);
  CAPTURE(k.modulated);
  CAPTURE(k.gated);
  CAPTURE(k.dropout);
  CAPTURE(k.x_leaf);
  const Run<T> f = run<T>(k, true), u = run<T>(k, false);
  // The forward is the unfused ops' arithmetic: the same values.
  CHECK(max_rel_diff(f.xn, u.xn) <= tol);
  CHECK(max_rel_diff(f.h, u.h) <= tol);
  CHECK(max_rel_diff(f.out, u.out) <= tol);
  CHECK(max_rel_diff(f.dx0, u.dx0) <= tol);
  CHECK(max_rel_diff(f.dx1, u.dx1) <= tol);
  CHECK(max_rel_diff(f.dy, u.dy) <= tol);
  CHECK(max_rel_diff(f.dgate, u.dgate) <= tol);
  CHECK(max_rel_diff(f.dw, u.dw) <= tol);
  CHECK(max_rel_diff(f.dshift, u.dshift) <= tol);
  CHECK(max_rel_diff(f.dscale, u.dscale) <= tol);
  if (k.dropout) {  // dropout really dropped something: some dy entries are exactly zero
    CHECK(std::count(f.dy.begin(), f.dy.end(), T(0)) > 0);
  }
}

template <class T>
void check_all(double tol) {
  for (const auto& shape : {std::vector<std::int64_t>{1, 1, 8}, {2, 3, 13}, {3, 5, 37}, {2, 300, 24}, {4, 7, 257}}) {
    for (int mode = 0; mode < 16; ++mode) {
      const Case k{shape[0], shape[1], shape[2], (mode & 1) != 0, (mode & 2) != 0, (mode & 4) != 0, (mode & 8) != 0};
      check_case<T>(k, tol);
    }
  }
}

}  // namespace

TEST_CASE("fused residual + LayerNorm equals GatedResidualOp then LayerNormModulateOp (fp64 1e-12)") {
  check_all<double>(1e-12);
}

TEST_CASE("fused residual + LayerNorm equals GatedResidualOp then LayerNormModulateOp (fp32 1e-5)") {
  check_all<float>(1e-5);
}

TEST_CASE("fused residual + LayerNorm: the forward has the unfused Host ops' bits (fp32, fp64)") {
  for (bool drop : {false, true}) {
    const Case k{2, 5, 37, true, true, drop, false};
    const Run<float> f = run<float>(k, true), u = run<float>(k, false);
    CHECK(f.xn == u.xn);
    CHECK(f.h == u.h);
    const Run<double> fd = run<double>(k, true), ud = run<double>(k, false);
    CHECK(fd.xn == ud.xn);
    CHECK(fd.h == ud.h);
  }
}

TEST_CASE("gradcheck: fused residual + LayerNorm, with and without adaLN, gate and dropout") {
  using V = Var<double, Host>;
  using TapeH = Tape<Host, double>;
  const std::int64_t batches = 2, seq = 3, c = 7;
  std::vector<std::vector<double>> data;
  const std::int64_t shapes[6][2] = {{batches * seq, c}, {batches * seq, c}, {batches, c}, {1, c},
                                     {batches, c},       {batches, c}};
  const char* names[6] = {"x", "y", "gate", "w", "shift", "scale"};
  for (int i = 0; i < 6; ++i) {
    data.push_back(random_vector<double>(static_cast<std::size_t>(shapes[i][0] * shapes[i][1]),
                                         20 + static_cast<std::uint64_t>(i)));
    if (i == 3)
      for (auto& v : data.back()) v += 1.0;
  }
  for (int mode = 0; mode < 8; ++mode) {
    const bool modulated = (mode & 1) != 0, gated = (mode & 2) != 0, drop = (mode & 4) != 0;
    CAPTURE(mode);
    // Only the inputs this mode uses (an unused one has no gradient to check); at[i]: the
    // position of input i among them.
    std::vector<GradcheckInput> inputs;
    std::size_t at[6] = {};
    for (int i = 0; i < 6; ++i) {
      if ((i == 2 && !gated) || (i >= 4 && !modulated)) continue;
      at[i] = inputs.size();
      inputs.push_back(
          {names[i], MatrixView<double, Host>(data[static_cast<std::size_t>(i)].data(), shapes[i][0], shapes[i][1])});
    }
    auto build = [&](TapeH& t, const GradcheckLeaves& g) {
      const V gate = gated ? g.var(at[2]) : V{};
      auto o = ResidualLayerNormOp<Host, double>::forward(t, g.var(at[0]), g.var(at[1]), gate, seq, 0.3f,
                                                          g.param(at[3]), modulated ? g.var(at[4]) : V{},
                                                          modulated ? g.var(at[5]) : V{}, 1e-5);
      // Both outputs reach the checked sum: h + gate * x (the gate input again, or none).
      return GatedResidualOp<Host, double>::forward(t, o.h, o.x, gated ? g.var(at[2]) : V{}, seq);
    };
    GradcheckOptions opt;
    if (drop) opt.tape = {true, 11, 2};
    GradcheckResult r = gradcheck(build, inputs, opt);
    CAPTURE(r.worst_input);
    CAPTURE(r.max_rel_error);
    CHECK(r.elements_checked > 0);
    CHECK(r.max_rel_error < 1e-7);
  }
}

namespace {

// Snapshots of the parameter gradients at each gradient-final mark of a backward pass.
struct FinalLog {
  const double* grads = nullptr;
  std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
  std::vector<std::vector<double>> at_mark;
  GradientsFinalHook hook() {
    return {this, [](void* self, std::int64_t begin, std::int64_t end) {
              auto& log = *static_cast<FinalLog*>(self);
              log.ranges.emplace_back(begin, end);
              log.at_mark.emplace_back(log.grads + begin, log.grads + end);
            }};
  }
};

// hidden() of a 3-block model, fused or not, with dropout on: output, every parameter gradient,
// and what each gradient-final mark saw.
struct ModelRun {
  std::vector<double> h, grads;
  FinalLog log;
};

template <bool kFuse>
ModelRun run_model(const DiTConfig& cfg) {
  DiT model(cfg);
  ParamStore<Host, double> store(model.layout());
  model.init(store, 3);
  Philox rng{5};  // non-zero adaLN weights: the gates and modulations carry signal
  for (std::int64_t i = 0; i < model.layout().buffer_elements(); ++i)
    store.values().data()[i] += 0.3 * (rng.uniform_double(Purpose::Test, 0, static_cast<std::uint64_t>(i)) - 0.5);
  Host host;
  store.zero_grad(host);
  Tape<Host, double> tape(host);
  tape.options = {true, 9, 4};
  ModelRun r;
  r.log.grads = store.grads().data();
  tape.on_gradients_final = r.log.hook();
  const std::int64_t batch = 2, seq = 5;
  std::vector<std::int32_t> ids{1, 10, 3, 3, 0, 7, 2, 9, 4, 4};
  std::vector<double> sigma{0.7, 2.5};
  auto p = store.params();
  Var<double, Host> h =
      model.hidden<Host, double, double, kFuse>(tape, p, DiTInputs{ids.data(), ids.data(), batch, seq, sigma.data()});
  r.h = download(host, MatrixView<const double, Host>(h.value));
  auto dh = random_vector<double>(static_cast<std::size_t>(h.rows() * h.cols()), 31);
  tape.backward(h, MatrixView<const double, Host>(dh.data(), h.rows(), h.cols()));
  r.grads.assign(store.grads().data(), store.grads().data() + model.layout().buffer_elements());
  return r;
}

}  // namespace

TEST_CASE(
    "DiT with the fused ops (the CUDA path, across block boundaries) equals the unfused Host path; marks stay final") {
  for (int variant = 0; variant < 3; ++variant) {
    CAPTURE(variant);
    DiTConfig cfg = mdlm::testing::small_dit(11, 12, 2, 3, 4);  // width 12: not a multiple of 8
    cfg.freq_dim = 6;
    cfg.time_conditioning = variant == 1;
    cfg.ar = variant == 2;
    cfg.dropout = 0.2f;
    const ModelRun f = run_model<true>(cfg), u = run_model<false>(cfg);
    CHECK(max_rel_diff(f.h, u.h) <= 1e-12);
    CHECK(max_rel_diff(f.grads, u.grads) <= 1e-12);
    // The same marks in the same order, and every range was already final when reported.
    CHECK(f.log.ranges == u.log.ranges);
    REQUIRE(f.log.ranges.size() == static_cast<std::size_t>(cfg.blocks + 2));
    for (std::size_t m = 0; m < f.log.ranges.size(); ++m) {
      CAPTURE(m);
      const auto [begin, end] = f.log.ranges[m];
      const std::vector<double> final_grads(f.grads.begin() + begin, f.grads.begin() + end);
      CHECK(f.log.at_mark[m] == final_grads);
    }
  }
}
