// libFuzzer target: a BERT `vocab.txt` from arbitrary bytes
// (mdlm::WordPieceTokenizer::from_vocab_text). Either it loads, and then encoding a fixed sample
// text gives ids inside the vocabulary that decode without error (WordPiece lowercases and
// strips accents, so it promises no round trip), or it is rejected with mdlm::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "mdlm/tokenizers/wordpiece.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto tok = mdlm::WordPieceTokenizer::from_vocab_text(std::string(reinterpret_cast<const char*>(data), size), "vocab.txt");
    const auto ids = tok.encode(mdlm_fuzz::kSampleText);
    mdlm_fuzz::require(mdlm_fuzz::ids_in_vocabulary(ids, tok.vocab_size()), "every id is inside the vocabulary");
    (void)tok.decode(ids);
  } catch (const mdlm::Error&) {
  }
  return 0;
}
