#!/usr/bin/env bash
# kestrel vs fastai on the fastai book's pet-breeds recipe, whole commands, same photos,
# same fixed is_valid split, same machine and session:
#   EfficientNet-Lite0 (ImageNet weights), Resize(460), aug_transforms(224, min_scale 0.75),
#   bs 32, fine_tune(EPOCHS) at base_lr 2e-3, seeds SEEDS, CPU.
#
# kestrel: the whole `kestrel fine-tune` command from start to end (data, training,
# validation, export, interpretation, report), run under `env -i` (no LD_PRELOAD, no
# MALLOC_* variables: the allocator is the binary's own, and the bench prints it), plus
# its fine_tune-only time, the kernel share of the CPU time of its training epochs
# (getrusage) and its peak RSS.
# fastai: fine_tune(EPOCHS) wall time (the baseline of the checks) and the whole script.
# The checks (issue 13): kestrel whole command <= 0.45 x fastai fine_tune time (means over
# the seeds); kestrel's mean error no worse than fastai's by more than 2 photos of 74;
# kernel time < 5 % of the CPU time of every training epoch.
# fastai runs when its Python exists (KESTREL_REF_PYTHON, default the project's ref venv
# made by scripts/ref/make-venv.sh).
#
# Full run (≈ 3 × (1.5 + 4) minutes on a quiet 2-core machine):
#   scripts/bench/pets_vs_fastai.sh
# Smoke run:  SEEDS=1 EPOCHS=1 scripts/bench/pets_vs_fastai.sh
# Other options: PRECISION=auto|fp32|bf16 (kestrel's --precision, default auto), SKIP_PIPELINE=1.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$root/scripts/env.sh"
cd "$root"
SEEDS=${SEEDS:-"1 2 3"}
EPOCHS=${EPOCHS:-4}
PRECISION=${PRECISION:-auto}
SAMPLE=${KESTREL_PETS_SAMPLE:-"$root/../shared/data/oxford-pets-sample"}
REF_PY=${KESTREL_REF_PYTHON:-${KESTREL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/kestrel}/ref-venv/bin/python}
[ -f "$SAMPLE/labels.csv" ] || { echo "needs the pets sample at $SAMPLE (set KESTREL_PETS_SAMPLE)"; exit 1; }
cargo build --bin kestrel
kestrel="$CARGO_TARGET_DIR/debug/kestrel"
mkdir -p runs/bench
now() { date +%s.%N; }
clean_env=(env -i "PATH=/usr/bin:/bin" "HOME=$HOME")
[ -n "${KESTREL_HOME:-}" ] && clean_env+=("KESTREL_HOME=$KESTREL_HOME")

k_whole=(); k_fit=(); k_errs=(); k_kernel=(); k_rss=(); f_whole=(); f_fit=(); f_errs=()
for s in $SEEDS; do
  out=runs/bench/kestrel-seed$s
  t0=$(now)
  "${clean_env[@]}" "$kestrel" fine-tune --csv "$SAMPLE/labels.csv" --valid-col is_valid --arch efficientnet_lite0 \
    --presize 460 --size 224 --min-scale 0.75 --bs 32 --epochs "$EPOCHS" --freeze-epochs 1 --lr 2e-3 --tta false \
    --precision "$PRECISION" --seed "$s" --device cpu --out "$out" 2>&1 | tee "$out.log"
  t1=$(now)
  k_whole+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')")
  line=$(grep '^error_rate ' "$out.log")
  k_errs+=("$(awk '{print $2}' <<<"$line")")
  k_fit+=("$(sed -E 's/.*fine_tune ([0-9.]+) s.*/\1/' <<<"$line")")
  # The largest kernel share of any training epoch.
  k_kernel+=("$(grep '^epoch usage:' "$out.log" | sed -E 's/.*\(([0-9.]+)% kernel\).*/\1/' | sort -g | tail -1)")
  k_rss+=("$(grep '^training epochs:' "$out.log" | sed -E 's/.*peak RSS ([0-9.]+) GB.*/\1/')")
  grep '^training epochs:' "$out.log" | sed -E 's/.*(malloc: .*)/kestrel \1/'
  if [ -x "$REF_PY" ]; then
    t0=$(now)
    OMP_NUM_THREADS=2 "$REF_PY" scripts/bench/fastai_pets.py "$SAMPLE" "$s" "$EPOCHS" > "runs/bench/fastai-seed$s.log" 2>&1
    t1=$(now)
    f_whole+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')")
    json=$(grep -o '{"impl".*}' "runs/bench/fastai-seed$s.log" | tail -1)
    echo "fastai seed $s: $json"
    f_fit+=("$("$REF_PY" -c 'import json,sys; print(json.loads(sys.argv[1])["seconds"])' "$json")")
    f_errs+=("$("$REF_PY" -c 'import json,sys; print(json.loads(sys.argv[1])["error_rate"])' "$json")")
  fi
