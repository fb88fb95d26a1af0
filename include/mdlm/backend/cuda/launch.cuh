#pragma once
// Launch helpers shared by the CUDA kernels: launch() (checks a LaunchConfig against the
// device's limits, then issues the kernel on the context's stream), grid-stride indices, warp
// sums, and block reductions on CUB (typed: a 64-bit integer sum stays a 64-bit integer sum;
// fixed order for a fixed block size, so the same bits on every run).

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include <cub/block/block_reduce.cuh>
#include <cuda_runtime.h>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch_config.hpp"

namespace mdlm::cuda_detail {

__device__ inline std::int64_t global_index() { return blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; }
__device__ inline std::int64_t global_stride() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x; }

template <class C>
__device__ inline C warp_sum(C v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Reduction operators with their typed identities (what a thread without data contributes).
struct SumOp {
  template <class C>
  static constexpr C identity() {
    return C(0);
  }
  template <class C>
  __host__ __device__ C operator()(const C& a, const C& b) const {
    return a + b;
  }
};
struct MaxOp {
  template <class C>
  static constexpr C identity() {
    if constexpr (std::numeric_limits<C>::has_infinity) return -std::numeric_limits<C>::infinity();
    else return std::numeric_limits<C>::lowest();
  }
  template <class C>
  __host__ __device__ C operator()(const C& a, const C& b) const {
    if constexpr (std::is_floating_point_v<C>) return fmax(a, b);  // a NaN operand loses, as fmaxf
    else return a < b ? b : a;
  }
};

// Block-wide reduction over exactly kBlock threads (the launch's block size; launch configs
// pass it), every thread gets the result. Storage is the kernel's __shared__ Shared.
template <class C, int kBlock>
struct BlockReducer {
  static_assert(kBlock % 32 == 0 && kBlock <= 1024, "block reductions run on whole warps");
  using Cub = cub::BlockReduce<C, kBlock, cub::BLOCK_REDUCE_WARP_REDUCTIONS>;
  struct Shared {
    typename Cub::TempStorage temp;
    C result;
  };
  template <class Op>
  __device__ static C all(C v, Op op, Shared& sh) {
    const C r = Cub(sh.temp).Reduce(v, op);  // valid in thread 0
    if (threadIdx.x == 0) sh.result = r;
    __syncthreads();
    const C out = sh.result;
    __syncthreads();  // the storage may be reused by the next reduction
    return out;
  }
  __device__ static C sum(C v, Shared& sh) { return all(v, SumOp{}, sh); }
  __device__ static C max(C v, Shared& sh) { return all(v, MaxOp{}, sh); }
};

template <class C, int kBlock>
using BlockShared = typename BlockReducer<C, kBlock>::Shared;

}  // namespace mdlm::cuda_detail

namespace mdlm {

// Checks `c` against the context's device, then runs kernel<<<c>>>(args...) on its stream. An
// empty grid (nothing to do) issues nothing.
template <class... KernelArgs, class... Args>
void launch(Cuda& ctx, const LaunchConfig& c, void (*kernel)(KernelArgs...), Args&&... args) {
  check_launch(c, ctx.limits());
  if (c.empty()) return;
  const dim3 grid(static_cast<unsigned>(c.grid.x), static_cast<unsigned>(c.grid.y), static_cast<unsigned>(c.grid.z));
  const dim3 block(static_cast<unsigned>(c.block.x), static_cast<unsigned>(c.block.y), static_cast<unsigned>(c.block.z));
  kernel<<<grid, block, c.dynamic_smem, ctx.stream()>>>(std::forward<Args>(args)...);
  MDLM_CUDA_CHECK_LAUNCH();
}

}  // namespace mdlm
