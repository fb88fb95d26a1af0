#pragma once
// Independent reference implementations used by tests on every backend: naive loops written
// without sharing code with the library paths they check.

#include <cmath>
#include <cstdint>
#include <variant>
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

// A sampler test model: vocab 30 (mask 29), 2 blocks of width 32, no dropout, DESIGN §1 init
// plus jitter (so adaLN and the head, zero at init, shape the logits).
inline DiTConfig sampler_test_dit(bool time_conditioning) {
  DiTConfig c = small_dit(30, 32, 4, 2, 16);
  c.dropout = 0.0f;
  c.time_conditioning = time_conditioning;
  return c;
}
template <class T>
void init_sampler_test_model(const DiT& model, ParamStore<Host, T>& store) {
  model.init(store, 4);
  Philox jitter{6};
  for (std::int64_t i = 0; i < model.layout().buffer_elements(); ++i) {
    store.values().data()[i] += static_cast<T>(0.3f * (jitter.uniform_float(Purpose::Test, 0, static_cast<std::uint64_t>(i)) - 0.5f));
  }
}

// Every sampler, with and without filters: the cases the batched samplers are checked on.
// The tests hold the typed samplers in one list as a variant (std::visit calls the sampler).
using AnySampler = std::variant<Ancestral, Cached, Confidence, ReMdm, FirstHit>;
struct SamplerCase {
  const char* name;
  AnySampler sampler;
  SamplerSettings cfg;
};
inline std::vector<SamplerCase> sampler_cases() {
  auto make = [](std::int64_t steps, std::int64_t top_k, double top_p) {
    SamplerSettings c;
    c.steps = steps;
    c.seed = 12;
    c.filters.top_k = top_k;
    c.filters.top_p = top_p;
    return c;
  };
  return {{"ancestral", Ancestral{}, make(16, 0, 1.0)},
          {"ancestral top-k 5 top-p 0.9", Ancestral{}, make(16, 5, 0.9)},
          {"remdm", ReMdm{}, make(16, 0, 1.0)},
          {"confidence", Confidence{}, make(8, 0, 1.0)},
          {"confidence threshold 0.3 top-p 0.8", Confidence{0.3}, make(8, 0, 0.8)},
          {"first-hit", FirstHit{}, make(1, 0, 1.0)},
          {"cached top-p 0.95", Cached{}, make(48, 0, 0.95)}};
}
// 4 sequences of 24 (mask 29) with a prompt token and an infilled one.
inline std::vector<std::int32_t> sampler_test_init() {
  std::vector<std::int32_t> init(4 * 24, 29);
  init[0] = 3;
  init[30] = 7;
  return init;
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

// Row log-sum-exp of attention scores, (B, H, T): log sum_{j visible} exp(q_i . k_j / sqrt(D)),
// in long double, from the packed qkv (B*T rows, leading dimension ld, [Q | K | V] head-major).
template <class T>
std::vector<double> attention_lse_ref(const T* qkv, std::int64_t ld, std::int64_t batches, std::int64_t seq,
                                      std::int64_t heads, std::int64_t d, bool causal) {
  const std::int64_t cdim = heads * d;
  std::vector<double> lse(static_cast<std::size_t>(batches * heads * seq));
  for (std::int64_t b = 0; b < batches; ++b)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t i = 0; i < seq; ++i) {
        std::vector<long double> s;
        for (std::int64_t j = 0; j < (causal ? i + 1 : seq); ++j) {
          long double dot = 0;
          for (std::int64_t e = 0; e < d; ++e)
            dot += static_cast<long double>(qkv[(b * seq + i) * ld + h * d + e]) *
                   static_cast<long double>(qkv[(b * seq + j) * ld + cdim + h * d + e]);
          s.push_back(dot / std::sqrt(static_cast<long double>(d)));
        }
        long double mx = s[0], sum = 0;
        for (long double x : s) mx = x > mx ? x : mx;
        for (long double x : s) sum += std::exp(x - mx);
        lse[static_cast<std::size_t>((b * heads + h) * seq + i)] = static_cast<double>(mx + std::log(sum));
      }
  return lse;
}

}  // namespace mdlm::testing
