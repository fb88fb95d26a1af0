#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../common/reference.hpp"
#include "mdlm/mdlm.hpp"

using namespace mdlm;
using mdlm::testing::NaiveGemm;
using mdlm::testing::random_vector;

namespace {

struct Case {
  std::int64_t m, n, k;
};
const Case kShapes[] = {{1, 1, 1}, {7, 13, 5}, {33, 17, 65}, {64, 48, 32}, {3, 129, 2}};

// Runs one host GEMM on strided operands (leading dims padded by 3) and compares with the
// naive loop; returns the max abs error relative to the largest reference magnitude.
template <class T>
double host_vs_naive(Op op_a, Op op_b, Case s, double alpha, double beta, std::uint64_t seed) {
  const bool ta = op_a == Op::T, tb = op_b == Op::T;
  const std::int64_t a_rows = ta ? s.k : s.m, a_cols = ta ? s.m : s.k;
  const std::int64_t b_rows = tb ? s.n : s.k, b_cols = tb ? s.k : s.n;
  const std::int64_t lda = a_cols + 3, ldb = b_cols + 3, ldc = s.n + 3;
  auto a = random_vector<T>(static_cast<std::size_t>(a_rows * lda), seed, 0);
  auto b = random_vector<T>(static_cast<std::size_t>(b_rows * ldb), seed, 1);
  auto c = random_vector<T>(static_cast<std::size_t>(s.m * ldc), seed, 2);
  auto want = NaiveGemm{ta, tb, s.m, s.n, s.k}.run(a, lda, b, ldb, c, ldc, alpha, beta);
  Host host;
  gemm(host, op_a, MatrixView<const T, Host>(a.data(), a_rows, a_cols, lda), op_b,
       MatrixView<const T, Host>(b.data(), b_rows, b_cols, ldb), MatrixView<T, Host>(c.data(), s.m, s.n, ldc), {},
       static_cast<T>(alpha), static_cast<T>(beta));
  double err = 0, scale = 1e-30;
  for (std::int64_t i = 0; i < s.m; ++i) {
    for (std::int64_t j = 0; j < s.n; ++j) {
      err = std::max(err, std::abs(static_cast<double>(c[i * ldc + j]) - want[i * ldc + j]));
      scale = std::max(scale, std::abs(want[i * ldc + j]));
    }
  }
  // Padding columns beyond n must be untouched.
  auto c0 = random_vector<T>(static_cast<std::size_t>(s.m * ldc), seed, 2);
  for (std::int64_t i = 0; i < s.m; ++i)
    for (std::int64_t j = s.n; j < ldc; ++j) REQUIRE(c[i * ldc + j] == c0[i * ldc + j]);
  return err / scale;
}

}  // namespace

TEST_CASE_TEMPLATE("host GEMM matches a naive loop for every transpose, odd shapes and strides", T, float,
                   double) {
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  std::uint64_t seed = 1;
  for (Op op_a : {Op::N, Op::T}) {
    for (Op op_b : {Op::N, Op::T}) {
      for (Case s : kShapes) {
        CAPTURE(s.m);
        CAPTURE(s.n);
        CAPTURE(s.k);
        CAPTURE(static_cast<int>(op_a));
        CAPTURE(static_cast<int>(op_b));
        CHECK(host_vs_naive<T>(op_a, op_b, s, 1.0, 0.0, seed++) < tol);
        CHECK(host_vs_naive<T>(op_a, op_b, s, -0.75, 0.5, seed++) < tol);
      }
    }
  }
}

