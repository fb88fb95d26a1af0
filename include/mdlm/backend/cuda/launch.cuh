#pragma once
// Launch helpers shared by the CUDA kernels: grid sizes, grid-stride loops, and deterministic
// warp/block reductions (fixed shuffle and tree order: the same bits on every run).

#include <cstdint>

#include <cuda_runtime.h>

namespace mdlm::cuda_detail {

inline constexpr unsigned kThreads = 256;

inline unsigned blocks_for(std::int64_t n, unsigned threads = kThreads) {
  std::int64_t g = (n + threads - 1) / threads;
  if (g < 1) g = 1;
  if (g > 0x7fffffff) g = 0x7fffffff;  // the grid limit; grid-stride loops cover any rest
  return static_cast<unsigned>(g);
}

__device__ inline std::int64_t global_index() { return blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; }
__device__ inline std::int64_t global_stride() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x; }

template <class C>
__device__ inline C warp_sum(C v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <class C>
__device__ inline C warp_max(C v) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum/max for blockDim.x a multiple of 32 (<= 1024); every thread gets the result.
template <class C, bool Max>
__device__ inline C block_reduce(C v) {
  __shared__ C partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = Max ? warp_max(v) : warp_sum(v);
  __syncthreads();  // partial may still be read from a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  C r = lane < warps ? partial[lane] : (Max ? -INFINITY : C(0));
  r = Max ? warp_max(r) : warp_sum(r);
  return r;
}

}  // namespace mdlm::cuda_detail
