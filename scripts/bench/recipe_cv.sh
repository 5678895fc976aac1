#!/usr/bin/env bash
# Recipe cross-validation (issue 14): which training options beat the chapter-5 recipe?
#
# - 5-fold stratified cross-validation of the pets sample (370 photos) × seeds, so every
#   photo is predicted once per seed (fold CSVs with an is_valid column are generated in
#   $OUT/folds/foldK/labels.csv, images linked);
# - one `kestrel fine-tune` per (recipe, fold, seed); each writes $OUT/runs/RECIPE/fK-sS/
#   (summary.json: error_rate, error_rate_tta, fit_secs, calibration; wall.txt: seconds of
#   the whole command) and is SKIPPED when those files exist, so the protocol spans
#   several sittings: run the script again to continue, delete a folder to redo a run;
# - fastai 2.8.12 on fold 0 × the first seed as a sanity row, when the reference venv of
#   scripts/ref/make-venv.sh exists (KESTREL_REF_PYTHON);
# - a confirmation run on Caltech-101's is_valid split for CALTECH_RECIPES (subsampled with
#   CALTECH_TRAIN_PER_CLASS / CALTECH_VALID_N, stated in the table);
# - temperature scaling pooled over the CV (CAL_RECIPE's runs): each run's model predicts its
#   fold's validation photos; T is cross-fitted on halves of each run's photos and the ECE
#   (15 bins) and NLL are measured on all runs' photos together (740 predictions with 2
#   seeds), since 74 photos are too few for a 15-bin ECE;
# - the --min-prob check: a pets model (OOD_RECIPE, fold 0, first seed) predicting
#   CALTECH_OOD_N Caltech-101 photos (out of distribution) and its own validation photos,
#   the share answered `unknown` at several P;
# - prints the table: recipe, mean error ± std over folds × seeds, TTA error, ECE before →
#   after temperature scaling (2-fold cross-fitted on each validation set), fine_tune and
#   wall seconds, runs done.
#
# Baseline = the chapter-5 adaptation: EfficientNet-Lite0, Resize(460) presize,
# aug_transforms(224, min_scale 0.75), bs 32, fine_tune(4) at 2e-3 (freeze_epochs 1).
# Every other recipe is the baseline with one change. "same time" recipes get
# --time = the baseline's fine_tune seconds of the same fold and seed.
#
# Whole protocol: hours of CPU (each pets run ≈ 1.5–3 min on 2 cores, ~15 recipes × 10).
# Smoke run (what fits in minutes):
#   FOLDS=0 SEEDS=1 RECIPES="baseline label_smoothing" CALTECH_RECIPES= CALTECH_OOD_N=0 scripts/bench/recipe_cv.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$root/scripts/env.sh"
cd "$root"
SAMPLE=${KESTREL_PETS_SAMPLE:-"$root/../shared/data/oxford-pets-sample"}
CALTECH=${KESTREL_CALTECH:-"$root/../shared/data/caltech101"}
OUT=${RECIPE_CV_OUT:-"$root/runs/recipe_cv"}
FOLDS=${FOLDS:-"0 1 2 3 4"}
SEEDS=${SEEDS:-"1 2"}
RECIPES=${RECIPES:-"baseline default lite0_f2_time200_tta lite2_f2_time200_tta lite1_same_time lite2_same_time label_smoothing mixup cutmix ema tta presize_320 presize_224_squish min_scale_0.35 lr_mult_10 lr_mult_1000 wd_0.1 wd_0 epochs_8 progressive_resizing"}
CALTECH_RECIPES=${CALTECH_RECIPES-"baseline default"}
CALTECH_TRAIN_PER_CLASS=${CALTECH_TRAIN_PER_CLASS:-0}   # 0: every training photo
CALTECH_VALID_N=${CALTECH_VALID_N:-0}                   # 0: the whole is_valid split (3,049)
CALTECH_OOD_N=${CALTECH_OOD_N:-300}
OOD_RECIPE=${OOD_RECIPE:-default}
CAL_RECIPE=${CAL_RECIPE:-default}
REF_PY=${KESTREL_REF_PYTHON:-${KESTREL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/kestrel}/ref-venv/bin/python}
[ -f "$SAMPLE/labels.csv" ] || { echo "needs the pets sample at $SAMPLE (set KESTREL_PETS_SAMPLE)"; exit 1; }
# KESTREL_BIN: a kestrel binary to use instead of building this checkout's (to keep one
# binary across the sittings of the protocol while the sources change).
if [ -n "${KESTREL_BIN:-}" ]; then
  kestrel=$KESTREL_BIN
