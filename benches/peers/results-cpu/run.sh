set -x
cd /work/wt-peers
lscpu | grep 'Model name'; nproc; uptime
python3 benches/peers/numpy_kernels.py --data /tmp/peers-data/train.npz --n 1000000 --repeat 5 --fit-repeat 3 --json /tmp/peers-res/numpy-kernels-1M.json
uptime
python3 benches/peers/numpy_kernels.py --data /tmp/peers-data/train.npz --n 10000000 --repeat 3 --fit-repeat 1 --json /tmp/peers-res/numpy-kernels-10M.json
uptime
python3 benches/peers/numpy_evaluate.py --data /tmp/peers-data --alpha 0.1,0.05 --repeat 3 --json /tmp/peers-res/numpy-report.json
uptime
for i in 1 2 3; do ./target/release/conformal-gpu evaluate --data /tmp/peers-data --device cpu --json /tmp/peers-res/crate-report-$i.json --alpha 0.1,0.05 > /dev/null; python3 -c "import json; print(json.load(open('/tmp/peers-res/crate-report-$i.json'))['timings_ms'])"; done
python3 benches/peers/compare_reports.py /tmp/peers-res/crate-report-1.json /tmp/peers-res/numpy-report.json --verbose
uptime
