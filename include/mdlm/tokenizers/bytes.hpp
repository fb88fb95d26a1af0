#pragma once
// Byte-level tokenizer for quick experiments: ids 0..255 are the bytes, then BOS, EOS, PAD and
// MASK. Any byte string round-trips.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mdlm/core/error.hpp"
#include "mdlm/tokenizers/tokenizer.hpp"

namespace mdlm {

class ByteTokenizer {
 public:
  static constexpr std::int32_t kBos = 256, kEos = 257, kPad = 258, kMask = 259;

  std::vector<std::int32_t> encode(std::string_view text) const {
    std::vector<std::int32_t> ids(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  // Special ids decode to nothing.
  std::string decode(std::span<const std::int32_t> ids) const {
    std::string out;
    out.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      MDLM_CHECK(ids[i] >= 0 && ids[i] < 260, "byte tokenizer: id ", ids[i], " at position ", i, " is out of range");
      if (ids[i] < 256) out.push_back(static_cast<char>(ids[i]));
    }
    return out;
  }
  std::int64_t vocab_size() const { return 260; }
  SpecialTokens specials() const { return {kBos, kEos, kPad, kMask, -1}; }
  std::string name() const { return "bytes"; }
  const ByteTokenizer& session() const { return *this; }
};

static_assert(Tokenizer<ByteTokenizer>);

}  // namespace mdlm