else
  cargo build --bin kestrel
  kestrel="$CARGO_TARGET_DIR/debug/kestrel"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$OUT/runs"

# ---------------------------------------------------------------- folds
# Stratified: per breed, photos in a seeded random order dealt round-robin to the 5 folds
# (the starting fold rotates per breed so the folds have 74 photos each).
if [ ! -f "$OUT/folds/.done" ]; then
  python3 - "$SAMPLE" "$OUT/folds" <<'EOF'
import csv, os, random, sys
sample, out = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(os.path.join(sample, "labels.csv"))))
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r["fname"])
fold_of, k = {}, 0
for label in sorted(by):
    names = sorted(by[label])
    random.Random(f"recipe-cv-{label}").shuffle(names)
    for n in names:
        fold_of[n] = k % 5
        k += 1
for f in range(5):
    d = os.path.join(out, f"fold{f}")
    os.makedirs(d, exist_ok=True)
    link = os.path.join(d, "images")
    if not os.path.islink(link):
        os.symlink(os.path.abspath(os.path.join(sample, "images")), link)
    with open(os.path.join(d, "labels.csv.tmp"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["fname", "label", "is_valid"])
        for r in rows:
            w.writerow([r["fname"], r["label"], "true" if fold_of[r["fname"]] == f else "false"])
    os.replace(os.path.join(d, "labels.csv.tmp"), os.path.join(d, "labels.csv"))
    print(f"fold {f}: {sum(1 for r in rows if fold_of[r['fname']] == f)} validation photos")
EOF
  touch "$OUT/folds/.done"
fi

# ---------------------------------------------------------------- recipes
# BASE is --flag value pairs; with_base FLAGS... prints (NUL-separated) BASE without the
# pairs whose flag FLAGS gives again (clap refuses a repeated option), and without
# --epochs when FLAGS has --time (which replaces it), then FLAGS.
with_base() {
  local i
  for ((i = 0; i < ${#BASE[@]}; i += 2)); do
    [[ " $* " == *" ${BASE[i]} "* ]] && continue
    [[ ${BASE[i]} == --epochs && " $* " == *" --time "* ]] && continue
    printf '%s\0%s\0' "${BASE[i]}" "${BASE[i+1]}"
  done
  [ $# -eq 0 ] || printf '%s\0' "$@"
}
BASE=(--arch efficientnet_lite0 --presize 460 --size 224 --min-scale 0.75 --bs 32 --epochs 4 --freeze-epochs 1
      --lr 2e-3 --tta false --device cpu)

# The flags of RECIPE for fold $2 seed $3 (they replace the baseline's of the same name), or
# "SKIP reason" for a recipe kestrel cannot run yet.
recipe_flags() {
  local r=$1 f=$2 s=$3
  case $r in
    baseline) echo "" ;;
    # kestrel's default recipe, chosen on this protocol (README "Training recipe"): what
    # `kestrel fine-tune` runs without options (tests/recipe.rs pins those defaults).
    default) echo "--arch efficientnet_lite2 --freeze-epochs 2 --epochs 7 --tta" ;;
    lite1_same_time|lite2_same_time)
      local b="$OUT/runs/baseline/f$f-s$s/summary.json"
      [ -f "$b" ] || { echo "SKIP needs the baseline run first"; return; }
      local secs; secs=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["fit_secs"]))' "$b")
      echo "--arch efficientnet_${r%%_*} --time ${secs}s" ;;
    label_smoothing) echo "--label-smoothing 0.1" ;;
    mixup) echo "--mixup 0.4" ;;
    cutmix) echo "--cutmix 1.0" ;;
    ema) echo "--ema 0.999" ;;
    tta) echo "--tta" ;;
    presize_320) echo "--presize 320" ;;
    presize_224_squish) echo "SKIP kestrel fine-tune has no --resize-method yet" ;;
    min_scale_0.35) echo "--min-scale 0.35" ;;
    lr_mult_10) echo "--lr-mult 10" ;;
    lr_mult_1000) echo "--lr-mult 1000" ;;
    wd_0.1) echo "--wd 0.1" ;;
    wd_0) echo "--wd 0" ;;
    epochs_8) echo "--epochs 8" ;;
    lite0_f2_time200_tta) echo "--freeze-epochs 2 --time 200s --tta" ;;
    lite2_f2_time200_tta) echo "--arch efficientnet_lite2 --freeze-epochs 2 --time 200s --tta" ;;
    progressive_resizing) echo "SKIP progressive resizing (fastai book ch. 7) is not implemented" ;;
    *) echo "SKIP unknown recipe" ;;
  esac
}

