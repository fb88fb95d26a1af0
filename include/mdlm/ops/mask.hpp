#pragma once
// The absorbing forward process as a kernel: z[r] = mask if u(step, r) < move_chance[r / L],
// else x0[r]. u is Philox's 53-bit uniform (purpose Mask, index r) and move_chance is given per
// sequence (computed once on the host), so every backend draws the same z_t for a seed and step.

#include <cstdint>

#include "mdlm/backend/host.hpp"
#include "mdlm/core/philox.hpp"

namespace mdlm {

MDLM_HD inline std::int32_t absorbing_mask_token(std::int32_t x0, double move_chance, Philox rng, std::uint32_t step,
                                                 std::uint64_t r, std::int32_t mask_id) {
  return rng.uniform_double(Purpose::Mask, step, r) < move_chance ? mask_id : x0;
}

// `first_token`: the index of x0[0] within the global batch (data-parallel ranks hold a slice of
// it), so token r draws with Philox index first_token + r as a single process would.
inline void absorbing_mask(const Host& ctx, const std::int32_t* x0, const double* move_chance, std::int64_t n,
                           std::int64_t seq_len, Philox rng, std::uint32_t step, std::int32_t mask_id, std::int32_t* zt,
                           std::uint64_t first_token = 0) {
  ctx.parallel_for(n, [&](std::int64_t r) {
    zt[r] = absorbing_mask_token(x0[r], move_chance[r / seq_len], rng, step, first_token + static_cast<std::uint64_t>(r),
                                 mask_id);
  });
}

}  // namespace mdlm
