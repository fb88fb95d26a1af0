// Quickstart: train a small masked diffusion language model on the bundled KJV corpus through
// the library API, report its validation perplexity bound next to the unigram baseline, and
// sample from it with a prompt. Host only; plain g++/clang with <mdlm/mdlm.hpp>.
//   quickstart [CORPUS.txt] [OUT_DIR] [STEPS]     (defaults: data/kjv/kjv.valid.txt out/quickstart 300)
#include <mdlm/mdlm.hpp>

#include <cstdio>
#include <span>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
  using namespace mdlm;
  host_retain_freed_memory();  // keep freed heap pages between GEMM calls (a Host training program should)
  const std::filesystem::path corpus = argc > 1 ? argv[1] : "data/kjv/kjv.valid.txt";
  const std::filesystem::path out = argc > 2 ? argv[2] : "out/quickstart";
  const std::int64_t steps = argc > 3 ? std::stoll(argv[3]) : 300;

  // 1. Text -> token shards: a document per line, byte tokens, the last 10% held out.
  prepare_corpus("bytes", {corpus}, out / "data", 0.1);

  // 2. A small DiT trained by masked diffusion with the log-linear noise schedule. The
  //    objective is a type: MaskedDiffusion<CosineSchedule>, or a schedule of your own
  //    (custom_schedule.cpp), trains the same way.
  TrainConfig cfg;
  cfg.data_dir = out / "data";
  cfg.out_dir = out / "run";
  cfg.model.hidden = 64, cfg.model.blocks = 2, cfg.model.heads = 4, cfg.model.cond_dim = 32, cfg.model.dropout = 0;
  cfg.seq_len = 64, cfg.batch = 16, cfg.steps = steps;
  cfg.lr.peak = cfg.adam.lr = 3e-3, cfg.lr.warmup = 20;
  cfg.ema = 0.99, cfg.eval_every = 0, cfg.eval_batches = 8, cfg.save_every = 0, cfg.log_every = 100;
  using Objective = MaskedDiffusion<LogLinearSchedule>;
  Host host;
  const TrainResult r = Trainer<Host, float, float, Objective>{Objective{}}.run(host, cfg);
  const bool learned = r.valid.nats < r.unigram_nats;
  std::printf("validation bound %.4f nats/token (perplexity <= %.2f), unigram baseline %.4f nats/token (%s the unigram baseline)\n",
              r.valid.nats, r.valid.ppl, r.unigram_nats, learned ? "below" : "NOT below");

  // 3. The trained model (EMA weights) back from its checkpoint; bytes the corpus never
  //    contained are kept out of samples.
  LoadedCheckpoint ckpt = read_checkpoint(cfg.out_dir);
  lower_unseen_token_bias(ckpt);
  TrainedModel<Host> m = to_backend(host, ckpt);

  // 4. Two samples of 64 tokens that start with a prompt: the prompt's positions are filled in,
  //    the rest start masked; the cached ancestral sampler denoises them in 32 steps.
  const ByteTokenizer tok;
  std::vector<std::int32_t> prompt{tok.specials().bos};
  for (std::int32_t id : tok.encode("And God said")) prompt.push_back(id);
  const std::int64_t n = 2, len = 64;
  std::vector<std::int32_t> init(static_cast<std::size_t>(n * len), static_cast<std::int32_t>(m.mask_id()));
  for (std::int64_t b = 0; b < n; ++b) std::copy(prompt.begin(), prompt.end(), init.begin() + b * len);
  SamplerSettings sampling;
  sampling.steps = 32, sampling.seed = 1;
  const SampleResult s = sample_batched(host, m.model, m.store, m.mask_id(), LogLinearSchedule{}, Cached{}, sampling, init, n, len);
  for (std::int64_t b = 0; b < n; ++b) {  // (special ids such as BOS decode to nothing)
    const std::string text = tok.decode(std::span(s.ids).subspan(static_cast<std::size_t>(b * len), static_cast<std::size_t>(len)));
    std::printf("sample %lld: %s\n", static_cast<long long>(b), text.c_str());
  }
  return learned ? 0 : 1;
} catch (const mdlm::Error& e) {
  std::fprintf(stderr, "quickstart: error: %s\n", e.what());
  return 2;
}
