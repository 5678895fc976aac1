#!/usr/bin/env bash
# Fuzzes kestrel's parsers of untrusted files with cargo-fuzz (libFuzzer) on the stable
# toolchain (--sanitizer none): the pickle VM, the zip .pth reader, the model file
# (safetensors header + metadata JSON), image decoding, the CSV/regex labellers,
# untar_data's extraction and kestrel-serve's request parsing. Not part of CI.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   # SECONDS (default 600) split among the targets
#
# Each target starts from a seed corpus of real files (examples/fuzz_seeds.rs: fixtures,
# a model file, small images of every format and pet photos, CSVs, tarballs) and counts
# its allocations (fuzz/src/lib.rs): one above 1 GiB is a crash, as is an input taking
# more than 1 s (-timeout=1). Findings land in fuzz/artifacts/<target>/; turn each into a
# regression test in tests/. The corpus grows in fuzz/corpus/<target>/ across runs.
set -euo pipefail
total=${1:-600}
shift || true
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=/dev/null
source "$root/scripts/env.sh"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
all=(pickle zip_pth model_file image labels untar serve_request)
[ $# -gt 0 ] && targets=("$@") || targets=("${all[@]}")

cargo run --quiet --example fuzz_seeds -- "$root/fuzz/corpus"
cd "$root/fuzz"
fuzz_target_dir="${KESTREL_FUZZ_TARGET_DIR:-$CARGO_TARGET_DIR-fuzz}"
export CARGO_TARGET_DIR="$fuzz_target_dir"
# The fuzz binaries get no rpath from kestrel's build.rs (it sets one for kestrel's own).
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cargo fuzz build -s none
per=$(( total / ${#targets[@]} ))
[ "$per" -ge 1 ] || per=1
status=0
summary=""
for t in "${targets[@]}"; do
    mkdir -p "artifacts/$t" "corpus/$t"
    log="artifacts/$t.log"
    echo "== $t: ${per} s"
    if cargo fuzz run -s none "$t" "corpus/$t" -- -max_total_time="$per" -timeout=1 -rss_limit_mb=4096 \
        -max_len=131072 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result="FAILED (see fuzz/$log and fuzz/artifacts/$t/)"
        status=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    summary+=$(printf '%-11s %10s executions in %4d s  %s' "$t" "${execs:-?}" "$per" "$result")$'\n'
done
printf '\n%s' "$summary"
exit $status
