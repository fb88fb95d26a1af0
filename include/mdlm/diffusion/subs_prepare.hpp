#pragma once
// The SUBS loss's per-token preparation as backend kernels (issue 17: a training step that stays
// on the device). MaskedDiffusion::loss stages x0, the loss mask and a few values per sequence to
// backend memory, then:
//   subs_prepare      per token: z_t (the absorbing draw of ops/mask.hpp, same Philox keys) and the
//                     SUBS coefficient (SubsTargets::make's double arithmetic, in its order), with
//                     a flag "the row carries loss" (coef != 0);
//   partition_rows    the row indices, flagged rows first in order and the others after them in
//                     REVERSE order: cub::DevicePartition::Flagged's documented output, which the
//                     CUDA twin calls (so both give the same rows and the head's padding rows, the
//                     first unflagged ones in that order, are the same on every backend);
//   gather_row_targets the head rows' targets and coefficients (padding rows: coefficient 0).
// ar_prepare does the same for the AR baseline's targets.
// Each function here is the Host twin of the one in ops/cuda/subs_prepare.cuh; the per-token math
// is one MDLM_HD function both call.

#include <cstddef>
#include <cstdint>

#include "mdlm/backend/host.hpp"
#include "mdlm/core/philox.hpp"
#include "mdlm/ops/mask.hpp"

namespace mdlm {

// What subs_prepare reads; pointers in backend memory (or host memory for the host count pass).
struct SubsPrepareArgs {
  const std::int32_t* x0 = nullptr;          // (n)
  const double* loss_mask = nullptr;         // (n), nullptr: every token counts (1.0)
  const double* move_chance = nullptr;       // per sequence
  const double* weight = nullptr;            // per sequence: the NELBO's loss weight
  std::int64_t n = 0, seq_len = 1;
  double denominator = 1;                    // the token mean's count (> 0)
  Philox rng;
  std::uint32_t step = 0;
  std::uint64_t first_token = 0;             // Philox index of x0[0] in the global batch
  std::int32_t mask_id = -1;
};

struct SubsToken {
  std::int32_t z;  // z_t
  double coef;     // the row's loss coefficient (0: no loss)
};

// Token r: z = absorbing draw; coef = w_b * mask_r / denominator where z is the mask (a token
// whose x0 already is the mask id counts as masked, as in SubsTargets::make), else 0.
MDLM_HD inline SubsToken subs_prepare_token(const SubsPrepareArgs& a, std::int64_t r) {
  const std::int64_t b = r / a.seq_len;
  const std::int32_t z = absorbing_mask_token(a.x0[r], a.move_chance[b], a.rng, a.step,
                                              a.first_token + static_cast<std::uint64_t>(r), a.mask_id);
  const double mask = a.loss_mask != nullptr ? a.loss_mask[r] : 1.0;
  return {z, z == a.mask_id ? a.weight[b] * mask / a.denominator : 0.0};
}

// zt (n int32), coef (n doubles), flags (n bytes: coef != 0).
inline void subs_prepare(const Host& ctx, const SubsPrepareArgs& a, std::int32_t* zt, double* coef, std::uint8_t* flags) {
  ctx.parallel_for(a.n, [&](std::int64_t r) {
    const SubsToken t = subs_prepare_token(a, r);
    zt[r] = t.z;
    coef[r] = t.coef;
    flags[r] = t.coef != 0.0 ? 1 : 0;
  });
}

// Scratch bytes partition_rows needs (the Host's none; CUDA's: CUB's temporary storage).
inline std::size_t partition_rows_scratch(const Host&, std::int64_t) { return 0; }

// rows[0, s) = the flagged rows in order, rows[s, n) = the others in reverse order; selected[0] = s.
inline void partition_rows(const Host&, const std::uint8_t* flags, std::int64_t n, std::int32_t* rows,
                           std::int32_t* selected, std::byte* /*scratch*/, std::size_t /*scratch_bytes*/) {
  std::int64_t front = 0, back = n;
  for (std::int64_t r = 0; r < n; ++r) {
    if (flags[r] != 0) {
      rows[front++] = static_cast<std::int32_t>(r);
    } else {
      rows[--back] = static_cast<std::int32_t>(r);
    }
  }
  selected[0] = static_cast<std::int32_t>(front);
}

// target_out[i] = target[rows[i]], coef_out[i] = coef[rows[i]] for i < m.
inline void gather_row_targets(const Host& ctx, const std::int32_t* rows, std::int64_t m, const std::int32_t* target,
                               const double* coef, std::int32_t* target_out, double* coef_out) {
  ctx.parallel_for(m, [&](std::int64_t i) {
    target_out[i] = target[rows[i]];
    coef_out[i] = coef[rows[i]];
  });
}

// The AR baseline's targets, the same way: row (b, t) predicts x[b, t + 1] with coefficient
// mask[b, t + 1] / denominator (ar_targets' arithmetic); the last row of a sequence none.
struct ArPrepareArgs {
  const std::int32_t* x = nullptr;   // (n)
  const double* loss_mask = nullptr; // (n), nullptr: every target counts (1.0)
  std::int64_t n = 0, seq_len = 2;
  double denominator = 1;
};

struct ArToken {
  std::int32_t target;
  double coef;
};

MDLM_HD inline ArToken ar_prepare_token(const ArPrepareArgs& a, std::int64_t r) {
  if ((r + 1) % a.seq_len == 0) return {0, 0.0};
  return {a.x[r + 1], (a.loss_mask != nullptr ? a.loss_mask[r + 1] : 1.0) / a.denominator};
}

inline void ar_prepare(const Host& ctx, const ArPrepareArgs& a, std::int32_t* target, double* coef) {
  ctx.parallel_for(a.n, [&](std::int64_t r) {
    const ArToken t = ar_prepare_token(a, r);
    target[r] = t.target;
    coef[r] = t.coef;
  });
}

}  // namespace mdlm
