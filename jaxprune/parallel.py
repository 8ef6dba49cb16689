"""Device mesh, logical-axis rules and shardings (pjit semantics via jax.jit + NamedSharding).

Parameters are annotated with logical axis names in the model; `config.mesh.rules`
maps those names onto the mesh axes (data, fsdp, tensor). Optimizer state and masks
are sharded like the parameters they mirror; batches over (data, fsdp).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices: list | None = None) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh; one axis may be -1 (= the devices left over)."""
    devices = devices if devices is not None else jax.devices()
    sizes = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into mesh {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh data/fsdp/tensor={sizes} needs {int(np.prod(sizes))} devices, "
                         f"found {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), AXES)


def rules(mesh_cfg: ml_collections.ConfigDict) -> tuple:
    return tuple((name, tuple(ax) if isinstance(ax, (list, tuple)) else ax) for name, ax in mesh_cfg.rules)


def param_shardings(logical_specs: Any, mesh: Mesh, axis_rules: tuple) -> Any:
    """NamedSharding for each parameter from its logical axis names."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, axis_rules)


def state_shardings(abstract_state: Any, param_sh: Any, tx: optax.GradientTransformation, mesh: Mesh) -> Any:
    """Shardings for a TrainState: opt_state and masks follow the params they mirror."""
    replicated = NamedSharding(mesh, P())
    opt_sh = optax.tree_map_params(
        tx, lambda _, sh: sh, abstract_state.opt_state, param_sh,
        transform_non_params=lambda _: replicated)
    mask_sh = jax.tree.map(lambda m, sh: None if m is None else sh, abstract_state.masks, param_sh,
                           is_leaf=lambda x: x is None)
    return abstract_state.replace(step=replicated, params=param_sh, opt_state=opt_sh, masks=mask_sh,
                                  rng=replicated)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# ---------------------------------------------------------------------------
# Multi-host
# ---------------------------------------------------------------------------
PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "JAXPRUNE_NUM_PROCESSES", "JAXPRUNE_PROCESS_ID")


def initialize(mesh_cfg: ml_collections.ConfigDict) -> None:
    """Starts JAX's multi-process runtime when `mesh.distributed` is set; call before touching devices.

    On TPU pods and SLURM/Open MPI GPU clusters jax.distributed.initialize() finds the
    coordinator, process count and process id by itself. Elsewhere (several processes on one
    machine, a cluster JAX does not detect) give them in the environment: JAX_COORDINATOR_ADDRESS
    (host:port of process 0), JAXPRUNE_NUM_PROCESSES and JAXPRUNE_PROCESS_ID. On CPU the
    collectives between processes use gloo.
    """
    if not mesh_cfg.distributed:
        return
    import os

    given = [k for k in PROCESS_ENV if os.environ.get(k)]
    if given and len(given) < len(PROCESS_ENV):
        from jaxprune.config import ConfigError
        raise ConfigError(f"mesh.distributed: set all of {', '.join(PROCESS_ENV)} or none (set: {', '.join(given)})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only; GPUs/TPUs unaffected
    if given:
        jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(os.environ["JAXPRUNE_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAXPRUNE_PROCESS_ID"]))
    else:
        jax.distributed.initialize()


def is_primary() -> bool:
    """True on the one process (index 0) that writes results, metrics and tables."""
    return jax.process_index() == 0


def global_batch(batch: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array from the global batch every process computes identically.

    Each process copies only the rows (and columns) of its addressable shards, so the
    same code runs on one device, on N local devices and on every host of a pod.
    """
    batch = np.asarray(batch)
    return jax.make_array_from_callback(batch.shape, sharding, lambda index: batch[index])


def fetch(tree: Any) -> Any:
    """Host numpy copies of (possibly sharded, multi-host) arrays, the same on every process."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))
    return jax.tree.map(one, tree)


def batch_shards(sharding: jax.sharding.Sharding) -> int:
    """How many ways `sharding` splits the leading (batch) dimension."""
    if isinstance(sharding, NamedSharding) and len(sharding.spec) > 0 and sharding.spec[0] is not None:
        names = sharding.spec[0] if isinstance(sharding.spec[0], tuple) else (sharding.spec[0],)
        return int(np.prod([sharding.mesh.shape[n] for n in names]))
    return 1


# ---------------------------------------------------------------------------
# Masks and pruning
# ---------------------------------------------------------------------------
def mask_shardings(masks: Any, param_sh: Any) -> Any:
    """Shardings of a mask tree: each mask like its parameter, None where a leaf has no mask."""
    return jax.tree.map(lambda m, sh: None if m is None else sh, masks, param_sh, is_leaf=lambda x: x is None)


def full_gathers(hlo_text: str, shapes: list[tuple[int, ...]]) -> list[str]:
    """The all-gather instructions of compiled HLO whose result has one of `shapes` (full tensors).

    Used to check that a step never materialises a whole sharded parameter on a device.
    A 1-D result with the element count of a multi-dimensional shape counts too (a full
    tensor gathered in flattened form).
    """
    import re

    wanted = {tuple(int(d) for d in s) for s in shapes}
    sizes = {int(np.prod(s)) for s in wanted if len(s) > 1}
    found = []
    for line in hlo_text.splitlines():
        if "all-gather(" not in line and "all-gather-start(" not in line:
            continue
        lhs = line.split(" all-gather", 1)[0]
        for dims in re.findall(r"[a-z]+[0-9]*\[([0-9,]*)\]", lhs):
            shape = tuple(int(d) for d in dims.split(",") if d)
            if shape in wanted or (len(shape) == 1 and shape[0] in sizes):
                found.append(line.strip())
                break
    return found
