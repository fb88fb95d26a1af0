#pragma once
// BERT WordPiece (the uncased model, as Hugging Face's BertWordPieceTokenizer with
// lowercase=True and no special tokens added), loading a BERT `vocab.txt`.
//
// Normalization (BertNormalizer): drop U+0000, U+FFFD and control/format/unassigned characters
// (general category C*, except \t \n \r); turn White_Space into ' '; put spaces around CJK
// ideographs; NFD and drop non-spacing marks (Mn) — "strip accents"; lowercase.
// Pre-tokenization (BertPreTokenizer): split on whitespace, and make every punctuation
// character (ASCII punctuation or category P*) a token of its own.
// Special tokens written in the text ([MASK], [CLS], ...) are kept whole, as in Hugging Face.
// WordPiece: greedy longest-match-first from the start of each word, continuations prefixed
// "##"; a word of more than 100 characters, or one that cannot be covered, becomes [UNK].
// Invalid UTF-8 in the input: each invalid byte is read as U+FFFD, which normalization drops
// (the rule BERT applies to U+FFFD itself).

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mdlm/core/error.hpp"
#include "mdlm/tokenizers/gpt2.hpp"  // read_file
#include "mdlm/tokenizers/tokenizer.hpp"
#include "mdlm/tokenizers/unicode.hpp"

namespace mdlm {

namespace wordpiece_detail {

inline bool is_cjk(char32_t cp) {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) || (cp >= 0x20000 && cp <= 0x2a6df) ||
         (cp >= 0x2a700 && cp <= 0x2b73f) || (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b820 && cp <= 0x2ceaf) ||
         (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

inline bool is_control(char32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  const auto c = unicode::category(cp);
  return c == UTF8PROC_CATEGORY_CC || c == UTF8PROC_CATEGORY_CF || c == UTF8PROC_CATEGORY_CS ||
         c == UTF8PROC_CATEGORY_CO || c == UTF8PROC_CATEGORY_CN;
}

inline bool is_punctuation(char32_t cp) {
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126)) return true;
  return cp >= 0x80 && unicode::is_punctuation_category(cp);
}

}  // namespace wordpiece_detail

class WordPieceTokenizer {
 public:
  static constexpr std::size_t kMaxWordChars = 100;

  static WordPieceTokenizer from_vocab_file(const std::filesystem::path& path) {
    return from_vocab_text(gpt2_detail::read_file(path), path.string());
  }

  // From the text of a vocab.txt (one token a line, the line number - 1 is its id); `origin`
  // names it in errors (its path).
  static WordPieceTokenizer from_vocab_text(const std::string& text, const std::string& origin) {
    WordPieceTokenizer t;
    std::size_t pos = 0, line_no = 0;
    while (pos < text.size()) {
      std::size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      std::string tok = text.substr(pos, end - pos);
      pos = end + 1;
      ++line_no;
      if (!tok.empty() && tok.back() == '\r') tok.pop_back();
      if (tok.empty()) MDLM_FAIL(origin, ": line ", line_no, ": empty token");
      if (!unicode::valid_utf8(tok)) MDLM_FAIL(origin, ": line ", line_no, ": token is not valid UTF-8");
      auto [it, inserted] = t.vocab_.emplace(tok, static_cast<std::int32_t>(t.tokens_.size()));
      if (!inserted) {
        MDLM_FAIL(origin, ": line ", line_no, ": duplicate token '", tok, "' (first on line ", it->second + 1, ")");
      }
      t.tokens_.push_back(tok);
    }
    if (t.tokens_.empty()) MDLM_FAIL(origin, ": the vocabulary is empty");
    for (std::size_t k = 0; k < t.tokens_.size(); ++k) {
      const std::string& tok = t.tokens_[k];
      if (tok.size() > 2 && tok[0] == '#' && tok[1] == '#') t.continuation_.emplace(tok.substr(2), static_cast<std::int32_t>(k));
      else t.initial_.emplace(tok, static_cast<std::int32_t>(k));
    }
    auto id = [&](const char* s) {
      auto it = t.vocab_.find(s);
      return it == t.vocab_.end() ? -1 : it->second;
    };
    t.specials_ = {id("[CLS]"), id("[SEP]"), id("[PAD]"), id("[MASK]"), id("[UNK]")};
    if (t.specials_.unk < 0) MDLM_FAIL(origin, ": no [UNK] token");
    if (t.specials_.mask < 0) t.specials_.mask = static_cast<std::int32_t>(t.tokens_.size());  // appended
    return t;
  }