done

mean() { awk '{s=0; for(i=1;i<=NF;i++) s+=$i; printf "%.4f", s/NF}' <<<"$*"; }
max() { awk '{m=$1; for(i=2;i<=NF;i++) if($i>m) m=$i; print m}' <<<"$*"; }
echo
echo "pets recipe, fine_tune($EPOCHS, freeze_epochs=1), seeds: $SEEDS; kestrel --precision $PRECISION"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs (other work on the machine slows both sides)"
printf "%-5s %13s %11s %11s %9s %9s %12s %10s %10s\n" seed kestrel_whole kestrel_fit kestrel_err kernel% rss_GB fastai_whole fastai_fit fastai_err
i=0
for s in $SEEDS; do
  printf "%-5s %13s %11s %11s %9s %9s %12s %10s %10s\n" "$s" "${k_whole[$i]}" "${k_fit[$i]}" "${k_errs[$i]}" "${k_kernel[$i]}" \
    "${k_rss[$i]}" "${f_whole[$i]:-n/a}" "${f_fit[$i]:-n/a}" "${f_errs[$i]:-n/a}"
  i=$((i + 1))
done
kw=$(mean "${k_whole[@]}"); kf=$(mean "${k_fit[@]}"); ke=$(mean "${k_errs[@]}"); kk=$(max "${k_kernel[@]}"); kr=$(max "${k_rss[@]}")
if [ ${#f_fit[@]} -gt 0 ]; then
  fw=$(mean "${f_whole[@]}"); ff=$(mean "${f_fit[@]}"); fe=$(mean "${f_errs[@]}")
  printf "%-5s %13s %11s %11s %9s %9s %12s %10s %10s\n" mean "$kw" "$kf" "$ke" "$kk" "$kr" "$fw" "$ff" "$fe"
  echo "kestrel whole command / fastai fine_tune: $(awk -v a="$kw" -v b="$ff" 'BEGIN{printf "%.3f", a/b}') (check: <= 0.45)"
  echo "kestrel fine_tune / fastai fine_tune:     $(awk -v a="$kf" -v b="$ff" 'BEGIN{printf "%.3f", a/b}')"
  echo "kestrel whole / fastai whole script:      $(awk -v a="$kw" -v b="$fw" 'BEGIN{printf "%.3f", a/b}')"
  echo "error: kestrel $ke vs fastai $fe: $(awk -v a="$ke" -v b="$fe" 'BEGIN{d=(a-b)*74; printf "%+.1f photos of 74 (check: <= +2)", d}')"
else
  printf "%-5s %13s %11s %11s %9s %9s\n" mean "$kw" "$kf" "$ke" "$kk" "$kr"
  echo "fastai not run: no Python at $REF_PY (scripts/ref/make-venv.sh makes it; or set KESTREL_REF_PYTHON)"
fi
echo "kernel time, worst training epoch: $kk % of CPU time (check: < 5)"

if [ -z "${SKIP_PIPELINE:-}" ]; then
  echo
  fips=""
  if [ -x "$REF_PY" ]; then
    fips=$("$REF_PY" scripts/bench/fastai_pipeline.py "$SAMPLE" | awk '/^fastai_ips/{print $2}')
  fi
  KESTREL_FASTAI_PIPELINE_IPS=$fips cargo bench --profile dev --bench pipeline
fi
