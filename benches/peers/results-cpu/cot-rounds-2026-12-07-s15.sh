#!/bin/bash
B=/tmp/s15b_bin
T="/usr/bin/time -f %e_s_%U_user_%M_KB"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB"
echo "binary: $(cd /work/main && git rev-parse --short HEAD)"
for round in 1 2 3; do
  echo "== round $round"
  echo "-- cot 10M K=10 (2 shards, reverse order)"; $T $B cot --calibration /tmp/k10c_cal.json /tmp/k10b/test_part1.npz /tmp/k10b/test_part0.npz --json /tmp/b15_k10c.json 2>&1 | tail -1; python3 -c "import json;o=json.load(open('/tmp/b15_k10c.json'));print('passes',o['passes'],'held_rows',o['held_rows'],'cot',o['cot'])"
  echo "-- cot 500K K=100"; $T $B cot --calibration /tmp/k100cal.json /tmp/k100/test.npz --json /tmp/b15_k100.json 2>&1 | tail -1; python3 -c "import json;o=json.load(open('/tmp/b15_k100.json'));print('passes',o['passes'],'held_rows',o['held_rows'],'cot',o['cot'])"
  echo "-- cot 2M K=10"; $T $B cot --calibration /tmp/k10cal.json /tmp/k10/test.npz --json /tmp/b15_k10.json 2>&1 | tail -1; python3 -c "import json;o=json.load(open('/tmp/b15_k10.json'));print('passes',o['passes'],'held_rows',o['held_rows'],'cot',o['cot'])"
  echo "-- evaluate 2M K=10 (in memory)"; $T $B evaluate --data /tmp/k10 --device cpu --json /tmp/b15_k10rep.json 2>&1 | tail -1
done
echo "== once: in-memory evaluate of the 10M K=10 and 500K K=100 targets"
$T $B evaluate --data /tmp/k10c --device cpu --json /tmp/b15_k10crep.json 2>&1 | tail -1
$T $B evaluate --data /tmp/k100 --device cpu --json /tmp/b15_k100rep.json 2>&1 | tail -1
python3 - <<'P'
import json
for rep, cot in [('/tmp/b15_k10crep.json','/tmp/b15_k10c.json'),('/tmp/b15_k100rep.json','/tmp/b15_k100.json'),('/tmp/b15_k10rep.json','/tmp/b15_k10.json')]:
    r=json.load(open(rep)); x=r['targets'][0]; o=json.load(open(cot))
    same = all(o['cot'][m]==x['estimates'][m]['COT'] for m in ('raw','ts'))
    same_g = all(g[m]==[q for q in x['groups']['hospital'] if q['id']==g['id']][0]['estimates'][m]['COT'] for g in o['groups']['hospital'] for m in ('raw','ts'))
    print(rep, 'target bit-identical', same, 'groups bit-identical', same_g, len(o['groups']['hospital']), 'groups')
P
