#pragma once
// The Host backend's dense matrix product: C = alpha op(A) op(B) + beta C on row-major
// matrices, the one place where the Host calls a BLAS.
//
//   fp32: oneDNN's sgemm (dnnl_sgemm) when the build defines MDLM_HOST_SGEMM_ONEDNN (CMake's
//         MDLM_HOST_GEMM=onednn, the default where libdnnl is installed), cblas_sgemm otherwise.
//   fp64: cblas_dgemm (OpenBLAS, OpenMP build): the exact reference path.
//
// Why oneDNN for fp32: it picks its kernels from the CPU's feature bits at run time (AVX-512,
// AVX2, ...) instead of a table of known CPU models. OpenBLAS 0.3.21 (Debian 12) runs SSE3
// kernels on CPUs newer than it knows, and an OPENBLAS_CORETYPE set in the environment (as on
// machines where older OpenBLAS builds misbehave) pins it to that core's kernels; measured on
// the library's GEMM shapes, 2 threads, AMD Zen 5 with OPENBLAS_CORETYPE=Haswell: OpenBLAS
// 145-200 GFLOP/s, oneDNN 2.6 226-390 GFLOP/s (README, "Host GEMM"). Both libraries run on the
// same OpenMP pool (libgomp) as the Host's own loops, so no two thread pools fight over cores.
//
// Threads: a call made outside any OpenMP region uses omp_get_max_threads() threads; inside a
// region (the attention tiles set the calling task's count to 1) it runs on the calling thread.

#include <cstdint>
#include <type_traits>

#include <cblas.h>

#if defined(MDLM_HOST_SGEMM_ONEDNN)
#include <oneapi/dnnl/dnnl.h>
#endif

#include "mdlm/core/error.hpp"

namespace mdlm {

enum class Op { N, T };

// The library that runs the Host's fp32 products ("onednn" or "openblas"), for reports.
inline constexpr const char* host_sgemm_library() {
#if defined(MDLM_HOST_SGEMM_ONEDNN)
  return "onednn";
#else
  return "openblas";
#endif
}

struct GemmDims {
  std::int64_t m, n, k;
};

namespace detail {

inline CBLAS_TRANSPOSE to_cblas(Op op) { return op == Op::N ? CblasNoTrans : CblasTrans; }

// C (m x n, ldc) = alpha op(A) op(B) + beta C, row-major, k > 0.
template <class T>
void host_blas_gemm(Op op_a, Op op_b, GemmDims d, T alpha, const T* a, std::int64_t lda, const T* b,
                    std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "host GEMM is fp32 or fp64");
  auto i = [](std::int64_t v) { return static_cast<blasint>(v); };
  if constexpr (std::is_same_v<T, float>) {
#if defined(MDLM_HOST_SGEMM_ONEDNN)
    const dnnl_status_t st = dnnl_sgemm(op_a == Op::N ? 'N' : 'T', op_b == Op::N ? 'N' : 'T', d.m, d.n, d.k, alpha, a,
                                        lda, b, ldb, beta, c, ldc);
    MDLM_CHECK(st == dnnl_success, "dnnl_sgemm failed with status ", static_cast<int>(st), " (m ", d.m, ", n ", d.n,
               ", k ", d.k, ", lda ", lda, ", ldb ", ldb, ", ldc ", ldc, ")");
#else
    cblas_sgemm(CblasRowMajor, to_cblas(op_a), to_cblas(op_b), i(d.m), i(d.n), i(d.k), alpha, a, i(lda), b, i(ldb),
                beta, c, i(ldc));
#endif
  } else {
    cblas_dgemm(CblasRowMajor, to_cblas(op_a), to_cblas(op_b), i(d.m), i(d.n), i(d.k), alpha, a, i(lda), b, i(ldb),
                beta, c, i(ldc));
  }
}

}  // namespace detail
}  // namespace mdlm
