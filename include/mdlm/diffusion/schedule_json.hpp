#pragma once
// A schedule as JSON, for the checkpoint's training state: {"name": "cosine", "eps": 0.001}.
// The shipped schedules have to_json/from_json (nlohmann's ADL hooks); a user's schedule is
// recorded with its parameters when its namespace provides to_json, else by name alone
// (schedule_name(): S::name() or "custom"). Reading a record back into a type is the caller's
// explicit dispatch (the `mdlm` program's); the library never picks a type by name.

#include <nlohmann/json.hpp>

#include "mdlm/diffusion/schedule.hpp"

namespace mdlm {

inline void to_json(nlohmann::json& j, const LogLinearSchedule& s) { j = {{"eps", s.eps}}; }
inline void to_json(nlohmann::json& j, const CosineSchedule& s) { j = {{"eps", s.eps}}; }
inline void to_json(nlohmann::json& j, const LinearSchedule& s) { j = {{"sigma_min", s.sigma_min}, {"sigma_max", s.sigma_max}}; }
inline void to_json(nlohmann::json& j, const GeometricSchedule& s) { j = {{"sigma_min", s.sigma_min}, {"sigma_max", s.sigma_max}}; }
inline void to_json(nlohmann::json& j, const PolynomialSchedule& s) { j = {{"w", s.w}, {"eps", s.eps}}; }

// Missing keys keep the defaults (a record from an older writer).
inline void from_json(const nlohmann::json& j, LogLinearSchedule& s) { s.eps = j.value("eps", s.eps); }
inline void from_json(const nlohmann::json& j, CosineSchedule& s) { s.eps = j.value("eps", s.eps); }
inline void from_json(const nlohmann::json& j, LinearSchedule& s) {
  s.sigma_min = j.value("sigma_min", s.sigma_min);
  s.sigma_max = j.value("sigma_max", s.sigma_max);
}
inline void from_json(const nlohmann::json& j, GeometricSchedule& s) {
  s.sigma_min = j.value("sigma_min", s.sigma_min);
  s.sigma_max = j.value("sigma_max", s.sigma_max);
}
inline void from_json(const nlohmann::json& j, PolynomialSchedule& s) {
  s.w = j.value("w", s.w);
  s.eps = j.value("eps", s.eps);
}

// {"name": ..., parameters...}
template <class S>
nlohmann::json schedule_record(const S& s) {
  static_assert(check_schedule<S>());
  nlohmann::json j = nlohmann::json::object();
  if constexpr (requires(nlohmann::json& out, const S& x) { to_json(out, x); }) to_json(j, s);
  j["name"] = schedule_name<S>();
  return j;
}

}  // namespace mdlm
