"""Sharded vs single-device agreement on 8 fake CPU devices; prints one JSON object.

Run by tests/test_sharding.py in its own process, because the device count must be
fixed before jax is imported:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_check.py

For each mesh (data, fsdp, tensor) in MESHES it runs, with parameters, optimizer
state and masks sharded by config.mesh.rules and batches over (data, fsdp):
one dense train step and one masked fine-tuning step (one compile), the pruning
step (global, layer-wise, 2:4 and head pruning, one compile, masks born sharded),
the held-out eval step and the harness loglikelihood scoring; it reports the
largest difference to the same computation on one device, whether every mask is
identical, and the all-gathers of full prunable tensors in the compiled pruning step.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxprune import parallel, sparsity  # noqa: E402
from jaxprune.config import default_config  # noqa: E402
from jaxprune.evaluation import scoring  # noqa: E402
from jaxprune.models import build_model, init_params, logical_axes  # noqa: E402
from jaxprune.models.presets import model_config_from_preset  # noqa: E402
from jaxprune.training.state import create_state  # noqa: E402
from jaxprune.training.step import make_eval_step, make_optimizer, make_train_step  # noqa: E402

MESHES = ((8, 1, 1), (2, 2, 2), (1, 4, 2))
BATCH, SEQ = 8, 32
PRUNINGS = (("global", "unstructured"), ("layerwise", "unstructured"), ("global", "nm"), ("layerwise", "head"))


def max_diff(a, b) -> float:
    """Largest absolute difference over two pytrees of arrays."""
    return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), default=0.0)


def run(mesh_sizes: tuple[int, int, int], devices: list, model, cfg, data: dict) -> dict:
    """Everything computed on one mesh; host numpy results."""
    mcfg = cfg.mesh.copy_and_resolve_references()
    mcfg.data, mcfg.fsdp, mcfg.tensor = mesh_sizes
    mesh = parallel.make_mesh(mcfg, devices)
    rules = parallel.rules(mcfg)
    param_sh = parallel.param_shardings(logical_axes(model), mesh, rules)
    batch_sh = parallel.batch_sharding(mesh)
    rep = parallel.replicated(mesh)
    params = jax.device_put(data["params"], param_sh)
    batch = parallel.global_batch(data["batch"], batch_sh)
    pr = cfg.pruning
    masks0 = sparsity.create_masks(data["params"], pr.include, pr.exclude)
    mask_sh = parallel.mask_shardings(masks0, param_sh)

    # -- pruning: one compile, masks born sharded like their params --------------
    groups = tuple(sparsity.gpt2_head_groups(data["params"], model.cfg.n_head))
    counts = [sparsity.prune_counts(data["params"], masks0, 0.5, scope=s, pattern=p, groups=groups)
              for s, p in PRUNINGS]

    def prune_all(params, masks, counts):
        return [sparsity.prune(params, masks, scores="magnitude", scope=s, pattern=p, groups=groups, counts=c)
                for (s, p), c in zip(PRUNINGS, counts)]

    ones = jax.jit(lambda p: sparsity.create_masks(p, pr.include, pr.exclude), out_shardings=mask_sh)(params)
    compiled = jax.jit(prune_all, in_shardings=(param_sh, mask_sh, rep),
                       out_shardings=[mask_sh] * len(PRUNINGS)).lower(params, ones, counts).compile()
    pruned = compiled(params, ones, counts)
    shapes = [tuple(m.shape) for m in jax.tree.leaves(masks0)]
    gathers = parallel.full_gathers(compiled.as_text(), shapes)
    born_sharded = all(m.sharding.is_equivalent_to(s, m.ndim)
                       for m, s in zip(jax.tree.leaves(pruned[0]), jax.tree.leaves(mask_sh)))

    # -- train step (dense) and masked fine-tuning step: one compile -------------
    tx = make_optimizer(cfg.finetune)
    masks = pruned[0]
    dense_abs = jax.eval_shape(lambda p: create_state(p, tx, None, 0), params)
    masked_abs = jax.eval_shape(lambda p, m: create_state(p, tx, m, 0), params, masks)
    dense_sh = parallel.state_shardings(dense_abs, param_sh, tx, mesh)
    masked_sh = parallel.state_shardings(masked_abs, param_sh, tx, mesh)
    dense = jax.jit(lambda p: create_state(p, tx, None, 0), out_shardings=dense_sh)(params)
    masked = jax.jit(lambda p, m: create_state(sparsity.apply_masks(p, m), tx, m, 0),
                     out_shardings=masked_sh)(params, masks)
    step = make_train_step(model.apply, tx)
    both = jax.jit(lambda d, m, b: (step(d, b), step(m, b)), in_shardings=(dense_sh, masked_sh, batch_sh),
                   out_shardings=((dense_sh, rep), (masked_sh, rep)))
    (dense, dense_m), (masked, masked_m) = both(dense, masked, batch)
    opt_sharded = all(jax.tree.leaves(optax.tree_map_params(
        tx, lambda o, p: o.sharding.is_equivalent_to(p.sharding, o.ndim), masked.opt_state, masked.params,
        transform_non_params=lambda _: True)))

    # -- evaluation: held-out eval step and harness scoring, batch-sharded --------
    eval_step = jax.jit(make_eval_step(model.apply), in_shardings=(param_sh, batch_sh), out_shardings=rep)
    nll, ntok = eval_step(masked.params, batch)
    ll = scoring.loglikelihood(scoring.ModuleApply(model, batch_sh), masked.params, data["requests"],
                               max_len=model.cfg.max_len, batch_size=BATCH, buckets=(SEQ,),
                               batch_sharding=batch_sh)
    return {
        "masks": [jax.tree.map(np.asarray, m) for m in pruned],
        "dense": jax.tree.map(np.asarray, (dense.params, dense.opt_state, dense_m)),
        "masked": jax.tree.map(np.asarray, (masked.params, masked.opt_state, masked.masks, masked_m)),
        "eval": (float(nll), float(ntok)),
        "loglik": [(r.logprob, r.is_greedy, r.num_tokens) for r in ll],
        "full_gathers": gathers,
        "masks_born_sharded": born_sharded,
        "opt_state_sharded_like_params": opt_sharded,
        "param_specs": {p: str(s.spec) for p, s in sparsity.masks.leaves_with_paths(param_sh)
                        if p.endswith("c_fc/kernel")},
    }


def main() -> None:
    devices = jax.devices()
    if len(devices) != 8:
        sys.exit(f"need 8 devices, found {len(devices)} (set XLA_FLAGS before jax is imported)")
    cfg = default_config()
    cfg.finetune.warmup_steps = 0
    model = build_model(model_config_from_preset("femto"))
    rng = np.random.default_rng(0)
    params = jax.tree.map(np.array, init_params(model, jax.random.key(0))[0])
    # a few exact ties in one kernel so the tie-breaking path of the selection runs
    k = params["h_0"]["mlp"]["c_fc"]["kernel"]
    k[:4] = 0.0125
    data = {
        "params": params,
        "batch": rng.integers(0, model.cfg.vocab_size, (BATCH, SEQ + 1)).astype(np.int32),
        "requests": [(list(rng.integers(1, 500, 1 + i % 9)), list(rng.integers(1, 500, 1 + i % 3)))
                     for i in range(12)],
    }
    ref = run((1, 1, 1), devices[:1], model, cfg, data)
    out = {"devices": len(devices), "meshes": {}}
    for sizes in MESHES:
        got = run(sizes, devices, model, cfg, data)
        out["meshes"]["x".join(map(str, sizes))] = {
            "masks_identical": [all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
                                for x, y in zip(ref["masks"], got["masks"])],
            "sparsity": [1.0 - float(sum(np.sum(m) for m in jax.tree.leaves(x)))
                         / sum(np.size(m) for m in jax.tree.leaves(x)) for x in got["masks"]],
            "dense_step_diff": max_diff(ref["dense"], got["dense"]),
            "masked_step_diff": max_diff(ref["masked"], got["masked"]),
            "dense_loss": [float(ref["dense"][2]["loss"]), float(got["dense"][2]["loss"])],
            "pruned_weights_zero": bool(all(
                np.all(p[~m] == 0) for p, m in zip(jax.tree.leaves(got["masked"][0]),
                                                   jax.tree.leaves(got["masked"][2])) if m.shape == p.shape)
                and any(True for _ in jax.tree.leaves(got["masked"][2]))),
            "eval_diff": max(abs(a - b) for a, b in zip(ref["eval"], got["eval"])),
            "loglik_diff": max(abs(a[0] - b[0]) for a, b in zip(ref["loglik"], got["loglik"])),
            "loglik_same_greedy_and_counts": all(a[1:] == b[1:] for a, b in zip(ref["loglik"], got["loglik"])),
            "full_gathers": got["full_gathers"],
            "masks_born_sharded": got["masks_born_sharded"],
            "opt_state_sharded_like_params": got["opt_state_sharded_like_params"],
            "param_specs": got["param_specs"],
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
