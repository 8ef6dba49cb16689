"""KV-cache generation and target-only scoring on meshes of 4 fake CPU devices agree with one device.

Run by tests/test_eval_decode.py in its own process (the device count is fixed before jax is imported):

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/eval_mesh_check.py

A LLaMA-style model with grouped-query attention, parameters sharded by config.mesh.rules,
batches over (data, fsdp). Last line: "OK <meshes>" or a non-zero exit naming the difference.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxprune import parallel  # noqa: E402
from jaxprune.config import default_config  # noqa: E402
from jaxprune.evaluation.scoring import ModuleApply, generate, loglikelihood  # noqa: E402
from jaxprune.models import ModelConfig, build_model, init_params, logical_axes  # noqa: E402

MESHES = ((1, 2, 2),)  # batch over fsdp; params over fsdp and tensor (kv heads split)
CFG = ModelConfig(arch="llama", vocab_size=512, max_len=64, n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=172)
BATCH = 4


def run(model, params, prompts, requests, batch_sh=None):
    apply_fn = ModuleApply(model, batch_sh)
    ids = generate(apply_fn, params, prompts, max_len=64, max_new_tokens=8, batch_size=BATCH,
                   batch_sharding=batch_sh)
    ll = loglikelihood(apply_fn, params, requests, max_len=64, batch_size=BATCH, batch_sharding=batch_sh)
    return ids, [(r.logprob, r.is_greedy, r.num_tokens) for r in ll]


def main() -> None:
    if jax.device_count() != 4:
        sys.exit(f"need 4 devices, found {jax.device_count()}")
    model = build_model(CFG)
    params = jax.jit(lambda k: jax.tree.map(lambda x: 3 * x, init_params(model, k)[0]))(jax.random.key(0))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 512, n).tolist() for n in (2, 9, 30, 50, 7)]
    requests = [(p, rng.integers(1, 512, 3).tolist()) for p in prompts]
    ref_ids, ref_ll = run(model, params, prompts, requests)
    mcfg = default_config().mesh
    for sizes in MESHES:
        mcfg.data, mcfg.fsdp, mcfg.tensor = sizes
        mesh = parallel.make_mesh(mcfg)
        sharded = jax.device_put(params, parallel.param_shardings(logical_axes(model), mesh, parallel.rules(mcfg)))
        ids, ll = run(model, sharded, prompts, requests, parallel.batch_sharding(mesh))
        if ids != ref_ids:
            sys.exit(f"mesh {sizes}: generated ids differ: {ids} vs {ref_ids}")
        diff = max(abs(a[0] - b[0]) for a, b in zip(ll, ref_ll))
        if diff > 1e-4 or [a[1:] for a in ll] != [b[1:] for b in ref_ll]:
            sys.exit(f"mesh {sizes}: loglikelihoods differ by {diff}")
    print("OK " + " ".join(f"({a},{b},{c})" for a, b, c in MESHES))


if __name__ == "__main__":
    main()
