#pragma once
// CUDA kernels of the samplers' per-step work after the network, reading the logits (fp32 or
// bf16) in place and writing no probabilities. One thread block per position (per sequence for
// the confidence selection and the first-hit sampler); threads stride over the vocabulary.
//
//   sample_step            ancestral / ReMDM: unmask-or-remask decision, top-k/top-p cut, the
//                          exact race (fp64 scores, Philox noise), deterministic block arg-max
//   confidence_candidates  the drawn candidate of every masked position and its probability
//   confidence_select      per sequence: unmask the k most confident (or those above a threshold)
//   first_hit_step         per sequence: the u-picked masked position gets its draw
//   argmax_masked          the final noise-removal step
// Every kernel takes the step's numbers either by value (SampleStepArgs) or, when `plan` is
// given, from plan[*counter] in device memory: the latter lets one captured CUDA graph serve
// every step of a sampling loop (cuda_sampler.cuh). Host twins: sampling/step.hpp and the
// samplers in sampling/samplers.hpp, which take the same decisions.

#include <cmath>
#include <cstdint>
#include <new>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/sampling/step.hpp"
#include "mdlm/sampling/top_cut.hpp"

namespace mdlm {
namespace cuda_kernels {

inline constexpr unsigned kSampleThreads = 256;

// Shared memory of one block's filter and race (plain members: __shared__ needs a trivial type).
struct RowShared {
  std::uint32_t count[256];
  unsigned long long mass[256];
  double score[kSampleThreads];
  std::int32_t id[kSampleThreads];
  alignas(8) unsigned char search[sizeof(TopCutSearch)];
  std::int64_t pick;
  cuda_detail::BlockShared<float, kSampleThreads> red_max;              // the row's largest logit
  cuda_detail::BlockShared<unsigned long long, kSampleThreads> red_mass;  // fixed-point mass (exact integers)
};
using SelectShared = cuda_detail::BlockShared<long long, kSampleThreads>;  // confidence_select's count

template <class T>
__device__ inline float logit_at(const T* row, std::int64_t v) {
  return static_cast<float>(to_compute(row[v]));
}

// Largest logit of the row, mask excluded; every thread gets it.
template <class T>
__device__ float block_row_max(const T* row, const SampleStepArgs& a, RowShared& sh) {
  float m = cuda_detail::MaxOp::identity<float>();
  for (std::int64_t v = threadIdx.x; v < a.vocab; v += blockDim.x)
    if (v != a.mask_id) m = fmaxf(m, logit_at(row, v));
  return cuda_detail::BlockReducer<float, kSampleThreads>::max(m, sh.red_max);
}

// The top-k/top-p cut of one row: TopCutSearch over block-built histograms (integer atomics, so
// the histogram is the same whatever the order of the threads). Every thread gets the cut.
template <class T>
__device__ TopCut block_top_cut(const T* row, const SampleStepArgs& a, float mx, RowShared& sh) {
  auto* s = reinterpret_cast<TopCutSearch*>(sh.search);
  __syncthreads();
  if (threadIdx.x == 0) new (s) TopCutSearch(a.top_k, a.top_p, a.vocab);
  __syncthreads();
  while (!s->done) {
    for (unsigned b = threadIdx.x; b < 256; b += blockDim.x) sh.count[b] = 0, sh.mass[b] = 0;
    __syncthreads();
    const bool with_mass = s->uses_mass() && s->in_key_passes();
    for (std::int64_t v = threadIdx.x; v < a.vocab; v += blockDim.x) {
      if (v == a.mask_id) continue;
      const float x = logit_at(row, v);
      const std::uint32_t k = order_key(x);
      if (!s->matches(k, static_cast<std::uint32_t>(v))) continue;
      const unsigned b = s->bin(k, static_cast<std::uint32_t>(v));
      atomicAdd(&sh.count[b], 1u);
      if (with_mass) {
        atomicAdd(&sh.mass[b], static_cast<unsigned long long>(
                                   fixed_mass(exp((static_cast<double>(x) - static_cast<double>(mx)) / a.temperature))));
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) s->select(sh.count, reinterpret_cast<const std::uint64_t*>(sh.mass));
    __syncthreads();
  }
  const TopCut cut = s->cut;
  __syncthreads();
  return cut;
}

// Block arg-max of (score, id) pairs, ties to the lower id (ids < 0: nothing); every thread gets
// the winning id.
__device__ inline std::int32_t block_argmax(double score, std::int32_t id, RowShared& sh) {
  sh.score[threadIdx.x] = score;
  sh.id[threadIdx.x] = id;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      const double o = sh.score[threadIdx.x + half];
      const std::int32_t oid = sh.id[threadIdx.x + half];
      if (oid >= 0 && (sh.id[threadIdx.x] < 0 || o > sh.score[threadIdx.x] || (o == sh.score[threadIdx.x] && oid < sh.id[threadIdx.x]))) {
        sh.score[threadIdx.x] = o;
        sh.id[threadIdx.x] = oid;
      }
    }
    __syncthreads();
  }
  const std::int32_t best = sh.id[0];
  __syncthreads();
  return best;
}

// The exact draw for row r (filters applied when set); every thread gets the token.
template <class T>
__device__ std::int32_t block_draw(const T* row, const SampleStepArgs& a, std::int64_t r, float mx, RowShared& sh) {
  const TopCut cut = a.filtered() ? block_top_cut(row, a, mx, sh) : TopCut{};
  double score;
  const std::int32_t best = race_row(row, a, static_cast<std::uint64_t>(r), cut, threadIdx.x, blockDim.x, &score);
  return block_argmax(score, best, sh);
}

template <class T>
__global__ void sample_step(MatrixView<const T, Cuda> logits, std::int32_t* z, const std::uint8_t* fixed, SampleStepArgs a,
                            const StepPlan* plan, const int* counter, std::uint8_t* changed) {
  __shared__ RowShared sh;
  apply_plan(a, plan, counter);
  const std::int64_t r = blockIdx.x;
  if (fixed[r]) return;
  const double u = a.rng.uniform_double(Purpose::Remask, a.step, static_cast<std::uint64_t>(r));
  const std::int32_t zr = z[r];
  __syncthreads();  // every warp has read z[r] before thread 0 may write it
  if (zr != a.mask_id) {
    if (threadIdx.x == 0 && u < a.p_remask) {
      z[r] = a.mask_id;
      if (changed != nullptr) changed[r / a.len] = 1;
    }
    return;
  }
  if (u >= a.p_unmask) return;
  const T* row = logits.data + r * logits.ld;
  const float mx = a.top_p < 1.0 ? block_row_max(row, a, sh) : 0.0f;
  const std::int32_t best = block_draw(row, a, r, mx, sh);
  if (threadIdx.x == 0 && best < 0 && a.failed != nullptr) *a.failed = 1;
  if (threadIdx.x == 0 && best >= 0) {
    z[r] = best;
    if (changed != nullptr) changed[r / a.len] = 1;
  }
}

// cand[r], conf[r] for every masked position (conf = -1 elsewhere): the drawn token and its
// probability under the filtered distribution (kept_probability's definition).
template <class T>
__global__ void confidence_candidates(MatrixView<const T, Cuda> logits, const std::int32_t* z, const std::uint8_t* fixed,
                                      SampleStepArgs a, const StepPlan* plan, const int* counter, std::int32_t* cand,
                                      double* conf) {
  __shared__ RowShared sh;
  apply_plan(a, plan, counter);
  const std::int64_t r = blockIdx.x;
  if (fixed[r] || z[r] != a.mask_id) {
    if (threadIdx.x == 0) conf[r] = -1.0;
    return;
  }
  const T* row = logits.data + r * logits.ld;
  const float mx = block_row_max(row, a, sh);
  const TopCut cut = a.filtered() ? block_top_cut(row, a, mx, sh) : TopCut{};
  double score;
  const std::int32_t mine = race_row(row, a, static_cast<std::uint64_t>(r), cut, threadIdx.x, blockDim.x, &score);
  const std::int32_t best = block_argmax(score, mine, sh);
  unsigned long long q = 0;
  for (std::int64_t v = threadIdx.x; v < a.vocab; v += blockDim.x) {
    if (v == a.mask_id) continue;
    const float x = logit_at(row, v);
    if (!cut.keeps(order_key(x), static_cast<std::uint32_t>(v))) continue;
    q += fixed_mass(exp((static_cast<double>(x) - static_cast<double>(mx)) / a.temperature));
  }
  const unsigned long long total = cuda_detail::BlockReducer<unsigned long long, kSampleThreads>::sum(q, sh.red_mass);
  if (threadIdx.x == 0 && best < 0) {
    conf[r] = -1.0;
    if (a.failed != nullptr) *a.failed = 1;
  } else if (threadIdx.x == 0) {
    cand[r] = best;
    conf[r] = exp((static_cast<double>(logit_at(row, best)) - static_cast<double>(mx)) / a.temperature) * kFixedMassOne /
              static_cast<double>(total);
  }
}

// One block per sequence: rank the candidates by confidence (descending, ties to the earlier
// position, as the Host's stable sort) and unmask the first k = ceil(candidates / steps left),
// or with a threshold every candidate at or above it and at least the most confident one.
static __global__ void confidence_select(std::int32_t* z, const std::int32_t* cand, const double* conf, std::int64_t len,
                                  double threshold, const StepPlan* plan, const int* counter, std::int32_t left) {
  __shared__ SelectShared red;
  const std::int64_t base = blockIdx.x * len;
  if (plan != nullptr) left = plan[*counter].left;
  long long mine = 0;
  for (std::int64_t i = threadIdx.x; i < len; i += blockDim.x) mine += conf[base + i] >= 0.0;
  const std::int64_t candidates = cuda_detail::BlockReducer<long long, kSampleThreads>::sum(mine, red);
  if (candidates == 0) return;
  const std::int64_t k = (candidates + left - 1) / left;
  for (std::int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    const double c = conf[base + i];
    if (c < 0.0) continue;
    std::int64_t rank = 0;
    for (std::int64_t j = 0; j < len; ++j) {
      const double o = conf[base + j];
      rank += o >= 0.0 && (o > c || (o == c && j < i));
    }
    const bool take = threshold > 0 ? (rank == 0 || c >= threshold) : rank < k;
    if (take) z[base + i] = cand[base + i];
  }
}

// One block per sequence: with m masked positions, the floor(u m)-th of them (u = Philox(Remask,
// step, 2b + 1)) takes its exact draw.
template <class T>
__global__ void first_hit_step(MatrixView<const T, Cuda> logits, std::int32_t* z, SampleStepArgs a, const StepPlan* plan,
                               const int* counter) {
  __shared__ RowShared sh;
  apply_plan(a, plan, counter);
  const std::int64_t b = blockIdx.x, base = b * a.len;
  const std::int64_t chunk = (a.len + blockDim.x - 1) / blockDim.x;
  const std::int64_t lo = threadIdx.x * chunk, hi = lo + chunk < a.len ? lo + chunk : a.len;
  std::int32_t mine = 0;
  for (std::int64_t i = lo; i < hi; ++i) mine += z[base + i] == a.mask_id;
  sh.id[threadIdx.x] = mine;
  __syncthreads();
  if (threadIdx.x == 0) {  // exclusive prefix sums of the per-thread counts, total in pick
    std::int64_t run = 0;
    for (unsigned t = 0; t < blockDim.x; ++t) {
      const std::int32_t c = sh.id[t];
      sh.id[t] = static_cast<std::int32_t>(run);
      run += c;
    }
    sh.pick = run;
  }
  __syncthreads();
  const std::int64_t masked = sh.pick;
  if (masked == 0) return;
  const double u = a.rng.uniform_double(Purpose::Remask, a.step, static_cast<std::uint64_t>(b) * 2 + 1);
  const auto target = static_cast<std::int64_t>(u * static_cast<double>(masked));
  __syncthreads();
  std::int64_t seen = sh.id[threadIdx.x];
  if (seen <= target && target < seen + mine) {
    for (std::int64_t i = lo; i < hi; ++i) {
      if (z[base + i] != a.mask_id) continue;
      if (seen++ == target) sh.pick = i;
    }
  }
  __syncthreads();
  const std::int64_t r = base + sh.pick;
  const T* row = logits.data + r * logits.ld;
  const float mx = a.top_p < 1.0 ? block_row_max(row, a, sh) : 0.0f;
  const std::int32_t best = block_draw(row, a, r, mx, sh);
  if (threadIdx.x == 0 && best >= 0) z[r] = best;
  if (threadIdx.x == 0 && best < 0 && a.failed != nullptr) *a.failed = 1;
}

// Noise removal: every still-masked position takes its most likely token (mask excluded).
template <class T>
__global__ void argmax_masked(MatrixView<const T, Cuda> logits, std::int32_t* z, std::int32_t mask_id, std::int64_t vocab,
                              int* failed) {
  __shared__ RowShared sh;
  const std::int64_t r = blockIdx.x;
  if (z[r] != mask_id) return;
  const T* row = logits.data + r * logits.ld;
  double best = -INFINITY;
  std::int32_t id = -1;
  for (std::int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    const double x = logit_at(row, v);
    if (v != mask_id && x > best) best = x, id = static_cast<std::int32_t>(v);
  }
  const std::int32_t w = block_argmax(best, id, sh);
  if (threadIdx.x == 0 && w >= 0) z[r] = w;
  if (threadIdx.x == 0 && w < 0 && failed != nullptr) *failed = 1;
}

// The loop's bookkeeping: this step's sigma row from the table, and the step counter (static: non-template
// kernels defined in a header need internal linkage).
static __global__ void loop_begin_step(const float* sigma_table, std::int64_t n, const int* counter, float* sigma_now) {
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) sigma_now[i] = sigma_table[*counter * n + i];
}
static __global__ void loop_advance(int* counter) { ++*counter; }

}  // namespace cuda_kernels

