#pragma once
// Independent reference implementations used by tests on every backend: naive loops written
// without sharing code with the library paths they check.

#include <cmath>
#include <cstdint>
#include <vector>

#include "mdlm/mdlm.hpp"

namespace mdlm::testing {

// Random values in [-1, 1) from Philox (Purpose::Test), reproducible across runs and machines.
template <class T>
std::vector<T> random_vector(std::size_t n, std::uint64_t seed, std::uint32_t stream = 0) {
  Philox rng{seed};
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    v[i] = static_cast<T>(2.0 * rng.uniform_double(Purpose::Test, stream, i) - 1.0);
  }
  return v;
}

inline double gelu_ref(double x) { return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))); }
inline double gelu_grad_ref(double x) {  // central difference of gelu_ref, accurate to ~1e-10
  const double h = 1e-5;
  return (gelu_ref(x + h) - gelu_ref(x - h)) / (2 * h);
}

// A small DiT configuration for tests (every other field keeps its default).
inline DiTConfig small_dit(std::int64_t vocab, std::int64_t hidden, std::int64_t heads, std::int64_t blocks,
                           std::int64_t cond_dim) {
  DiTConfig c;
  c.vocab = vocab;
  c.hidden = hidden;
  c.heads = heads;
  c.blocks = blocks;
  c.cond_dim = cond_dim;
  return c;
}

// C (m x n, ldc) = alpha op(A) op(B) + beta C in long double, element access through lambdas.
struct NaiveGemm {
  bool ta, tb;
  std::int64_t m, n, k;
  template <class T>
  std::vector<double> run(const std::vector<T>& a, std::int64_t lda, const std::vector<T>& b, std::int64_t ldb,
                          const std::vector<T>& c, std::int64_t ldc, double alpha, double beta) const {
    std::vector<double> out(c.size());
    for (std::size_t i = 0; i < c.size(); ++i) out[i] = static_cast<double>(c[i]);
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < n; ++j) {
        long double s = 0;
        for (std::int64_t p = 0; p < k; ++p) {
          long double av = static_cast<double>(ta ? a[p * lda + i] : a[i * lda + p]);
          long double bv = static_cast<double>(tb ? b[j * ldb + p] : b[p * ldb + j]);
          s += av * bv;
        }
        double prev = beta == 0 ? 0.0 : beta * out[i * ldc + j];
        out[i * ldc + j] = alpha * static_cast<double>(s) + prev;
      }
    }
    return out;
  }
};

}  // namespace mdlm::testing