TEST_CASE_TEMPLATE("host GEMM epilogues match their definitions", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  const std::int64_t m = 9, n = 11, k = 6;
  Host host;
  auto x = random_vector<T>(m * k, 5, 0);     // (m, k)
  auto w = random_vector<T>(n * k, 5, 1);     // (n, k): Linear weight [out, in]
  auto bias = random_vector<T>(n, 5, 2);      // (n)
  auto prod = NaiveGemm{false, true, m, n, k}.run(x, k, w, k, std::vector<T>(m * n, T(0)), n, 1.0, 0.0);
  MatrixView<const T, Host> X(x.data(), m, k), W(w.data(), n, k);

  SUBCASE("bias: y = x W^T + b") {
    std::vector<T> y(m * n);
    gemm(host, Op::N, X, Op::T, W, MatrixView<T, Host>(y.data(), m, n), GemmEpilogue<T, Host>::with_bias(bias.data()));
    for (std::int64_t i = 0; i < m * n; ++i) CHECK(std::abs(y[i] - (prod[i] + bias[i % n])) < tol);
  }
  SUBCASE("gelu_aux_bias: aux = x W^T + b, y = gelu(aux)") {
    std::vector<T> y(m * n), aux(m * n);
    gemm(host, Op::N, X, Op::T, W, MatrixView<T, Host>(y.data(), m, n),
         GemmEpilogue<T, Host>::gelu_aux_bias(bias.data(), MatrixView<T, Host>(aux.data(), m, n)));
    for (std::int64_t i = 0; i < m * n; ++i) {
      const double pre = prod[i] + bias[i % n];
      CHECK(std::abs(aux[i] - pre) < tol);
      CHECK(std::abs(y[i] - mdlm::testing::gelu_ref(pre)) < tol);
    }
  }
  SUBCASE("dgelu: y = (x W^T) * gelu'(aux)") {
    auto aux = random_vector<T>(m * n, 5, 3);
    for (auto& v : aux) v = static_cast<T>(v * 3);  // cover the curved part of GELU
    std::vector<T> y(m * n);
    gemm(host, Op::N, X, Op::T, W, MatrixView<T, Host>(y.data(), m, n),
         GemmEpilogue<T, Host>::dgelu(MatrixView<T, Host>(aux.data(), m, n)));
    for (std::int64_t i = 0; i < m * n; ++i) {
      CHECK(std::abs(y[i] - prod[i] * mdlm::testing::gelu_grad_ref(aux[i])) < tol + 1e-9);
    }
  }
  SUBCASE("bias_grad: dW = dY^T X with db = column sums of dY") {
    auto dy = random_vector<T>(m * n, 5, 4);  // (m tokens, n out)
    std::vector<T> dw(n * k), db(n);
    gemm(host, Op::T, MatrixView<const T, Host>(dy.data(), m, n), Op::N, X, MatrixView<T, Host>(dw.data(), n, k),
         GemmEpilogue<T, Host>::with_bias_grad(db.data()));
    auto want = NaiveGemm{true, false, n, k, m}.run(dy, n, x, k, std::vector<T>(n * k, T(0)), k, 1.0, 0.0);
    for (std::int64_t i = 0; i < n * k; ++i) CHECK(std::abs(dw[i] - want[i]) < tol);
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::int64_t i = 0; i < m; ++i) s += dy[i * n + j];
      CHECK(std::abs(db[j] - s) < tol);
    }
  }
}

TEST_CASE("host GEMM: degenerate and invalid problems") {
  Host host;
  std::vector<float> a(6, 1.0f), b(6, 1.0f), c(4, 2.0f);
  SUBCASE("K = 0 gives beta * C") {
    gemm(host, Op::N, MatrixView<const float, Host>(a.data(), 2, 0, 1), Op::N,
         MatrixView<const float, Host>(b.data(), 0, 2), MatrixView<float, Host>(c.data(), 2, 2), {}, 1.0f, 0.5f);
    for (float v : c) CHECK(v == 1.0f);
  }
  SUBCASE("inner dimensions must agree") {
    try {
      gemm(host, Op::N, MatrixView<const float, Host>(a.data(), 2, 3), Op::N,
           MatrixView<const float, Host>(b.data(), 2, 3), MatrixView<float, Host>(c.data(), 2, 2));
      FAIL("no exception");
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("inner dimensions differ: op(A) is 2x3, op(B) is 2x3") != std::string::npos);
    }
  }
  SUBCASE("C must have the product's shape") {
    CHECK_THROWS_AS(gemm(host, Op::N, MatrixView<const float, Host>(a.data(), 2, 3), Op::N,
                         MatrixView<const float, Host>(b.data(), 3, 2), MatrixView<float, Host>(c.data(), 1, 4)),
                    Error);
  }
  SUBCASE("epilogues need their operands") {
    CHECK_THROWS_AS(gemm(host, Op::N, MatrixView<const float, Host>(a.data(), 2, 3), Op::N,
                         MatrixView<const float, Host>(b.data(), 3, 2), MatrixView<float, Host>(c.data(), 2, 2),
                         GemmEpilogue<float, Host>::with_bias(nullptr)),
                    Error);
    std::vector<float> aux(3);
    CHECK_THROWS_AS(gemm(host, Op::N, MatrixView<const float, Host>(a.data(), 2, 3), Op::N,
                         MatrixView<const float, Host>(b.data(), 3, 2), MatrixView<float, Host>(c.data(), 2, 2),
                         GemmEpilogue<float, Host>::dgelu(MatrixView<float, Host>(aux.data(), 1, 3))),
                    Error);
  }
}
