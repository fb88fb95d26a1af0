#pragma once
// Noise schedules of the absorbing-state process (DESIGN §1). Each is a small type with
// __host__ __device__ math:
//   sigma(t)        total noise, alpha_t = exp(-sigma(t)) the probability a token is still clean
//   dsigma(t)       d sigma / dt
//   alpha(t), move_chance(t) = 1 - alpha_t   (computed as -expm1(-sigma) where that is exact)
//   loss_weight(t)  sigma'(t) / expm1(sigma(t)), the continuous-time NELBO weight
//   t_of_alpha(a)   the inverse, for samplers that work in alpha (first-hitting)
// All are finite on t in [0, 1] (loss_weight on (0, 1]: it diverges like 1/t at 0).

#include <cmath>
#include <concepts>

#include "mdlm/core/config.hpp"

namespace mdlm {

namespace schedule_detail {
inline constexpr double kPi = 3.14159265358979323846;
}

// What a schedule type must provide (a user's own too): six `double f(double) const` members.
// `NoiseSchedule<S>` is the concept; `check_schedule<S>()` asserts it member by member, so a
// schedule that misses one fails with a message naming that member. MaskedDiffusion, the
// trainer, evaluation and the samplers all check their Schedule this way.
// Optional: `static const char* name()` (recorded in checkpoints; "custom" without it).
namespace schedule_detail {
template <class S> concept has_sigma = requires(const S& s, double t) { { s.sigma(t) } -> std::convertible_to<double>; };
template <class S> concept has_dsigma = requires(const S& s, double t) { { s.dsigma(t) } -> std::convertible_to<double>; };
template <class S> concept has_alpha = requires(const S& s, double t) { { s.alpha(t) } -> std::convertible_to<double>; };
template <class S> concept has_move_chance = requires(const S& s, double t) { { s.move_chance(t) } -> std::convertible_to<double>; };
template <class S> concept has_loss_weight = requires(const S& s, double t) { { s.loss_weight(t) } -> std::convertible_to<double>; };
template <class S> concept has_t_of_alpha = requires(const S& s, double a) { { s.t_of_alpha(a) } -> std::convertible_to<double>; };
}  // namespace schedule_detail

template <class S>
concept NoiseSchedule = std::copy_constructible<S> && schedule_detail::has_sigma<S> && schedule_detail::has_dsigma<S> &&
                        schedule_detail::has_alpha<S> && schedule_detail::has_move_chance<S> &&
                        schedule_detail::has_loss_weight<S> && schedule_detail::has_t_of_alpha<S>;

template <class S>
constexpr bool check_schedule() {
  static_assert(schedule_detail::has_sigma<S>, "mdlm schedule: missing member `double sigma(double t) const` (total noise)");
  static_assert(schedule_detail::has_dsigma<S>, "mdlm schedule: missing member `double dsigma(double t) const` (d sigma / dt)");
  static_assert(schedule_detail::has_alpha<S>, "mdlm schedule: missing member `double alpha(double t) const` (exp(-sigma))");
  static_assert(schedule_detail::has_move_chance<S>, "mdlm schedule: missing member `double move_chance(double t) const` (1 - alpha)");
  static_assert(schedule_detail::has_loss_weight<S>,
                "mdlm schedule: missing member `double loss_weight(double t) const` (sigma' / expm1(sigma))");
  static_assert(schedule_detail::has_t_of_alpha<S>, "mdlm schedule: missing member `double t_of_alpha(double a) const` (inverse of alpha)");
  static_assert(std::copy_constructible<S>, "mdlm schedule: a schedule must be copy constructible");
  return NoiseSchedule<S>;
}

// The schedule's name as recorded in a checkpoint: S::name() where it has one, else "custom".
template <class S>
constexpr const char* schedule_name() {
  if constexpr (requires { { S::name() } -> std::convertible_to<const char*>; }) return S::name();
  else return "custom";
}

// Log-linear (MDLM's default): 1 - alpha_t = (1 - eps) t.
struct LogLinearSchedule {
  double eps = 1e-3;
  static constexpr const char* name() { return "loglinear"; }
  MDLM_HD double sigma(double t) const { return -log1p(-(1.0 - eps) * t); }
  MDLM_HD double dsigma(double t) const { return (1.0 - eps) / (1.0 - (1.0 - eps) * t); }
  MDLM_HD double alpha(double t) const { return 1.0 - (1.0 - eps) * t; }
  MDLM_HD double move_chance(double t) const { return (1.0 - eps) * t; }
  MDLM_HD double loss_weight(double t) const { return 1.0 / t; }  // exact closed form of sigma'/expm1(sigma)
  MDLM_HD double t_of_alpha(double a) const { return (1.0 - a) / (1.0 - eps); }
};

// Cosine (MDLM's CosineNoise): alpha_t = eps + (1 - eps) cos(pi t / 2).
struct CosineSchedule {
  double eps = 1e-3;
  static constexpr const char* name() { return "cosine"; }
  MDLM_HD double alpha(double t) const { return eps + (1.0 - eps) * cos(schedule_detail::kPi * t / 2.0); }
  MDLM_HD double sigma(double t) const { return -log(alpha(t)); }
  MDLM_HD double dsigma(double t) const {
    return (1.0 - eps) * sin(schedule_detail::kPi * t / 2.0) * (schedule_detail::kPi / 2.0) / alpha(t);
  }
  // 1 - cos(x) = 2 sin^2(x / 2): no cancellation near t = 0
  MDLM_HD double move_chance(double t) const {
    const double h = sin(schedule_detail::kPi * t / 4.0);
    return (1.0 - eps) * 2.0 * h * h;
  }
  // sigma' / expm1(sigma) = sigma' alpha / (1 - alpha)
  MDLM_HD double loss_weight(double t) const { return dsigma(t) * alpha(t) / move_chance(t); }
  MDLM_HD double t_of_alpha(double a) const { return 2.0 / schedule_detail::kPi * acos((a - eps) / (1.0 - eps)); }
};

// Linear total noise: sigma(t) = sigma_min + t (sigma_max - sigma_min).
struct LinearSchedule {
  double sigma_min = 0.0;
  double sigma_max = 10.0;
  static constexpr const char* name() { return "linear"; }
  MDLM_HD double sigma(double t) const { return sigma_min + t * (sigma_max - sigma_min); }
  MDLM_HD double dsigma(double) const { return sigma_max - sigma_min; }
  MDLM_HD double alpha(double t) const { return exp(-sigma(t)); }
  MDLM_HD double move_chance(double t) const { return -expm1(-sigma(t)); }
  MDLM_HD double loss_weight(double t) const { return dsigma(t) / expm1(sigma(t)); }
  MDLM_HD double t_of_alpha(double a) const { return (-log(a) - sigma_min) / (sigma_max - sigma_min); }
};

// Geometric total noise: sigma(t) = sigma_min^(1 - t) sigma_max^t.
struct GeometricSchedule {
  double sigma_min = 1e-3;
  double sigma_max = 1.0;
  static constexpr const char* name() { return "geometric"; }
  MDLM_HD double sigma(double t) const { return exp((1.0 - t) * log(sigma_min) + t * log(sigma_max)); }
  MDLM_HD double dsigma(double t) const { return sigma(t) * (log(sigma_max) - log(sigma_min)); }
  MDLM_HD double alpha(double t) const { return exp(-sigma(t)); }
  MDLM_HD double move_chance(double t) const { return -expm1(-sigma(t)); }
  MDLM_HD double loss_weight(double t) const { return dsigma(t) / expm1(sigma(t)); }
  MDLM_HD double t_of_alpha(double a) const {
    return (log(-log(a)) - log(sigma_min)) / (log(sigma_max) - log(sigma_min));
  }
};

// Polynomial (MD4): alpha_t = 1 - (1 - eps) t^w  (eps keeps sigma finite at t = 1).
struct PolynomialSchedule {
  double w = 1.0;
  double eps = 1e-3;
  static constexpr const char* name() { return "polynomial"; }
  MDLM_HD double move_chance(double t) const { return (1.0 - eps) * pow(t, w); }
  MDLM_HD double alpha(double t) const { return 1.0 - move_chance(t); }
  MDLM_HD double sigma(double t) const { return -log1p(-move_chance(t)); }
  MDLM_HD double dsigma(double t) const { return (1.0 - eps) * w * pow(t, w - 1.0) / alpha(t); }
  // sigma' / expm1(sigma) = sigma' alpha / (1 - alpha) = w / t exactly
  MDLM_HD double loss_weight(double t) const { return w / t; }
  MDLM_HD double t_of_alpha(double a) const { return pow((1.0 - a) / (1.0 - eps), 1.0 / w); }
};

// The discrete-time (T steps) NELBO weight of a masked token at t (a multiple of 1/T):
//   T (alpha_s - alpha_t) / (1 - alpha_t),  s = t - 1/T
// With SUBS the terms for the mask class vanish and this is the whole per-token weight; as
// T -> infinity it tends to loss_weight(t).
template <class Schedule>
MDLM_HD double discrete_loss_weight(const Schedule& sched, double t, int steps) {
  const double s = t - 1.0 / steps;
  return steps * (sched.alpha(s) - sched.alpha(t)) / sched.move_chance(t);
}

static_assert(NoiseSchedule<LogLinearSchedule> && NoiseSchedule<CosineSchedule> && NoiseSchedule<LinearSchedule> &&
              NoiseSchedule<GeometricSchedule> && NoiseSchedule<PolynomialSchedule>);

}  // namespace mdlm
