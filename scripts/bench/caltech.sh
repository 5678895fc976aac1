#!/usr/bin/env bash
# Caltech-101 end to end (issues 13 and 15), whole commands timed from start to end as a
# user runs them, in one session:
#   1. `kestrel check-data` on the class folders with the published split (test.txt):
#      wall time and peak RSS;
#   2. `kestrel fine-tune` on labels.csv — the full training split (6,095 photos), the
#      error on the 3,049 is_valid photos — with the pets recipe (EfficientNet-Lite0,
#      Resize(460), aug_transforms(224, min_scale 0.75), bs BS, lr 2e-3, fine_tune(EPOCHS)):
#      wall time, error, peak RSS;
#   3. the same fine-tune on the pets sample (370 photos): peak RSS at the same batch size
#      and architecture, and the ratio Caltech / pets (issue 13: within 10 %);
#   4. `kestrel interpret` and `kestrel predict` on the Caltech model (same-named files
#      in different classes are shown with their folder);
#   5. the data pipeline's img/s on the Caltech training split, kestrel vs fastai's
#      DataLoader (when the reference venv of scripts/ref/make-venv.sh exists), as a ratio.
#
#   scripts/bench/caltech.sh            # EPOCHS=1 BS=32 SEED=1; ≈ 20 min on 2 cores
# SKIP_PIPELINE=1 leaves out step 5.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$root/scripts/env.sh"
cd "$root"
EPOCHS=${EPOCHS:-1}
BS=${BS:-32}
SEED=${SEED:-1}
CALTECH=${KESTREL_CALTECH:-"$root/../shared/data/caltech101"}
PETS=${KESTREL_PETS_SAMPLE:-"$root/../shared/data/oxford-pets-sample"}
REF_PY=${KESTREL_REF_PYTHON:-${KESTREL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/kestrel}/ref-venv/bin/python}
[ -f "$CALTECH/labels.csv" ] || { echo "skipped: needs Caltech-101 at $CALTECH (set KESTREL_CALTECH)"; exit 0; }
[ -f "$PETS/labels.csv" ] || { echo "skipped: needs the pets sample at $PETS (set KESTREL_PETS_SAMPLE)"; exit 0; }
cargo build --bin kestrel
kestrel="$CARGO_TARGET_DIR/debug/kestrel"
out=runs/bench/caltech
mkdir -p "$out"

# Runs a command, its output into $out/$1.log; prints nothing; sets WALL (s) and RSS (GB,
# the peak resident set of the whole command, from wait4 through GNU time).
timed() {
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f 'maxrss_kb %M' -o "$out/$name.time" "$@" >"$out/$name.log" 2>&1
  t1=$(date +%s.%N)
  WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
  RSS=$(awk '/^maxrss_kb/{printf "%.2f", $2/1e6}' "$out/$name.time")
}
recipe=(--arch efficientnet_lite0 --presize 460 --size 224 --min-scale 0.75 --bs "$BS" --lr 2e-3
        --epochs "$EPOCHS" --freeze-epochs 1 --tta false --seed "$SEED" --device cpu --precision fp32)

timed check-data "$kestrel" check-data --folder "$CALTECH/images" --valid-list "$CALTECH/test.txt" --workers 2
cd_wall=$WALL cd_rss=$RSS
grep -iE 'ratio|ignored|not an image|split|train' "$out/check-data.log" | head -8 || true

timed fine-tune "$kestrel" fine-tune --csv "$CALTECH/labels.csv" --valid-col is_valid "${recipe[@]}" --out "$out/model"
ft_wall=$WALL ft_rss=$RSS
ft_err=$(awk '/^error_rate /{print $2}' "$out/fine-tune.log")
n_valid=$(tr -d '\r' < "$CALTECH/labels.csv" | grep -ci ',true$' || true)
grep -E '^(epoch|[0-9]+ )' "$out/fine-tune.log" || true

timed pets "$kestrel" fine-tune --csv "$PETS/labels.csv" --valid-col is_valid "${recipe[@]}" --out "$out/pets"
pets_wall=$WALL pets_rss=$RSS

timed interpret "$kestrel" interpret "$out/model/model.safetensors" --csv "$CALTECH/labels.csv" --valid-col is_valid --out "$out/interpret"
in_wall=$WALL
grep -m3 'image_0' "$out/interpret/top_losses.csv" 2>/dev/null || true
timed predict "$kestrel" predict "$out/model/model.safetensors" "$CALTECH/images/accordion/image_0001.jpg" "$CALTECH/images/airplanes/image_0001.jpg"
pr_wall=$WALL
cat "$out/predict.log"

echo
echo "Caltech-101 (9,144 photos, 102 classes), ${BS}-image batches, EfficientNet-Lite0, fine_tune($EPOCHS), seed $SEED"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
printf "%-34s %9s %12s %s\n" command wall_s peak_RSS_GB result
printf "%-34s %9s %12s %s\n" "check-data (folders + test.txt)" "$cd_wall" "$cd_rss" ""
printf "%-34s %9s %12s %s\n" "fine-tune (6,095 train photos)" "$ft_wall" "$ft_rss" "error_rate $ft_err on $n_valid is_valid photos"
printf "%-34s %9s %12s %s\n" "fine-tune, pets sample (370)" "$pets_wall" "$pets_rss" "error_rate $(awk '/^error_rate /{print $2}' "$out/pets.log")"
printf "%-34s %9s %12s\n" "interpret" "$in_wall" "$RSS"
printf "%-34s %9s\n" "predict (2 photos)" "$pr_wall"
grep -h '^training epochs:' "$out/fine-tune.log" | sed 's/^/caltech /'
grep -h '^training epochs:' "$out/pets.log" | sed 's/^/pets    /'
echo "peak RSS, whole fine-tune, Caltech / pets: $(awk -v a="$ft_rss" -v b="$pets_rss" 'BEGIN{printf "%.3f", a/b}') (issue 13: within 10 %)"

if [ -z "${SKIP_PIPELINE:-}" ]; then
  echo
  fips=""
  if [ -x "$REF_PY" ]; then
    fips=$(OMP_NUM_THREADS=2 "$REF_PY" scripts/bench/fastai_pipeline.py "$CALTECH" | awk '/^fastai_ips/{print $2}')
  fi
  KESTREL_PIPELINE_DATA=$CALTECH KESTREL_FASTAI_PIPELINE_IPS=$fips cargo bench --profile dev --bench pipeline
fi
