#pragma once
// mdlm::Error and the check macros. Every failure the library detects is thrown as an
// mdlm::Error whose message names the source location and the offending values, e.g.
//   MDLM_CHECK(id < vocab, "token id ", id, " out of range for vocab size ", vocab);
// -> "mdlm/tokenizers/gpt2.hpp:42: check failed (id < vocab): token id 50300 out of range ..."

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mdlm {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

// Strips the directory part above include/ so messages read "mdlm/core/x.hpp:12".
constexpr const char* short_path(const char* path) {
  const char* best = path;
  for (const char* p = path; *p != '\0'; ++p) {
    if (p[0] == 'm' && p[1] == 'd' && p[2] == 'l' && p[3] == 'm' && p[4] == '/' &&
        (p == path || p[-1] == '/')) {
      best = p;
    }
  }
  return best;
}

template <class... Args>
[[noreturn]] void throw_error(const char* file, int line, Args&&... args) {
  throw Error(concat(short_path(file), ":", line, ": ", std::forward<Args>(args)...));
}

}  // namespace detail
}  // namespace mdlm

// Throws mdlm::Error with file:line and the streamed message arguments.
#define MDLM_FAIL(...) ::mdlm::detail::throw_error(__FILE__, __LINE__, __VA_ARGS__)

// Throws mdlm::Error when cond is false; the message names the condition and the values.
#define MDLM_CHECK(cond, ...)                                                       \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      ::mdlm::detail::throw_error(__FILE__, __LINE__, "check failed (" #cond "): ", \
                                  __VA_ARGS__);                                     \
    }                                                                               \
  } while (0)
