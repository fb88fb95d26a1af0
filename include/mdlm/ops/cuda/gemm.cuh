#pragma once
// CUDA GEMM with the row-major contract of ops/gemm.hpp, on cuBLASLt.
//
// Row-major C (M, N) = op(A) op(B) is column-major C^T (N, M) = op(B)^T op(A)^T, so cuBLASLt
// gets A' = our B, B' = our A, m' = N, n' = M; a row-major matrix with leading dimension ld
// is the column-major transpose with the same ld. Under this mapping the bias (length N)
// is cuBLASLt's per-row bias of D', and our BiasGrad (sum over k of op(A), length M) is
// cuBLASLt's BGRADB.
//
// Element types: TIn in {float, bf16, double}, TOut in {float, bf16, double}; accumulation in
// fp32 (fp64 for double). fp32 is computed in true fp32 (no TF32) so that it can be held to
// the Host reference. When cuBLASLt has no fused algorithm for an epilogue (odd leading
// dimensions, misaligned pointers), the plain product runs and the epilogue follows in a
// kernel: results are the same up to rounding.

#include <cstdint>
#include <type_traits>

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/core/bf16.hpp"
#include "mdlm/ops/gemm.hpp"

namespace mdlm {

namespace cuda_detail {

template <class T>
constexpr cudaDataType_t cuda_dtype() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, double>) return CUDA_R_64F;
  else {
    static_assert(std::is_same_v<T, bf16>, "CUDA GEMM supports float, double and bf16");
    return CUDA_R_16BF;
  }
}

inline cublasOperation_t to_cublas(Op op) { return op == Op::N ? CUBLAS_OP_N : CUBLAS_OP_T; }

// Elementwise epilogues over a row-major (rows, cols, ld) matrix, grid-stride.
template <class T>
__global__ void epilogue_kernel(Epilogue kind, T* c, std::int64_t rows, std::int64_t cols, std::int64_t ldc,
                                const T* bias, T* aux, std::int64_t ldaux) {
  using C = compute_t<T>;
  const std::int64_t total = rows * cols;
  for (std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t i = idx / cols, j = idx % cols;
    C v = to_compute(c[i * ldc + j]);
    if (kind == Epilogue::Bias) {
      v += to_compute(bias[j]);
    } else if (kind == Epilogue::GeluAuxBias) {
      v += to_compute(bias[j]);
      aux[i * ldaux + j] = from_compute<T>(v);
      v = gelu_tanh(v);
    } else if (kind == Epilogue::DGelu) {
      v *= gelu_tanh_grad(to_compute(aux[i * ldaux + j]));
    }
    c[i * ldc + j] = from_compute<T>(v);
  }
}

// out[i] = sum_k op(A)[i, k], one thread per i in a fixed order (deterministic).
template <class TIn, class TOut>
__global__ void bias_grad_kernel(const TIn* a, std::int64_t lda, bool transposed, std::int64_t m, std::int64_t k,
                                 TOut* out) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= m) return;
  compute_t<TOut> s = 0;
  for (std::int64_t kk = 0; kk < k; ++kk) s += to_compute(transposed ? a[kk * lda + i] : a[i * lda + kk]);
  out[i] = from_compute<TOut>(s);
}

// C = beta C for the degenerate K = 0 product.
template <class T>
__global__ void scale_kernel(T* c, std::int64_t rows, std::int64_t cols, std::int64_t ldc, compute_t<T> beta) {
  const std::int64_t total = rows * cols;
  for (std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    T* p = c + (idx / cols) * ldc + idx % cols;
    *p = beta == 0 ? from_compute<T>(0) : from_compute<T>(beta * to_compute(*p));
  }
}

