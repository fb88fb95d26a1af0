#pragma once
// CUDA twin of ops/mask.hpp: the absorbing forward process, one thread per token.

#include <cstdint>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/ops/mask.hpp"

namespace mdlm {
namespace cuda_kernels {
template <int kUnused = 0>  // a template: safe to define in a header used by several TUs
__global__ void absorbing_mask(const std::int32_t* x0, const double* move_chance, std::int64_t n,
                                      std::int64_t seq_len, Philox rng, std::uint32_t step, std::int32_t mask_id,
                                      std::int32_t* zt) {
  for (std::int64_t r = cuda_detail::global_index(); r < n; r += cuda_detail::global_stride()) {
    zt[r] = absorbing_mask_token(x0[r], move_chance[r / seq_len], rng, step, static_cast<std::uint64_t>(r), mask_id);
  }
}
}  // namespace cuda_kernels

namespace launches {
inline LaunchConfig absorbing_mask(std::int64_t n) { return launch_detail::grid_stride("absorbing_mask", n); }
}  // namespace launches

// x0, move_chance (per sequence) and zt in device memory.
inline void absorbing_mask(Cuda& ctx, const std::int32_t* x0, const double* move_chance, std::int64_t n,
                           std::int64_t seq_len, Philox rng, std::uint32_t step, std::int32_t mask_id, std::int32_t* zt) {
  launch(ctx, launches::absorbing_mask(n), cuda_kernels::absorbing_mask<>, x0, move_chance, n, seq_len, rng, step,
         mask_id, zt);
}

}  // namespace mdlm
