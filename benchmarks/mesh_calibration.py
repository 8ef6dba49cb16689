"""Wall time of Wanda / SparseGPT calibration on one device vs on an 8-device mesh, interleaved.

One process with 8 devices (on CPU: ``--xla_force_host_platform_device_count=8``, set here
before jax is imported). Each method calibrates and prunes a random-init preset to 50 % from
the dense model, block by block (``calibrate_and_prune``): once on device 0 alone (``1dev``)
and once on the mesh ``--mesh`` (parameters and masks placed in the model shardings,
``batch_sharding=`` the training batch sharding), alternating A, B, A, B for ``--repeats``
rounds after one compiling call of each. Compile (first call minus the median of the others)
is reported apart from the steady-state time.

Fake CPU devices share the machine's cores, so on CPU the ratio says how much the mesh
path costs there, not what real devices gain.

Last lines: ``RESULT <method>_<mesh>_over_1dev=<ratio of the median seconds>`` (with the
min/median seconds of both printed above them).

Usage: python benchmarks/mesh_calibration.py [--preset nano] [--mesh 8,1,1] [--samples 32 --seq 64]
       [--methods wanda sparsegpt] [--repeats 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxprune import parallel, sparsity  # noqa: E402
from jaxprune.config import default_config  # noqa: E402
from jaxprune.models import build_model, init_params, logical_axes  # noqa: E402
from jaxprune.models.capture import calibrate_and_prune  # noqa: E402
from jaxprune.models.presets import model_config_from_preset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--mesh", default="8,1,1")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = default_config()
    mcfg = model_config_from_preset(args.preset)
    model = build_model(mcfg)
    params = jax.tree.map(np.asarray, init_params(model, jax.random.key(0))[0])
    masks = jax.tree.map(lambda m: None if m is None else np.asarray(m),
                         sparsity.create_masks(params, cfg.pruning.include, cfg.pruning.exclude),
                         is_leaf=lambda m: m is None)
    tokens = np.random.default_rng(0).integers(0, mcfg.vocab_size, (args.samples, args.seq)).astype(np.int32)

    mc = cfg.mesh.copy_and_resolve_references()
    mc.data, mc.fsdp, mc.tensor = (int(x) for x in args.mesh.split(","))
    mesh = parallel.make_mesh(mc)
    param_sh = parallel.param_shardings(logical_axes(model), mesh, parallel.rules(mc))
    on_mesh = (jax.device_put(params, param_sh), jax.device_put(masks, parallel.mask_shardings(masks, param_sh)),
               parallel.batch_sharding(mesh))
    one = jax.devices()[0]
    on_one = (jax.device_put(params, one), jax.device_put(masks, one), None)
    name = "x".join(args.mesh.split(","))
    print(f"preset {args.preset}, {args.samples} x {args.seq} calibration tokens, batch {args.batch}, "
          f"{jax.device_count()} {jax.devices()[0].platform} devices, mesh {name}", flush=True)

    for method in args.methods:
        layer = sparsity.layer_pruner(method, 0.5)

        def run(placed):
            t0 = time.perf_counter()
            jax.block_until_ready(calibrate_and_prune(mcfg, placed[0], placed[1], tokens, layer,
                                                      batch_size=args.batch, batch_sharding=placed[2]))
            return time.perf_counter() - t0

        first = {"1dev": run(on_one), name: run(on_mesh)}
        times: dict[str, list[float]] = {"1dev": [], name: []}
        for _ in range(args.repeats):
            times["1dev"].append(run(on_one))
            times[name].append(run(on_mesh))
        for k, ts in times.items():
            print(f"{method} {k}: min {min(ts):.3f} s, median {statistics.median(ts):.3f} s, "
                  f"compile {first[k] - statistics.median(ts):.2f} s", flush=True)
        ratio = statistics.median(times[name]) / statistics.median(times["1dev"])
        print(f"RESULT {method}_{name}_over_1dev={ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
