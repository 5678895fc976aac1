# Sourced by the scripts: runs scripts/setup.sh (a no-op when all is installed) and points
# cargo at libtorch and at a build folder shared by every clone on this machine.
bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
kestrel_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LIBTORCH
LIBTORCH=$(readlink -f "$kestrel_root/.libtorch")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${KESTREL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/kestrel}/target}
