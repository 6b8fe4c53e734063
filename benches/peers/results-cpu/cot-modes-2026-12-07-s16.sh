#!/bin/bash
# cot, both modes in one pass (new) against 6039c92 (old), interleaved; values compared.
T="/usr/bin/time -f %e_s_%U_user_%M_KB"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB; load $(cut -d' ' -f1 /proc/loadavg)"
for round in 1 2; do
  echo "== round $round"
  for B in /tmp/s15f_bin /tmp/s16e_bin; do
    tag=$(basename $B)
    echo "-- $tag cot 10M K=10 (2 shards, reverse)"; $T $B cot --calibration /tmp/k10c_cal.json /tmp/k10b/test_part1.npz /tmp/k10b/test_part0.npz --json /tmp/b16_${tag}_k10c.json 2>&1 | tail -1
    echo "-- $tag cot 500K K=100"; $T $B cot --calibration /tmp/k100cal.json /tmp/k100/test.npz --json /tmp/b16_${tag}_k100.json 2>&1 | tail -1
    echo "-- $tag cot 2M K=10"; $T $B cot --calibration /tmp/k10cal.json /tmp/k10/test.npz --json /tmp/b16_${tag}_k10.json 2>&1 | tail -1
    echo "-- $tag cot scale-1 unlabeled_train K=2 (1.8M rows, 33 groups)"; $T $B cot --calibration /tmp/s1cal.json /tmp/S1/unlabeled_train.npz --device cpu --json /tmp/b16_${tag}_s1.json 2>&1 | tail -1
  done
done
python3 - <<'P'
import json
for case in ('k10c','k100','k10','s1'):
    a=json.load(open(f'/tmp/b16_s15f_bin_{case}.json')); b=json.load(open(f'/tmp/b16_s16e_bin_{case}.json'))
    print(case, 'old passes', a['passes'], 'held', a['held_rows'], '| new passes', b['passes'], 'held', b['held_rows'],
          '| cot equal', a['cot']==b['cot'], 'groups equal', a['groups']==b['groups'])
P
