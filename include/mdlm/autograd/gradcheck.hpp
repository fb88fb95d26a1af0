#pragma once
// Gradient check by central finite differences in fp64 on the Host backend.
//
// `build(tape, leaves)` records a graph on a fresh tape from the given inputs and returns its
// output; it takes each input as an activation (leaves.var(i)) or a parameter (leaves.param(i)). The scalar checked is L = sum(out * R) with fixed random weights R, so every output
// element contributes. The analytic gradient of each input (one tape.backward) is compared
// with (L(x + h e_k) - L(x - h e_k)) / 2h on up to `max_elements` sampled elements per input.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"
#include "mdlm/core/philox.hpp"

namespace mdlm {

struct GradcheckInput {
  std::string name;
  MatrixView<double, Host> value;  // contiguous
};

// The inputs of one evaluation, as tape leaves or as parameters (both accumulate gradients).
struct GradcheckLeaves {
  Tape<Host, double>* tape;
  std::vector<MatrixView<double, Host>> values, grads;
  Var<double, Host> var(std::size_t i) const { return tape->leaf(values.at(i), grads.at(i)); }
  Param<double, double, Host> param(std::size_t i) const { return {values.at(i), grads.at(i)}; }
  std::vector<Param<double, double, Host>> params() const {
    std::vector<Param<double, double, Host>> p;
    for (std::size_t i = 0; i < values.size(); ++i) p.push_back(param(i));
    return p;
  }
};

struct GradcheckResult {
  double max_rel_error = 0;  // max |analytic - numeric| / max |numeric| over an input, worst input
  std::string worst_input;
  std::int64_t elements_checked = 0;
  bool passed(double tol) const { return max_rel_error <= tol && elements_checked > 0; }
};

struct GradcheckOptions {
  double step = 1e-5;
  std::int64_t max_elements = 48;
  std::uint64_t seed = 7;
  TapeOptions tape{};  // e.g. training with dropout: the masks are the same in every evaluation
};

template <class Build>
GradcheckResult gradcheck(Build&& build, const std::vector<GradcheckInput>& inputs, GradcheckOptions opt = {}) {
  Host host;
  using V = Var<double, Host>;
  std::vector<std::vector<double>> grads;
  for (const auto& in : inputs) grads.emplace_back(static_cast<std::size_t>(in.value.rows * in.value.cols), 0.0);

  auto run = [&](bool with_grad, std::vector<double>* weights) {
    Tape<Host, double> tape(host);
    tape.options = opt.tape;
    tape.set_recording(with_grad);
    GradcheckLeaves leaves{&tape, {}, {}};
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      leaves.values.push_back(inputs[i].value);
      leaves.grads.push_back(MatrixView<double, Host>(grads[i].data(), inputs[i].value.rows, inputs[i].value.cols));
    }
    V out = build(tape, static_cast<const GradcheckLeaves&>(leaves));
    const std::size_t n = static_cast<std::size_t>(out.rows() * out.cols());
    if (weights->empty()) {
      Philox rng{opt.seed};
      weights->resize(n);
      for (std::size_t k = 0; k < n; ++k) (*weights)[k] = 2.0 * rng.uniform_double(Purpose::Test, 99, k) - 1.0;
    }
    MDLM_CHECK(weights->size() == n, "gradcheck: the output changed shape between evaluations");
    double loss = 0;
    for (std::int64_t r = 0; r < out.rows(); ++r)
      for (std::int64_t c = 0; c < out.cols(); ++c)
        loss += out.value.data[r * out.value.ld + c] * (*weights)[static_cast<std::size_t>(r * out.cols() + c)];
    if (with_grad) tape.backward(out, MatrixView<const double, Host>(weights->data(), out.rows(), out.cols()));
    return loss;
  };

  std::vector<double> weights;
  run(true, &weights);
  GradcheckResult result;
  Philox pick{opt.seed + 1};
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const std::int64_t n = inputs[i].value.rows * inputs[i].value.cols;
    double* x = inputs[i].value.data;
    double max_err = 0, max_num = 0;
    const std::int64_t count = std::min(n, opt.max_elements);
    for (std::int64_t s = 0; s < count; ++s) {
      const std::int64_t k = count == n ? s
                                        : static_cast<std::int64_t>(pick.uniform_double(Purpose::Test, static_cast<std::uint32_t>(i),
                                                                                        static_cast<std::uint64_t>(s)) *
                                                                    static_cast<double>(n));
      const double v = x[k];
      x[k] = v + opt.step;
      const double lp = run(false, &weights);
      x[k] = v - opt.step;
      const double lm = run(false, &weights);
      x[k] = v;
      const double num = (lp - lm) / (2 * opt.step);
      max_err = std::max(max_err, std::abs(num - grads[i][static_cast<std::size_t>(k)]));
      max_num = std::max(max_num, std::abs(num));
      ++result.elements_checked;
    }
    const double rel = max_err / std::max(max_num, 1e-8);
    if (result.worst_input.empty() || rel > result.max_rel_error) {
      result.max_rel_error = rel;
      result.worst_input = inputs[i].name;
    }
  }
  return result;
}

}  // namespace mdlm
