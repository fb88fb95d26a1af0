#pragma once
// GEMM in row-major terms, the same contract on every backend:
//
//   C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C,   then the epilogue
//
// with op(X) = X or X^T. A Linear layer y = x W^T + b (PyTorch layout, W is [out, in]) is
//   gemm(ctx, Op::N, x, Op::T, W, y, GemmEpilogue::bias(b)).
//
// Epilogues (fused into cuBLASLt on CUDA, applied after cblas on Host):
//   None         C = alpha op(A) op(B) + beta C
//   Bias         C = alpha op(A) op(B) + beta C + bias[col]            (bias: N)
//   GeluAuxBias  aux = alpha op(A) op(B) + bias[col]; C = gelu(aux)    (aux: M x N, beta = 0)
//   DGelu        C = (alpha op(A) op(B)) * gelu'(aux)                  (aux: M x N, beta = 0)
//   BiasGrad     C = alpha op(A) op(B) + beta C; bias_grad[i] = sum_k op(A)[i, k]
//                (bias_grad: M). With dW = dY^T X this gives the Linear bias gradient
//                db = sum over rows of dY in the same pass (cuBLASLt's BGRADB on the
//                column-major problem).
// GELU is the tanh approximation (ops/gelu.hpp).

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "mdlm/backend/host.hpp"
#include "mdlm/backend/host_blas.hpp"
#include "mdlm/core/bf16.hpp"
#include "mdlm/core/error.hpp"
#include "mdlm/core/tensor.hpp"
#include "mdlm/ops/gelu.hpp"

namespace mdlm {

enum class Epilogue { None, Bias, GeluAuxBias, DGelu, BiasGrad };

inline const char* to_string(Epilogue e) {
  switch (e) {
    case Epilogue::None: return "none";
    case Epilogue::Bias: return "bias";
    case Epilogue::GeluAuxBias: return "gelu_aux_bias";
    case Epilogue::DGelu: return "dgelu";
    case Epilogue::BiasGrad: return "bias_grad";
  }
  return "?";
}

// What to do after the product; T is the output element type, B the backend.
template <class T, class B>
struct GemmEpilogue {
  Epilogue kind = Epilogue::None;
  const T* bias = nullptr;      // Bias, GeluAuxBias: N elements, read
  MatrixView<T, B> aux;         // GeluAuxBias: written; DGelu: read. M x N
  T* bias_grad = nullptr;       // BiasGrad: M elements, written

