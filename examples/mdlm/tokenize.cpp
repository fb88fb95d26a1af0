// mdlm tokenize: text lines (or JSON lines with "text") on stdin -> JSON lines {"ids": [...]}.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "cli.hpp"

namespace mdlm::cli {
namespace {

CommandSpec tokenize_spec() {
  return {"",
          {{"--tokenizer", "gpt2:data/gpt2", "gpt2:DIR, wordpiece:FILE or bytes"},
           {"--jsonl", "", "input lines are JSON objects with \"text\"", true},
           {"--special", "", "gpt2: encode special tokens such as <|endoftext|>", true}}};
}

// Reads text (one document per line) or JSON lines with a "text" field from stdin and writes
// one JSON line {"ids": [...]} per input line, encoding with all cores.
int run_tokenize(const CommandLine& cl) {
  const Args args = cl.flags(tokenize_spec());
  const bool jsonl = args.integer("--jsonl") != 0, special = args.integer("--special") != 0;
  std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  std::vector<std::string> texts;
  std::size_t line_no = 0;
  for (std::string_view line : split_lines(input)) {
    ++line_no;
    if (!jsonl) {
      texts.emplace_back(line);
      continue;
    }
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      MDLM_FAIL("stdin: line ", line_no, ": invalid JSON (", e.what(), ")");
    }
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string()) MDLM_FAIL("stdin: line ", line_no, ": no \"text\" string field");
    texts.push_back(j["text"].get<std::string>());
  }
  with_tokenizer(args.str("--tokenizer"), [&](const auto& tok) {
    std::vector<std::vector<std::int32_t>> out(texts.size());
    if constexpr (requires { tok.encode_with_special(std::string_view{}); }) {
      if (special) {
#pragma omp parallel for schedule(dynamic, 64)
        for (std::int64_t i = 0; i < static_cast<std::int64_t>(texts.size()); ++i)
          out[static_cast<std::size_t>(i)] = tok.encode_with_special(texts[static_cast<std::size_t>(i)]);
      }
    } else {
      MDLM_CHECK(!special, "--special 1 is only meaningful for the gpt2 tokenizer");
    }
    if (!special) {
      std::vector<std::string_view> views(texts.begin(), texts.end());
      out = encode_batch(tok, views);
    }
    std::string buf;
    for (const auto& ids : out) {
      buf += "{\"ids\": [";
      for (std::size_t k = 0; k < ids.size(); ++k) {
        if (k) buf += ", ";
        buf += std::to_string(ids[k]);
      }
      buf += "]}\n";
    }
    std::fwrite(buf.data(), 1, buf.size(), stdout);
    return 0;
  });
  return 0;
}

}  // namespace

Command tokenize_command() { return {"tokenize", {tokenize_spec()}, run_tokenize}; }

}  // namespace mdlm::cli
