// train_lm1b: the MDLM paper's LM1B recipe on any text files (a sentence per line): BERT
// WordPiece (bert-base-uncased; the mask is [MASK] = 103), a sentence per sequence framed
// [CLS] ... [SEP] and padded with [PAD] to 128 ("pad"; PAD positions are excluded from the loss),
// the small DiT at V = 30522 (139.3M parameters), AdamW 3e-4 with 2500 warmup steps, EMA
// 0.9999, bf16 on CUDA (recipe.hpp). Sizes are flags, so it also runs tiny on a CPU:
//   train_lm1b --out out/lm1b FILE...
//   train_lm1b --out /tmp/lm1b --hidden 32 --blocks 1 --heads 2 --batch 2 --steps 2 data/kjv/kjv.valid.txt
#include "recipe.hpp"

int main(int argc, char** argv) try {
  using namespace mdlm;
  // Defaults: the paper's 512 sequences a step (64 x 8 accumulated).
  const recipe::CommandLine cl(argc, argv, {{"--out", "out/lm1b"}, {"--vocab", "data/bert-base-uncased/vocab.txt"}, {"--preset", "small"},
                                            {"--hidden", ""}, {"--blocks", ""}, {"--heads", ""}, {"--seq-len", "128"},
                                            {"--batch", "64"}, {"--accum", "8"}, {"--steps", "1000000"}, {"--valid-fraction", "0.01"}});
  const std::filesystem::path out = cl.str("--out");
  prepare_corpus("wordpiece:" + cl.str("--vocab"), cl.files, out / "data", cl.real("--valid-fraction"));

  TrainConfig cfg;  // defaults: the paper's optimizer (AdamW 3e-4, warmup 2500 then constant, clip 1.0, EMA 0.9999)
  cfg.data_dir = out / "data", cfg.out_dir = out / "run";
  cfg.model = recipe::model_of(cl);
  cfg.style = "pad";  // a sentence per row, [PAD] after it: the loss mask leaves PAD out of the loss and its denominator
  cfg.seq_len = cl.integer("--seq-len"), cfg.batch = cl.integer("--batch"), cfg.accum = cl.integer("--accum");
  cfg.steps = cl.integer("--steps");
  cfg.eval_every = cfg.save_every = std::min<std::int64_t>(10000, cfg.steps);
  const TrainResult r = recipe::train_on_gpu_or_host<MaskedDiffusion<LogLinearSchedule>>(cfg);
  std::printf("train_lm1b: %lld steps, validation bound %.4f nats/token (perplexity <= %.2f), checkpoint %s\n",
              static_cast<long long>(r.last_step), r.valid.nats, r.valid.ppl, r.checkpoint.string().c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "train_lm1b: error: %s\n", e.what());
  return 2;
}
