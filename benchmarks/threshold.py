"""Global exact-k magnitude pruning of a GPT-2-shaped parameter tree: the library vs jnp.sort.

A: ``jaxprune.sparsity.prune(params, masks, counts=..., scope="global")`` (magnitude scores, the radix
   selection of jaxprune.sparsity.select, new masks) under ``jax.jit``.
B: the same pruning by sorting: all prunable magnitudes concatenated, ``jnp.sort``, the k-th value as
   threshold, new masks ``mask & (|w| > t)``, under ``jax.jit``.

Both take the library's real pytree: the parameters of a jaxprune GPT-2-style Transformer (random
normal values; shapes from ``jax.eval_shape`` of the model's init) with the default prunable leaves
(every attention and MLP kernel). Tracing + lowering and XLA compilation are timed
separately (compile in wall and process CPU time). Then A and B
run in interleaved rounds (A B, B A, ...), each call to ``block_until_ready``; wall time and process
CPU time (all threads) are reported as min and median. The masks of A and B are checked identical
except at entries equal to the threshold (B prunes all of them, A exactly ``floor(rate * n)`` entries,
ties to the lowest position), and A's count is checked.

Sizes are named by prunable parameter count (layers x d_model): 1.8M (4 x 192), 14M (8 x 384),
99M (14 x 768, GPT-2 small's width with 14 blocks), 1.3B (24 x 2048, the GPT-3 XL shapes; GPUs only).

Last lines: ``RESULT threshold_speedup_vs_sort_<size>=<median B / median A wall>`` per size.

Usage: python benchmarks/threshold.py [--sizes 1.8M 14M 99M] [--repeats 3] [--rate 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxprune import sparsity
from jaxprune.models import build_model
from jaxprune.models.presets import ModelConfig

# name -> (n_layer, d_model)
SIZES = {"0.2M": (1, 128), "1.8M": (4, 192), "14M": (8, 384), "99M": (14, 768), "1.3B": (24, 2048)}


def gpt2_tree(n_layer: int, d_model: int, seed: int = 0) -> dict:
    """Random-normal parameters with exactly the structure of a jaxprune GPT-2 Transformer."""
    cfg = ModelConfig(n_layer=n_layer, d_model=d_model, n_head=max(1, d_model // 64), d_ff=4 * d_model,
                      vocab_size=1024, max_len=64)
    model = build_model(cfg)
    shapes = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 8), jnp.int32)), jax.random.key(0))
    leaves, treedef = jax.tree.flatten(nn.meta.unbox(shapes["params"]))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = [jax.random.normal(k, s.shape, jnp.float32) * 0.02 for k, s in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, out)


def library_prune(params, masks, counts):
    return sparsity.prune(params, masks, counts=counts, scope="global")


def sort_prune(params, masks, counts):
    flat_m, treedef = jax.tree.flatten(masks, is_leaf=sparsity.masks.is_none)
    flat_p = treedef.flatten_up_to(params)
    scores = [jnp.where(m, jnp.abs(p), -1.0).reshape(-1) for m, p in zip(flat_m, flat_p) if m is not None]
    t = jnp.sort(jnp.concatenate(scores))[counts[0] - 1]
    out = [None if m is None else m & (jnp.abs(p) > t) for m, p in zip(flat_m, flat_p)]
    return jax.tree.unflatten(treedef, out), t


def timed(fn, *args) -> tuple[float, float, object]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - w0, time.process_time() - c0, out


def stats(xs: list[float]) -> str:
    return f"min {min(xs) * 1e3:9.1f} med {statistics.median(xs) * 1e3:9.1f}"


def bench(name: str, repeats: int, rate: float) -> dict:
    n_layer, d_model = SIZES[name]
    params = gpt2_tree(n_layer, d_model)
    masks = sparsity.create_masks(params)
    counts = sparsity.prune_counts(params, masks, rate)
    n = sum(m.size for m in jax.tree.leaves(masks))
    fns = {}
    compile_s, compile_cpu, lower_s = {}, {}, {}
    for label, f in (("library", library_prune), ("sort", sort_prune)):
        t0 = time.perf_counter()
        lowered = jax.jit(f).lower(params, masks, counts)
        lower_s[label] = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        fns[label] = lowered.compile()
        compile_s[label], compile_cpu[label] = time.perf_counter() - t0, time.process_time() - c0
    wall = {"library": [], "sort": []}
    cpu = {"library": [], "sort": []}
    outs = {}
    order = ["library", "sort"]
    for r in range(repeats + 1):  # round 0 warms up (first call of a compiled executable)
        for label in order if r % 2 == 0 else order[::-1]:
            w, c, outs[label] = timed(fns[label], params, masks, counts)
            if r:
                wall[label].append(w)
                cpu[label].append(c)
    # The sort-based masks prune every entry at the threshold; the library's exactly k, ties to the
    # lowest position: both agree wherever |w| differs from the threshold.
    sort_masks, t = outs["sort"]
    same = all(bool(jnp.all((a == b) | (jnp.abs(p) == t))) for a, b, p in zip(
        jax.tree.leaves(outs["library"]), jax.tree.leaves(sort_masks),
        [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks, is_leaf=sparsity.masks.is_none))
         if m is not None]))
    pruned = n - sum(int(jnp.sum(m)) for m in jax.tree.leaves(outs["library"]))
    if not same or pruned != int(counts[0]):
        raise SystemExit(f"{name}: masks differ from the sort-based ones or wrong count ({pruned} vs {int(counts[0])})")
    speed = statistics.median(wall["sort"]) / statistics.median(wall["library"])
    print(f"{name:>5} n={n:>13,d} leaves={len(jax.tree.leaves(masks))}")
    for label in order:
        print(f"      {label:8s} trace+lower {lower_s[label]:5.2f} s, compile {compile_s[label]:6.2f} s "
              f"({compile_cpu[label]:5.2f} s cpu) | "
              f"wall ms {stats(wall[label])} | "
              f"cpu ms {stats(cpu[label])}")
    print(f"      speedup (median wall) {speed:6.1f}x  (min wall) {min(wall['sort']) / min(wall['library']):6.1f}x  "
          f"masks agree: {same}")
    return {"size": name, "n": n, "speedup": speed, "compile_library_s": compile_s["library"],
            "compile_library_cpu_s": compile_cpu["library"],
            "library_ms": statistics.median(wall["library"]) * 1e3, "sort_ms": statistics.median(wall["sort"]) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1.8M", "14M", "99M"], choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.5)
    args = parser.parse_args()
    print(f"backend={jax.default_backend()} devices={len(jax.devices())} rate={args.rate} repeats={args.repeats}")
    results = [bench(s, args.repeats, args.rate) for s in args.sizes]
    for r in results:
        print(f"RESULT threshold_compile_s_{r['size']}={r['compile_library_s']:.2f}")
        print(f"RESULT threshold_compile_cpu_s_{r['size']}={r['compile_library_cpu_s']:.2f}")
        print(f"RESULT threshold_ms_{r['size']}={r['library_ms']:.1f}")
        print(f"RESULT threshold_speedup_vs_sort_{r['size']}={r['speedup']:.2f}")


if __name__ == "__main__":
    main()
