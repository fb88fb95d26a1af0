#pragma once
// What every libFuzzer target here shares: a property that must hold for every input the
// library accepts. A broken one prints what broke and aborts, which libFuzzer reports as a
// crash (and keeps the input).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace mdlm_fuzz {

inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz property broken: %s\n", what);
    std::abort();
  }
}

// The input cut at NUL bytes into at most `max_parts` parts (the last part keeps any further
// NULs); a target whose input is several files reads them this way.
inline std::vector<std::string> split_at_nul(std::string_view input, std::size_t max_parts) {
  std::vector<std::string> parts;
  while (parts.size() + 1 < max_parts) {
    const std::size_t nul = input.find('\0');
    if (nul == std::string_view::npos) break;
    parts.emplace_back(input.substr(0, nul));
    input.remove_prefix(nul + 1);
  }
  parts.emplace_back(input);
  return parts;
}

// Text the tokenizer-file targets encode with the tokenizer they loaded: ASCII words,
// contractions, digits, runs of spaces, accents, CJK, an emoji, invalid UTF-8 and the special
// tokens both tokenizers know.
inline constexpr std::string_view kSampleText =
    "Hello world, it's 3 o'clock; they'll   go.\n\tNa\xc3\xafve caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac "
    "\xf0\x9f\x98\x80 \xff\xfe\xc3 [UNK] [MASK] [CLS] <|endoftext|> unaffable ##ing";

// Every id in [0, vocab).
template <class Ids>
bool ids_in_vocabulary(const Ids& ids, long long vocab) {
  for (auto id : ids)
    if (id < 0 || id >= vocab) return false;
  return true;
}

}  // namespace mdlm_fuzz
