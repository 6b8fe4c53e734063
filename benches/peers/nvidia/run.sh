#!/usr/bin/env bash
# Run THERE (the NVIDIA device machine, repo root, after prepare.sh here and with
# `carry: [".gpu"]`): every GPU row of BENCHMARKS.md, in parts that each fit one 10-minute
# call. Each part leaves two files in $OUT (or ./nvidia-out): PART.log and PART.tar.gz
# (JSON results, reports, criterion estimates); the device returns 8 files a call at most.
#   bash benches/peers/nvidia/run.sh kernels     # copy ceiling + criterion GPU benches, 1M..100M
#   bash benches/peers/nvidia/run.sh torch       # PyTorch CUDA peers, same sizes and file
#   bash benches/peers/nvidia/run.sh e2e         # the whole job, scale 1 and 10, GPU and CPU
set -uo pipefail
part=${1:?part: kernels, torch or e2e}
OUT=${OUT:-nvidia-out}
W=/tmp/nv-$part
mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/$part.log") 2>&1
trap 'tar -czf "$OUT/$part.tar.gz" -C /tmp "nv-$part"' EXIT
for f in .gpu/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
export PYTHONUNBUFFERED=1
[ -d .gpu/bin ] || tar -C .gpu -xJf .gpu/bin.tar.xz
B=.gpu/bin
date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
lscpu | grep 'Model name'; nproc; git rev-parse --short HEAD 2>/dev/null || true
D=/tmp/cg-data
[ -f $D/s1/.complete ] || $B/conformal-gpu generate --out $D/s1 --scale 1 --seed 0
SIZES=${SIZES:-1000000,10000000,100000000}
C="--sample-size 10 --warm-up-time 1 --measurement-time 3"
case $part in
kernels)
    export CONFORMAL_BENCH_DATA=$D/s1/train.npz CONFORMAL_BENCH_SIZES=$SIZES
    export CONFORMAL_BENCH_MAX_ELEMS=2000000000
    # softmax first: its start measures the copy-kernel ceiling the fractions use.
    $B/softmax --bench 'gpu' $C
    for b in sort select pvalues temperature; do $B/$b --bench 'gpu' $C; done
    cp -r target/criterion "$W/" 2>/dev/null || true
    ;;
torch)
    python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))'
    python3 benches/peers/torch_kernels.py --data $D/s1/train.npz --n 1e6,1e7,1e8 \
        --json "$W/torch-kernels.json"
    ;;
e2e)
    [ -f $D/s10/.complete ] || $B/conformal-gpu generate --out $D/s10 --scale 10 --seed 0
    for s in s1 s10; do
        for dev in gpu cpu; do
            for i in 1 2 3; do
                $B/conformal-gpu evaluate --data $D/$s --device $dev --alpha 0.1,0.05 \
                    --json "$W/report-$s-$dev-$i.json" > /dev/null &&
                python3 -c "import json,sys; print('$s $dev', json.load(open(sys.argv[1]))['timings_ms'])" \
                    "$W/report-$s-$dev-$i.json"
            done
        done
        python3 benches/peers/compare_reports.py "$W/report-$s-gpu-1.json" "$W/report-$s-cpu-1.json"
    done
    CONFORMAL_BENCH_SCALES=1,10 $B/evaluate --bench $C
    cp -r target/criterion "$W/" 2>/dev/null || true
    ;;
esac
date -u