run_one() {  # recipe fold seed
  local r=$1 f=$2 s=$3 dir="$OUT/runs/$1/f$2-s$3"
  if [ -f "$dir/summary.json" ] && [ -f "$dir/wall.txt" ]; then return; fi
  local flags; flags=$(recipe_flags "$r" "$f" "$s")
  if [[ $flags == SKIP* ]]; then echo "skip $r f$f s$s: ${flags#SKIP }"; return; fi
  mkdir -p "$dir"
  echo "$flags" > "$dir/flags.txt"
  echo "=== $r fold $f seed $s: ${flags:-(baseline)}"
  local t0 t1
  t0=$(date +%s.%N)
  local args
  # shellcheck disable=SC2086
  mapfile -d '' args < <(with_base $flags)
  if ! "$kestrel" fine-tune --csv "$OUT/folds/fold$f/labels.csv" --valid-col is_valid --seed "$s" "${args[@]}" \
        --out "$dir" > "$dir/log.txt" 2>&1; then
    echo "FAILED: see $dir/log.txt"; tail -5 "$dir/log.txt"; return
  fi
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f\n", b-a}' > "$dir/wall.txt.tmp" && mv "$dir/wall.txt.tmp" "$dir/wall.txt"
  grep -E '^error_rate' "$dir/log.txt" || true
}

for r in $RECIPES; do
  for f in $FOLDS; do
    for s in $SEEDS; do
      run_one "$r" "$f" "$s"
    done
  done
done

# ---------------------------------------------------------------- fastai sanity row
first_fold=${FOLDS%% *}; first_seed=${SEEDS%% *}
fdir="$OUT/runs/fastai/f$first_fold-s$first_seed"
if [ -x "$REF_PY" ] && [ ! -f "$fdir/result.json" ]; then
  mkdir -p "$fdir"
  echo "=== fastai fold $first_fold seed $first_seed"
  t0=$(date +%s.%N)
  if "$REF_PY" scripts/bench/fastai_pets.py "$OUT/folds/fold$first_fold" "$first_seed" 4 > "$fdir/log.txt" 2>&1; then
    t1=$(date +%s.%N)
    grep -o '{"impl".*}' "$fdir/log.txt" | tail -1 > "$fdir/result.json.tmp" && mv "$fdir/result.json.tmp" "$fdir/result.json"
    awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f\n", b-a}' > "$fdir/wall.txt"
  else
    echo "fastai FAILED: see $fdir/log.txt"
  fi
fi

# ---------------------------------------------------------------- Caltech-101 confirmation
if [ -n "$CALTECH_RECIPES" ] && [ -f "$CALTECH/labels.csv" ]; then
  cdir="$OUT/caltech"
  mkdir -p "$cdir"
  if [ ! -f "$cdir/labels.csv" ]; then
    python3 - "$CALTECH" "$cdir" "$CALTECH_TRAIN_PER_CLASS" "$CALTECH_VALID_N" <<'EOF'
import csv, os, random, sys
src, out, per_class, valid_n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = list(csv.DictReader(open(os.path.join(src, "labels.csv"))))
rng = random.Random("recipe-cv-caltech")
train = [r for r in rows if r["is_valid"] != "true"]
valid = [r for r in rows if r["is_valid"] == "true"]
if per_class:
    by = {}
    for r in train:
        by.setdefault(r["label"], []).append(r)
    train = [r for k in sorted(by) for r in rng.sample(by[k], min(per_class, len(by[k])))]
if valid_n:
    valid = rng.sample(valid, min(valid_n, len(valid)))
labels = {r["label"] for r in train}
valid = [r for r in valid if r["label"] in labels]
link = os.path.join(out, "images")
if not os.path.islink(link):
    os.symlink(os.path.abspath(os.path.join(src, "images")), link)
