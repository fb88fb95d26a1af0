#pragma once
// Every tokenizer, and a spec string parser for programs: "gpt2:DIR", "wordpiece:FILE", "bytes".
#include "mdlm/tokenizers/bytes.hpp"
#include "mdlm/tokenizers/gpt2.hpp"
#include "mdlm/tokenizers/tokenizer.hpp"
#include "mdlm/tokenizers/unicode.hpp"
#include "mdlm/tokenizers/wordpiece.hpp"

#include <string>
#include <utility>

namespace mdlm {

// Calls f(tokenizer) with the tokenizer a spec names.
template <class F>
decltype(auto) with_tokenizer(const std::string& spec, F&& f) {
  if (spec == "bytes") return f(ByteTokenizer{});
  if (spec.rfind("gpt2:", 0) == 0) return f(Gpt2Tokenizer::from_directory(spec.substr(5)));
  if (spec.rfind("wordpiece:", 0) == 0) return f(WordPieceTokenizer::from_vocab_file(spec.substr(10)));
  MDLM_FAIL("unknown tokenizer spec '", spec, "' (expected gpt2:DIR, wordpiece:FILE or bytes)");
}

}  // namespace mdlm
