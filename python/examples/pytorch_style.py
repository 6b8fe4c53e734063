# %% [markdown]
# # conformal_gpu from a PyTorch workflow
#
# A notebook-style script (cells marked `# %%`): logits as a PyTorch model gives them
# (`model(x).float().cpu().numpy()`), here simulated with numpy so the script runs
# anywhere; the accuracy under shift estimated in one call; then the same target sharded
# over a local Ray cluster, with a report identical to the single-process one.
#
#     python python/examples/pytorch_style.py

# %%
import numpy as np

import conformal_gpu as cg


def fake_model_outputs(seed: int, n: int, shift: float, k: int = 10):
    """What `torch.cat([model(x) for x, _ in loader]).float().cpu().numpy()` would give:
    float32 [n, k] logits, int64 labels, and per-row group ids (hospital, slide)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(0, 1 + shift, size=(n, k)).astype(np.float32)
    logits[np.arange(n), y] += 4.0 - 2 * shift  # less separable under shift
    hospital = rng.integers(0, 4, size=n)
    slide = hospital * 100 + rng.integers(0, 20, size=n)
    return {"logits": logits, "labels": y, "hospital": hospital, "slide": slide}


source = fake_model_outputs(0, 20_000, shift=0.0)   # labelled, in-distribution
test = fake_model_outputs(1, 200_000, shift=0.5)    # shifted; labels only to check

# %% [markdown]
# ## One call: calibrate on the source, estimate on each target

# %%
report = cg.evaluate(
    {"logits": source["logits"], "labels": source["labels"]},
    {"test": test},
    alphas=(0.1, 0.05),
    device="auto",  # a hardware GPU if there is one, else the CPU path
)
t = report["targets"][0]
print(f"device: {report['device']}; T = {report['source']['temperature']:.4f}")
print(f"true accuracy {t['true_accuracy']:.4f}")
for mode in ("raw", "ts"):
    print(mode, {m: round(v, 4) for m, v in t["estimates"][mode].items()})

# %% [markdown]
# ## The three steps: calibrate once, tally shards anywhere, merge exactly
# Tallies are integer counts; any split and merge order gives the same report.

# %%
cal = cg.Calibration.fit(source["logits"], source["labels"], alphas=(0.1, 0.05))
half = len(test["logits"]) // 2
groups = {"hospital": test["hospital"], "slide": test["slide"]}
a = cal.tally(test["logits"][:half], test["labels"][:half],
              groups={g: v[:half] for g, v in groups.items()}, name="test")
b = cal.tally(test["logits"][half:], test["labels"][half:],
              groups={g: v[half:] for g, v in groups.items()}, row_offset=half, name="test")
single = cal.report({"test": a + b})
print("CPC (ts):", single["targets"][0]["estimates"]["ts"]["CPC"])

# %% [markdown]
# ## Sharded on Ray: the target as a Ray dataset of many blocks

# %%
try:
    import ray
    import ray.data
except ImportError:
    ray = None
    print("ray is not installed: pip install 'ray[data]'")

if ray is not None:
    import conformal_gpu.ray as cgr

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    ds = ray.data.from_numpy(test["logits"]).rename_columns({"data": "logits"})
    ds = ds.zip(ray.data.from_numpy(test["labels"]).rename_columns({"data": "labels"}))
    ds = ds.zip(ray.data.from_numpy(test["slide"]).rename_columns({"data": "slide"}))
    ds = ds.zip(ray.data.from_numpy(test["hospital"]).rename_columns({"data": "hospital"}))
    ds = ds.repartition(16).materialize()
    sharded = cgr.evaluate(cal, {"test": ds}, logits="logits", labels="labels",
                           groups=("hospital", "slide"))
    same = all(sharded[k] == single[k] for k in ("source", "targets", "mae"))
    print(f"Ray report over {ds.num_blocks()} blocks equals the single-process one: {same}")
    ray.shutdown()
