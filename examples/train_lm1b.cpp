// train_lm1b: the MDLM paper's LM1B recipe on any text files (a sentence per line): BERT
// WordPiece (bert-base-uncased, the mask is [MASK] = 103), one sentence per sequence framed
// [CLS] ... [SEP] and padded with [PAD] to 128 ("pad"; PAD positions are excluded from the loss),
// the small DiT at V = 30522 (139.3M parameters), AdamW 3e-4 with 2500 warmup steps, EMA
// 0.9999, bf16 on CUDA. Sizes are flags, so it also runs tiny on a CPU:
//   train_lm1b --out out/lm1b FILE...
//   train_lm1b --out /tmp/lm1b --hidden 32 --blocks 1 --heads 2 --batch 2 --steps 2 data/kjv/kjv.valid.txt
#if defined(__CUDACC__)
#include <mdlm/cuda.cuh>
#else
#include <mdlm/mdlm.hpp>
#endif

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
  using namespace mdlm;
  // --flag value pairs (defaults: the paper's 512 sequences a step), then the text files.
  std::map<std::string, std::string> flag{{"--out", "out/lm1b"}, {"--vocab", "data/bert-base-uncased/vocab.txt"}, {"--preset", "small"},
                                          {"--seq-len", "128"}, {"--batch", "64"}, {"--accum", "8"}, {"--steps", "1000000"},
                                          {"--valid-fraction", "0.01"}};
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) != 0) { files.emplace_back(a); continue; }
    MDLM_CHECK(flag.count(a) == 1 && i + 1 < argc, "unknown flag or missing value: '", a, "'");
    flag[a] = argv[++i];
  }
  MDLM_CHECK(!files.empty(), "usage: train_lm1b [--out DIR] [--preset tiny|small|medium] [--hidden H --blocks N --heads A] [--batch B] [--steps S] FILE...");
  const std::filesystem::path out = flag["--out"];

  prepare_corpus("wordpiece:" + flag["--vocab"], files, out / "data", std::stod(flag["--valid-fraction"]));

  TrainConfig cfg;  // defaults: the paper's optimizer (AdamW 3e-4, warmup 2500 then constant, clip 1.0, EMA 0.9999)
  cfg.data_dir = out / "data", cfg.out_dir = out / "run";
  cfg.model = DiTConfig::preset(flag["--preset"], /*vocab: from the data*/ 1);
  if (!flag["--hidden"].empty()) cfg.model.hidden = std::stoll(flag["--hidden"]);  // a preset's sizes, overridden
  if (!flag["--blocks"].empty()) cfg.model.blocks = std::stoll(flag["--blocks"]);
  if (!flag["--heads"].empty()) cfg.model.heads = std::stoll(flag["--heads"]);
  cfg.style = "pad";  // a sentence per row, [PAD] after it: the loss mask leaves PAD out of the loss and its denominator
  cfg.seq_len = std::stoll(flag["--seq-len"]), cfg.batch = std::stoll(flag["--batch"]), cfg.accum = std::stoll(flag["--accum"]);
  cfg.steps = std::stoll(flag["--steps"]);
  cfg.eval_every = cfg.save_every = std::min<std::int64_t>(10000, cfg.steps), cfg.eval_batches = 16;
  using Objective = MaskedDiffusion<LogLinearSchedule>;

  TrainResult r;
#if defined(__CUDACC__)
  if (Cuda::device_count() > 0) {
    Cuda gpu;
    r = Trainer<Cuda, bf16, float, Objective>{}.run(gpu, cfg);
  }
#endif
  if (r.last_step == 0) {
    host_retain_freed_memory();
    Host host;
    r = Trainer<Host, float, float, Objective>{}.run(host, cfg);
  }
  std::printf("train_lm1b: %lld steps, validation bound %.4f nats/token (perplexity <= %.2f), checkpoint %s\n",
              static_cast<long long>(r.last_step), r.valid.nats, r.valid.ppl, r.checkpoint.string().c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "train_lm1b: error: %s\n", e.what());
  return 2;
}
