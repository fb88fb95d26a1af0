#pragma once
// mdlm: masked diffusion language models, header-only. Host backend; include <mdlm/cuda.cuh>
// (nvcc) for the CUDA backend as well.
#include "mdlm/core/arena.hpp"
#include "mdlm/core/bf16.hpp"
#include "mdlm/core/config.hpp"
#include "mdlm/core/error.hpp"
#include "mdlm/core/philox.hpp"
#include "mdlm/core/tensor.hpp"
#include "mdlm/version.hpp"

#include "mdlm/backend/host.hpp"

#include "mdlm/ops/gelu.hpp"
#include "mdlm/ops/gemm.hpp"
