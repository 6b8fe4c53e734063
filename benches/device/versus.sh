#!/usr/bin/env bash
# `evaluate --device gpu` of two binaries on the same data, interleaved in the same run
# (issue 11: the device evaluation against an older commit). Wall time by /usr/bin/time;
# then one timed run of the new binary (CONFORMAL_GPU_TIMESTAMPS=1) for the kernel-time
# share and where it goes; then whether both reports hold the same numbers.
# Usage: benches/device/versus.sh OLD_BIN NEW_BIN DATA_DIR [ROUNDS]
# Build the old binary in its own target directory, e.g.
#   git worktree add /tmp/old 08de7ae && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/t-old cargo build --release)
set -euo pipefail
old=$1 new=$2 data=$3 rounds=${4:-5}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
declare -a to tn
run() { # BIN TAG
    /usr/bin/time -o "$out/time.txt" -f "%e %M" "$1" evaluate --data "$data" --device gpu \
        --json "$out/$2.json" >/dev/null 2>&1
    tail -1 "$out/time.txt"
}
# One untimed run each: the driver's shader cache and the page cache warm for both.
run "$old" old >/dev/null
run "$new" new >/dev/null
for r in $(seq "$rounds"); do
    s=$(run "$old" old); to+=("${s% *}")
    echo "round $r old: wall ${s% *} s, peak RSS ${s#* } KB"
    s=$(run "$new" new); tn+=("${s% *}")
    echo "round $r new: wall ${s% *} s, peak RSS ${s#* } KB"
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mo=$(med "${to[@]}") mn=$(med "${tn[@]}")
echo "median old: $mo s; median new: $mn s; speed-up: $(awk -v a="$mo" -v b="$mn" 'BEGIN {printf "%.2f", a/b}')x"
CONFORMAL_GPU_TIMESTAMPS=1 "$new" evaluate --data "$data" --device gpu --json "$out/timed.json" \
    2>&1 >/dev/null | grep -E '^(GPU kernel time|transfers)' || true
python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
t = json.load(open(f"{d}/timed.json"))
meta, total = t["meta"], t["timings_ms"]["total"]
print(f"kernel time {meta['gpu_kernel_ms']:.1f} ms of {total:.1f} ms total: "
      f"{100 * meta['gpu_kernel_ms'] / total:.0f}%")
old, new = (json.load(open(f"{d}/{n}.json")) for n in ("old", "new"))


def differ(a, b, path):
    """Paths where values differ; keys only one report has (fields added since) skipped."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in a.keys() & b.keys() for p in differ(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in differ(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


bad = differ(old["targets"], new["targets"], "targets") + differ(old.get("mae"), new.get("mae"), "mae")
print("numbers in targets and mae equal in both reports:", not bad, bad[:5])
PY
