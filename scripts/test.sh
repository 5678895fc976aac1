#!/usr/bin/env bash
# The whole test suite: installs libtorch when missing (scripts/setup.sh), then runs every
# test. Tests that need ../shared/data/oxford-pets-sample print why they are skipped when
# it is not there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo test --all-targets "$@"