namespace launches {
using cuda_kernels::kSampleThreads;
inline LaunchConfig sample_row_kernel(const char* kernel, std::int64_t blocks) {
  return launch_detail::block_each(kernel, blocks, kSampleThreads, sizeof(cuda_kernels::RowShared));
}
inline LaunchConfig sample_step(std::int64_t rows) { return sample_row_kernel("sample_step", rows); }
inline LaunchConfig confidence_candidates(std::int64_t rows) { return sample_row_kernel("confidence_candidates", rows); }
inline LaunchConfig confidence_select(std::int64_t sequences) {
  return launch_detail::block_each("confidence_select", sequences, kSampleThreads, sizeof(cuda_kernels::SelectShared));
}
inline LaunchConfig first_hit_step(std::int64_t sequences) { return sample_row_kernel("first_hit_step", sequences); }
inline LaunchConfig argmax_masked(std::int64_t rows) { return sample_row_kernel("argmax_masked", rows); }
inline LaunchConfig loop_begin_step() {
  LaunchConfig c;
  c.kernel = "loop_begin_step";
  c.block.x = 256;
  return c;
}
inline LaunchConfig loop_advance() {
  LaunchConfig c;
  c.kernel = "loop_advance";
  return c;
}
}  // namespace launches

// One ancestral/ReMDM step over logits (rows, vocab) with z, fixed, changed in device memory.
// With `plan`, the step's numbers come from plan[*counter] (device memory) instead of `a`.
template <class T>
void sample_step(Cuda& ctx, MatrixView<const T, Cuda> logits, std::int32_t* z, const std::uint8_t* fixed, SampleStepArgs a,
                 std::uint8_t* changed, const StepPlan* plan = nullptr, const int* counter = nullptr) {
  if (a.rows == 0) return;
  MDLM_CHECK(a.vocab <= kMaxFilteredVocab || !a.filtered(), "sample_step: vocabulary ", a.vocab, " too large for top-k/top-p");
  launch(ctx, launches::sample_step(a.rows), cuda_kernels::sample_step<T>, logits, z, fixed, a, plan, counter, changed);
}

