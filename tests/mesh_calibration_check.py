"""Wanda / SparseGPT calibration on a device mesh vs one device, on 8 fake CPU devices; prints one JSON object.

Run by tests/test_mesh_calibration.py in its own process (the device count is fixed when jax
is imported):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/mesh_calibration_check.py

For each mesh (data, fsdp, tensor) in MESHES the femto GPT's parameters and masks are placed in
their model shardings and calibrated block by block on the mesh
(`calibrate_and_prune(..., batch_sharding=...)`); it reports whether every mask equals the
one-device result, the largest weight difference, whether the results stay in the model
shardings, and the all-gathers in the compiled calibration steps (embedding, statistics, block
forward, layer pruning) whose result is a whole prunable kernel that the model keeps sharded.
With --time it also reports the wall time of a whole calibration on 1 device and on each mesh.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxprune import parallel, sparsity  # noqa: E402
from jaxprune.config import default_config  # noqa: E402
from jaxprune.models import build_model, capture, init_params, logical_axes  # noqa: E402
from jaxprune.models.presets import model_config_from_preset  # noqa: E402
from jaxprune.sparsity import calibration  # noqa: E402

MESHES = ((8, 1, 1), (2, 2, 2), (1, 4, 2))
N_SEQ, SEQ, BATCH = 24, 32, 8  # 3 mini-batches of 8 sequences
METHODS = (("wanda", "unstructured"), ("sparsegpt", "unstructured"), ("sparsegpt", "nm"))
NM_MESH = (2, 2, 2)  # SparseGPT 2:4 runs on this mesh only (compile time)
RATE = 0.5


def pruner(method: str, pattern: str):
    return sparsity.layer_pruner(method, RATE, pattern=pattern, blocksize=32)


def calibrate(cfg, params, masks, tokens, method, pattern, batch_sh=None):
    return jax.block_until_ready(capture.calibrate_and_prune(cfg, params, masks, tokens, pruner(method, pattern),
                                                             batch_size=BATCH, batch_sharding=batch_sh))


def compiled_gathers(cfg, params, masks, tokens, method, pattern, batch_sh, sharded_shapes) -> list[str]:
    """All-gathers whose result is a whole kernel that the model keeps sharded, in the compiled steps of
    block 0 (every block shares them): in the statistics and forward steps a gather of any such kernel's
    shape counts (in the embedding step also the shapes of the sharded wte / wpe tables), in each
    layer-pruning step one of the shape of the kernel it prunes."""
    part, sh = capture._place(tokens[:BATCH][None], batch_sh)
    tables = {k: params[k] for k in ("wte", "wpe")}
    stat_sh = jax.sharding.NamedSharding(batch_sh.mesh, jax.sharding.PartitionSpec())
    statistic = pruner(method, pattern).statistic
    tables_sharded = [tuple(t["embedding"].shape) for t in tables.values()
                      if not t["embedding"].sharding.is_fully_replicated]
    found = parallel.full_gathers(capture.embed.lower(cfg, tables, part, sh).compile().as_text(),
                                  sharded_shapes + tables_sharded)
    x = capture.embed(cfg, tables, part, sh)
    bp = params["h_0"]
    texts = [capture.block_stats.lower(cfg, 0, statistic, bp, x, stat_sh, capture._rows(sh)).compile().as_text(),
             capture.block_forward.lower(cfg, 0, bp, x, sh).compile().as_text()]
    found += [g for t in texts for g in parallel.full_gathers(t, sharded_shapes)]
    stats = capture.block_stats(cfg, 0, statistic, bp, x, stat_sh, capture._rows(sh))
    for path, m in sparsity.masks.leaves_with_paths(masks["h_0"]):
        if m is None:
            continue
        node_p = bp
        for k in path.split("/"):
            node_p = node_p[k]
        if node_p.sharding.is_fully_replicated:
            continue
        text = calibration._prune_layer.lower(
            node_p, m, stats[path.rpartition("/")[0]], np.float32(N_SEQ * SEQ), method=method, rate=RATE,
            pattern=pattern, n=2, m=4, blocksize=32, damp=0.01,
            split=calibration.output_split(node_p)).compile().as_text()
        found += parallel.full_gathers(text, [tuple(node_p.shape)])  # this kernel only (shapes repeat)
    return found


def main() -> None:
    timing = "--time" in sys.argv
    devices = jax.devices()
    if len(devices) != 8:
        sys.exit(f"need 8 devices, found {len(devices)} (set XLA_FLAGS before jax is imported)")
    cfg = default_config()
    mcfg0 = model_config_from_preset("femto")
    model = build_model(mcfg0)
    params = jax.tree.map(np.asarray, init_params(model, jax.random.key(0))[0])
    masks = jax.tree.map(lambda m: None if m is None else np.asarray(m),
                         sparsity.create_masks(params, cfg.pruning.include, cfg.pruning.exclude),
                         is_leaf=lambda m: m is None)
    tokens = np.random.default_rng(0).integers(0, mcfg0.vocab_size, (N_SEQ, SEQ)).astype(np.int32)
    out: dict = {"devices": len(devices), "meshes": {}, "seconds": {}}
    refs = {}
    for method, pattern in METHODS:
        t0 = time.perf_counter()
        refs[method, pattern] = jax.tree.map(np.asarray, calibrate(mcfg0, params, masks, tokens, method, pattern))
        t1 = time.perf_counter()
        if timing:
            calibrate(mcfg0, params, masks, tokens, method, pattern)
            out["seconds"].setdefault("1x1x1", {})[f"{method}_{pattern}"] = {
                "first": round(t1 - t0, 3), "again": round(time.perf_counter() - t1, 3)}
    for sizes in MESHES:
        mc = cfg.mesh.copy_and_resolve_references()
        mc.data, mc.fsdp, mc.tensor = sizes
        mesh = parallel.make_mesh(mc, devices)
        param_sh = parallel.param_shardings(logical_axes(model), mesh, parallel.rules(mc))
        batch_sh = parallel.batch_sharding(mesh)
        p = jax.device_put(params, param_sh)
        m = jax.device_put(masks, parallel.mask_shardings(masks, param_sh))
        sharded_shapes = [tuple(x.shape) for x, s in zip(jax.tree.leaves(m), jax.tree.leaves(
            parallel.mask_shardings(masks, param_sh))) if not s.is_fully_replicated]
        name = "x".join(map(str, sizes))
        res = {}
        for method, pattern in METHODS:
            if pattern == "nm" and sizes != NM_MESH:
                continue
            t0 = time.perf_counter()
            got_p, got_m = calibrate(mcfg0, p, m, tokens, method, pattern, batch_sh)
            t1 = time.perf_counter()
            if timing:
                calibrate(mcfg0, p, m, tokens, method, pattern, batch_sh)
                out["seconds"].setdefault(name, {})[f"{method}_{pattern}"] = {
                    "first": round(t1 - t0, 3), "again": round(time.perf_counter() - t1, 3)}
            ref_p, ref_m = refs[method, pattern]
            flat_m = [x for x in jax.tree.leaves(got_m)]
            res[f"{method}_{pattern}"] = {
                "masks_identical": all(np.array_equal(np.asarray(a), b) for a, b in zip(flat_m, jax.tree.leaves(ref_m))),
                "params_max_diff": max(float(np.max(np.abs(np.asarray(a, np.float64) - b)))
                                       for a, b in zip(jax.tree.leaves(got_p), jax.tree.leaves(ref_p))),
                "sparsity": 1.0 - sum(int(np.sum(np.asarray(x))) for x in flat_m) / sum(x.size for x in flat_m),
                "kept_model_shardings": all(a.sharding.is_equivalent_to(s, a.ndim) for a, s in zip(
                    jax.tree.leaves(got_p), jax.tree.leaves(param_sh))),
                "full_gathers": compiled_gathers(mcfg0, p, m, tokens, method, pattern, batch_sh, sharded_shapes),
            }
        out["meshes"][name] = {"methods": res, "sharded_kernels": len(sharded_shapes)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
