// libFuzzer target: a Hugging Face `tokenizer.json` from arbitrary bytes
// (mdlm::Gpt2Tokenizer::from_tokenizer_json_text). Either it loads, and then encoding a fixed
// sample text gives ids inside the vocabulary that decode back to the text, or it is rejected
// with mdlm::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "mdlm/tokenizers/gpt2.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto tok =
        mdlm::Gpt2Tokenizer::from_tokenizer_json_text(std::string(reinterpret_cast<const char*>(data), size), "tokenizer.json");
    const auto ids = tok.encode(mdlm_fuzz::kSampleText);
    mdlm_fuzz::require(mdlm_fuzz::ids_in_vocabulary(ids, tok.vocab_size()), "every id is inside the vocabulary");
    mdlm_fuzz::require(tok.decode(ids) == mdlm_fuzz::kSampleText, "decode(encode(x)) == x");
  } catch (const mdlm::Error&) {
  }
  return 0;
}
