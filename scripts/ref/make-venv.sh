#!/usr/bin/env bash
# Creates the reference Python environment used ONLY to regenerate committed test
# fixtures (fastai 2.8.12, torchvision 0.26.0, efficientnet-lite-pytorch). It reuses the
# PyTorch of kestrel's own environment (scripts/setup.sh) through a .pth file instead of
# installing it twice. Tests never need it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bash "$root/scripts/setup.sh" >/dev/null
home=${KESTREL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/kestrel}
base="$home/venv-torch-2.11.0"
ref="${KESTREL_REF_VENV:-$home/ref-venv}"
if [ ! -f "$ref/.complete" ]; then
  python3 -m venv "$ref"
  site=$("$ref/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$base/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/kestrel-torch.pth"
  "$ref/bin/python" -m pip install --quiet --disable-pip-version-check \
    torchvision==0.26.0 fastai==2.8.12 efficientnet-lite-pytorch==0.1.0 safetensors
  touch "$ref/.complete"
fi
echo "$ref/bin/python"
