"""Streamed HF import onto 8 fake CPU devices; prints one JSON object (run by tests/test_hf_models.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/hf_mesh_check.py CHECKPOINT_DIR

For meshes (data, fsdp, tensor) 8x1x1, 2x2x2 and 1x4x2 it imports the checkpoint straight into the
parameter shardings and reports: whether every leaf has its target sharding and equals the host import,
the bytes copied from the files, the bytes of the distinct device blocks (each block read once, however
many devices replicate it) and what reading whole tensors for every device would have copied.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from jaxprune import parallel  # noqa: E402
from jaxprune.config import default_config  # noqa: E402
from jaxprune.models import Transformer, import_hf, logical_axes  # noqa: E402

MESHES = ((8, 1, 1), (2, 2, 2), (1, 4, 2))


def distinct_block_bytes(placed) -> int:
    """Bytes (float32) of the distinct device blocks: what reading each block once copies from the files."""
    total = 0
    for a in jax.tree.leaves(placed):
        blocks = {tuple(s.indices(n) for s, n in zip(idx, a.shape))
                  for idx in a.sharding.devices_indices_map(a.shape).values()}
        total += sum(int(np.prod([len(range(*t)) for t in b])) * 4 for b in blocks)
    return total


def whole_tensor_bytes(placed) -> int:
    """What reading the whole tensor for every device would touch."""
    return sum(a.nbytes * len(a.sharding.device_set) for a in jax.tree.leaves(placed))


def main(path: str) -> None:
    host, cfg = import_hf.load_hf(path)
    read = {"bytes": 0}
    read_rows = import_hf.TensorSource.read

    def counting(self, name, start, stop, rest=()):
        block = read_rows(self, name, start, stop, rest)
        read["bytes"] += block.nbytes
        return block

    import_hf.TensorSource.read = counting
    out = {}
    for d, f, t in MESHES:
        mesh_cfg = ml_collections.ConfigDict(default_config().mesh.to_dict())
        mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor = d, f, t
        mesh = parallel.make_mesh(mesh_cfg)
        sh = parallel.param_shardings(logical_axes(Transformer(cfg)), mesh, parallel.rules(mesh_cfg))
        read["bytes"] = 0
        placed, _ = import_hf.load_hf(path, cfg, shardings=sh)
        ok_sharding = all(a.sharding == s for a, s in zip(jax.tree.leaves(placed), jax.tree.leaves(sh)))
        equal = all(np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(host)))
        out[f"{d}x{f}x{t}"] = {"shardings": ok_sharding, "equal": equal, "bytes_read": read["bytes"],
                               "bytes_of_distinct_blocks": distinct_block_bytes(placed),
                               "bytes_of_whole_tensors_per_device": whole_tensor_bytes(placed),
                               "sharded_leaves": sum(not a.sharding.is_fully_replicated
                                                     for a in jax.tree.leaves(placed))}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
