#!/bin/bash
# cot K > 2: collect passes through Backend::cot_collect (s17a: CPU mirror / lavapipe kernel) against adc275c (host DualTally::add), interleaved.
T="/usr/bin/time -f %e_s_%U_user_%M_KB"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB; load $(cut -d' ' -f1 /proc/loadavg)"
export XDG_RUNTIME_DIR=/tmp
for round in 1 2; do
  echo "== round $round"
  for B in /tmp/s16e_bin /tmp/s17a_bin; do
    tag=$(basename $B)
    echo "-- $tag cpu cot 10M K=10 (2 shards, reverse)"; $T $B cot --calibration /tmp/k10c_cal.json /tmp/k10b/test_part1.npz /tmp/k10b/test_part0.npz --device cpu --json /tmp/b17_${tag}_k10c.json 2>&1 | tail -1
    echo "-- $tag cpu cot 500K K=100"; $T $B cot --calibration /tmp/k100cal.json /tmp/k100/test.npz --device cpu --json /tmp/b17_${tag}_k100.json 2>&1 | tail -1
    echo "-- $tag cpu cot 2M K=10"; $T $B cot --calibration /tmp/k10cal.json /tmp/k10/test.npz --device cpu --json /tmp/b17_${tag}_k10.json 2>&1 | tail -1
  done
  B=/tmp/s17a_bin; tag=s17a_gpu
  echo "-- $tag lavapipe cot 500K K=100"; $T $B cot --calibration /tmp/k100cal.json /tmp/k100/test.npz --device gpu --json /tmp/b17_${tag}_k100.json 2>&1 | tail -1
  echo "-- $tag lavapipe cot 2M K=10"; $T $B cot --calibration /tmp/k10cal.json /tmp/k10/test.npz --device gpu --json /tmp/b17_${tag}_k10.json 2>&1 | tail -1
done
python3 - <<'P'
import json
for case in ('k10c','k100','k10'):
    a=json.load(open(f'/tmp/b17_s16e_bin_{case}.json')); b=json.load(open(f'/tmp/b17_s17a_bin_{case}.json'))
    print(case, 'adc275c passes', a['passes'], 'held', a['held_rows'], '| s17a cpu passes', b['passes'], 'held', b['held_rows'],
          '| cot equal', a['cot']==b['cot'], 'groups equal', a['groups']==b['groups'])
for case in ('k100','k10'):
    a=json.load(open(f'/tmp/b17_s16e_bin_{case}.json')); b=json.load(open(f'/tmp/b17_s17a_gpu_{case}.json'))
    print(case, 'lavapipe passes', b['passes'], 'held', b['held_rows'], 'device', b['device'], '| cot equal', a['cot']==b['cot'], 'groups equal', a['groups']==b['groups'])
P
