#!/usr/bin/env bash
# Deployment benchmark (not a test): `kestrel-serve predict` (ONNX, onnxruntime, no
# libtorch) vs `kestrel predict` (libtorch) on the 370 pet photos, whole commands timed
# from start to end, same thread count, printed as a ratio; the top-1 agreement of the two
# outputs; the deploy bundle's size (kestrel-serve + libonnxruntime + model.onnx); `ldd`
# of kestrel-serve (no libtorch).
#
#   scripts/bench/deploy_serve.sh [MODEL.safetensors]   # THREADS=2 by default
#
# Without a model it makes one with a short `kestrel fine-tune` (Lite0, 1 frozen + 1
# unfrozen epoch on the sample's is_valid split, about a minute here).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$root/scripts/env.sh"
cd "$root"
threads=${THREADS:-2}
sample="$root/../shared/data/oxford-pets-sample"
[ -d "$sample" ] || { echo "deploy bench needs $sample"; exit 1; }
# The same (dev) profile for both binaries, the one the tests use: dependencies at -O3.
cargo build --bin kestrel --bin kestrel-serve --workspace
K="$CARGO_TARGET_DIR/debug/kestrel"
serve="$CARGO_TARGET_DIR/debug/kestrel-serve"
out=runs/deploy-bench
mkdir -p "$out"
model=${1:-$out/model.safetensors}
if [ ! -f "$model" ]; then
  "$K" fine-tune --csv "$sample/labels.csv" --valid-col is_valid --arch efficientnet_lite0 --bs 32 \
    --freeze-epochs 1 --epochs 1 --tta false --out "$out" --device cpu
  model="$out/model.safetensors"
fi
onnx="$out/model.onnx"
"$K" export "$model" --format onnx --out "$onnx"

now() { date +%s.%N; }
t0=$(now)
"$K" predict "$model" "$sample/images" --json --workers "$threads" --device cpu > "$out/kestrel.jsonl"
t1=$(now)
"$serve" --threads "$threads" predict "$onnx" "$sample/images" --workers "$threads" > "$out/serve.jsonl"
t2=$(now)
python3 - "$out/kestrel.jsonl" "$out/serve.jsonl" "$t0" "$t1" "$t2" <<'PY'
import json, sys
k = [json.loads(l) for l in open(sys.argv[1])]
s = [json.loads(l) for l in open(sys.argv[2])]
t0, t1, t2 = map(float, sys.argv[3:6])
same = sum(a["label"] == b["label"] for a, b in zip(k, s))
dp = max(abs(x["prob"] - y["prob"]) for a, b in zip(k, s) for x, y in zip(a["top"], b["top"]) if x["label"] == y["label"])
n = len(k)
print(f"kestrel predict (libtorch):       {n / (t1 - t0):6.1f} img/s  ({t1 - t0:.1f} s, whole command)")
print(f"kestrel-serve predict (ONNX):     {n / (t2 - t1):6.1f} img/s  ({t2 - t1:.1f} s, whole command)")
print(f"ratio: {(t1 - t0) / (t2 - t1):.2f}x   same top-1: {same}/{n}   max |top prob diff|: {dp:.4f}")
PY
lib=$(ls "$(dirname "$(readlink -f .libtorch)")"/onnxruntime/capi/libonnxruntime.so.1.32.0)
size() { stat -c %s "$1"; }
strip -o "$out/kestrel-serve" "$serve"   # what a bundle ships: no debug line tables
serve_bin="$out/kestrel-serve"
total=$(( $(size "$serve_bin") + $(size "$lib") + $(size "$onnx") ))
echo "deploy bundle: kestrel-serve (stripped) $(( $(size "$serve_bin") / 1024 )) KiB + libonnxruntime.so.1.32.0 $(( $(size "$lib") / 1024 )) KiB + model.onnx $(( $(size "$onnx") / 1024 )) KiB = $(( total / 1024 / 1024 )) MiB"
echo "ldd kestrel-serve:"
ldd "$serve"
if ldd "$serve" | grep -qi torch; then echo "FAIL: kestrel-serve links libtorch"; exit 1; fi
echo "no libtorch in kestrel-serve's libraries"
