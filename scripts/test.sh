#!/usr/bin/env bash
# The whole test suite: installs libtorch when missing (scripts/setup.sh), then runs every
# test. Tests that need ../shared/data/oxford-pets-sample print why they are skipped when
# it is not there. Build outputs go to a cache folder shared by every clone on this
# machine (override with CARGO_TARGET_DIR), so a fresh clone rebuilds only kestrel itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
cargo test --workspace --lib --bins --tests --examples "$@"
# Benchmarks are compiled, not run here (they take minutes): `cargo bench --profile dev`.
cargo test --benches --no-run