// One confidence-sampler step: candidates for every masked position, then the per-sequence pick.
// cand (rows) and conf (rows) are device scratch.
template <class T>
void confidence_step(Cuda& ctx, MatrixView<const T, Cuda> logits, std::int32_t* z, const std::uint8_t* fixed,
                     SampleStepArgs a, double threshold, std::int32_t left, std::int32_t* cand, double* conf,
                     const StepPlan* plan = nullptr, const int* counter = nullptr) {
  if (a.rows == 0) return;
  MDLM_CHECK(a.vocab <= kMaxFilteredVocab || !a.filtered(), "confidence_step: vocabulary ", a.vocab,
             " too large for top-k/top-p");
  launch(ctx, launches::confidence_candidates(a.rows), cuda_kernels::confidence_candidates<T>, logits, z, fixed, a, plan,
         counter, cand, conf);
  launch(ctx, launches::confidence_select(a.rows / a.len), cuda_kernels::confidence_select, z, cand, conf, a.len,
         threshold, plan, counter, left);
}

template <class T>
void first_hit_step(Cuda& ctx, MatrixView<const T, Cuda> logits, std::int32_t* z, SampleStepArgs a,
                    const StepPlan* plan = nullptr, const int* counter = nullptr) {
  if (a.rows == 0) return;
  launch(ctx, launches::first_hit_step(a.rows / a.len), cuda_kernels::first_hit_step<T>, logits, z, a, plan, counter);
}

inline void loop_begin_step(Cuda& ctx, const float* sigma_table, std::int64_t n, const int* counter, float* sigma_now) {
  launch(ctx, launches::loop_begin_step(), cuda_kernels::loop_begin_step, sigma_table, n, counter, sigma_now);
}
inline void loop_advance(Cuda& ctx, int* counter) { launch(ctx, launches::loop_advance(), cuda_kernels::loop_advance, counter); }

template <class T>
void argmax_masked(Cuda& ctx, MatrixView<const T, Cuda> logits, std::int32_t* z, std::int32_t mask_id, int* failed = nullptr) {
  if (logits.rows == 0) return;
  launch(ctx, launches::argmax_masked(logits.rows), cuda_kernels::argmax_masked<T>, logits, z, mask_id, logits.cols, failed);
}

}  // namespace mdlm
