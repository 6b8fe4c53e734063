#!/usr/bin/env python3
"""COT on a Ray dataset two ways, on the same blocks of a local cluster: the protocol of
passes (`conformal_gpu.ray.cot`: only parts cross to the driver) against a tally of
every block merged on the cluster and reported on the driver (`conformal_gpu.ray.tally`
then `Calibration.report`: a tally carries its rows for COT, so the merged tally holds
the whole target). Both give the same COT bits (checked).

    .venv/bin/python benches/peers/ray_cot.py --data DIR [--target unlabeled_train]
        [--blocks 16] [--rounds 3] [--cpus 2]

DIR holds `id_val.npz` (the source) and the target's `.npz` (logits; hospital and slide
where present).
Per round and way: wall seconds (driver), the bytes of every object the driver receives
(pickled merged parts, or the pickled merged tally) and the largest of them. The
driver's peak RSS is the process's (both ways run in it, so it is reported once at the
end, with the way that ran first).
"""

import argparse
import pickle
import resource
import statistics
import time

import conformal_gpu as cg
import conformal_gpu.ray as cgr
import numpy as np
import ray


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--target", default="unlabeled_train")
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    src = np.load(f"{args.data}/id_val.npz")
    cal = cg.Calibration.fit(src["logits"], src["labels"], device="cpu")
    t = np.load(f"{args.data}/{args.target}.npz")
    groups = tuple(g for g in ("hospital", "slide") if g in t.files)
    arrays = {k: t[k] for k in ("logits", *groups)}
    n = len(arrays["logits"])
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = ray.data.from_numpy(np.arange(n)).repartition(args.blocks)

    def rows(batch):
        idx = batch["data"]
        return {k: v[idx] for k, v in arrays.items()}

    ds = ds.map_batches(rows, batch_format="numpy").materialize()
    print(f"target {args.target}: {n} rows, K = {cal.k}, {ds.num_blocks()} blocks, "
          f"{args.cpus} CPUs")

    def runs():
        for r in range(args.rounds):
            for way in ("passes", "tally") if r % 2 == 0 else ("tally", "passes"):
                received: list[int] = []
                t0 = time.perf_counter()
                if way == "passes":
                    out = cgr.cot(cal, ds, groups=groups, device="cpu",
                                  received=received)
                    cot = out["cot"]
                else:
                    tally = cgr.tally(cal, ds, name=args.target, groups=groups,
                                      device="cpu")
                    received.append(len(pickle.dumps(tally)))
                    rep = cal.report({args.target: tally})["targets"][0]["estimates"]
                    cot = {m: rep[m]["COT"] for m in ("raw", "ts")}
                yield way, time.perf_counter() - t0, received, cot

    times = {"passes": [], "tally": []}
    cots = {}
    for way, secs, sizes, cot in runs():
        times[way].append(secs)
        cots.setdefault(way, cot)
        assert cot == cots[way]
        print(f"{way:>6}: {secs:7.2f} s, {len(sizes)} objects to the driver, "
              f"{sum(sizes) / 1e6:9.3f} MB in all, largest {max(sizes, default=0) / 1e6:9.3f} MB")
    assert cots["passes"] == cots["tally"], cots
    print(f"COT equal both ways: {cots['passes']}")
    for way, v in times.items():
        print(f"{way:>6}: median {statistics.median(v):.2f} s of {len(v)}")
    print(f"driver peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB")


if __name__ == "__main__":
    main()
