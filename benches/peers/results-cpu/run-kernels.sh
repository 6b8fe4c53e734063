#!/usr/bin/env bash
# Kernel benches of the CPU path and their numpy peers on the same file (train.npz of
# `generate --scale 1 --seed 0`, tiled to 1M and 10M rows), one after the other on an
# otherwise idle machine. Usage: run-kernels.sh DATA_DIR OUT_DIR (from the repo root).
set -x
D=$1
OUT=$2
export CONFORMAL_BENCH_DATA=$D/train.npz CONFORMAL_BENCH_SIZES=1000000,10000000
C="--sample-size 10 --warm-up-time 1 --measurement-time 3"
lscpu | grep 'Model name'; nproc; uptime; git rev-parse --short HEAD
cargo bench --bench softmax -- 'cpu/.*K=2$' $C
cargo bench --bench sort -- cpu $C
cargo bench --bench select -- cpu $C
cargo bench --bench pvalues -- cpu $C
cargo bench --bench temperature -- cpu $C
uptime
python3 benches/peers/numpy_kernels.py --data $D/train.npz --n 1000000 --repeat 7 --fit-repeat 3 --json $OUT/numpy-kernels-1M.json
python3 benches/peers/numpy_kernels.py --data $D/train.npz --n 10000000 --repeat 5 --fit-repeat 2 --json $OUT/numpy-kernels-10M.json
uptime
