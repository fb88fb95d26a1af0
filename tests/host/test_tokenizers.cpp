// Tokenizers: exact ids against reference encoders (the shared GPT-2 cases from OpenAI's
// algorithm, the BERT cases and extra cases from Hugging Face `tokenizers`), round trips on
// every corpus line, BERT's rules case by case, special tokens, invalid UTF-8, malformed files.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mdlm/mdlm.hpp"

using namespace mdlm;
namespace fs = std::filesystem;

namespace {

const fs::path kRepo = MDLM_TEST_REPO;
const fs::path kData = kRepo / "data";
const fs::path kTestData = kRepo / "tests" / "data";

const Gpt2Tokenizer& gpt2() {
  static const Gpt2Tokenizer t = Gpt2Tokenizer::from_directory(kData / "gpt2");
  return t;
}
const WordPieceTokenizer& bert() {
  static const WordPieceTokenizer t = WordPieceTokenizer::from_vocab_file(kData / "bert-base-uncased" / "vocab.txt");
  return t;
}

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Case {
  std::string text;
  std::vector<std::int32_t> ids;
};
std::vector<Case> cases(const fs::path& p) {
  std::vector<Case> out;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    out.push_back({j["text"].get<std::string>(), j["ids"].get<std::vector<std::int32_t>>()});
  }
  REQUIRE(!out.empty());
  return out;
}

std::vector<std::int32_t> ids(std::initializer_list<std::int32_t> l) { return l; }

fs::path temp_file(const std::string& name, const std::string& content) {
  const fs::path dir = fs::temp_directory_path() / "mdlm_tok_test";
  fs::create_directories(dir);
  const fs::path p = dir / name;
  std::ofstream(p, std::ios::binary) << content;
  return p;
}

}  // namespace

TEST_CASE("GPT-2: exact ids and round trips for the reference cases and extra cases") {
  for (const char* file : {"gpt2_cases.jsonl", "gpt2_extra_cases.jsonl"}) {
    CAPTURE(file);
    for (const Case& c : cases(kTestData / file)) {
      CAPTURE(c.text);
      CHECK(gpt2().encode(c.text) == c.ids);
      CHECK(gpt2().decode(c.ids) == c.text);
    }
  }
  CHECK(gpt2().vocab_size() == 50258);
  CHECK(gpt2().specials().mask == 50257);
  CHECK(gpt2().specials().eos == 50256);
  CHECK(gpt2().specials().bos == 50256);
}

TEST_CASE("GPT-2: whitespace follows the Unicode White_Space property (U+0085 yes, U+FEFF no)") {
  CHECK(gpt2().encode("a \u0085x") == ids({64, 220, 126, 227, 87}));  // Python regex's behaviour (README)
  std::vector<std::string> pieces;
  gpt2_pretokenize("a  \u3000b \tc\n", [&](std::string_view p) { pieces.emplace_back(p); });
  // a run of whitespace before a word leaves its last character to the next piece
  CHECK(pieces == std::vector<std::string>{"a", "  ", "\u3000", "b", " ", "\t", "c", "\n"});
  pieces.clear();
  gpt2_pretokenize("x\xef\xbb\xbfy", [&](std::string_view p) { pieces.emplace_back(p); });  // U+FEFF is not \s
  CHECK(pieces == std::vector<std::string>{"x", "\xef\xbb\xbf", "y"});
}

TEST_CASE("GPT-2: <|endoftext|> is special only when asked") {
  CHECK(gpt2().encode("<|endoftext|>") == ids({27, 91, 437, 1659, 5239, 91, 29}));
  CHECK(gpt2().encode_with_special("a<|endoftext|>b") == ids({64, 50256, 65}));
  CHECK(gpt2().decode(ids({64, 50256, 65})) == "a<|endoftext|>b");
  CHECK(gpt2().decode(ids({64, 50257})) == "a[MASK]");
  CHECK_THROWS_WITH_AS(gpt2().decode(ids({64, 50258})), doctest::Contains("id 50258 at position 1 is out of range"), Error);
}

TEST_CASE("GPT-2: invalid UTF-8 encodes as bytes and decodes back unchanged") {
  const std::string bad = std::string("ab\xff\xfe cd\xc3") + "\x28" + "\xe2\x82" + " z\xf0\x9f";
  auto e = gpt2().encode(bad);
  CHECK(gpt2().decode(e) == bad);
  const auto one = gpt2().encode(std::string(1, '\x80'));  // a lone continuation byte: its byte token
  CHECK(one.size() == 1);
  CHECK(gpt2().decode(one) == std::string(1, '\x80'));
}

