#pragma once
// Numbers out of JSON files without undefined behaviour or silent wrap-around. nlohmann's
// get<int>() casts a float (1e84) or an out-of-range integer (4294967295 -> -1) unchecked;
// json_number<T> accepts only a value T can hold exactly and names the field otherwise
// (found by fuzz/fuzz_data_meta.cpp).

#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include "mdlm/core/error.hpp"

namespace mdlm {

// The value `v` as T; `what` names it in errors ("meta.json: field 'bos'"). Integral T needs a
// JSON integer in T's range; floating T a number T can represent.
template <class T>
  requires std::integral<T> || std::floating_point<T>
T json_number(const nlohmann::json& v, const std::string& what) {
  if constexpr (std::integral<T>) {
    constexpr auto lo = static_cast<long double>(std::numeric_limits<T>::min());
    constexpr auto hi = static_cast<long double>(std::numeric_limits<T>::max());
    const bool in_range = v.is_number_unsigned() ? static_cast<long double>(v.get<std::uint64_t>()) <= hi
                          : v.is_number_integer()
                              ? static_cast<long double>(v.get<std::int64_t>()) >= lo &&
                                    static_cast<long double>(v.get<std::int64_t>()) <= hi
                              : false;
    if (!in_range) MDLM_FAIL(what, " is ", v.dump(), ", expected an integer in [", +std::numeric_limits<T>::min(), ", ",
                             +std::numeric_limits<T>::max(), "]");
    return v.is_number_unsigned() ? static_cast<T>(v.get<std::uint64_t>()) : static_cast<T>(v.get<std::int64_t>());
  } else {
    const double d = v.is_number() ? v.get<double>() : NAN;
    if (!std::isfinite(d) || std::fabs(d) > static_cast<double>(std::numeric_limits<T>::max())) {
      MDLM_FAIL(what, " is ", v.dump(), ", expected a finite number");
    }
    return static_cast<T>(d);
  }
}

// Field `key` of the object `j` as T (json_number); missing: an error naming `origin` and the key.
template <class T>
T json_field(const nlohmann::json& j, const std::string& key, const std::string& origin) {
  if (!j.is_object() || !j.contains(key)) MDLM_FAIL(origin, ": field '", key, "' is missing");
  return json_number<T>(j[key], origin + ": field '" + key + "'");
}

// As above; a missing field is `fallback`.
template <class T>
T json_field(const nlohmann::json& j, const std::string& key, const std::string& origin, T fallback) {
  if (j.is_object() && !j.contains(key)) return fallback;
  return json_field<T>(j, key, origin);
}

}  // namespace mdlm
