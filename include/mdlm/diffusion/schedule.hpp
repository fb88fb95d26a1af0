#pragma once
// Noise schedules of the absorbing-state process: total noise sigma(t), its rate sigma'(t),
// the keep probability alpha_t = exp(-sigma(t)) and the NELBO weight sigma'(t) / expm1(sigma(t)).
// __host__ __device__ math; each schedule is a small type (DESIGN §3).

#include <cmath>

#include "mdlm/core/config.hpp"

namespace mdlm {

// log-linear (MDLM's default): 1 - alpha_t = (1 - eps) t, so
//   sigma = -log1p(-(1 - eps) t),  sigma' = (1 - eps) / (1 - (1 - eps) t),  weight = 1 / t.
struct LogLinearSchedule {
  double eps = 1e-3;
  MDLM_HD double sigma(double t) const { return -log1p(-(1.0 - eps) * t); }
  MDLM_HD double dsigma(double t) const { return (1.0 - eps) / (1.0 - (1.0 - eps) * t); }
  MDLM_HD double alpha(double t) const { return 1.0 - (1.0 - eps) * t; }
  // sigma' / expm1(sigma), in closed form: exactly 1 / t.
  MDLM_HD double loss_weight(double t) const { return 1.0 / t; }
};

}  // namespace mdlm
