#!/usr/bin/env bash
# kestrel vs fastai on the fastai book's pet-breeds recipe (issue 7), same photos, same
# fixed is_valid split, same machine and session:
#   EfficientNet-Lite0 (ImageNet weights), Resize(460), aug_transforms(224, min_scale 0.75),
#   bs 32, fine_tune(EPOCHS) at base_lr 2e-3, seeds SEEDS, CPU, 2 torch threads.
# Prints per seed and mean: fine_tune seconds and error rate for both, and the time ratio;
# then the training-data throughput (decode + presize + augment, 2 workers) of both.
# fastai runs when its Python exists (KESTREL_REF_PYTHON, default the project's ref venv).
#
# Full run (≈ 3 × (2 + 4) minutes on a quiet 2-core machine):
#   scripts/bench/pets_vs_fastai.sh
# Smoke run:  SEEDS=1 EPOCHS=1 FREEZE_EPOCHS=0 scripts/bench/pets_vs_fastai.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$root/scripts/env.sh"
cd "$root"
SEEDS=${SEEDS:-"1 2 3"}
EPOCHS=${EPOCHS:-4}
FREEZE_EPOCHS=${FREEZE_EPOCHS:-1}
SAMPLE=${KESTREL_PETS_SAMPLE:-"$root/../shared/data/oxford-pets-sample"}
REF_PY=${KESTREL_REF_PYTHON:-${KESTREL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/kestrel}/ref-venv/bin/python}
[ -f "$SAMPLE/labels.csv" ] || { echo "needs the pets sample at $SAMPLE (set KESTREL_PETS_SAMPLE)"; exit 1; }
cargo build --bin kestrel --benches
kestrel="$CARGO_TARGET_DIR/debug/kestrel"
export OMP_NUM_THREADS=2

k_times=(); k_errs=(); f_times=(); f_errs=()
for s in $SEEDS; do
  out=runs/bench/kestrel-seed$s
  mkdir -p runs/bench
  "$kestrel" pets --data "$SAMPLE" --device cpu --seed "$s" --epochs "$EPOCHS" --freeze-epochs "$FREEZE_EPOCHS" --out "$out" \
    2>&1 | tee "$out.log"
  line=$(grep '^final error_rate' "$out.log")
  k_errs+=("$(awk '{print $3}' <<<"$line")")
  k_times+=("$(sed -E 's/.*fine_tune ([0-9.]+) s.*/\1/' <<<"$line")")
  if [ -x "$REF_PY" ]; then
    if [ "$FREEZE_EPOCHS" != 1 ]; then echo "note: fastai_pets.py always uses freeze_epochs=1" >&2; fi
    "$REF_PY" scripts/bench/fastai_pets.py "$SAMPLE" "$s" "$EPOCHS" > "runs/bench/fastai-seed$s.log" 2>&1
    json=$(grep -o '{"impl".*}' "runs/bench/fastai-seed$s.log" | tail -1)
    echo "fastai seed $s: $json"
    f_times+=("$("$REF_PY" -c 'import json,sys; print(json.loads(sys.argv[1])["seconds"])' "$json")")
    f_errs+=("$("$REF_PY" -c 'import json,sys; print(json.loads(sys.argv[1])["error_rate"])' "$json")")
  fi
done

mean() { awk '{s=0; for(i=1;i<=NF;i++) s+=$i; printf "%.4f", s/NF}' <<<"$*"; }
echo
echo "pets recipe, fine_tune($EPOCHS, freeze_epochs=$FREEZE_EPOCHS), seeds: $SEEDS"
printf "%-6s %12s %12s %12s %12s\n" seed kestrel_s kestrel_err fastai_s fastai_err
i=0
for s in $SEEDS; do
  printf "%-6s %12s %12s %12s %12s\n" "$s" "${k_times[$i]}" "${k_errs[$i]}" "${f_times[$i]:-n/a}" "${f_errs[$i]:-n/a}"
  i=$((i + 1))
done
km=$(mean "${k_times[@]}"); ke=$(mean "${k_errs[@]}")
if [ ${#f_times[@]} -gt 0 ]; then
  fm=$(mean "${f_times[@]}"); fe=$(mean "${f_errs[@]}")
  printf "%-6s %12s %12s %12s %12s\n" mean "$km" "$ke" "$fm" "$fe"
  echo "time ratio kestrel/fastai: $(awk -v a="$km" -v b="$fm" 'BEGIN{printf "%.3f", a/b}') (target <= 0.6); kestrel mean error target <= 0.32"
else
  printf "%-6s %12s %12s\n" mean "$km" "$ke"
  echo "fastai not run: no Python at $REF_PY (set KESTREL_REF_PYTHON)"
fi

echo
fips=""
if [ -x "$REF_PY" ]; then
  fips=$("$REF_PY" scripts/bench/fastai_pipeline.py "$SAMPLE" | awk '/^fastai_ips/{print $2}')
fi
KESTREL_FASTAI_PIPELINE_IPS=$fips cargo bench --profile dev --bench pipeline
