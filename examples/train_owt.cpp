// train_owt: the MDLM paper's OpenWebText recipe on any text files (a document per line):
// GPT-2 BPE with the mask id appended (50257), documents + EOS concatenated and cut into
// sequences framed [BOS] ... [EOS] of L = 1024 ("wrap"), the small DiT (12 x 768, 169.6M
// parameters), AdamW 3e-4 with 2500 warmup steps then constant, EMA 0.9999, bf16 with fp32
// master weights on CUDA. Sizes are flags, so it also runs tiny on a CPU:
//   train_owt --out out/owt FILE...                                     (the paper's sizes)
//   train_owt --out /tmp/owt --hidden 32 --blocks 1 --heads 2 --seq-len 64 --batch 2 --steps 2 data/kjv/kjv.valid.txt
// Built with nvcc (<mdlm/cuda.cuh>) it trains on the GPU when there is one, else on the Host.
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
  // --flag value pairs (defaults: the paper's run on 8 GPUs: 512 sequences a step, 1M steps), then the text files.
  std::map<std::string, std::string> flag{{"--out", "out/owt"}, {"--gpt2", "data/gpt2"}, {"--preset", "small"}, {"--hidden", ""}, {"--blocks", ""}, {"--heads", ""}, {"--seq-len", "1024"},
                                          {"--batch", "32"}, {"--accum", "16"}, {"--steps", "1000000"}, {"--warmup", "2500"},
                                          {"--valid-fraction", "0.01"}};
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) != 0) { files.emplace_back(a); continue; }
    MDLM_CHECK(flag.count(a) == 1 && i + 1 < argc, "unknown flag or missing value: '", a, "'");
    flag[a] = argv[++i];
  }
  MDLM_CHECK(!files.empty(), "usage: train_owt [--out DIR] [--preset tiny|small|medium] [--hidden H --blocks N --heads A] [--seq-len L] [--batch B] [--steps S] FILE...");
  const std::filesystem::path out = flag["--out"];

  // GPT-2 BPE shards; vocab 50258 = GPT-2's 50257 + the mask.
  prepare_corpus("gpt2:" + flag["--gpt2"], files, out / "data", std::stod(flag["--valid-fraction"]));

  TrainConfig cfg;  // its defaults are the paper's optimizer: AdamW lr 3e-4, betas (0.9, 0.999), eps 1e-8,
                    // no weight decay, constant after warmup, gradient clipping 1.0, EMA 0.9999
  cfg.data_dir = out / "data", cfg.out_dir = out / "run";
  cfg.model = DiTConfig::preset(flag["--preset"], /*vocab: from the data*/ 1);
  if (!flag["--hidden"].empty()) cfg.model.hidden = std::stoll(flag["--hidden"]);  // a preset's sizes, overridden
  if (!flag["--blocks"].empty()) cfg.model.blocks = std::stoll(flag["--blocks"]);
  if (!flag["--heads"].empty()) cfg.model.heads = std::stoll(flag["--heads"]);  // dropout 0.1, no time conditioning
  cfg.style = "wrap";
  cfg.seq_len = std::stoll(flag["--seq-len"]), cfg.batch = std::stoll(flag["--batch"]), cfg.accum = std::stoll(flag["--accum"]);
  cfg.steps = std::stoll(flag["--steps"]), cfg.lr.warmup = std::stoll(flag["--warmup"]);
  cfg.eval_every = cfg.save_every = std::min<std::int64_t>(10000, cfg.steps), cfg.eval_batches = 16;
  using Objective = MaskedDiffusion<LogLinearSchedule>;  // log-linear schedule, SUBS, continuous-time NELBO

  TrainResult r;
#if defined(__CUDACC__)
  if (Cuda::device_count() > 0) {
    Cuda gpu;
    r = Trainer<Cuda, bf16, float, Objective>{}.run(gpu, cfg);  // bf16 weights and activations, fp32 master weights
  }
#endif
  if (r.last_step == 0) {
    host_retain_freed_memory();
    Host host;
    r = Trainer<Host, float, float, Objective>{}.run(host, cfg);
  }
  std::printf("train_owt: %lld steps, validation bound %.4f nats/token (perplexity <= %.2f), checkpoint %s\n",
              static_cast<long long>(r.last_step), r.valid.nats, r.valid.ppl, r.checkpoint.string().c_str());
  return 0;
} catch (const std::exception& e) {  // mdlm::Error, and std::stoll/stod on a bad number
  std::fprintf(stderr, "train_owt: error: %s\n", e.what());
  return 2;
}
