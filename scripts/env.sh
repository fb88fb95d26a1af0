# Sourced by the scripts: puts nvcc on PATH where the CUDA toolkit lives in its usual place.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
MDLM_BUILD_DIR=${MDLM_BUILD_DIR:-build}
MDLM_JOBS=${MDLM_JOBS:-$(nproc)}
