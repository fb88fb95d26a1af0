#!/usr/bin/env bash
# Installs what mdlm builds against, from Debian/Ubuntu packages, when it is missing.
# Nothing is downloaded at build time. OpenMPI is for data-parallel training (mpirun; the build
# works without it, as one process). The CUDA toolkit (nvcc, cuBLASLt, CUB) is optional
# and not installed here: where it exists, the CUDA targets are built too.
set -euo pipefail
packages=(cmake g++ make pkg-config doctest-dev libbenchmark-dev libopenblas-openmp-dev libdnnl-dev
          nlohmann-json3-dev libutf8proc-dev openmpi-bin libopenmpi-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
