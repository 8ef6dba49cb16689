"""Final parameters and masks of every finished stage of run workdirs, compared; prints one JSON object.

Run by tests/test_multiprocess.py with as many (fake) devices as the runs' mesh:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/multiprocess_digest.py REFERENCE OTHER...

Each run's config comes from its WORKDIR/config.json; each stage's last checkpoint is restored
into the run's mesh shardings. For every workdir and stage it reports a sha256 over every array's
path, dtype, shape and bytes (params and masks apart), the step, the largest absolute parameter
difference to the same stage of REFERENCE, and how many mask entries differ from REFERENCE's (of
how many).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import jax
import numpy as np

from jaxprune import experiment, parallel


def digest(flat: list[tuple[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for path, a in flat:
        a = np.ascontiguousarray(a)
        h.update(f"{path}:{a.dtype.name}{list(a.shape)};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def final_arrays(workdir: str) -> dict[str, tuple[int, list, list]]:
    """{stage: (step, [(path, param)], [(path, mask)])} of every finished stage, on the host."""
    config = experiment.run_config(workdir)
    out = {}
    for row in experiment.read_results(Path(workdir)):
        exp, stage = experiment.open_stage(config, workdir, row["stage"])
        state = experiment.restore_stage(exp, stage)
        flat = [[(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(parallel.fetch(t))[0]]
                for t in (state.params, state.masks)]
        out[row["stage"]] = (int(state.step), *flat)
    return out


def main(workdirs: list[str]) -> None:
    runs = {w: final_arrays(w) for w in workdirs}
    ref = runs[workdirs[0]]
    out = {}
    for w, stages in runs.items():
        out[w] = {name: {"step": step, "params": digest(params), "masks": digest(masks),
                         "params_max_diff": max((float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                                                 for (_, a), (_, b) in zip(params, ref[name][1])), default=0.0)
                         if name in ref else None,
                         "masks_differ": sum(int(np.sum(np.asarray(a) != np.asarray(b)))
                                             for (_, a), (_, b) in zip(masks, ref[name][2])) if name in ref else None,
                         "masks_size": sum(int(np.size(a)) for _, a in masks)}
                  for name, (step, params, masks) in stages.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