TEST_CASE("GPT-2: every line of the corpora round-trips; token counts match the data README") {
  const fs::path corpora = kRepo / ".." / "shared" / "data" / "corpora";
  std::vector<fs::path> files{kData / "kjv" / "kjv.train.txt", kData / "kjv" / "kjv.valid.txt"};
  for (const char* f : {"web/web.txt", "devils_dictionary/devils_dictionary.txt", "jargon_file/jargon_file.txt"}) {
    if (fs::exists(corpora / f)) files.push_back(corpora / f);
  }
  std::int64_t kjv_tokens = 0;
  for (const fs::path& f : files) {
    CAPTURE(f.string());
    const std::string text = read(f);
    auto lines = split_lines(text);
    auto encoded = encode_batch(gpt2(), lines);
    std::int64_t bad = 0, tokens = 0;
    for (std::size_t i = 0; i < lines.size(); ++i) {
      bad += gpt2().decode(encoded[i]) != lines[i];
      tokens += static_cast<std::int64_t>(encoded[i].size());
    }
    CHECK(bad == 0);
    if (f.filename().string().rfind("kjv", 0) == 0) kjv_tokens += tokens;
  }
  CHECK(kjv_tokens == 993439);  // 947,200 train + 46,239 valid (each line alone, no newline)
}

TEST_CASE("WordPiece: exact ids for the reference cases and extra cases") {
  for (const char* file : {"bert_cases.jsonl", "bert_extra_cases.jsonl"}) {
    CAPTURE(file);
    for (const Case& c : cases(kTestData / file)) {
      CAPTURE(c.text);
      CHECK(bert().encode(c.text) == c.ids);
    }
  }
  CHECK(bert().vocab_size() == 30522);
  const SpecialTokens s = bert().specials();
  CHECK(s.mask == 103);
  CHECK(s.unk == 100);
  CHECK(s.bos == 101);
  CHECK(s.eos == 102);
  CHECK(s.pad == 0);
}

TEST_CASE("WordPiece follows BERT's rules") {
  const auto& t = bert();
  auto id = [&](const char* s) { return t.token_id(s); };
  // Lowercase and strip accents after NFD: composed and decomposed forms agree.
  CHECK(t.encode("Café") == t.encode("cafe"));
  CHECK(t.encode("Cafe\xcc\x81") == t.encode("cafe"));
  CHECK(t.encode("ÀÉÎÕÜ") == t.encode("aeiou"));
  // Punctuation becomes tokens of its own, also Unicode punctuation (P*).
  CHECK(t.encode("hello,world!") == ids({id("hello"), id(","), id("world"), id("!")}));
  CHECK(t.encode("a\xe2\x80\x94" "b") == ids({id("a"), id("\xe2\x80\x94"), id("b")}));  // em dash
  // CJK ideographs are split into single characters.
  CHECK(t.encode("中文") == ids({id("中"), id("文")}));
  // ## continuations, greedy longest match first, and decode joins them back.
  auto un = t.encode("unaffable");
  REQUIRE(un.size() >= 2);
  CHECK(t.decode(un) == "unaffable");
  for (std::size_t i = 1; i < un.size(); ++i) {
    // every piece after the first is a continuation
    CHECK(t.decode(ids({un[i]})).size() > 0);
  }
  CHECK(t.encode("playing") == ids({id("playing")}));  // a whole-word match wins over pieces
  // Unknown: a word that cannot be covered, or one over 100 characters, is one [UNK].
  CHECK(t.encode("\xea\x99\xae\xea\x99\xae") == ids({100}));  // U+A66E, not in the vocabulary
  CHECK(t.encode(std::string(101, 'a')) == ids({100}));
  CHECK(t.encode(std::string(100, 'a')).size() > 1);
  // Control and format characters are dropped; whitespace of any kind separates.
  CHECK(t.encode("ab\x01\xe2\x80\x8b" "cd") == t.encode("abcd"));  // U+0001 (Cc), U+200B (Cf)
  CHECK(t.encode("a\u3000b\u00a0c") == t.encode("a b c"));
  // Invalid UTF-8 bytes are dropped (read as U+FFFD, which BERT removes).
  CHECK(t.encode("hel\xfflo") == t.encode("hello"));
  CHECK(t.decode(t.encode("the cat's hat")) == "the cat ' s hat");
}

