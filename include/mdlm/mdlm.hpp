#pragma once
// mdlm: masked diffusion language models, header-only. Host backend; include <mdlm/cuda.cuh>
// (nvcc) for the CUDA backend as well.
#include "mdlm/core/arena.hpp"
#include "mdlm/core/bf16.hpp"
#include "mdlm/core/config.hpp"
#include "mdlm/core/error.hpp"
#include "mdlm/core/f16.hpp"
#include "mdlm/core/philox.hpp"
#include "mdlm/core/tensor.hpp"
#include "mdlm/version.hpp"

#include "mdlm/backend/host.hpp"

#include "mdlm/ops/activation.hpp"
#include "mdlm/ops/attention.hpp"
#include "mdlm/ops/flash_attention.hpp"
#include "mdlm/ops/embedding.hpp"
#include "mdlm/ops/gelu.hpp"
#include "mdlm/ops/gather.hpp"
#include "mdlm/ops/gemm.hpp"
#include "mdlm/ops/layernorm.hpp"
#include "mdlm/ops/mask.hpp"
#include "mdlm/ops/linear.hpp"
#include "mdlm/ops/residual.hpp"
#include "mdlm/ops/rope.hpp"
#include "mdlm/ops/timestep.hpp"

#include "mdlm/autograd/gradcheck.hpp"
#include "mdlm/autograd/tape.hpp"

#include "mdlm/diffusion/masked_diffusion.hpp"
#include "mdlm/diffusion/schedule.hpp"
#include "mdlm/diffusion/subs_loss.hpp"
#include "mdlm/io/golden.hpp"
#include "mdlm/io/golden_check.hpp"
#include "mdlm/io/safetensors.hpp"

#include "mdlm/nn/dit.hpp"
#include "mdlm/nn/params.hpp"

#include "mdlm/tokenizers/all.hpp"

#include "mdlm/data/loader.hpp"
#include "mdlm/data/prepare.hpp"
#include "mdlm/data/shard.hpp"
#include "mdlm/io/checkpoint.hpp"
#include "mdlm/optim/adamw.hpp"
#include "mdlm/train/metrics.hpp"
#include "mdlm/train/trainer.hpp"
#include "mdlm/io/trajectory.hpp"

#include "mdlm/sampling/batched.hpp"
#include "mdlm/sampling/categorical.hpp"
#include "mdlm/sampling/model_denoiser.hpp"
#include "mdlm/sampling/samplers.hpp"
#include "mdlm/sampling/step.hpp"
#include "mdlm/sampling/top_cut.hpp"