with open(os.path.join(out, "labels.csv.tmp"), "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["fname", "label", "is_valid"])
    for r in train: w.writerow([r["fname"], r["label"], "false"])
    for r in valid: w.writerow([r["fname"], r["label"], "true"])
os.replace(os.path.join(out, "labels.csv.tmp"), os.path.join(out, "labels.csv"))
with open(os.path.join(out, "split.txt"), "w") as fh:
    fh.write(f"{len(train)} training / {len(valid)} validation photos (train per class {per_class or 'all'}, valid {valid_n or 'all'})\n")
EOF
  fi
  for r in $CALTECH_RECIPES; do
    dir="$cdir/runs/$r-s$first_seed"
    [ -f "$dir/summary.json" ] && [ -f "$dir/wall.txt" ] && continue
    flags=$(recipe_flags "$r" "$first_fold" "$first_seed")
    [[ $flags == SKIP* ]] && flags=""
    mkdir -p "$dir"
    echo "=== caltech $r: $(cat "$cdir/split.txt")"
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    mapfile -d '' args < <(with_base $flags)
    if "$kestrel" fine-tune --csv "$cdir/labels.csv" --valid-col is_valid --seed "$first_seed" "${args[@]}" \
         --skip-bad --out "$dir" > "$dir/log.txt" 2>&1; then
      t1=$(date +%s.%N)
      awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f\n", b-a}' > "$dir/wall.txt"
    else
      echo "FAILED: see $dir/log.txt"; tail -5 "$dir/log.txt"
    fi
  done
fi

# ---------------------------------------------------------------- pooled calibration
for f in $FOLDS; do
  for s in $SEEDS; do
    d="$OUT/runs/$CAL_RECIPE/f$f-s$s"
    [ -f "$d/model.safetensors" ] && [ ! -f "$d/valid_preds.jsonl" ] || continue
    awk -F, 'NR>1 { sub(/\r$/, "") } NR>1 && $3=="true" {print $1}' "$OUT/folds/fold$f/labels.csv" | sed 's|^|'"$OUT/folds/fold$f"'/|' > "$d/valid.txt"
    xargs -a "$d/valid.txt" -d '\n' "$kestrel" predict "$d/model.safetensors" --json --topk 1000 --min-prob 0 --device cpu \
      > "$d/valid_preds.jsonl.tmp" && mv "$d/valid_preds.jsonl.tmp" "$d/valid_preds.jsonl"
  done
done

# ---------------------------------------------------------------- predict --min-prob on out-of-distribution photos
model="$OUT/runs/$OOD_RECIPE/f$first_fold-s$first_seed/model.safetensors"
ood="$OUT/ood/$OOD_RECIPE-f$first_fold-s$first_seed"
if [ "$CALTECH_OOD_N" -gt 0 ] && [ -f "$model" ] && [ -f "$CALTECH/labels.csv" ] && [ ! -f "$ood/caltech.jsonl" ]; then
  mkdir -p "$ood"
  python3 - "$CALTECH" "$CALTECH_OOD_N" > "$ood/caltech.txt" <<'EOF'
import csv, os, random, sys
rows = [r for r in csv.DictReader(open(os.path.join(sys.argv[1], "labels.csv")))]
for r in random.Random("recipe-cv-ood").sample(rows, min(int(sys.argv[2]), len(rows))):
    print(os.path.join(sys.argv[1], r["fname"]))
EOF
  awk -F, 'NR>1 { sub(/\r$/, "") } NR>1 && $3=="true" {print $1","$2}' "$OUT/folds/fold$first_fold/labels.csv" > "$ood/pets_valid.csv"
  sed 's|^|'"$SAMPLE"'/|; s|,.*||' "$ood/pets_valid.csv" > "$ood/pets.txt"
  # --min-prob 0: every answer with its probability; the shares at each P are computed below.
  xargs -a "$ood/pets.txt" -d '\n' "$kestrel" predict "$model" --json --min-prob 0 --device cpu > "$ood/pets.jsonl.tmp" && mv "$ood/pets.jsonl.tmp" "$ood/pets.jsonl"
  xargs -a "$ood/caltech.txt" -d '\n' "$kestrel" predict "$model" --json --min-prob 0 --device cpu > "$ood/caltech.jsonl.tmp" && mv "$ood/caltech.jsonl.tmp" "$ood/caltech.jsonl"
fi

# ---------------------------------------------------------------- table
python3 - "$OUT" "$RECIPES" "$FOLDS" "$SEEDS" <<'EOF'
import json, os, statistics, sys
out, recipes, folds, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
def ms(v):
    if not v: return "n/a"
    return f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"
def mean(v, fmt="{:.0f}"):
    return fmt.format(statistics.mean(v)) if v else "n/a"
print()
print(f"pets sample, 5-fold stratified CV (folds {' '.join(folds)}) × seeds {' '.join(seeds)}; mean ± std over runs")
hdr = f"{'recipe':<22} {'error':>17} {'TTA error':>17} {'ECE before→after':>18} {'fit s':>7} {'wall s':>7} {'runs':>5}"
print(hdr); print("-" * len(hdr))
base = None
for r in recipes:
    errs, tta, eb, ea, fit, wall, counted = [], [], [], [], [], [], []
    for f in folds:
        for s in seeds:
            d = os.path.join(out, "runs", r, f"f{f}-s{s}")
            try:
                j = json.load(open(os.path.join(d, "summary.json"))); w = float(open(os.path.join(d, "wall.txt")).read())
            except (OSError, ValueError):
                continue
            errs.append(j["error_rate"]); fit.append(j["fit_secs"]); wall.append(w)
            if j.get("error_rate_tta") is not None: tta.append(j["error_rate_tta"])
            try:
                uses_tta = "--tta" in open(os.path.join(d, "flags.txt")).read().split()
            except OSError:
                uses_tta = False
            counted.append(j["error_rate_tta"] if uses_tta else j["error_rate"])
            c = j.get("calibration")
            if c: eb.append(c["ece_before"]); ea.append(c["ece_after_crossfit"])
    ece = f"{statistics.mean(eb):.3f}→{statistics.mean(ea):.3f}" if eb else "n/a"
    rel = ""
    # A recipe with --tta answers with TTA: its TTA error is the one compared.
    if r == "baseline" and counted: base = statistics.mean(counted)
    elif base and counted: rel = f"  ({(statistics.mean(counted) / base - 1) * 100:+.0f} % errors{', with TTA' if counted != errs else ''})"
    print(f"{r:<22} {ms(errs):>17} {ms(tta):>17} {ece:>18} {mean(fit):>7} {mean(wall):>7} {len(errs):>3}/{len(folds) * len(seeds)}{rel}")
fd = [d for d in sorted(os.listdir(os.path.join(out, "runs", "fastai")))] if os.path.isdir(os.path.join(out, "runs", "fastai")) else []
for d in fd:
    try:
        j = json.load(open(os.path.join(out, "runs", "fastai", d, "result.json"))); w = open(os.path.join(out, "runs", "fastai", d, "wall.txt")).read().strip()
        print(f"{'fastai 2.8.12 (' + d + ')':<22} {j['error_rate']:>17.4f} {'':>17} {'':>18} {j['seconds']:>7.0f} {float(w):>7.0f}   1")
    except (OSError, ValueError, KeyError):
        pass
cal = os.path.join(out, "caltech")
if os.path.isdir(os.path.join(cal, "runs")):
    print()
    print("Caltech-101 is_valid split: " + open(os.path.join(cal, "split.txt")).read().strip())
    for d in sorted(os.listdir(os.path.join(cal, "runs"))):
        try:
            j = json.load(open(os.path.join(cal, "runs", d, "summary.json"))); w = float(open(os.path.join(cal, "runs", d, "wall.txt")).read())
        except (OSError, ValueError):
            continue
        c = j.get("calibration") or {}
        tta = f" (TTA {j['error_rate_tta']:.4f})" if j.get("error_rate_tta") is not None else ""
        print(f"{d:<22} error {j['error_rate']:.4f}{tta}  ECE {c.get('ece_before', float('nan')):.3f}→{c.get('ece_after_crossfit', float('nan')):.3f}  fit {j['fit_secs']:.0f} s  wall {w:.0f} s")
for d in sorted(os.listdir(os.path.join(out, "ood"))) if os.path.isdir(os.path.join(out, "ood")) else []:
    p = os.path.join(out, "ood", d)
    try:
        pets = [json.loads(l) for l in open(os.path.join(p, "pets.jsonl"))]
        calt = [json.loads(l) for l in open(os.path.join(p, "caltech.jsonl"))]
        truth = dict(l.strip().split(",") for l in open(os.path.join(p, "pets_valid.csv")))
    except OSError:
        continue
    pets = [x for x in pets if "top" in x]; calt = [x for x in calt if "top" in x]
    print()
    print(f"predict --min-prob P with the pets model {d} (calibrated probabilities): share answered `unknown`")
    print(f"{'P':>5} {'Caltech-101 (' + str(len(calt)) + ', out of distribution)':>40} {'pets valid (' + str(len(pets)) + ')':>18} {'pets valid, right answers lost':>32}")
    def right(x):
        fn = os.path.relpath(x["file"], os.path.dirname(os.path.dirname(x["file"])))
        return truth.get(fn) == x["top"][0]["label"]
    n_right = sum(right(x) for x in pets)
    for P in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        u = lambda xs: sum(x["top"][0]["prob"] < P for x in xs) / max(len(xs), 1)
        lost = sum(right(x) and x["top"][0]["prob"] < P for x in pets) / max(n_right, 1)
        print(f"{P:>5.1f} {u(calt):>40.3f} {u(pets):>18.3f} {lost:>32.3f}")
EOF

# ---------------------------------------------------------------- pooled calibration table
python3 - "$OUT" "$CAL_RECIPE" "$FOLDS" "$SEEDS" <<'EOF'
# Temperature scaling pooled over the CV runs of one recipe. `predict` gives the
# probabilities scaled by the run's stored temperature T (softmax(z / T)); T · log p
# recovers the logits z up to a constant, so the plain softmax is softmax(T · log p).
import json, math, os, sys
out, recipe, folds, seeds = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
def softmax(z):
    m = max(z); e = [math.exp(v - m) for v in z]; t = sum(e); return [v / t for v in e]
def nll_at(items, t):
    return sum(-math.log(max(softmax([v / t for v in z])[y], 1e-12)) for z, y in items) / len(items)
def fit_t(items):  # golden-section search of log T in [log 0.05, log 20]: the 1-D NLL fit
    a, b = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - g * (b - a), a + g * (b - a)
        if nll_at(items, math.exp(c)) < nll_at(items, math.exp(d)): b = d
        else: a = c
    return math.exp((a + b) / 2)
def ece(rows, bins=15):  # rows: (confidence, correct); Guo et al. 2017, equal-width bins
    tot = 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        sel = [(c, ok) for c, ok in rows if lo < c <= hi or (k == 0 and c == 0)]
        if sel: tot += len(sel) / len(rows) * abs(sum(ok for _, ok in sel) / len(sel) - sum(c for c, _ in sel) / len(sel))
    return tot
before, after, n_runs = [], [], 0
for f in folds:
    for s in seeds:
        d = os.path.join(out, "runs", recipe, f"f{f}-s{s}")
        try:
            preds = [json.loads(l) for l in open(os.path.join(d, "valid_preds.jsonl"))]
            t_run = json.load(open(os.path.join(d, "summary.json")))["calibration"]["temperature"]
            truth = {}
            for r in open(os.path.join(out, "folds", f"fold{f}", "labels.csv")).read().splitlines()[1:]:
                fn, label, _ = r.split(","); truth[os.path.basename(fn)] = label
        except (OSError, ValueError, KeyError, TypeError):
            continue
        preds = [p for p in preds if "top" in p]
        vocab = sorted({t["label"] for p in preds for t in p["top"]})
        items = []
        for p in preds:
            lp = {t["label"]: math.log(max(t["prob"], 1e-30)) for t in p["top"]}
            items.append(([t_run * lp[c] for c in vocab], vocab.index(truth[os.path.basename(p["file"])])))
        n_runs += 1
        halves = (items[0::2], items[1::2])
        temps = (fit_t(halves[1]), fit_t(halves[0]))  # each half scaled by the other half's T
        for h, t in zip(halves, temps):
            for z, y in h:
                p0, p1 = softmax(z), softmax([v / t for v in z])
                before.append((max(p0), p0.index(max(p0)) == y, -math.log(max(p0[y], 1e-12))))
                after.append((max(p1), p1.index(max(p1)) == y, -math.log(max(p1[y], 1e-12))))
if before:
    print()
    print(f"temperature scaling, recipe {recipe}, pooled over {n_runs} CV runs ({len(before)} validation predictions), "
          f"T cross-fitted on halves of each run: ECE (15 bins) {ece([(c, ok) for c, ok, _ in before]):.4f} → "
          f"{ece([(c, ok) for c, ok, _ in after]):.4f}, NLL {sum(x for *_, x in before) / len(before):.4f} → "
          f"{sum(x for *_, x in after) / len(after):.4f}")
EOF
