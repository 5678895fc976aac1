#!/usr/bin/env bash
# The README's main job: the fastai book's pet-breeds run (chapter 5) with kestrel.
# Builds the `kestrel` binary (dev profile, the same build the tests use, so nothing is
# compiled twice), then runs `kestrel pets` on the Oxford-IIIT Pet sample beside the
# checkout when it exists (fixed is_valid split from its labels.csv), else on the full
# dataset (downloaded once, 800 MB). Extra arguments go to `kestrel pets`, e.g. --seed 1.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/env.sh"
cd "$root"
cargo build --bin kestrel
kestrel="$CARGO_TARGET_DIR/debug/kestrel"
sample="$root/../shared/data/oxford-pets-sample"
if [ -d "$sample" ]; then
  exec "$kestrel" pets --data "$sample" --out runs/pets "$@"
else
  exec "$kestrel" pets --out runs/pets "$@"
fi