TEST_CASE("byte tokenizer round-trips any bytes") {
  ByteTokenizer b;
  const std::string s("\x00\xff hello \xe2\x82", 10);
  CHECK(b.decode(b.encode(s)) == s);
  CHECK(b.vocab_size() == 260);
  CHECK(b.specials().mask == 259);
  CHECK(b.decode(ids({104, 256, 105, 259})) == "hi");
  CHECK_THROWS_AS(b.decode(ids({300})), Error);
}

TEST_CASE("batch encoding equals sequential encoding") {
  const std::string text = read(kData / "kjv" / "kjv.valid.txt");
  auto lines = split_lines(text);
  auto batch = encode_batch(bert(), lines, 2);
  for (std::size_t i = 0; i < lines.size(); i += 37) CHECK(batch[i] == bert().encode(lines[i]));
}

TEST_CASE("malformed tokenizer files give mdlm::Error naming the file and line") {
  const std::string merges_ok = "#version: 0.2\nĠ t\n";
  // A minimal valid byte-level vocabulary: the 256 byte symbols + "Ġt".
  nlohmann::json v = nlohmann::json::object();
  {
    std::int32_t next = 0;
    for (char32_t cp : gpt2_detail::byte_to_unicode()) {
      std::string s;
      unicode::append_utf8(s, cp);
      v[s] = next++;
    }
    v["Ġt"] = next;
  }
  const fs::path good_vocab = temp_file("vocab.json", v.dump());
  CHECK_NOTHROW(Gpt2Tokenizer::from_files(good_vocab, temp_file("merges.txt", merges_ok)));

  CHECK_THROWS_WITH_AS(Gpt2Tokenizer::from_files(temp_file("bad.json", "{\"a\": 0,\n \"b\" 1}"), temp_file("m.txt", merges_ok)),
                       doctest::Contains("bad.json: line 2"), Error);
  CHECK_THROWS_WITH_AS(Gpt2Tokenizer::from_files(good_vocab, temp_file("m2.txt", "#version: 0.2\nĠ t\nĠ zz\n")),
                       doctest::Contains("m2.txt: line 3: merge 'Ġ zz' names unknown token 'zz'"), Error);
  CHECK_THROWS_WITH_AS(Gpt2Tokenizer::from_files(good_vocab, temp_file("m3.txt", "Ġ t x\n")),
                       doctest::Contains("m3.txt: line 1: a merge must be two tokens"), Error);
  nlohmann::json dup = v;
  dup["Ġt"] = 5;
  CHECK_THROWS_WITH_AS(Gpt2Tokenizer::from_files(temp_file("dup.json", dup.dump()), temp_file("m4.txt", merges_ok)),
                       doctest::Contains("duplicate id 5"), Error);
  CHECK_THROWS_WITH_AS(Gpt2Tokenizer::from_files(temp_file("empty.json", "{}"), temp_file("m5.txt", merges_ok)),
                       doctest::Contains("empty.json: the vocabulary is empty"), Error);
  CHECK_THROWS_WITH_AS(Gpt2Tokenizer::from_files(temp_file("small.json", "{\"a\": 0}"), temp_file("m6.txt", merges_ok)),
                       doctest::Contains("not a byte-level vocabulary"), Error);
  CHECK_THROWS_WITH_AS(Gpt2Tokenizer::from_directory(fs::temp_directory_path() / "no_such_dir_mdlm"),
                       doctest::Contains("has no GPT-2 tokenizer files"), Error);

  CHECK_THROWS_WITH_AS(WordPieceTokenizer::from_vocab_file(temp_file("empty.txt", "")),
                       doctest::Contains("empty.txt: the vocabulary is empty"), Error);
  CHECK_THROWS_WITH_AS(WordPieceTokenizer::from_vocab_file(temp_file("dupv.txt", "[UNK]\na\nb\na\n")),
                       doctest::Contains("dupv.txt: line 4: duplicate token 'a' (first on line 2)"), Error);
  CHECK_THROWS_WITH_AS(WordPieceTokenizer::from_vocab_file(temp_file("nounk.txt", "a\nb\n")), doctest::Contains("no [UNK]"),
                       Error);
  CHECK_THROWS_WITH_AS(WordPieceTokenizer::from_vocab_file(temp_file("blank.txt", "[UNK]\n\nb\n")),
                       doctest::Contains("blank.txt: line 2: empty token"), Error);
  CHECK_THROWS_WITH_AS(WordPieceTokenizer::from_vocab_file(temp_file("utf.txt", "[UNK]\n\xff\n")),
                       doctest::Contains("utf.txt: line 2: token is not valid UTF-8"), Error);
}