inline cublasLtEpilogue_t to_lt(Epilogue e) {
  switch (e) {
    case Epilogue::None: return CUBLASLT_EPILOGUE_DEFAULT;
    case Epilogue::Bias: return CUBLASLT_EPILOGUE_BIAS;
    case Epilogue::GeluAuxBias: return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    case Epilogue::DGelu: return CUBLASLT_EPILOGUE_DGELU;
    case Epilogue::BiasGrad: return CUBLASLT_EPILOGUE_BGRADB;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

}  // namespace cuda_detail

// The column-major cuBLASLt problem of a row-major GEMM (no epilogue), and the same problem
// with the epilogue fused. Host functions: tests/cuda_host/ builds every problem the model
// issues and its descriptors on the CPU.
template <class TA, class TB, class TOut>
LtProblem lt_problem(Op op_a, MatrixView<TA, Cuda> a, Op op_b, MatrixView<TB, Cuda> b, MatrixView<TOut, Cuda> c,
                     const GemmDims& d, const compute_t<TOut>* alpha, const compute_t<TOut>* beta) {
  using namespace cuda_detail;
  using TIn = std::remove_const_t<TA>;
  LtProblem p;
  p.transa = to_cublas(op_b);  // A' = our B
  p.transb = to_cublas(op_a);  // B' = our A
  p.m = d.n;
  p.n = d.m;
  p.k = d.k;
  p.a = b.data;
  p.a_rows = b.cols;
  p.a_cols = b.rows;
  p.lda = b.ld;
  p.b = a.data;
  p.b_rows = a.cols;
  p.b_cols = a.rows;
  p.ldb = a.ld;
  p.c = c.data;
  p.ldc = c.ld;
  p.in_type = cuda_dtype<TIn>();
  p.out_type = cuda_dtype<TOut>();
  p.scale_type = std::is_same_v<TOut, double> ? CUDA_R_64F : CUDA_R_32F;
  p.compute = std::is_same_v<TOut, double> ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
  p.alpha = alpha;
  p.beta = beta;
  return p;
}
template <class TOut>
LtProblem lt_with_epilogue(LtProblem p, const GemmEpilogue<TOut, Cuda>& epi) {
  p.epilogue = cuda_detail::to_lt(epi.kind);
  p.bias = epi.kind == Epilogue::BiasGrad ? static_cast<const void*>(epi.bias_grad) : epi.bias;
  if (epi.kind == Epilogue::GeluAuxBias || epi.kind == Epilogue::DGelu) {
    p.aux = epi.aux.data;
    p.ldaux = epi.aux.ld;
  }
  return p;
}

// Launch configurations of the GEMM's own kernels (the fallback epilogues, K = 0).
namespace launches {
inline LaunchConfig gemm_scale(std::int64_t m, std::int64_t n) { return launch_detail::grid_stride("gemm scale_kernel", m * n); }
inline LaunchConfig gemm_epilogue(std::int64_t m, std::int64_t n) {
  return launch_detail::grid_stride("gemm epilogue_kernel", m * n);
}
inline LaunchConfig gemm_bias_grad(std::int64_t m) { return launch_detail::one_thread_each("gemm bias_grad_kernel", m); }
}  // namespace launches

// CUDA GEMM: see ops/gemm.hpp for the contract. Stream-ordered on ctx.stream().
template <class TA, class TB, class TOut>
void gemm(Cuda& ctx, Op op_a, MatrixView<TA, Cuda> a, Op op_b, MatrixView<TB, Cuda> b, MatrixView<TOut, Cuda> c,
          const GemmEpilogue<TOut, Cuda>& epi = {}, compute_t<TOut> alpha = 1, compute_t<TOut> beta = 0) {
  using namespace cuda_detail;
  using TIn = std::remove_const_t<TA>;
  static_assert(std::is_same_v<TIn, double> == std::is_same_v<TOut, double>,
                "fp64 GEMM takes and produces fp64");
  const GemmDims d = detail::check_gemm(op_a, a, op_b, b, c, epi, static_cast<double>(beta));
  if (d.m == 0 || d.n == 0) return;
  if (d.k == 0) launch(ctx, launches::gemm_scale(d.m, d.n), scale_kernel<TOut>, c.data, d.m, d.n, c.ld, beta);

  const LtProblem p = lt_problem(op_a, a, op_b, b, c, d, &alpha, &beta);
  bool fused = false;
  if (d.k > 0 && epi.kind != Epilogue::None) fused = ctx.lt().run(lt_with_epilogue(p, epi));
  if (!fused) {
    if (d.k > 0 && !ctx.lt().run(p)) {
      MDLM_FAIL("cuBLASLt has no algorithm for a ", d.m, "x", d.n, "x", d.k, " GEMM (lda ", a.ld, ", ldb ", b.ld,
                ", ldc ", c.ld, ")");
    }
    if (epi.kind == Epilogue::BiasGrad) {
      launch(ctx, launches::gemm_bias_grad(d.m), bias_grad_kernel<TIn, TOut>, a.data, a.ld, op_a == Op::T, d.m, d.k,
             epi.bias_grad);
    } else if (epi.kind != Epilogue::None) {
      launch(ctx, launches::gemm_epilogue(d.m, d.n), epilogue_kernel<TOut>, epi.kind, c.data, d.m, d.n, c.ld, epi.bias,
             epi.aux.data, epi.aux.ld);
    }
  }
}

}  // namespace mdlm
