#pragma once
// The tokenizer concept shared by every tokenizer, the special ids of DESIGN §1 (append a mask
// id when the vocabulary has none), and batch encoding over all cores.

#include <concepts>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <omp.h>

namespace mdlm {

// Special token ids; -1 where the vocabulary has none.
struct SpecialTokens {
  std::int32_t bos = -1, eos = -1, pad = -1, mask = -1, unk = -1;
};

template <class T>
concept Tokenizer = requires(const T& t, std::string_view text, std::span<const std::int32_t> ids) {
  { t.encode(text) } -> std::same_as<std::vector<std::int32_t>>;
  { t.decode(ids) } -> std::same_as<std::string>;
  { t.vocab_size() } -> std::convertible_to<std::int64_t>;  // the model's vocabulary, mask id included
  { t.specials() } -> std::same_as<SpecialTokens>;
  { t.name() } -> std::convertible_to<std::string>;
};

// Encodes every line of a corpus with all cores (static chunks; the output order is the input
// order). Each thread uses its own encoder session where the tokenizer has one (caches).
template <Tokenizer Tok>
std::vector<std::vector<std::int32_t>> encode_batch(const Tok& tok, const std::vector<std::string_view>& lines,
                                                    int threads = 0) {
  std::vector<std::vector<std::int32_t>> out(lines.size());
  const int nt = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
  {
    auto session = tok.session();
#pragma omp for schedule(dynamic, 256)
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(lines.size()); ++i) {
      out[static_cast<std::size_t>(i)] = session.encode(lines[static_cast<std::size_t>(i)]);
    }
  }
  return out;
}

// Splits a text into lines (without the '\n'; a final newline does not add an empty line).
inline std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

}  // namespace mdlm
