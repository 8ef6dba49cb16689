"""Training throughput (tokens/s) and model FLOPs utilisation of the sharded train step.

Runs the jaxprune train step (AdamW + clipping, jit with in/out shardings over a
(data, fsdp, tensor) mesh of every device found) on random tokens, dense and with
50 % magnitude masks, alternating rounds so both see the same machine load.

MFU (PaLM, Chowdhery et al. 2022, appendix B) = model FLOP/s / peak FLOP/s, with
model FLOPs per token = 6 N + 12 L T d: N parameters (without the position table,
whose lookup does no matmul; the tied embedding counts, it is the output head),
L layers, T context length, d model width (the attention score and value matmuls,
forward and backward). Masked steps are counted at the same (dense) FLOPs.
Peak FLOP/s per chip, dense bf16: H100/H200 989e12, A100 312e12, TPU v4 275e12,
v5e 197e12, v5p 459e12. On CPU there is no datasheet number: the "peak" is the FLOP/s
of a 2048^3 float32 matmul timed in every round between the dense and masked steps, so
under the same load (the best over rounds; shared by all CPU devices): CPU MFU means
"fraction of the best matmul rate here". Compilation is timed apart; step times are
reported as min and median, wall and process CPU time.
Last lines: ``RESULT mfu=<fraction>`` (median dense step) and
``RESULT train_masked_over_dense=<median masked / median dense step wall time>``.

Usage: python benchmarks/train_throughput.py [--preset pico] [--batch 8] [--seq 0] [--rounds 5]
       [--steps 3] [--mesh -1,1,1] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxprune import parallel, sparsity
from jaxprune.config import default_config
from jaxprune.models import build_model, init_params, logical_axes
from jaxprune.models.presets import model_config_from_preset
from jaxprune.training.state import create_state
from jaxprune.training.step import make_optimizer, make_train_step

PEAK_FLOPS = (  # (substring of jax device_kind, lower case; peak dense bf16 FLOP/s per chip)
    ("h200", 989e12), ("h100", 989e12), ("a100", 312e12),
    ("v5p", 459e12), ("v5 lite", 197e12), ("v5e", 197e12), ("v4", 275e12),
)


def matmul_probe(n: int = 2048) -> tuple[Callable[[], float], float]:
    """(fn timing one n x n float32 matmul on the first device -> FLOP/s, its FLOPs)."""
    a = jax.device_put(jnp.ones((n, n), jnp.float32), jax.devices()[0])
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()

    def probe() -> float:
        t0 = time.perf_counter()
        mm(a).block_until_ready()
        return 2 * n**3 / (time.perf_counter() - t0)

    return probe, 2.0 * n**3


def table_peak() -> tuple[float | None, str]:
    """Datasheet peak FLOP/s of all devices together, or None on CPU (measured instead)."""
    devs = jax.devices()
    kind = devs[0].device_kind.lower()
    for key, per_chip in PEAK_FLOPS:
        if key in kind:
            return per_chip * len(devs), f"{devs[0].device_kind} table value x {len(devs)}"
    if devs[0].platform == "cpu":
        return None, "best 2048^3 float32 matmul on this CPU host, timed in every round next to the steps"
    raise SystemExit(f"no peak FLOP/s known for device kind {devs[0].device_kind!r}; add it to PEAK_FLOPS")


def flops_per_token(params, n_layer: int, seq: int, d_model: int) -> tuple[int, float]:
    """(N, 6 N + 12 L T d) as in PaLM appendix B."""
    n = sum(int(np.size(p)) for p in jax.tree.leaves(params))
    if "wpe" in params:
        n -= int(np.size(params["wpe"]["embedding"]))
    return n, 6.0 * n + 12.0 * n_layer * seq * d_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="pico", help="model preset (default pico: CPU-sized)")
    ap.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    ap.add_argument("--seq", type=int, default=0, help="context length (0: the preset's)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating dense/masked rounds")
    ap.add_argument("--steps", type=int, default=3, help="steps per round")
    ap.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor (-1 fills the rest)")
    ap.add_argument("--dtype", default="float32", help="compute dtype (bfloat16 on accelerators)")
    args = ap.parse_args()

    peak, peak_src = table_peak()
    probe = matmul_probe()[0] if peak is None else None
    cfg = default_config()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = (int(x) for x in args.mesh.split(","))
    overrides = {"dtype": args.dtype} | ({"max_len": args.seq} if args.seq else {})
    mcfg = model_config_from_preset(args.preset, **overrides)
    model = build_model(mcfg)
    seq = mcfg.max_len
    mesh = parallel.make_mesh(cfg.mesh)
    param_sh = parallel.param_shardings(logical_axes(model), mesh, parallel.rules(cfg.mesh))
    batch_sh = parallel.batch_sharding(mesh)
    rep = parallel.replicated(mesh)
    phase = ml_collections.ConfigDict(cfg.finetune.to_dict())
    phase.steps, phase.warmup_steps = 10_000, 0
    tx = make_optimizer(phase)

    params = jax.jit(lambda: init_params(model, jax.random.key(0))[0], out_shardings=param_sh)()
    masks = sparsity.create_masks(params, cfg.pruning.include, cfg.pruning.exclude)
    mask_sh = parallel.mask_shardings(masks, param_sh)
    counts = sparsity.prune_counts(params, masks, 0.5)
    masks = jax.jit(lambda p, m, c: sparsity.prune(p, m, counts=c), in_shardings=(param_sh, mask_sh, rep),
                    out_shardings=mask_sh)(params, jax.device_put(masks, mask_sh), counts)

    step = make_train_step(model.apply, tx)
    states, fns = {}, {}
    for name, m in (("dense", None), ("masked", masks)):
        abstract = jax.eval_shape(lambda p, m=m: create_state(p, tx, m, 0), params)
        sh = parallel.state_shardings(abstract, param_sh, tx, mesh)
        states[name] = jax.jit(lambda p, m=m: create_state(sparsity.apply_masks(p, m), tx, m, 0),
                               out_shardings=sh)(params)
        fns[name] = jax.jit(step, in_shardings=(sh, batch_sh), out_shardings=(sh, rep), donate_argnums=0)

    rng = np.random.default_rng(0)
    batches = [parallel.global_batch(rng.integers(0, mcfg.vocab_size, (args.batch, seq + 1)).astype(np.int32),
                                     batch_sh) for _ in range(args.steps)]
    compile_s = {}
    for name in fns:  # compile (timed apart) and warm up
        t0 = time.perf_counter()
        fns[name] = fns[name].lower(states[name], batches[0]).compile()
        compile_s[name] = time.perf_counter() - t0
        states[name], metrics = fns[name](states[name], batches[0])
        jax.block_until_ready(metrics)

    times: dict[str, list[float]] = {"dense": [], "masked": []}
    cpu: dict[str, list[float]] = {"dense": [], "masked": []}
    matmul: list[float] = []
    for r in range(args.rounds):
        for name in (("dense", "masked") if r % 2 == 0 else ("masked", "dense")):
            t0, c0 = time.perf_counter(), time.process_time()
            for b in batches:
                states[name], metrics = fns[name](states[name], b)
            jax.block_until_ready((states[name].params, metrics))
            times[name].append((time.perf_counter() - t0) / args.steps)
            cpu[name].append((time.process_time() - c0) / args.steps)
        if probe is not None:  # the CPU "peak" under the same load as this round's steps
            matmul.append(max(probe() for _ in range(3)))
    if probe is not None:
        peak = max(matmul)

    dense_t, masked_t = statistics.median(times["dense"]), statistics.median(times["masked"])
    n_params, fpt = flops_per_token(params, mcfg.n_layer, seq, mcfg.d_model)
    tokens_per_s = args.batch * seq / dense_t
    mfu = fpt * tokens_per_s / peak
    d = mesh.shape
    print(f"devices: {len(jax.devices())} x {jax.devices()[0].device_kind}  mesh data={d['data']} "
          f"fsdp={d['fsdp']} tensor={d['tensor']}")
    print(f"model: {args.preset} ({mcfg.arch}) L={mcfg.n_layer} d={mcfg.d_model} T={seq}  N={n_params:,} params "
          f"(without the position table)  dtype={args.dtype}")
    print(f"batch: {args.batch} x {seq} = {args.batch * seq} tokens/step; {args.rounds} rounds x {args.steps} steps")
    print(f"compile: dense {compile_s['dense']:.1f} s  masked {compile_s['masked']:.1f} s")
    for label, t in (("wall", times), ("cpu", cpu)):
        print(f"step {label} ms: dense min {min(t['dense']) * 1e3:.1f} median {statistics.median(t['dense']) * 1e3:.1f}"
              f" | masked (50 %) min {min(t['masked']) * 1e3:.1f} median {statistics.median(t['masked']) * 1e3:.1f}")
    if matmul:
        print(f"matmul probe FLOP/s per round: min {min(matmul):.3g} median {statistics.median(matmul):.3g} "
              f"max {max(matmul):.3g}")
    print(f"tokens/s (dense): {tokens_per_s:,.0f}   masked: {args.batch * seq / masked_t:,.0f}")
    print(f"model FLOPs/token = 6N + 12LTd = {fpt:.4g}  -> {fpt * tokens_per_s:.4g} FLOP/s")
    print(f"peak: {peak:.4g} FLOP/s ({peak_src})")
    print(f"masked/dense step time (median wall): {masked_t / dense_t:.3f}")
    print(f"RESULT mfu={mfu:.4f}")
    print(f"RESULT train_masked_over_dense={masked_t / dense_t:.4f}")


if __name__ == "__main__":
    main()
