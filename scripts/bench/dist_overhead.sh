#!/usr/bin/env bash
# The cost of data-parallel training on one machine (issue 12): the pets recipe's
# fine_tune(EPOCHS, freeze_epochs=FREEZE_EPOCHS) on the sample, whole commands timed from
# start to end in the same session:
#   A: 1 process × 2 torch threads, --bs 32
#   B: 2 processes × 1 thread (--nproc-per-node 2, Gloo on 127.0.0.1), --bs 16 per process
#      (the same global batch 32)
# Prints both wall times, the ratio B/A, both error rates, and B's gradient all-reduce time
# per step. On 2 cores no speed-up is expected: the ratio measures the overhead.
#   scripts/bench/dist_overhead.sh            (fine_tune(1): ≈ 2 × 1.5 minutes on a quiet 2-core machine)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$root/scripts/env.sh"
cd "$root"
EPOCHS=${EPOCHS:-1}
FREEZE_EPOCHS=${FREEZE_EPOCHS:-1}
SEED=${SEED:-1}
SAMPLE=${KESTREL_PETS_SAMPLE:-"$root/../shared/data/oxford-pets-sample"}
[ -f "$SAMPLE/labels.csv" ] || { echo "needs the pets sample at $SAMPLE (set KESTREL_PETS_SAMPLE)"; exit 1; }
cargo build --bin kestrel
kestrel="$CARGO_TARGET_DIR/debug/kestrel"
common=(fine-tune --csv "$SAMPLE/labels.csv" --valid-col is_valid --arch efficientnet_lite0 --presize 460 --size 224
        --min-scale 0.75 --lr 2e-3 --lr-find-iters 10 --epochs "$EPOCHS" --freeze-epochs "$FREEZE_EPOCHS" --seed "$SEED" --workers 2)
mkdir -p runs/bench
t0=$(date +%s.%N)
OMP_NUM_THREADS=2 "$kestrel" "${common[@]}" --bs 32 --out runs/bench/dist-1x2 > runs/bench/dist-1x2.log 2>&1
t1=$(date +%s.%N)
OMP_NUM_THREADS=1 "$kestrel" "${common[@]}" --bs 16 --nproc-per-node 2 --out runs/bench/dist-2x1 > runs/bench/dist-2x1.log 2>&1
t2=$(date +%s.%N)
err() { grep -o 'error_rate [0-9.]*' "$1" | tail -1 | cut -d' ' -f2; }
ar=$(grep -o 'all-reduce of the gradients: [0-9.]* ms per step ([0-9]* steps)' runs/bench/dist-2x1.log | tail -1 || true)
awk -v a="$t0" -v b="$t1" -v c="$t2" -v e1="$(err runs/bench/dist-1x2.log)" -v e2="$(err runs/bench/dist-2x1.log)" -v ar="$ar" 'BEGIN {
  printf "| run | wall s | error_rate |\n|---|---|---|\n"
  printf "| 1 process x 2 threads, bs 32 | %.1f | %s |\n", b-a, e1
  printf "| 2 processes x 1 thread, bs 16 each (global 32) | %.1f | %s |\n", c-b, e2
  printf "wall-time ratio (2x1 / 1x2): %.2f\n%s\n", (c-b)/(b-a), ar
}'
