#pragma once
// mdlm with the CUDA backend. Include from .cu files compiled by nvcc; link mdlm::cuda.
#include "mdlm/mdlm.hpp"

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/backend/cuda/lt_gemm.cuh"
#include "mdlm/ops/cuda/attention.cuh"
#include "mdlm/ops/cuda/column_reduce.cuh"
#include "mdlm/ops/cuda/flash_attention.cuh"
#include "mdlm/ops/cuda/elementwise.cuh"
#include "mdlm/ops/cuda/gemm.cuh"
#include "mdlm/ops/cuda/layernorm.cuh"
#include "mdlm/ops/cuda/mask.cuh"
#include "mdlm/ops/cuda/optim.cuh"
#include "mdlm/ops/cuda/sample.cuh"
#include "mdlm/ops/cuda/subs_loss.cuh"
#include "mdlm/sampling/cuda_sampler.cuh"
