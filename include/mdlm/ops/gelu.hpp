#pragma once
// tanh-approximated GELU (the form MDLM's DiT uses and cuBLASLt's GELU epilogues compute):
//   gelu(x) = 0.5 x (1 + tanh(s (x + 0.044715 x^3))),  s = sqrt(2/pi)
// and its derivative, shared by host loops and device kernels.

#include <cmath>

#include "mdlm/core/config.hpp"

namespace mdlm {

// Precision-preserving tanh for float and double on host and device.
MDLM_HD inline float tanh_of(float x) { return tanhf(x); }
MDLM_HD inline double tanh_of(double x) { return ::tanh(x); }

template <class T>
MDLM_HD inline T gelu_tanh(T x) {
  const T s = T(0.7978845608028654);  // sqrt(2/pi)
  const T k = T(0.044715);
  return T(0.5) * x * (T(1) + tanh_of(s * (x + k * x * x * x)));
}

template <class T>
MDLM_HD inline T gelu_tanh_grad(T x) {
  const T s = T(0.7978845608028654);
  const T k = T(0.044715);
  T th = tanh_of(s * (x + k * x * x * x));
  return T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * s * (T(1) + T(3) * k * x * x);
}

}  // namespace mdlm