  // Normalized, pre-tokenized words (UTF-8), before WordPiece.
  std::vector<std::string> pre_tokenize(std::string_view text) const {
    using namespace wordpiece_detail;
    std::vector<std::string> words;
    std::string cur;
    auto flush = [&] {
      if (!cur.empty()) words.push_back(std::move(cur));
      cur.clear();
    };
    utf8proc_int32_t buf[32];
    for (std::size_t i = 0; i < text.size();) {
      const auto b0 = static_cast<unsigned char>(text[i]);
      if (b0 < 0x80) {  // ASCII fast path: same rules, no Unicode tables
        ++i;
        if (b0 == ' ' || (b0 >= 0x09 && b0 <= 0x0d)) {
          flush();
        } else if (b0 < 0x20 || b0 == 0x7f) {
          continue;  // control characters are dropped
        } else if (is_punctuation(b0)) {
          flush();
          words.emplace_back(1, static_cast<char>(b0));
        } else {
          cur.push_back(static_cast<char>(b0 >= 'A' && b0 <= 'Z' ? b0 + 32 : b0));
        }
        continue;
      }
      unicode::Decoded d = unicode::decode(text, i);
      i += static_cast<std::size_t>(d.len);
      const char32_t cp = d.valid ? d.cp : 0xfffd;
      if (cp == 0 || cp == 0xfffd || is_control(cp)) continue;
      if (unicode::is_white_space(cp)) {
        flush();
        continue;
      }
      if (is_cjk(cp)) {
        flush();
        std::string s;
        unicode::append_utf8(s, cp);
        words.push_back(s);
        continue;
      }
      // NFD, drop Mn, lowercase
      int last_bound = 0;
      const auto n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(cp), buf, 32, UTF8PROC_DECOMPOSE, &last_bound);
      const int count = n > 0 && n <= 32 ? static_cast<int>(n) : 0;
      for (int k = 0; k < (count ? count : 1); ++k) {
        const char32_t c = count ? static_cast<char32_t>(buf[k]) : cp;
        if (unicode::category(c) == UTF8PROC_CATEGORY_MN) continue;
        const auto lower = static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
        if (is_punctuation(lower)) {
          flush();
          std::string s;
          unicode::append_utf8(s, lower);
          words.push_back(s);
        } else {
          unicode::append_utf8(cur, lower);
        }
      }
    }
    flush();
    return words;
  }

  // Exact occurrences of the special tokens ([PAD] [UNK] [CLS] [SEP] [MASK], case-sensitive,
  // before normalization) are kept as their ids, as Hugging Face's BertWordPieceTokenizer does.
  std::vector<std::int32_t> encode(std::string_view text) const {
    std::vector<std::int32_t> ids;
    std::size_t pos = 0;
    while (pos < text.size()) {
      std::size_t best = std::string_view::npos;
      std::size_t best_len = 0;
      std::int32_t best_id = -1;
      for (std::int32_t sid : {specials_.pad, specials_.unk, specials_.bos, specials_.eos, specials_.mask}) {
        if (sid < 0 || sid >= static_cast<std::int32_t>(tokens_.size())) continue;
        const std::string& st = tokens_[static_cast<std::size_t>(sid)];
        const std::size_t f = text.find(st, pos);
        if (f < best) best = f, best_len = st.size(), best_id = sid;
      }
      const std::size_t end = best == std::string_view::npos ? text.size() : best;
      for (const std::string& w : pre_tokenize(text.substr(pos, end - pos))) word_piece(w, ids);
      if (best == std::string_view::npos) break;
      ids.push_back(best_id);
      pos = best + best_len;
    }
    return ids;
  }

  // Tokens joined by spaces, "##" continuations glued to the previous token; [PAD] skipped.
  std::string decode(std::span<const std::int32_t> ids) const {
    std::string out;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const std::int32_t id = ids[i];
      if (id == specials_.mask && id == static_cast<std::int32_t>(tokens_.size())) {
        out += out.empty() ? "[MASK]" : " [MASK]";
        continue;
      }
      MDLM_CHECK(id >= 0 && id < static_cast<std::int32_t>(tokens_.size()), "wordpiece tokenizer: id ", id, " at position ",
                 i, " is out of range for vocabulary size ", tokens_.size());
      if (id == specials_.pad) continue;
      const std::string& tok = tokens_[static_cast<std::size_t>(id)];
      if (tok.size() > 2 && tok[0] == '#' && tok[1] == '#') {
        out += tok.substr(2);
      } else {
        if (!out.empty()) out += ' ';
        out += tok;
      }
    }
    return out;
  }

  std::int64_t vocab_size() const {
    return static_cast<std::int64_t>(tokens_.size()) + (specials_.mask == static_cast<std::int32_t>(tokens_.size()) ? 1 : 0);
  }
  SpecialTokens specials() const { return specials_; }
  std::string name() const { return "wordpiece"; }
  const WordPieceTokenizer& session() const { return *this; }
  std::int32_t token_id(const std::string& tok) const {
    auto it = vocab_.find(tok);
    return it == vocab_.end() ? -1 : it->second;
  }

 private:
  void word_piece(const std::string& word, std::vector<std::int32_t>& ids) const {
    // character boundaries
    std::vector<std::size_t> starts;
    for (std::size_t i = 0; i < word.size();) {
      starts.push_back(i);
      i += static_cast<std::size_t>(unicode::decode(word, i).len);
    }
    if (starts.size() > kMaxWordChars) {
      ids.push_back(specials_.unk);
      return;
    }
    starts.push_back(word.size());
    const std::size_t mark = ids.size();
    std::size_t s = 0;
    const std::string_view w(word);
    while (s + 1 < starts.size()) {
      std::size_t e = starts.size() - 1;
      std::int32_t found = -1;
      const auto& table = s > 0 ? continuation_ : initial_;  // "##" pieces are keyed without "##"
      while (e > s) {
        auto it = table.find(w.substr(starts[s], starts[e] - starts[s]));
        if (it != table.end()) {
          found = it->second;
          break;
        }
        --e;
      }
      if (found < 0) {  // the word cannot be covered: [UNK] for the whole word
        ids.resize(mark);
        ids.push_back(specials_.unk);
        return;
      }
      ids.push_back(found);
      s = e;
    }
  }

  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view v) const { return std::hash<std::string_view>{}(v); }
  };
  using Table = std::unordered_map<std::string, std::int32_t, Hash, std::equal_to<>>;
  std::unordered_map<std::string, std::int32_t> vocab_;
  Table initial_, continuation_;  // word-initial pieces; "##" pieces without the "##"
  std::vector<std::string> tokens_;
  SpecialTokens specials_;
};

static_assert(Tokenizer<WordPieceTokenizer>);

}  // namespace mdlm
