// libFuzzer target: GPT-2 `vocab.json` + `merges.txt` from arbitrary bytes
// (mdlm::Gpt2Tokenizer::from_texts). The input is split at its first NUL byte: the bytes before
// it are vocab.json, the bytes after it merges.txt (no NUL: merges.txt is empty). Either the
// pair loads, and then encoding a fixed sample text gives ids inside the vocabulary that decode
// back to the text (byte-level BPE round-trips any bytes), or it is rejected with mdlm::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "mdlm/tokenizers/gpt2.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto parts = mdlm_fuzz::split_at_nul({reinterpret_cast<const char*>(data), size}, 2);
  try {
    const auto tok = mdlm::Gpt2Tokenizer::from_texts(parts[0], "vocab.json", parts.size() > 1 ? parts[1] : "", "merges.txt");
    const auto ids = tok.encode(mdlm_fuzz::kSampleText);
    mdlm_fuzz::require(mdlm_fuzz::ids_in_vocabulary(ids, tok.vocab_size()), "every id is inside the vocabulary");
    mdlm_fuzz::require(tok.decode(ids) == mdlm_fuzz::kSampleText, "decode(encode(x)) == x");
  } catch (const mdlm::Error&) {
  }
  return 0;
}
