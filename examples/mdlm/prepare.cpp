// mdlm prepare: tokenizes a corpus (a document per line) into token shards and meta.json.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cli.hpp"

namespace mdlm::cli {
namespace {

// --input takes several values, so prepare reads its command line itself (the spec is for --help).
CommandSpec prepare_spec() {
  return {"",
          {{"--tokenizer", "", "gpt2:DIR, wordpiece:FILE or bytes (required)"},
           {"--input", "", "FILE... corpus files, a document per line (required)"},
           {"--out", "", "output directory for train.bin, valid.bin, meta.json (required)"},
           {"--valid-fraction", "0.05", "the last fraction of the documents kept for validation"}}};
}

int run_prepare(const CommandLine& cl) {
  const int argc = cl.argc;
  char** const argv = cl.argv;
  std::string tokenizer, out;
  std::vector<std::filesystem::path> inputs;
  double valid_fraction = 0.05;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      MDLM_CHECK(i + 1 < argc, "flag '", flag, "' needs a value");
      return argv[++i];
    };
    if (flag == "--tokenizer") tokenizer = value();
    else if (flag == "--out") out = value();
    else if (flag == "--valid-fraction") {
      const std::string v = value();
      std::size_t used = 0;
      try {
        valid_fraction = std::stod(v, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      MDLM_CHECK(used == v.size() && !v.empty(), "flag '--valid-fraction' expects a number, got '", v, "'");
    }
    else if (flag == "--input") {
      while (i + 1 < argc && argv[i + 1][0] != '-') inputs.emplace_back(argv[++i]);
    } else {
      std::vector<std::string> known;
      for (const Flag& f : prepare_spec().flags) known.push_back(f.name);
      for (const Flag& f : common_flags()) known.push_back(f.name);
      unknown_flag("prepare", flag, known);
    }
  }
  MDLM_CHECK(!tokenizer.empty() && !out.empty() && !inputs.empty(),
             "usage: mdlm prepare --tokenizer SPEC --input FILE... --out DIR [--valid-fraction F]");
  const auto t0 = std::chrono::steady_clock::now();
  PrepareResult r = prepare_corpus(tokenizer, inputs, out, valid_fraction);
  std::printf("prepared %s with %s in %.2f s: train %lld documents / %lld tokens, valid %lld documents / %lld tokens, vocab %lld\n",
              out.c_str(), tokenizer.c_str(), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
              static_cast<long long>(r.train_docs), static_cast<long long>(r.train_tokens), static_cast<long long>(r.valid_docs),
              static_cast<long long>(r.valid_tokens), static_cast<long long>(r.vocab_size));
  return 0;
}

}  // namespace

Command prepare_command() { return {"prepare", {prepare_spec()}, run_prepare}; }

}  // namespace mdlm::cli
