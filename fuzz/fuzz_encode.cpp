// libFuzzer target: arbitrary bytes as text to encode with the three tokenizers, the real
// vocabularies of data/ (GPT-2 encoder.json + vocab.bpe, BERT vocab.txt) and bytes. Properties:
//   bytes:     every id < 260 and decode(encode(x)) == x for any bytes;
//   GPT-2:     the pre-tokens tile x; every id < vocab size; decode(encode(x)) == x for any
//              bytes (invalid UTF-8 encodes as byte tokens), with and without special tokens;
//   WordPiece: every id < vocab size and the ids decode (lowercasing, accent stripping: no
//              round trip is promised).
// Encoding must not throw: any text is valid input.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "mdlm/tokenizers/all.hpp"

#ifndef MDLM_FUZZ_DATA_DIR
#error "build with -DMDLM_FUZZ_DATA_DIR=\"<repo>/data\" (scripts/fuzz.sh does)"
#endif

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using mdlm_fuzz::require;
  static const mdlm::Gpt2Tokenizer gpt2 = mdlm::Gpt2Tokenizer::from_directory(MDLM_FUZZ_DATA_DIR "/gpt2");
  static const mdlm::WordPieceTokenizer bert =
      mdlm::WordPieceTokenizer::from_vocab_file(MDLM_FUZZ_DATA_DIR "/bert-base-uncased/vocab.txt");
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  const mdlm::ByteTokenizer bytes;
  const auto b = bytes.encode(text);
  require(mdlm_fuzz::ids_in_vocabulary(b, bytes.vocab_size()), "bytes: every id is inside the vocabulary");
  require(bytes.decode(b) == text, "bytes: decode(encode(x)) == x");

  std::string tiles;
  mdlm::gpt2_pretokenize(text, [&](std::string_view piece) {
    require(!piece.empty(), "gpt2: no empty pre-token");
    tiles += piece;
  });
  require(tiles == text, "gpt2: the pre-tokens tile the text");
  const auto g = gpt2.encode(text);
  require(mdlm_fuzz::ids_in_vocabulary(g, gpt2.vocab_size()), "gpt2: every id is inside the vocabulary");
  require(gpt2.decode(g) == text, "gpt2: decode(encode(x)) == x");
  const auto gs = gpt2.encode_with_special(text);
  require(mdlm_fuzz::ids_in_vocabulary(gs, gpt2.vocab_size()), "gpt2: every id is inside the vocabulary (special)");
  require(gpt2.decode(gs) == text, "gpt2: decode(encode_with_special(x)) == x");

  const auto w = bert.encode(text);
  require(mdlm_fuzz::ids_in_vocabulary(w, bert.vocab_size()), "wordpiece: every id is inside the vocabulary");
  (void)bert.decode(w);
  return 0;
}
