#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU; prints one table:
#   - fp16 training with the GradScaler, bf16, channels-last, the batch augmentation on CUDA
#     equal to the CPU's within 1e-4 (examples/gpu_check.rs);
#   - NCCL with world size 1, and the 2-process NCCL all-reduce when ≥ 2 GPUs are visible;
#   - the pets run with --device cuda (1 epoch + 1 frozen): img/s and the GPU utilisation
#     sampled by nvidia-smi every second over the run.
# Without a GPU it stops at once with a clear message (exit 2). Usage:
#   bash scripts/gpu-check.sh [PETS_DIR]   (default ../shared/data/oxford-pets-sample)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU on this machine (nvidia-smi is missing or lists no GPU); run it on a CUDA machine" >&2
  exit 2
fi
source "$root/scripts/env.sh"
cd "$root"
cargo build --bin kestrel --example gpu_check
bin="$CARGO_TARGET_DIR/debug"
n_gpu=$(nvidia-smi -L | grep -c '^GPU ')
echo "GPUs: $n_gpu ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
fail=0
"$bin/examples/gpu_check" || fail=1   # prints the table header and its rows (exit 2: libtorch sees no GPU)

if [ "$n_gpu" -ge 2 ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$bin/examples/gpu_check" --nccl-rank 0 --port "$port" > /tmp/kestrel-nccl0.txt 2>&1 & p0=$!
  "$bin/examples/gpu_check" --nccl-rank 1 --port "$port" > /tmp/kestrel-nccl1.txt 2>&1 & p1=$!
  if wait $p0 && wait $p1; then echo "| 2-process NCCL allreduce (1 + 2) | PASS | 3 on both ranks |"
  else echo "| 2-process NCCL allreduce (1 + 2) | FAIL | $(tail -1 /tmp/kestrel-nccl0.txt) / $(tail -1 /tmp/kestrel-nccl1.txt) |"; fail=1; fi
else
  echo "| 2-process NCCL allreduce | SKIP | $n_gpu GPU visible, 2 needed |"
fi

pets=${1:-$root/../shared/data/oxford-pets-sample}
if [ -d "$pets" ]; then
  out=$(mktemp -d)
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -l 1 > "$out/util.txt" & smi=$!
  start=$(date +%s.%N)
  if "$bin/kestrel" pets --data "$pets" --device cuda --epochs 1 --freeze-epochs 1 --out "$out/run" > "$out/log.txt" 2>&1; then
    end=$(date +%s.%N)
    kill $smi 2>/dev/null || true
    fit=$(sed -n 's/.*fine_tune \([0-9.]*\) s.*/\1/p' "$out/log.txt" | tail -1)
    n_train=$(grep -ci ",false$" "$pets/labels.csv" || true)
    util=$(awk '{s+=$1; n++} END {if (n) printf "%.0f", s/n; else print "?"}' "$out/util.txt")
    ips=$(awk -v n="$n_train" -v t="$fit" 'BEGIN {if (t > 0) printf "%.1f", 2*n/t; else print "?"}')
    echo "| pets --device cuda, fine_tune(1, freeze_epochs=1): training img/s, mean GPU util | PASS | $ips img/s, ${util}% util, $(grep -o 'final error_rate [0-9.]*' "$out/log.txt"), whole command $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.0f", b-a}') s |"
  else
    kill $smi 2>/dev/null || true
    echo "| pets --device cuda | FAIL | $(tail -1 "$out/log.txt") |"; fail=1
  fi
else
  echo "| pets --device cuda | SKIP | no photos at $pets |"
fi
exit $fail
