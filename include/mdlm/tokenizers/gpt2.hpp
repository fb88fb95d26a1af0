#pragma once
// GPT-2 byte-level BPE, loading the standard files: Hugging Face `vocab.json` + `merges.txt`
// (= OpenAI's `encoder.json` + `vocab.bpe`) or a `tokenizer.json`.
//
// Encoding: the GPT-2 pre-tokenizer splits text like the regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (\s = the Unicode White_Space property, as in Python's `regex`, which GPT-2 used), written
// as a scanner; each piece's bytes map through GPT-2's byte<->unicode table to initial symbols,
// then BPE merges by rank, with a per-session cache of pieces. Bytes that are not valid UTF-8
// are single "other" characters: they encode as their byte tokens and decode back unchanged.
// `<|endoftext|>` is recognized only by encode_with_special().
//
// The vocabulary has no mask token, so the model vocabulary appends one (DESIGN §1):
// mask = 50257, model vocabulary 50258; BOS = EOS = PAD = <|endoftext|> (50256).

#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "mdlm/core/error.hpp"
#include "mdlm/tokenizers/tokenizer.hpp"
#include "mdlm/tokenizers/unicode.hpp"

namespace mdlm {

namespace gpt2_detail {

// GPT-2's reversible byte -> code point table (printable bytes map to themselves).
inline std::array<char32_t, 256> byte_to_unicode() {
  std::array<char32_t, 256> table{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[static_cast<std::size_t>(b)] = true;
  for (int b = 0xa1; b <= 0xac; ++b) direct[static_cast<std::size_t>(b)] = true;
  for (int b = 0xae; b <= 0xff; ++b) direct[static_cast<std::size_t>(b)] = true;
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) table[static_cast<std::size_t>(b)] = direct[static_cast<std::size_t>(b)] ? static_cast<char32_t>(b) : next++;
  return table;
}

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) MDLM_FAIL("cannot open '", path.string(), "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "line L, column C" of a byte offset.
inline std::string position(const std::string& text, std::size_t byte) {
  std::size_t line = 1, col = 1;
  for (std::size_t i = 0; i < byte && i < text.size(); ++i) {
    if (text[i] == '\n') ++line, col = 1;
    else ++col;
  }
  return "line " + std::to_string(line) + ", column " + std::to_string(col);
}

inline nlohmann::json parse_json(const std::string& text, const std::string& origin) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    MDLM_FAIL(origin, ": ", position(text, e.byte > 0 ? e.byte - 1 : 0), ": invalid JSON (", e.what(), ")");
  }
}

enum class CharClass : std::uint8_t { Letter, Number, Space, Other };

struct Char {
  CharClass cls;
  std::uint8_t len;
  char32_t cp;
};

inline Char classify(std::string_view s, std::size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) {  // ASCII fast path
    CharClass c = CharClass::Other;
    if ((b | 0x20) >= 'a' && (b | 0x20) <= 'z') c = CharClass::Letter;
    else if (b >= '0' && b <= '9') c = CharClass::Number;
    else if (b == ' ' || (b >= 0x09 && b <= 0x0d)) c = CharClass::Space;
    return {c, 1, b};
  }
  unicode::Decoded d = unicode::decode(s, i);
  if (!d.valid) return {CharClass::Other, 1, 0xfffd};
  CharClass c = unicode::is_letter(d.cp)        ? CharClass::Letter
                : unicode::is_number(d.cp)      ? CharClass::Number
                : unicode::is_white_space(d.cp) ? CharClass::Space
                                                : CharClass::Other;
  return {c, static_cast<std::uint8_t>(d.len), d.cp};
}

}  // namespace gpt2_detail

// Calls emit(piece) for each GPT-2 pre-token of `text`, in order; the pieces tile the text.
template <class Emit>
void gpt2_pretokenize(std::string_view text, Emit&& emit) {
  using gpt2_detail::CharClass;
  using gpt2_detail::classify;
  const std::size_t n = text.size();
  std::size_t i = 0;
  auto run_of = [&](std::size_t j, CharClass cls) {  // end of the run of `cls` starting at j
    while (j < n) {
      gpt2_detail::Char c = classify(text, j);
      if (c.cls != cls) break;
      j += c.len;
    }
    return j;
  };
  while (i < n) {
    const gpt2_detail::Char c = classify(text, i);
    // 's 't 're 've 'm 'll 'd
    if (text[i] == '\'' && i + 1 < n) {
      const char a = text[i + 1];
      const char b = i + 2 < n ? text[i + 2] : '\0';
      std::size_t len = 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd') len = 2;
      else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) len = 3;
      if (len > 0) {
        emit(text.substr(i, len));
        i += len;
        continue;
      }
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
    std::size_t start = i, j = i;
    CharClass cls = c.cls;
    if (text[i] == ' ' && i + 1 < n) {
      const gpt2_detail::Char next = classify(text, i + 1);
      if (next.cls != CharClass::Space) {
        cls = next.cls;
        j = i + 1;
      }
    }
    if (cls != CharClass::Space) {
      std::size_t end = run_of(j, cls);
      emit(text.substr(start, end - start));
      i = end;
      continue;
    }
    // '\s+(?!\S)' then '\s+': a whitespace run; before a non-space, leave its last character
    // to the next piece (unless the run is a single character).
    std::size_t end = i, last = i;
    while (end < n) {
      const gpt2_detail::Char w = classify(text, end);
      if (w.cls != CharClass::Space) break;
      last = end;
      end += w.len;
    }
    if (end < n && last > i) end = last;
    emit(text.substr(i, end - i));
    i = end;
  }
}

