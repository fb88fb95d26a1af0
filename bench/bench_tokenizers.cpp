// Tokenizer encode throughput on one core, in bytes per second (Google Benchmark prints MB/s
// as "bytes_per_second"), over every line of a real corpus: the bundled KJV training split
// (ASCII) and, where ../shared is present, the World English Bible (curly quotes, dashes).
// Each pass uses a fresh encoder session, so caches start empty.
//   build/bench/mdlm_bench_tokenizers [--benchmark_filter=gpt2]
// bench/compare_hf_tokenizers.py measures Hugging Face `tokenizers` on the same lines.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "mdlm/mdlm.hpp"

namespace {

namespace fs = std::filesystem;
const fs::path kRepo = MDLM_BENCH_REPO;

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

template <class Tok>
void encode_corpus(benchmark::State& state, const Tok& tok, const fs::path& corpus) {
  if (!fs::exists(corpus)) {
    state.SkipWithError(("missing " + corpus.string()).c_str());
    return;
  }
  const std::string text = read(corpus);
  const auto lines = mdlm::split_lines(text);
  std::size_t tokens = 0;
  for (auto _ : state) {
    auto session = tok.session();
    tokens = 0;
    for (auto line : lines) tokens += session.encode(line).size();
    benchmark::DoNotOptimize(tokens);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(text.size()) * state.iterations());
  state.counters["tokens"] = static_cast<double>(tokens);
}

const fs::path kKjv = kRepo / "data" / "kjv" / "kjv.train.txt";
const fs::path kWeb = kRepo / ".." / "shared" / "data" / "corpora" / "web" / "web.txt";

void BM_gpt2_kjv(benchmark::State& s) {
  static const auto tok = mdlm::Gpt2Tokenizer::from_directory(kRepo / "data" / "gpt2");
  encode_corpus(s, tok, kKjv);
}
void BM_gpt2_web(benchmark::State& s) {
  static const auto tok = mdlm::Gpt2Tokenizer::from_directory(kRepo / "data" / "gpt2");
  encode_corpus(s, tok, kWeb);
}
void BM_wordpiece_kjv(benchmark::State& s) {
  static const auto tok = mdlm::WordPieceTokenizer::from_vocab_file(kRepo / "data" / "bert-base-uncased" / "vocab.txt");
  encode_corpus(s, tok, kKjv);
}
void BM_wordpiece_web(benchmark::State& s) {
  static const auto tok = mdlm::WordPieceTokenizer::from_vocab_file(kRepo / "data" / "bert-base-uncased" / "vocab.txt");
  encode_corpus(s, tok, kWeb);
}
void BM_bytes_kjv(benchmark::State& s) { encode_corpus(s, mdlm::ByteTokenizer{}, kKjv); }

}  // namespace

BENCHMARK(BM_gpt2_kjv)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gpt2_web)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_wordpiece_kjv)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_wordpiece_web)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_bytes_kjv)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
