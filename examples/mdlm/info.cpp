// mdlm info: a model preset's architecture, parameter tensors and parameter count.
#include <cstdio>
#include <string>

#include "cli.hpp"

namespace mdlm::cli {
namespace {

CommandSpec info_spec() {
  return {"",
          {{"--preset", "small", "model preset: tiny, small or medium"},
           {"--vocab", "50258", "vocabulary size"},
           {"--ar", "0", "1: the AR variant"},
           {"--verbose", "0", "1: list every parameter tensor"}}};
}

std::string with_commas(std::int64_t v) {
  std::string s = std::to_string(v), out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

int run_info(const CommandLine& cl) {
  const Args args = cl.flags(info_spec());
  DiTConfig cfg = DiTConfig::preset(args.str("--preset"), args.integer("--vocab"));
  cfg.ar = args.integer("--ar") != 0;
  DiT model(cfg);
  const auto& l = model.layout();
  std::printf("%s backbone, preset %s\n", cfg.ar ? "AR (causal, no adaLN)" : "MDLM DiT", args.str("--preset").c_str());
  std::printf("  blocks %lld, hidden %lld, heads %lld x %lld, MLP %lld (tanh-GELU), cond %lld, vocab %lld\n",
              static_cast<long long>(cfg.blocks), static_cast<long long>(cfg.hidden), static_cast<long long>(cfg.heads),
              static_cast<long long>(cfg.head_dim()), static_cast<long long>(cfg.mlp_ratio * cfg.hidden),
              static_cast<long long>(cfg.cond_dim), static_cast<long long>(cfg.vocab));
  std::printf("  RoPE base %g, LayerNorm eps %g, dropout %g, time conditioning %s\n", cfg.rope_base,
              cfg.layer_norm_eps, static_cast<double>(cfg.dropout), cfg.ar ? "n/a" : "off (sigma fed as 0)");
  std::printf("  parameter tensors %zu\n", l.specs().size());
  if (args.integer("--verbose") != 0) {
    for (const auto& s : l.specs()) {
      std::printf("    backbone.%-45s [%s] %s\n", s.name.c_str(),
                  s.shape.size() == 2 ? (std::to_string(s.shape[0]) + ", " + std::to_string(s.shape[1])).c_str()
                                      : std::to_string(s.shape[0]).c_str(),
                  with_commas(s.numel).c_str());
    }
  }
  std::printf("  train FLOPs per token at T=1024: %.4g\n", model.train_flops_per_token(1024));
  std::printf("parameters: %s (%lld)\n", with_commas(l.parameter_count()).c_str(),
              static_cast<long long>(l.parameter_count()));
  return 0;
}

}  // namespace

Command info_command() { return {"info", {info_spec()}, run_info}; }

}  // namespace mdlm::cli
