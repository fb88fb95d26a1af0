#pragma once
// The status of a training step, kept in backend memory (device memory on CUDA) so that a step
// never waits for the device: each micro-batch's loss is added into it, the gradient's sum of
// squares is written into it, and finish() derives the norm, the clipping multiplier and a
// sticky non-finite flag, then appends the step's loss and norm to a history window. The AdamW
// and EMA updates read the multiplier from it and do nothing once the flag is set, so a bad
// update is never kept. The host reads the status and the window only when it needs the
// numbers (logging, before checkpoints and validation, at the end): train/trainer.hpp.
//
// The arithmetic is the host code's of before, operation for operation (the loss is a sum of
// loss / accum from 0, the norm the square root of the sum of squares, the multiplier
// clip_grad_norm_'s), so Host fp64 results stay bit-identical to the references. The MDLM_HD
// functions are the one definition the Host functions here and the CUDA kernels
// (ops/cuda/optim.cuh) both run.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "mdlm/backend/host.hpp"
#include "mdlm/core/bf16.hpp"
#include "mdlm/core/config.hpp"
#include "mdlm/core/math.hpp"

namespace mdlm {

// PyTorch's clip_grad_norm_ multiplier for a gradient of global norm `norm` (clip 0: off):
// min(1, clip / (norm + 1e-6)), written as std::min(1.0, x) evaluates (x < 1 ? x : 1; a NaN
// norm gives 1) so the same expression runs on the device.
MDLM_HD inline double clip_multiplier(double norm, double clip) {
  if (!(clip > 0)) return 1.0;
  const double x = clip / (norm + 1e-6);
  return x < 1.0 ? x : 1.0;
}

struct StepStatus {
  double loss = 0;            // this step's loss: the sum over its micro-batches of loss / accum (this rank's share)
  double sumsq = 0;           // the sum of squares of this step's gradient (over every rank's gradient)
  double norm = 0;            // sqrt(sumsq): the global L2 norm, before clipping
  double multiplier = 1;      // clip_multiplier(norm, clip)
  std::int64_t bad = 0;       // sticky: 1 once a step's loss or norm was not finite; updates are skipped from then on
  std::int64_t bad_step = 0;  // the first such step, with its loss and norm
  double bad_loss = 0, bad_norm = 0;
};
static_assert(std::is_trivially_copyable_v<StepStatus> && std::is_standard_layout_v<StepStatus>,
              "the status is copied between host and device memory as bytes");

// Address of the sum of squares inside a status in backend memory (pointer arithmetic only: a
// device pointer must not be dereferenced on the host).
inline double* step_status_sumsq(StepStatus* s) {
  return reinterpret_cast<double*>(reinterpret_cast<char*>(s) + offsetof(StepStatus, sumsq));
}

// Finite test on the bits (exponent not all ones), identical on host and device and under any
// floating-point flags.
MDLM_HD inline bool step_status_finite(double x) {
  std::uint64_t b = 0;
  std::memcpy(&b, &x, sizeof b);
  return ((b >> 52) & 0x7ffu) != 0x7ffu;
}

// Adds micro-batch loss `v` / accum; the first micro-batch starts the sum at 0 (0.0 + x, as the
// host sum did, so -0.0 becomes +0.0 alike).
MDLM_HD inline void step_status_add(StepStatus& s, double v, std::int64_t accum, bool first) {
  s.loss = (first ? 0.0 : s.loss) + v / static_cast<double>(accum);
}

// The end of a step's gradient (sumsq written): norm, multiplier, the sticky flag (the first bad
// step's numbers are kept), and the step's loss and norm into window[0], window[1].
MDLM_HD inline void step_status_finish(StepStatus& s, double clip, std::int64_t step, double* window) {
  s.norm = sqrt_of(s.sumsq);
  s.multiplier = clip_multiplier(s.norm, clip);
  if (!(step_status_finite(s.loss) && step_status_finite(s.norm)) && s.bad == 0) {
    s.bad = 1;
    s.bad_step = step;
    s.bad_loss = s.loss;
    s.bad_norm = s.norm;
  }
  window[0] = s.loss;
  window[1] = s.norm;
}

// ---- Host backend (the CUDA twins are in ops/cuda/optim.cuh) ----------------------------

// Adds a micro-batch's loss, a (1, 1) value of type T in backend memory, divided by accum.
template <class T>
void step_status_add_loss(const Host&, StepStatus* s, const T* loss, std::int64_t accum, bool first) {
  ::mdlm::step_status_add(*s, static_cast<double>(to_compute(loss[0])), accum, first);
}

inline void step_status_finish(const Host&, StepStatus* s, double clip, std::int64_t step, double* window) {
  ::mdlm::step_status_finish(*s, clip, step, window);
}

}  // namespace mdlm