  static GemmEpilogue none() { return {}; }
  static GemmEpilogue with_bias(const T* b) { return {Epilogue::Bias, b, {}, nullptr}; }
  static GemmEpilogue gelu_aux_bias(const T* b, MatrixView<T, B> pre_activation) {
    return {Epilogue::GeluAuxBias, b, pre_activation, nullptr};
  }
  static GemmEpilogue dgelu(MatrixView<T, B> pre_activation) {
    return {Epilogue::DGelu, nullptr, pre_activation, nullptr};
  }
  static GemmEpilogue with_bias_grad(T* db) { return {Epilogue::BiasGrad, nullptr, {}, db}; }
};

namespace detail {

template <class TA, class TB, class TC, class B>
GemmDims check_gemm(Op op_a, const MatrixView<TA, B>& a, Op op_b, const MatrixView<TB, B>& b,
                    const MatrixView<TC, B>& c, const GemmEpilogue<std::remove_const_t<TC>, B>& epi,
                    double beta) {
  static_assert(std::is_same_v<std::remove_const_t<TA>, std::remove_const_t<TB>>,
                "gemm: A and B must have the same element type");
  static_assert(!std::is_const_v<TC>, "gemm: C must be writable");
  const std::int64_t m = op_a == Op::N ? a.rows : a.cols;
  const std::int64_t ka = op_a == Op::N ? a.cols : a.rows;
  const std::int64_t kb = op_b == Op::N ? b.rows : b.cols;
  const std::int64_t n = op_b == Op::N ? b.cols : b.rows;
  MDLM_CHECK(ka == kb, "gemm: inner dimensions differ: op(A) is ", m, "x", ka, ", op(B) is ", kb, "x", n);
  MDLM_CHECK(c.rows == m && c.cols == n, "gemm: C is ", c.rows, "x", c.cols, " but op(A) op(B) is ", m,
             "x", n);
  switch (epi.kind) {
    case Epilogue::None: break;
    case Epilogue::Bias:
      MDLM_CHECK(epi.bias != nullptr, "gemm: epilogue bias needs a bias vector of length ", n);
      break;
    case Epilogue::GeluAuxBias:
      MDLM_CHECK(epi.bias != nullptr, "gemm: epilogue gelu_aux_bias needs a bias vector of length ", n);
      [[fallthrough]];
    case Epilogue::DGelu:
      MDLM_CHECK(epi.aux.data != nullptr && epi.aux.rows == m && epi.aux.cols == n,
                 "gemm: epilogue ", to_string(epi.kind), " needs an aux matrix of ", m, "x", n, ", got ",
                 epi.aux.rows, "x", epi.aux.cols);
      MDLM_CHECK(beta == 0.0, "gemm: epilogue ", to_string(epi.kind), " requires beta = 0, got ", beta);
      break;
    case Epilogue::BiasGrad:
      MDLM_CHECK(epi.bias_grad != nullptr, "gemm: epilogue bias_grad needs an output vector of length ", m);
      break;
  }
  return {m, n, ka};
}

}  // namespace detail

// Host GEMM: the Host BLAS (backend/host_blas.hpp), then the epilogue in OpenMP loops.
template <class TA, class TB, class T>
void gemm(const Host& ctx, Op op_a, MatrixView<TA, Host> a, Op op_b, MatrixView<TB, Host> b,
          MatrixView<T, Host> c, const GemmEpilogue<T, Host>& epi = {}, compute_t<T> alpha = 1,
          compute_t<T> beta = 0) {
  static_assert(std::is_same_v<std::remove_const_t<TA>, T>, "host gemm: A, B and C share one type");
  const GemmDims d = detail::check_gemm(op_a, a, op_b, b, c, epi, static_cast<double>(beta));
  if (d.m == 0 || d.n == 0) return;
  if (d.k == 0) {  // BLAS leaves degenerate products to the caller: C = beta C exactly
    ctx.parallel_for(d.m, [&](std::int64_t i) {
      for (std::int64_t j = 0; j < d.n; ++j) c.data[i * c.ld + j] = beta == 0 ? T(0) : beta * c.data[i * c.ld + j];
    });
  } else {
    ctx.enter();  // the BLAS's threads (the OpenMP pool) in the context's denormal mode
    detail::host_blas_gemm<T>(op_a, op_b, d, alpha, a.data, a.ld, b.data, b.ld, beta, c.data, c.ld);
  }
  switch (epi.kind) {
    case Epilogue::None: break;
    case Epilogue::Bias:
      ctx.parallel_for(d.m, [&](std::int64_t i) {
        for (std::int64_t j = 0; j < d.n; ++j) c.data[i * c.ld + j] += epi.bias[j];
      });
      break;
    case Epilogue::GeluAuxBias:
      ctx.parallel_for(d.m, [&](std::int64_t i) {
        T* ci = c.data + i * c.ld;
        T* aux = epi.aux.data + i * epi.aux.ld;
        for (std::int64_t j = 0; j < d.n; ++j) {
          const T pre = ci[j] + epi.bias[j];
          aux[j] = pre;
          ci[j] = gelu_tanh(pre);
        }
      });
      break;
    case Epilogue::DGelu:
      ctx.parallel_for(d.m, [&](std::int64_t i) {
        T* ci = c.data + i * c.ld;
        const T* aux = epi.aux.data + i * epi.aux.ld;
        for (std::int64_t j = 0; j < d.n; ++j) ci[j] *= gelu_tanh_grad(aux[j]);
      });
      break;
    case Epilogue::BiasGrad:
      if (op_a == Op::N) {
        ctx.parallel_for(d.m, [&](std::int64_t i) {
          T s = 0;  // fixed summation order: deterministic
          for (std::int64_t kk = 0; kk < d.k; ++kk) s += a.data[i * a.ld + kk];
          epi.bias_grad[i] = s;
        });
      } else {  // op(A)[i, k] = A[k, i]: blocks of i summed over the rows k of A, each in order
        constexpr std::int64_t kCols = 64;
        ctx.parallel_for((d.m + kCols - 1) / kCols, [&](std::int64_t task) {
          const std::int64_t i0 = task * kCols, ni = std::min(kCols, d.m - i0);
          T s[kCols] = {};
          for (std::int64_t kk = 0; kk < d.k; ++kk)
            for (std::int64_t t = 0; t < ni; ++t) s[t] += a.data[kk * a.ld + i0 + t];
          for (std::int64_t t = 0; t < ni; ++t) epi.bias_grad[i0 + t] = s[t];
        });
      }
      break;
  }
}

}  // namespace mdlm
