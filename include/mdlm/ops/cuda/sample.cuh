#pragma once
// CUDA twin of sampling/step.hpp: the per-step sampler work after the network — the unmask
// decision and the exact categorical draw (exponential race with Philox noise, fp64 scores) —
// fused into one kernel that reads the logits (fp32 or bf16) in place: one block per position,
// threads striding over the vocabulary, a deterministic block arg-max (ties to the lower id).

#include <cmath>
#include <cstdint>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/sampling/step.hpp"

namespace mdlm {
namespace cuda_kernels {

template <class T>
__global__ void sample_step(MatrixView<const T, Cuda> logits, std::int32_t* z, const std::uint8_t* fixed, SampleStepArgs a,
                            std::uint8_t* changed) {
  const std::int64_t r = blockIdx.x;
  if (fixed[r]) return;
  const double u = a.rng.uniform_double(Purpose::Remask, a.step, static_cast<std::uint64_t>(r));
  const std::int32_t zr = z[r];
  if (zr != a.mask_id) {
    if (threadIdx.x == 0 && u < a.p_remask) {
      z[r] = a.mask_id;
      changed[r / a.len] = 1;
    }
    return;
  }
  if (u >= a.p_unmask) return;
  double score;
  std::int32_t best = race_row(logits.data + r * logits.ld, a, static_cast<std::uint64_t>(r), threadIdx.x, blockDim.x, &score);
  __shared__ double s_score[256];
  __shared__ std::int32_t s_id[256];
  s_score[threadIdx.x] = score;
  s_id[threadIdx.x] = best;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      const double o = s_score[threadIdx.x + half];
      const std::int32_t oid = s_id[threadIdx.x + half];
      if (oid >= 0 && (o > s_score[threadIdx.x] || (o == s_score[threadIdx.x] && (s_id[threadIdx.x] < 0 || oid < s_id[threadIdx.x])))) {
        s_score[threadIdx.x] = o;
        s_id[threadIdx.x] = oid;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    z[r] = s_id[0];
    changed[r / a.len] = 1;
  }
}

}  // namespace cuda_kernels

// logits (rows, vocab) and z, fixed, changed in device memory.
template <class T>
void sample_step(Cuda& ctx, MatrixView<const T, Cuda> logits, std::int32_t* z, const std::uint8_t* fixed, SampleStepArgs a,
                 std::uint8_t* changed) {
  if (a.rows == 0) return;
  cuda_kernels::sample_step<<<static_cast<unsigned>(a.rows), 256, 0, ctx.stream()>>>(logits, z, fixed, a, changed);
  MDLM_CUDA_CHECK_LAUNCH();
}

}  // namespace mdlm
