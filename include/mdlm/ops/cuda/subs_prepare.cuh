#pragma once
// CUDA twins of diffusion/subs_prepare.hpp: the SUBS loss's per-token preparation (z_t, the
// coefficients, the "carries loss" flags), the AR baseline's targets, the row partition (cub::DevicePartition::Flagged: its
// documented order is what the Host twin writes) and the head rows' target gather. Nothing here
// synchronizes or reads back: the selected count stays in device memory (the host knows it from
// its own count pass).

#include <cstddef>
#include <cstdint>

#include <cub/device/device_partition.cuh>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/diffusion/subs_prepare.hpp"
#include "mdlm/ops/cuda/elementwise.cuh"

namespace mdlm {
namespace cuda_kernels {

template <int kUnused = 0>  // a template: safe to define in a header used by several TUs
__global__ void subs_prepare(SubsPrepareArgs a, std::int32_t* zt, double* coef, std::uint8_t* flags) {
  for (std::int64_t r = cuda_detail::global_index(); r < a.n; r += cuda_detail::global_stride()) {
    const SubsToken t = subs_prepare_token(a, r);
    zt[r] = t.z;
    coef[r] = t.coef;
    flags[r] = t.coef != 0.0 ? 1 : 0;
  }
}

template <int kUnused = 0>
__global__ void ar_prepare(ArPrepareArgs a, std::int32_t* target, double* coef) {
  for (std::int64_t r = cuda_detail::global_index(); r < a.n; r += cuda_detail::global_stride()) {
    const ArToken t = ar_prepare_token(a, r);
    target[r] = t.target;
    coef[r] = t.coef;
  }
}

template <int kUnused = 0>
__global__ void gather_row_targets(const std::int32_t* rows, std::int64_t m, const std::int32_t* target,
                                   const double* coef, std::int32_t* target_out, double* coef_out) {
  for (std::int64_t i = cuda_detail::global_index(); i < m; i += cuda_detail::global_stride()) {
    target_out[i] = target[rows[i]];
    coef_out[i] = coef[rows[i]];
  }
}

}  // namespace cuda_kernels

// Launch configurations (checked on the CPU: tests/cuda_host/).
namespace launches {
inline LaunchConfig subs_prepare(std::int64_t n) { return launch_detail::grid_stride("subs_prepare", n); }
inline LaunchConfig partition_iota_rows(std::int64_t n) { return launch_detail::grid_stride("iota_rows", n); }
inline LaunchConfig gather_row_targets(std::int64_t m) { return launch_detail::grid_stride("gather_row_targets", m); }
inline LaunchConfig ar_prepare(std::int64_t n) { return launch_detail::grid_stride("ar_prepare", n); }
}  // namespace launches

inline void subs_prepare(Cuda& ctx, const SubsPrepareArgs& a, std::int32_t* zt, double* coef, std::uint8_t* flags) {
  launch(ctx, launches::subs_prepare(a.n), cuda_kernels::subs_prepare<>, a, zt, coef, flags);
}

inline void ar_prepare(Cuda& ctx, const ArPrepareArgs& a, std::int32_t* target, double* coef) {
  launch(ctx, launches::ar_prepare(a.n), cuda_kernels::ar_prepare<>, a, target, coef);
}

namespace cuda_detail {
// partition_rows' scratch: the row indices 0..n-1 (CUB's input), then CUB's temporary storage.
struct PartitionLayout {
  std::size_t temp = 0, temp_bytes = 0, total = 0;
};
// Needs no launch and no synchronization (CUB sizes its storage from n and the device).
inline PartitionLayout partition_layout(std::int64_t n) {
  MDLM_CHECK(n >= 0 && n <= 2147483647, "partition: ", n, " rows exceed the 32-bit row index");
  PartitionLayout l;
  l.temp = align256(static_cast<std::size_t>(n) * sizeof(std::int32_t));
  if (n > 0) {
    MDLM_CUDA_CHECK(cub::DevicePartition::Flagged(nullptr, l.temp_bytes, static_cast<const std::int32_t*>(nullptr),
                                                  static_cast<const std::uint8_t*>(nullptr),
                                                  static_cast<std::int32_t*>(nullptr),
                                                  static_cast<std::int32_t*>(nullptr), static_cast<int>(n)));
  }
  l.total = l.temp + align256(l.temp_bytes);
  return l;
}
}  // namespace cuda_detail

inline std::size_t partition_rows_scratch(const Cuda&, std::int64_t n) { return cuda_detail::partition_layout(n).total; }

// rows (n) and selected (1) in device memory; scratch: partition_rows_scratch(ctx, n) bytes.
inline void partition_rows(Cuda& ctx, const std::uint8_t* flags, std::int64_t n, std::int32_t* rows,
                           std::int32_t* selected, std::byte* scratch, std::size_t scratch_bytes) {
  const cuda_detail::PartitionLayout l = cuda_detail::partition_layout(n);
  MDLM_CHECK(scratch != nullptr || l.total == 0, "partition: no scratch");
  MDLM_CHECK(scratch_bytes >= l.total, "partition: scratch of ", scratch_bytes, " bytes, ", l.total, " needed for ", n,
             " rows");
  if (n == 0) {
    zero_bytes(ctx, selected, sizeof(std::int32_t));
    return;
  }
  auto* rows_in = reinterpret_cast<std::int32_t*>(scratch);
  launch(ctx, launches::partition_iota_rows(n), cuda_kernels::iota_rows<std::int32_t>, rows_in, n);
  std::size_t temp = l.temp_bytes;
  MDLM_CUDA_CHECK(cub::DevicePartition::Flagged(static_cast<void*>(scratch + l.temp), temp,
                                                static_cast<const std::int32_t*>(rows_in), flags, rows, selected,
                                                static_cast<int>(n), ctx.stream()));
  MDLM_CUDA_CHECK_LAUNCH();
}

inline void gather_row_targets(Cuda& ctx, const std::int32_t* rows, std::int64_t m, const std::int32_t* target,
                               const double* coef, std::int32_t* target_out, double* coef_out) {
  launch(ctx, launches::gather_row_targets(m), cuda_kernels::gather_row_targets<>, rows, m, target, coef, target_out,
         coef_out);
}

}  // namespace mdlm