class Gpt2Tokenizer {
 public:
  // A directory with encoder.json + vocab.bpe, vocab.json + merges.txt, or tokenizer.json.
  static Gpt2Tokenizer from_directory(const std::filesystem::path& dir) {
    namespace fs = std::filesystem;
    if (fs::exists(dir / "encoder.json") && fs::exists(dir / "vocab.bpe")) return from_files(dir / "encoder.json", dir / "vocab.bpe");
    if (fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt")) return from_files(dir / "vocab.json", dir / "merges.txt");
    if (fs::exists(dir / "tokenizer.json")) return from_tokenizer_json(dir / "tokenizer.json");
    MDLM_FAIL("'", dir.string(), "' has no GPT-2 tokenizer files (encoder.json + vocab.bpe, vocab.json + merges.txt, or tokenizer.json)");
  }

  static Gpt2Tokenizer from_files(const std::filesystem::path& vocab_json, const std::filesystem::path& merges_txt) {
    return from_texts(gpt2_detail::read_file(vocab_json), vocab_json.string(), gpt2_detail::read_file(merges_txt),
                      merges_txt.string());
  }

  // From the texts of vocab.json and merges.txt; the origins name them in errors (their paths).
  static Gpt2Tokenizer from_texts(const std::string& vtext, const std::string& vocab_origin, const std::string& mtext,
                                  const std::string& merges_origin) {
    Gpt2Tokenizer t;
    const nlohmann::json v = gpt2_detail::parse_json(vtext, vocab_origin);
    t.load_vocab(v, vocab_origin);
    std::size_t line_no = 0, pos = 0, rank = 0;
    while (pos < mtext.size()) {
      std::size_t end = mtext.find('\n', pos);
      if (end == std::string::npos) end = mtext.size();
      std::string_view line(mtext.data() + pos, end - pos);
      pos = end + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
      const std::size_t sp = line.find(' ');
      if (sp == std::string_view::npos || sp == 0 || sp + 1 == line.size() || line.find(' ', sp + 1) != std::string_view::npos) {
        MDLM_FAIL(merges_origin, ": line ", line_no, ": a merge must be two tokens separated by one space, got '", line, "'");
      }
      t.add_merge(std::string(line.substr(0, sp)), std::string(line.substr(sp + 1)), rank++,
                  merges_origin + ": line " + std::to_string(line_no));
    }
    t.finish(merges_origin);
    return t;
  }

  // Hugging Face tokenizer.json with a BPE model (merges as "a b" strings or [a, b] pairs).
  static Gpt2Tokenizer from_tokenizer_json(const std::filesystem::path& path) {
    return from_tokenizer_json_text(gpt2_detail::read_file(path), path.string());
  }

  // From the text of a tokenizer.json; `origin` names it in errors (its path).
  static Gpt2Tokenizer from_tokenizer_json_text(const std::string& text, const std::string& origin) {
    const nlohmann::json j = gpt2_detail::parse_json(text, origin);
    Gpt2Tokenizer t;
    if (!j.contains("model") || !j["model"].is_object() || (j["model"].contains("type") && j["model"]["type"] != "BPE")) {
      MDLM_FAIL(origin, ": not a BPE tokenizer.json (model.type must be BPE)");
    }
    const auto& model = j["model"];
    if (!model.contains("vocab")) MDLM_FAIL(origin, ": model.vocab is missing");
    t.load_vocab(model["vocab"], origin + ": model.vocab");
    if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
      for (const auto& a : j["added_tokens"]) {
        if (a.contains("content") && !a["content"].is_string()) MDLM_FAIL(origin, ": added token content ", a["content"].dump(), " is not a string");
        if (a.contains("content") && a.contains("id") && !t.token_to_id_.count(a["content"].get<std::string>())) {
          MDLM_FAIL(origin, ": added token '", a["content"].get<std::string>(), "' is not in the vocabulary");
        }
      }
    }
    if (!model.contains("merges") || !model["merges"].is_array()) MDLM_FAIL(origin, ": model.merges is missing");
    std::size_t rank = 0;
    for (const auto& m : model["merges"]) {
      const std::string where = origin + ": merge #" + std::to_string(rank + 1);
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const std::size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) MDLM_FAIL(where, ": malformed merge '", s, "'");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        MDLM_FAIL(where, ": a merge must be \"a b\" or [\"a\", \"b\"]");
      }
      t.add_merge(a, b, rank++, where);
    }
    t.finish(origin);
    return t;
  }

  // An encoder with its own piece cache; use one per thread.
  class Session {
   public:
    explicit Session(const Gpt2Tokenizer& tok) : tok_(&tok) {}
    std::vector<std::int32_t> encode(std::string_view text) {
      std::vector<std::int32_t> ids;
      ids.reserve(text.size() / 3 + 1);
      encode_into(text, ids);
      return ids;
    }
    void encode_into(std::string_view text, std::vector<std::int32_t>& ids) {
      gpt2_pretokenize(text, [&](std::string_view piece) { encode_piece(piece, ids); });
    }

   private:
    void encode_piece(std::string_view piece, std::vector<std::int32_t>& ids) {
      if (piece.size() == 1) {
        ids.push_back(tok_->byte_id_[static_cast<unsigned char>(piece[0])]);
        return;
      }
      auto it = cache_.find(piece);
      if (it != cache_.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
      std::vector<std::int32_t> sym(piece.size());
      for (std::size_t k = 0; k < piece.size(); ++k) sym[k] = tok_->byte_id_[static_cast<unsigned char>(piece[k])];
      tok_->bpe(sym);
      ids.insert(ids.end(), sym.begin(), sym.end());
      if (cache_.size() > 200000) cache_.clear();
      cache_.emplace(std::string(piece), std::move(sym));
    }
    struct Hash {
      using is_transparent = void;
      std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
    };
    const Gpt2Tokenizer* tok_;
    std::unordered_map<std::string, std::vector<std::int32_t>, Hash, std::equal_to<>> cache_;
  };

  Session session() const { return Session(*this); }
  std::vector<std::int32_t> encode(std::string_view text) const { return Session(*this).encode(text); }

  // As encode(), but exact occurrences of special tokens (<|endoftext|>) become their ids.
  std::vector<std::int32_t> encode_with_special(std::string_view text) const {
    Session s(*this);
    std::vector<std::int32_t> ids;
    std::size_t pos = 0;
    while (pos <= text.size()) {
      std::size_t best = std::string_view::npos;
      const std::pair<std::string, std::int32_t>* which = nullptr;
      for (const auto& sp : special_) {
        const std::size_t f = text.find(sp.first, pos);
        if (f < best) best = f, which = &sp;
      }
      if (which == nullptr) {
        s.encode_into(text.substr(pos), ids);
        break;
      }
      s.encode_into(text.substr(pos, best - pos), ids);
      ids.push_back(which->second);
      pos = best + which->first.size();
    }
    return ids;
  }

  // Concatenated bytes of the tokens; the appended mask id decodes to "[MASK]".
  std::string decode(std::span<const std::int32_t> ids) const {
    std::string out;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const std::int32_t id = ids[i];
      if (id == mask_id()) {
        out += "[MASK]";
        continue;
      }
      MDLM_CHECK(id >= 0 && id < static_cast<std::int32_t>(id_bytes_.size()), "gpt2 tokenizer: id ", id, " at position ", i,
                 " is out of range for vocabulary size ", vocab_size());
      out += id_bytes_[static_cast<std::size_t>(id)];
    }
    return out;
  }

  std::int64_t base_vocab_size() const { return static_cast<std::int64_t>(id_bytes_.size()); }
  std::int64_t vocab_size() const { return base_vocab_size() + 1; }  // + the appended mask id
  std::int32_t mask_id() const { return static_cast<std::int32_t>(id_bytes_.size()); }
  SpecialTokens specials() const { return {eot_, eot_, eot_, mask_id(), -1}; }
  std::string name() const { return "gpt2"; }
  std::int32_t token_id(const std::string& token_text) const {
    auto it = token_to_id_.find(token_text);
    return it == token_to_id_.end() ? -1 : it->second;
  }

 private:
  struct Merge {
    std::int32_t rank;
    std::int32_t result;
  };
  static std::uint64_t key(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }

  void load_vocab(const nlohmann::json& v, const std::string& origin) {
    if (!v.is_object()) MDLM_FAIL(origin, ": the vocabulary must be a JSON object of token -> id");
    if (v.empty()) MDLM_FAIL(origin, ": the vocabulary is empty");
    const std::size_t n = v.size();
    std::vector<std::string> by_id(n);
    std::vector<bool> seen(n, false);
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!it->is_number_integer()) MDLM_FAIL(origin, ": token '", it.key(), "' has a non-integer id");
      const auto id = it->get<std::int64_t>();
      if (id < 0 || id >= static_cast<std::int64_t>(n)) {
        MDLM_FAIL(origin, ": token '", it.key(), "' has id ", id, " outside 0..", n - 1, " (ids must be dense)");
      }
      if (seen[static_cast<std::size_t>(id)]) {
        MDLM_FAIL(origin, ": duplicate id ", id, " for tokens '", by_id[static_cast<std::size_t>(id)], "' and '", it.key(), "'");
      }
      seen[static_cast<std::size_t>(id)] = true;
      by_id[static_cast<std::size_t>(id)] = it.key();
      token_to_id_[it.key()] = static_cast<std::int32_t>(id);
    }
    // Bytes of every token (inverse of the byte -> unicode table).
    const auto table = gpt2_detail::byte_to_unicode();
    std::unordered_map<char32_t, unsigned char> inverse;
    for (int b = 0; b < 256; ++b) inverse[table[static_cast<std::size_t>(b)]] = static_cast<unsigned char>(b);
    id_bytes_.resize(n);
    for (std::size_t id = 0; id < n; ++id) {
      const std::string& tok = by_id[id];
      std::string bytes;
      bool byte_level = true;
      for (std::size_t i = 0; i < tok.size();) {
        unicode::Decoded d = unicode::decode(tok, i);
        auto f = d.valid ? inverse.find(d.cp) : inverse.end();
        if (f == inverse.end()) {
          byte_level = false;
          break;
        }
        bytes.push_back(static_cast<char>(f->second));
        i += static_cast<std::size_t>(d.len);
      }
      // Added tokens such as <|endoftext|> are plain text, not byte-level symbols.
      id_bytes_[id] = byte_level ? bytes : tok;
    }
    for (int b = 0; b < 256; ++b) {
      std::string s;
      unicode::append_utf8(s, table[static_cast<std::size_t>(b)]);
      auto it = token_to_id_.find(s);
      if (it == token_to_id_.end()) MDLM_FAIL(origin, ": byte ", b, " has no token ('", s, "'): not a byte-level vocabulary");
      byte_id_[static_cast<std::size_t>(b)] = it->second;
    }
  }

  void add_merge(const std::string& a, const std::string& b, std::size_t rank, const std::string& where) {
    auto ia = token_to_id_.find(a), ib = token_to_id_.find(b), ir = token_to_id_.find(a + b);
    if (ia == token_to_id_.end()) MDLM_FAIL(where, ": merge '", a, " ", b, "' names unknown token '", a, "'");
    if (ib == token_to_id_.end()) MDLM_FAIL(where, ": merge '", a, " ", b, "' names unknown token '", b, "'");
    if (ir == token_to_id_.end()) MDLM_FAIL(where, ": merge '", a, " ", b, "' produces '", a + b, "', which is not in the vocabulary");
    merges_.emplace(key(ia->second, ib->second), Merge{static_cast<std::int32_t>(rank), ir->second});
  }

  void finish(const std::string& origin) {
    if (merges_.empty()) MDLM_FAIL(origin, ": no merges");
    auto it = token_to_id_.find("<|endoftext|>");
    eot_ = it == token_to_id_.end() ? -1 : it->second;
    if (eot_ >= 0) special_.emplace_back("<|endoftext|>", eot_);
  }

  // Merges the lowest-ranked adjacent pair until none is in the merge table.
  void bpe(std::vector<std::int32_t>& sym) const {
    while (sym.size() > 1) {
      std::int32_t best_rank = INT32_MAX, best_result = -1;
      std::size_t best_at = 0;
      for (std::size_t k = 0; k + 1 < sym.size(); ++k) {
        auto it = merges_.find(key(sym[k], sym[k + 1]));
        if (it != merges_.end() && it->second.rank < best_rank) {
          best_rank = it->second.rank;
          best_result = it->second.result;
          best_at = k;
        }
      }
      if (best_result < 0) break;
      // Merge every occurrence of the pair, left to right (as GPT-2's reference does).
      const std::int32_t a = sym[best_at], b = sym[best_at + 1];
      std::size_t w = 0;
      for (std::size_t k = 0; k < sym.size();) {
        if (k + 1 < sym.size() && sym[k] == a && sym[k + 1] == b) {
          sym[w++] = best_result;
          k += 2;
        } else {
          sym[w++] = sym[k++];
        }
      }
      sym.resize(w);
    }
  }

  std::unordered_map<std::string, std::int32_t> token_to_id_;
  std::vector<std::string> id_bytes_;
  std::array<std::int32_t, 256> byte_id_{};
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::vector<std::pair<std::string, std::int32_t>> special_;
  std::int32_t eot_ = -1;
};

static_assert(Tokenizer<Gpt2Tokenizer>);

}  // namespace mdlm
