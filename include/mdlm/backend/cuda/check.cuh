#pragma once
// CUDA runtime and cuBLAS(Lt) status checks that throw mdlm::Error naming the call, the
// status and the source location.

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "mdlm/core/error.hpp"

#define MDLM_CUDA_CHECK(expr)                                                                        \
  do {                                                                                               \
    cudaError_t mdlm_status_ = (expr);                                                               \
    if (mdlm_status_ != cudaSuccess) {                                                               \
      (void)cudaGetLastError(); /* clear it: the next launch check must not report it again */      \
      ::mdlm::detail::throw_error(__FILE__, __LINE__, "CUDA error ", cudaGetErrorName(mdlm_status_), \
                                  " (", cudaGetErrorString(mdlm_status_), ") in " #expr);            \
    }                                                                                                \
  } while (0)

#define MDLM_CUBLAS_CHECK(expr)                                                                         \
  do {                                                                                                  \
    cublasStatus_t mdlm_status_ = (expr);                                                               \
    if (mdlm_status_ != CUBLAS_STATUS_SUCCESS) {                                                        \
      ::mdlm::detail::throw_error(__FILE__, __LINE__, "cuBLAS error ", cublasLtGetStatusName(mdlm_status_), \
                                  " (", cublasLtGetStatusString(mdlm_status_), ") in " #expr);          \
    }                                                                                                   \
  } while (0)

// Checks the launch of the kernel just issued (configuration errors surface here).
#define MDLM_CUDA_CHECK_LAUNCH() MDLM_CUDA_CHECK(cudaGetLastError())
