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
