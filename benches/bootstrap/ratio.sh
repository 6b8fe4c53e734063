#!/usr/bin/env bash
# The cost of bootstrap intervals (issue 13): `evaluate` with B = 0 and with B replicates
# on the same data, device and binary, in the same run, interleaved, wall time by
# /usr/bin/time. Usage: benches/bootstrap/ratio.sh DATA_DIR DEVICE B [ROUNDS]
# Prints one line per run and the ratio of the medians.
set -euo pipefail
data=$1 device=$2 b=$3 rounds=${4:-3}
bin=${CONFORMAL_GPU_BIN:-target/release/conformal-gpu}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
declare -a t0 tb
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq "$rounds"); do
    for reps in 0 "$b"; do
        /usr/bin/time -o "$out/time.txt" -f "%e %M" "$bin" evaluate --data "$data" \
            --device "$device" --bootstrap "$reps" --json "$out/report.json" >/dev/null 2>&1
        s=$(tail -1 "$out/time.txt")
        echo "round $r device $device B=$reps: wall ${s% *} s, peak RSS ${s#* } KB"
        if [ "$reps" = 0 ]; then t0+=("${s% *}"); else tb+=("${s% *}"); fi
    done
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
m0=$(med "${t0[@]}") mb=$(med "${tb[@]}")
echo "median B=0: $m0 s; median B=$b: $mb s; ratio: $(awk -v a="$mb" -v b="$m0" 'BEGIN {printf "%.1f", a/b}')"
