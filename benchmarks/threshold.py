"""Exact k-th smallest threshold (bit bisection) vs a jnp.sort-based threshold.

Prints per size the median wall time (jit-compiled, after warm-up, block_until_ready)
of both methods on float32 magnitudes, checks that they agree exactly, and ends with
``RESULT threshold_speedup_vs_sort=<ratio>`` at the largest size.

Usage: python benchmarks/threshold.py [--sizes 10000000 100000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.sparsity.select import kth_smallest


@jax.jit
def exact_threshold(x: jax.Array, k: jax.Array) -> jax.Array:
    return kth_smallest(x, k)


@jax.jit
def sort_threshold(x: jax.Array, k: jax.Array) -> jax.Array:
    return jnp.sort(x.reshape(-1))[k - 1]


def median_time(fn, *args, repeats: int) -> tuple[float, jax.Array]:
    out = fn(*args).block_until_ready()  # warm-up (compilation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args).block_until_ready()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.5)
    args = parser.parse_args()
    print(f"backend={jax.default_backend()} devices={jax.devices()}")
    speedup = float("nan")
    for n in args.sizes:
        x = jnp.abs(jax.random.normal(jax.random.key(n), (n,), jnp.float32))
        k = jnp.int32(int(args.rate * n))
        t_exact, v_exact = median_time(exact_threshold, x, k, repeats=args.repeats)
        t_sort, v_sort = median_time(sort_threshold, x, k, repeats=args.repeats)
        exact = bool(v_exact == v_sort)
        n_below = int(jnp.sum(x < v_exact))
        n_le = int(jnp.sum(x <= v_exact))
        exact = exact and n_below < int(k) <= n_le
        speedup = t_sort / t_exact
        print(
            f"n={n:>11,d} k={int(k):>11,d} exact={t_exact * 1e3:9.1f} ms "
            f"sort={t_sort * 1e3:9.1f} ms speedup={speedup:6.1f}x "
            f"threshold={float(v_exact):.9g} matches_sort={exact}"
        )
        if not exact:
            raise SystemExit(f"threshold mismatch at n={n}: {v_exact} vs {v_sort}")
        del x
    print(f"RESULT threshold_speedup_vs_sort={speedup:.2f}")


if __name__ == "__main__":
    main()
