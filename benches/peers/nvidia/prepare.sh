#!/usr/bin/env bash
# Run HERE (the build machine) before using the NVIDIA device machine: builds the CLI and
# the criterion benches, copies stripped executables under stable names and the Vulkan
# loader into .gpu/ (ignored by git; carried with `carry: [".gpu"]`, 64 MiB at most), so
# benches/peers/nvidia/run.sh can run there without Rust. Usage, from the repo root:
#   bash benches/peers/nvidia/prepare.sh
set -euo pipefail
ex="$(git rev-parse --git-dir)/info/exclude"
mkdir -p "$(dirname "$ex")"
grep -qx '/.gpu/' "$ex" 2>/dev/null || echo /.gpu/ >> "$ex"
rm -rf .gpu && mkdir -p .gpu/bin
(cd .gpu && apt-get download libvulkan1 >/dev/null)
cargo build --release --bin conformal-gpu
cp target/release/conformal-gpu .gpu/bin/
# The bench executables cargo just built (one per [[bench]]), by name.
cargo bench --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and "bench" in m["target"]["kind"] and m.get("executable"):
        shutil.copy(m["executable"], ".gpu/bin/" + m["target"]["name"])
'
strip .gpu/bin/*
# Compressed to stay well inside the carry limit; run.sh unpacks it.
tar -C .gpu -cJf .gpu/bin.tar.xz bin && rm -rf .gpu/bin
du -sh .gpu; ls -la .gpu
