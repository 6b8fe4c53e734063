#!/usr/bin/env bash
# Every test, Rust and Python, on a fresh machine: the README's test command.
#   1. cargo test --release (the crate; GPU tests on any Vulkan adapter, lavapipe included)
#   2. the CLI binary (the Python tests compare against its JSON)
#   3. .venv (created if missing) with the package built from source (pip install ./python),
#      pytest, ray, pandas, numpy and POT (the exact LP that COT is checked against); ruff
#      over python/
#   4. pytest python/tests
# Environment: CONFORMAL_GPU_REQUIRED=1 makes a missing GPU adapter fail the GPU tests
# instead of skipping them; PYTHON picks the interpreter for the venv (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

cargo test --release
# `cargo test` built the command-line binary the Python tests compare against (and the
# examples); a plain `cargo build` here would rebuild wgpu with other features.
test -x target/release/conformal-gpu || cargo build --release --bins

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q numpy pytest "ray[data]" pandas pyarrow pot ruff
# The extension builds in its own target directory (kept between runs).
CARGO_TARGET_DIR="$PWD/python/target" .venv/bin/python -m pip install -q ./python
.venv/bin/ruff check python
# From the repository root, so that `import conformal_gpu` is the installed package (with
# its extension), not the source folder python/conformal_gpu.
.venv/bin/python -m pytest -q -p no:cacheprovider python/tests
