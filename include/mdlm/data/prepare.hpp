#pragma once
// `mdlm prepare`: tokenize a corpus (one document per line) with all cores and write train and
// valid shards plus meta.json (tokenizer spec, special ids, model vocabulary size, counts).
// The valid split is the last floor(documents * valid_fraction) documents, in file order.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "mdlm/data/shard.hpp"
#include "mdlm/io/json_field.hpp"
#include "mdlm/tokenizers/all.hpp"

namespace mdlm {

struct PrepareResult {
  std::int64_t train_docs = 0, valid_docs = 0, train_tokens = 0, valid_tokens = 0, vocab_size = 0;
};

inline PrepareResult prepare_corpus(const std::string& tokenizer_spec, const std::vector<std::filesystem::path>& inputs,
                                    const std::filesystem::path& out_dir, double valid_fraction) {
  MDLM_CHECK(!inputs.empty(), "prepare: no input files");
  MDLM_CHECK(valid_fraction >= 0 && valid_fraction < 1, "prepare: valid fraction ", valid_fraction, " must be in [0, 1)");
  std::string text;
  for (const auto& in : inputs) {
    std::ifstream f(in, std::ios::binary);
    if (!f) MDLM_FAIL("prepare: cannot open '", in.string(), "'");
    std::ostringstream ss;
    ss << f.rdbuf();
    text += ss.str();
    if (!text.empty() && text.back() != '\n') text.push_back('\n');
  }
  std::vector<std::string_view> docs;
  for (std::string_view line : split_lines(text)) {
    if (!line.empty()) docs.push_back(line);
  }
  MDLM_CHECK(docs.size() >= 2, "prepare: the input has ", docs.size(), " non-empty lines; at least 2 are needed");
  std::filesystem::create_directories(out_dir);
  return with_tokenizer(tokenizer_spec, [&](const auto& tok) {
    auto ids = encode_batch(tok, docs);
    const auto n_valid = static_cast<std::size_t>(std::floor(static_cast<double>(docs.size()) * valid_fraction));
    std::vector<std::vector<std::int32_t>> train(ids.begin(), ids.end() - static_cast<std::ptrdiff_t>(n_valid));
    std::vector<std::vector<std::int32_t>> valid(ids.end() - static_cast<std::ptrdiff_t>(n_valid), ids.end());
    const SpecialTokens sp = tok.specials();
    const auto vocab = static_cast<std::uint64_t>(tok.vocab_size());
    PrepareResult r;
    r.train_docs = static_cast<std::int64_t>(train.size());
    r.valid_docs = static_cast<std::int64_t>(valid.size());
    for (const auto& d : train) r.train_tokens += static_cast<std::int64_t>(d.size()) + 1;
    for (const auto& d : valid) r.valid_tokens += static_cast<std::int64_t>(d.size()) + 1;
    r.vocab_size = static_cast<std::int64_t>(vocab);
    write_shard(out_dir / "train.bin", train, vocab, sp.eos);
    if (!valid.empty()) write_shard(out_dir / "valid.bin", valid, vocab, sp.eos);
    nlohmann::json meta{{"tokenizer", tokenizer_spec},
                        {"vocab_size", vocab},
                        {"bos", sp.bos},
                        {"eos", sp.eos},
                        {"pad", sp.pad},
                        {"mask", sp.mask},
                        {"unk", sp.unk},
                        {"train_documents", r.train_docs},
                        {"valid_documents", r.valid_docs},
                        {"train_tokens", r.train_tokens},
                        {"valid_tokens", r.valid_tokens}};
    SafeTensorsWriter::write_file_atomically(out_dir / "meta.json", meta.dump(2) + "\n");
    return r;
  });
}

struct DataMeta {
  std::string tokenizer;
  std::int64_t vocab_size = 0;
  SpecialTokens specials;

  static DataMeta read(const std::filesystem::path& dir) {
    const auto path = dir / "meta.json";
    std::ifstream in(path, std::ios::binary);
    if (!in) MDLM_FAIL("cannot open '", path.string(), "' (prepare the data with mdlm prepare)");
    std::ostringstream text;
    text << in.rdbuf();
    return parse(text.str(), path.string());
  }

  // meta.json from its text; `origin` names it in errors (the file's path). The vocabulary
  // size must be positive and every special id -1 (none) or inside the vocabulary.
  static DataMeta parse(const std::string& text, const std::string& origin) {
    if (text.empty()) MDLM_FAIL(origin, ": the file is empty (prepare the data with mdlm prepare)");
    DataMeta m;
    try {
      const nlohmann::json j = nlohmann::json::parse(text);
      m.tokenizer = j.at("tokenizer").get<std::string>();
      m.vocab_size = json_field<std::int64_t>(j, "vocab_size", origin);
      auto id = [&](const char* key) { return json_field<std::int32_t>(j, key, origin); };
      m.specials = {id("bos"), id("eos"), id("pad"), id("mask"), id("unk")};
    } catch (const nlohmann::json::exception& e) {
      MDLM_FAIL(origin, ": ", e.what());
    }
    if (m.vocab_size <= 0 || m.vocab_size > (std::int64_t{1} << 31)) {
      MDLM_FAIL(origin, ": vocab_size ", m.vocab_size, " (expected 1 to 2^31)");
    }
    const std::pair<const char*, std::int32_t> ids[] = {{"bos", m.specials.bos},   {"eos", m.specials.eos},
                                                        {"pad", m.specials.pad},   {"mask", m.specials.mask},
                                                        {"unk", m.specials.unk}};
    for (const auto& [field, id] : ids) {
      if (id < -1 || id >= m.vocab_size) {
        MDLM_FAIL(origin, ": ", field, " id ", id, " is outside the vocabulary of ", m.vocab_size, " (-1 means none)");
      }
    }
    return m;
  }
};

}  // namespace mdlm
