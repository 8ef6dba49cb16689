"""TrainState: everything a run needs to continue, as one pytree (one checkpoint)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken in the current phase (= data position)
    params: Any  # float32 params; pruned entries are exactly 0.0
    opt_state: Any
    masks: Any  # pytree like params: bool arrays on prunable leaves, None elsewhere (all None = dense)
    rng: jax.Array  # raw uint32[2] PRNG key (dropout)


def create_state(params: Any, tx: optax.GradientTransformation, masks: Any, seed: int) -> TrainState:
    """A fresh phase: step 0, new optimizer state, the given params and masks."""
    if masks is None:
        masks = jax.tree.map(lambda _: None, params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), masks=masks,
                      rng=jax.random.key_data(jax.random.key(seed)))
