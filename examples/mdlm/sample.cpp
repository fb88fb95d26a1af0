// mdlm sample: samples from an MDLM checkpoint with the schedule it was trained with, on the
// Host or the GPU; `mdlm eval --gen-ppl` scores such samples with an AR checkpoint.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cli.hpp"

namespace mdlm::cli {

CommandSpec sample_spec() {
  return {"",
          {{"--checkpoint", "out/kjv-mdlm", "MDLM checkpoint directory or file, or a Hugging Face MDLM directory (config.json)"},
           {"--steps", "128", "sampler steps"},
           {"--sampler", "cached", "ancestral, cached, confidence, remdm or first-hit"},
           {"--length", "128", "tokens per sample"},
           {"--stride", "0", "semi-autoregressive stride (0: half the window)"},
           {"--window", "0", "semi-autoregressive window (0: the training sequence length)"},
           {"--prompt", "", "text every sample starts with"},
           {"--temperature", "1", "logit temperature"},
           {"--top-p", "1", "nucleus probability mass (1: off)"},
           {"--top-k", "0", "keep the k most likely tokens (0: off)"},
           {"--threshold", "0", "confidence sampler: unmask every position above this probability (0: k per step)"},
           {"--seed", "0", "seed of every random draw"},
           {"--num-samples", "2", "samples to draw"},
           {"--backend", "host", "host or cuda"},
           {"--dtype", "f32", "network precision with --backend cuda: f32 or bf16"},
           {"--json", "", "print JSON lines: ids, text, evaluations, time, unigram entropy", true},
           {"--paper-fp32-draws", "", "the official code's fp32 Gumbel draws (a Host reproduction mode)", true},
           {"--no-cuda-graph", "", "do not replay the sampling loop as a CUDA graph", true},
           {"--allow-unseen", "", "let tokens the training data never contained be sampled", true}}};
}

namespace {

// The one place where a sampler's name (--sampler) becomes the library's sampler type:
// calls f with it.
template <class F>
auto with_sampler_named(const std::string& s, double threshold, F&& f) {
  if (s == "ancestral") return f(Ancestral{});
  if (s == "cached") return f(Cached{});
  if (s == "confidence") return f(Confidence{threshold});
  if (s == "remdm") return f(ReMdm{});
  if (s == "first-hit") return f(FirstHit{});
  MDLM_FAIL("--sampler: unknown sampler '", s, "' (expected ancestral, cached, confidence, remdm or first-hit)");
}

// The checkpoint that samples. Tokens the training data never contained stay out of samples
// (the model can only have learned that they are rare; lower_unseen_token_bias); --allow-unseen
// keeps the model as trained.
LoadedCheckpoint read_sampling_checkpoint(const Args& args) {
  LoadedCheckpoint c = read_checkpoint(args.str("--checkpoint"));
  MDLM_CHECK(!c.model.ar, "mdlm sample needs an MDLM checkpoint (this one is the AR baseline)");
  if (args.integer("--allow-unseen") == 0) lower_unseen_token_bias(c);
  return c;
}

struct Generated {
  std::vector<std::int32_t> ids;
  std::int64_t n, len, nfe_calls, nfe_sequences;
  double seconds;
  std::string backend;
  bool cuda_graph = false;
  std::string note;
};

// Samples with the schedule the checkpoint was trained with (`sched`).
template <class Schedule, Sampler S>
Generated generate_with(const LoadedCheckpoint& c, const Args& args, Host& host, const Schedule& sched, const S& sampler) {
  const std::int64_t mask_id = c.mask_id();
  SamplerSettings cfg;
  cfg.steps = args.integer("--steps");
  cfg.seed = static_cast<std::uint64_t>(args.integer("--seed"));
  cfg.filters.temperature = args.real("--temperature");
  cfg.filters.top_p = args.real("--top-p");
  cfg.filters.top_k = args.integer("--top-k");
  cfg.draw = args.integer("--paper-fp32-draws") != 0 ? DrawMode::PaperFp32 : DrawMode::Exact;
  const std::int64_t n = args.integer("--num-samples"), len = args.integer("--length");
  const std::int64_t window = args.integer("--window") > 0 ? args.integer("--window")
                                                            : c.training_state.value("seq_len", std::int64_t{128});
  std::vector<std::int32_t> prompt;
  with_tokenizer(c.tokenizer(), [&](const auto& tok) {
    const SpecialTokens sp = tok.specials();
    if (sp.bos >= 0) prompt.push_back(sp.bos);
    for (std::int32_t id : tok.encode(args.str("--prompt"))) prompt.push_back(id);
    return 0;
  });
  SampleResult r;
  const std::string backend = args.str("--backend").empty() ? default_backend() : args.str("--backend");
  MDLM_CHECK(backend == "host" || backend == "cuda", "unknown backend '", backend, "' (expected host or cuda)");
  cfg.cuda_graph = args.integer("--no-cuda-graph") == 0;
  const bool semi_ar = len > window || args.integer("--stride") > 0;
  const std::int64_t stride = args.integer("--stride") > 0 ? args.integer("--stride") : window / 2;
  const std::int64_t span = semi_ar ? window : len;
  MDLM_CHECK(static_cast<std::int64_t>(prompt.size()) < span, "the prompt (", prompt.size(), " tokens) must be shorter than ",
             semi_ar ? "the window " : "--length ", span);
  std::vector<std::int32_t> init(static_cast<std::size_t>(n * len), static_cast<std::int32_t>(mask_id));
  for (std::int64_t b = 0; b < n; ++b) std::copy(prompt.begin(), prompt.end(), init.begin() + b * len);
  cfg.validate();
  Confidence{args.real("--threshold")}.validate();  // --threshold is checked whatever the sampler
  // the paper-era fp32 draw is a Host reproduction mode: it runs on the Host whatever the backend
  if (backend == "cuda" && cfg.draw == DrawMode::Exact) {
#if MDLM_WITH_CUDA
    MDLM_CHECK(Cuda::device_count() > 0, "--backend cuda: no CUDA device is present");
    const std::string dtype = args.str("--dtype");
    MDLM_CHECK(dtype == "f32" || dtype == "bf16", "--dtype '", dtype, "' (expected f32 or bf16 with --backend cuda)");
    Cuda ctx;
    auto on_device = [&](auto tag) {  // the weights as T on the GPU (bf16: values rounded, compute in fp32)
      TrainedModel<Cuda, decltype(tag)> m = to_backend<decltype(tag)>(ctx, c);
      auto run = [&](const std::vector<std::int32_t>& z0, const SamplerSettings& sc) {
        return sample_on_device(ctx, m.model, m.store, mask_id, sched, sampler, sc, z0, n, span);
      };
      return semi_ar ? sample_semi_ar(run, mask_id, cfg, prompt, n, len, window, stride) : run(init, cfg);
    };
    r = dtype == "bf16" ? on_device(bf16{}) : on_device(float{});
    return {r.ids, n, len, r.nfe_calls, r.nfe_sequences, r.seconds, "cuda", r.cuda_graph, r.note};
#else
    MDLM_FAIL("--backend cuda: this mdlm was built without CUDA (configure with -DMDLM_CUDA=ON)");
#endif
  }
  TrainedModel<Host> m = to_backend(host, c);
  if (cfg.draw == DrawMode::Exact) {
    // The batch shares each forward pass (the GPU path's loop on the Host kernels); it gives
    // the per-sequence sample()'s tokens (tests/host/test_sampling.cpp).
    auto run = [&](const std::vector<std::int32_t>& z0, const SamplerSettings& sc) {
      return sample_batched(host, m.model, m.store, mask_id, sched, sampler, sc, z0, n, span);
    };
    r = semi_ar ? sample_semi_ar(run, mask_id, cfg, prompt, n, len, window, stride) : run(init, cfg);
  } else {
    const auto d = model_denoiser(host, m.model, m.store, mask_id);
    r = semi_ar ? sample_semi_ar(d, sched, sampler, cfg, prompt, n, len, window, stride) : sample(d, sched, sampler, cfg, init, n, len);
  }
  return {r.ids, n, len, r.nfe_calls, r.nfe_sequences, r.seconds, "host", false, ""};
}

// Samples with the schedule the checkpoint was trained with.
Generated generate(const LoadedCheckpoint& c, const Args& args, Host& host) {
  return with_schedule(schedule_of(c.training_state), [&](auto sched) {
    return with_sampler_named(args.str("--sampler"), args.real("--threshold"),
                              [&](auto sampler) { return generate_with(c, args, host, sched, sampler); });
  });
}

int run_sample(const CommandLine& cl) {
  const Args args = cl.flags(sample_spec());
  const LoadedCheckpoint c = read_sampling_checkpoint(args);
  Host host = cl.host();
  Generated g = generate(c, args, host);
  const bool json = args.integer("--json") != 0;
  with_tokenizer(c.tokenizer(), [&](const auto& tok) {
    for (std::int64_t b = 0; b < g.n; ++b) {
      std::vector<std::int32_t> ids(g.ids.begin() + b * g.len, g.ids.begin() + (b + 1) * g.len);
      std::vector<std::int32_t> text_ids;
      const SpecialTokens sp = tok.specials();
      for (std::int32_t id : ids) if (id != sp.bos && id != sp.eos && id != sp.pad) text_ids.push_back(id);
      const std::string text = tok.decode(text_ids);
      if (json) {
        nlohmann::json j{{"ids", ids}, {"text", text}, {"nfe", g.nfe_sequences / g.n}, {"network_calls", g.nfe_calls},
                         {"seconds", g.seconds}, {"unigram_entropy", unigram_entropy(ids.data(), g.len)},
                         {"backend", g.backend}, {"cuda_graph", g.cuda_graph}};
        if (!g.note.empty()) j["note"] = g.note;
        std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
      } else {
        std::printf("--- sample %lld (unigram entropy %.3f nats)\n%s\n", static_cast<long long>(b),
                    unigram_entropy(ids.data(), g.len), text.c_str());
      }
    }
    if (!json) {
      std::printf("--- %lld samples of %lld tokens, %s sampler, %lld steps: %lld sequence evaluations, %.2f s\n",
                  static_cast<long long>(g.n), static_cast<long long>(g.len), args.str("--sampler").c_str(),
                  static_cast<long long>(args.integer("--steps")), static_cast<long long>(g.nfe_sequences), g.seconds);
    }
    return 0;
  });
  return 0;
}

}  // namespace

// Generative perplexity: samples from an MDLM checkpoint scored by an AR checkpoint of the same
// tokenizer (mean NLL of the samples' tokens after the first under the AR model).

int gen_ppl(const CommandLine& cl, const CommandSpec& spec) {
  const Args args = cl.flags(spec);
  Host host = cl.host();
  const LoadedCheckpoint c = read_sampling_checkpoint(args);
  TrainedModel<Host> scorer = load_trained_model(host, args.str("--scorer"));
  MDLM_CHECK(scorer.config().ar, "--scorer must be an AR checkpoint");
  MDLM_CHECK(scorer.tokenizer() == c.tokenizer() && scorer.config().vocab == c.model.vocab,
             "the scorer's tokenizer (", scorer.tokenizer(), ") differs from the sampler's (", c.tokenizer(), ")");
  Generated g = generate(c, args, host);
  Tape<Host, float> tape(host);
  auto out = Autoregressive{}.loss(tape, scorer.model, scorer.store.params(), TokenBatch{g.ids.data(), g.n, g.len, nullptr});
  const double nll = out.loss.value.data[0];
  double ent = 0;
  for (std::int64_t b = 0; b < g.n; ++b) ent += unigram_entropy(g.ids.data() + b * g.len, g.len) / static_cast<double>(g.n);
  std::printf("{\"samples\": %lld, \"length\": %lld, \"gen_nll\": %.6f, \"gen_ppl\": %.6f, \"mean_unigram_entropy\": %.6f, \"nfe\": %lld}\n",
              static_cast<long long>(g.n), static_cast<long long>(g.len), nll, std::exp(nll), ent,
              static_cast<long long>(g.nfe_sequences / g.n));
  return 0;
}

Command sample_command() { return {"sample", {sample_spec()}, run_sample}; }

}  // namespace mdlm::cli
