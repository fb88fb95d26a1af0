// train_owt: the MDLM paper's OpenWebText recipe on any text files (a document per line):
// GPT-2 BPE with the mask id appended (50257), documents + EOS concatenated and cut into
// sequences framed [BOS] ... [EOS] of L = 1024 ("wrap"), the small DiT (12 x 768, 169.6M
// parameters), AdamW 3e-4 with 2500 warmup steps then constant, EMA 0.9999, bf16 with fp32
// master weights on CUDA (recipe.hpp). Sizes are flags, so it also runs tiny on a CPU:
//   train_owt --out out/owt FILE...                                     (the paper's sizes)
//   train_owt --out /tmp/owt --hidden 32 --blocks 1 --heads 2 --seq-len 64 --batch 2 --steps 2 data/kjv/kjv.valid.txt
#include "recipe.hpp"

int main(int argc, char** argv) try {
  using namespace mdlm;
  // Defaults: the paper's run, 512 sequences a step (32 x 16 accumulated), 1M steps.
  const recipe::CommandLine cl(argc, argv, {{"--out", "out/owt"}, {"--gpt2", "data/gpt2"}, {"--preset", "small"}, {"--hidden", ""},
                                            {"--blocks", ""}, {"--heads", ""}, {"--seq-len", "1024"}, {"--batch", "32"},
                                            {"--accum", "16"}, {"--steps", "1000000"}, {"--warmup", "2500"}, {"--valid-fraction", "0.01"}});
  const std::filesystem::path out = cl.str("--out");
  // GPT-2 BPE shards; the vocabulary is GPT-2's 50257 ids + the mask.
  prepare_corpus("gpt2:" + cl.str("--gpt2"), cl.files, out / "data", cl.real("--valid-fraction"));

  TrainConfig cfg;  // its defaults are the paper's optimizer: AdamW lr 3e-4, betas (0.9, 0.999), eps 1e-8,
                    // no weight decay, constant after warmup, gradient clipping 1.0, EMA 0.9999
  cfg.data_dir = out / "data", cfg.out_dir = out / "run";
  cfg.model = recipe::model_of(cl);  // dropout 0.1, no time conditioning
  cfg.style = "wrap";                // concatenate documents + EOS, cut to L - 2, frame [BOS] ... [EOS]
  cfg.seq_len = cl.integer("--seq-len"), cfg.batch = cl.integer("--batch"), cfg.accum = cl.integer("--accum");
  cfg.steps = cl.integer("--steps"), cfg.lr.warmup = cl.integer("--warmup");
  cfg.eval_every = cfg.save_every = std::min<std::int64_t>(10000, cfg.steps);
  // log-linear schedule, SUBS parameterization, continuous-time NELBO
  const TrainResult r = recipe::train_on_gpu_or_host<MaskedDiffusion<LogLinearSchedule>>(cfg);
  std::printf("train_owt: %lld steps, validation bound %.4f nats/token (perplexity <= %.2f), checkpoint %s\n",
              static_cast<long long>(r.last_step), r.valid.nats, r.valid.ppl, r.checkpoint.string().c_str());
  return 0;
} catch (const std::exception& e) {  // mdlm::Error, and std::stoll/stod on a bad number
  std::fprintf(stderr, "train_owt: error: %s\n", e.what());
  return 2;
}
