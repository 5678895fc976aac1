#!/usr/bin/env bash
# Data-parallel training on one machine against one process (issue 12): the pets recipe
# (Lite0, presize 460, size 224, min_scale 0.75, base_lr 2e-3) with
# fine_tune(EPOCHS, freeze_epochs=FREEZE_EPOCHS) on the sample's is_valid split, whole
# commands timed from start to end in the same session, for each seed of SEEDS:
#   A: 1 process × 2 torch threads, --bs 32
#   B: 2 processes × 1 thread (--nproc-per-node 2, Gloo on 127.0.0.1), --bs 16 per process
#      (the same global batch 32)
# Prints per seed both wall times, the ratio B/A, both error rates and their difference in
# validation photos, and B's gradient all-reduce time per step. On 2 cores no speed-up is
# expected: the ratio measures the overhead.
#   scripts/bench/dist_overhead.sh                              (fine_tune(1), seed 1)
#   SEEDS="1 2 3" EPOCHS=4 scripts/bench/dist_overhead.sh       (the accuracy check: within 2 photos)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$root/scripts/env.sh"
cd "$root"
EPOCHS=${EPOCHS:-1}
FREEZE_EPOCHS=${FREEZE_EPOCHS:-1}
SEEDS=${SEEDS:-1}
SAMPLE=${KESTREL_PETS_SAMPLE:-"$root/../shared/data/oxford-pets-sample"}
[ -f "$SAMPLE/labels.csv" ] || { echo "needs the pets sample at $SAMPLE (set KESTREL_PETS_SAMPLE)"; exit 1; }
cargo build --bin kestrel
kestrel="$CARGO_TARGET_DIR/debug/kestrel"
n_valid=$(tr -d '\r' < "$SAMPLE/labels.csv" | grep -ci ',true$' || true)
mkdir -p runs/bench
err() { grep '^error_rate ' "$1" | tail -1 | awk '{print $2}'; }
echo "| seed | 1 proc x 2 threads, bs 32: wall s / error | 2 procs x 1 thread, bs 16 each: wall s / error | wall ratio | photos apart | all-reduce per step (overlapped with backward) |"
echo "|---|---|---|---|---|---|"
for s in $SEEDS; do
  common=(fine-tune --csv "$SAMPLE/labels.csv" --valid-col is_valid --arch efficientnet_lite0 --presize 460 --size 224
          --min-scale 0.75 --lr 2e-3 --lr-find-iters 10 --epochs "$EPOCHS" --freeze-epochs "$FREEZE_EPOCHS" --tta false --seed "$s" --workers 2)
  t0=$(date +%s.%N)
  OMP_NUM_THREADS=2 "$kestrel" "${common[@]}" --bs 32 --out "runs/bench/dist-1x2-seed$s" > "runs/bench/dist-1x2-seed$s.log" 2>&1
  t1=$(date +%s.%N)
  OMP_NUM_THREADS=1 "$kestrel" "${common[@]}" --bs 16 --nproc-per-node 2 --out "runs/bench/dist-2x1-seed$s" > "runs/bench/dist-2x1-seed$s.log" 2>&1
  t2=$(date +%s.%N)
  ar=$(grep -o 'all-reduce of the gradients: [0-9.]* ms per step, [0-9.]* ms of it overlapped' "runs/bench/dist-2x1-seed$s.log" | tail -1 \
       | sed 's/all-reduce of the gradients: //; s/ per step,/,/' || true)
  awk -v s="$s" -v a="$t0" -v b="$t1" -v c="$t2" -v e1="$(err "runs/bench/dist-1x2-seed$s.log")" \
      -v e2="$(err "runs/bench/dist-2x1-seed$s.log")" -v n="$n_valid" -v ar="$ar" 'BEGIN {
    d = (e1 - e2) * n; if (d < 0) d = -d
    printf "| %s | %.1f / %s | %.1f / %s | %.2f | %.0f of %d | %s |\n", s, b-a, e1, c-b, e2, (c-b)/(b-a), d, n, ar
  }'
done
