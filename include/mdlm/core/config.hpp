#pragma once
// Compiler glue shared by every header: host/device qualifiers usable from g++ and nvcc.

#if defined(__CUDACC__)
#define MDLM_HD __host__ __device__
#define MDLM_DEVICE_CODE 1
#else
#define MDLM_HD
#define MDLM_DEVICE_CODE 0
#endif

#if defined(__CUDA_ARCH__)
#define MDLM_ON_DEVICE 1
#else
#define MDLM_ON_DEVICE 0
#endif

// Loop unrolling hint understood by nvcc and g++ alike.
#if defined(__CUDA_ARCH__)
#define MDLM_UNROLL _Pragma("unroll")
#elif defined(__CUDACC__)
#define MDLM_UNROLL  // nvcc's host pass: its front end rejects GCC pragmas
#else
#define MDLM_UNROLL _Pragma("GCC unroll 16")
#endif
