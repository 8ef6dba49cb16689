"""Pruning schedules: one-shot, iterative (per stage) and gradual (per step).

Rates are cumulative target sparsities. The gradual schedule follows Zhu & Gupta
(2017): ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3`` for
``t0 <= t <= t0 + n * dt``, with pruning every ``dt`` steps; the functions below are
pure in ``step`` and usable inside ``jit``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def one_shot(rate: float) -> tuple[float]:
    """A single prune to ``rate``."""
    check_rates([rate])
    return (rate,)


def iterative(final_rate: float, num_stages: int) -> tuple[float, ...]:
    """Linearly spaced cumulative rates, e.g. ``iterative(0.5, 5) == (0.1, ..., 0.5)``.

    Each value is rounded to 10 decimals so that ``0.1 * 3`` reads as ``0.3``.
    """
    if num_stages < 1:
        raise ValueError("num_stages must be >= 1")
    rates = tuple(round(final_rate * (i + 1) / num_stages, 10) for i in range(num_stages))
    check_rates(rates)
    return rates


def check_rates(rates: Sequence[float]) -> None:
    """Raises if rates are outside [0, 1] or decrease (masks only ever shrink)."""
    prev = 0.0
    for r in rates:
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"rate {r} outside [0, 1]")
        if r < prev:
            raise ValueError(f"rates must be non-decreasing, got {list(rates)}")
        prev = r


def gradual_rate(
    step: jax.Array | int,
    *,
    final_rate: float,
    begin_step: int,
    num_prunes: int,
    frequency: int,
    initial_rate: float = 0.0,
) -> jax.Array:
    """Zhu & Gupta cubic sparsity at ``step`` as a float32 scalar.

    The rate is piecewise constant: it takes the value of the most recent pruning
    step ``t0 + j * dt`` (``j = 0..num_prunes``), is ``initial_rate`` before
    ``begin_step`` and ``final_rate`` after the last pruning step.

    Args:
      step: training step (int or traced int).
      final_rate: ``s_f``.
      begin_step: ``t0``, the first pruning step.
      num_prunes: ``n``; the last pruning step is ``t0 + n * dt``.
      frequency: ``dt``, steps between pruning steps.
      initial_rate: ``s_i``.
    """
    if num_prunes < 1 or frequency < 1:
        raise ValueError("num_prunes and frequency must be >= 1")
    step = jnp.asarray(step, jnp.int32)
    j = jnp.clip((step - begin_step) // frequency, 0, num_prunes)
    progress = j.astype(jnp.float32) / num_prunes
    return jnp.float32(final_rate) + jnp.float32(initial_rate - final_rate) * (1.0 - progress) ** 3


def is_pruning_step(
    step: jax.Array | int, *, begin_step: int, num_prunes: int, frequency: int
) -> jax.Array:
    """Whether ``step`` is one of ``t0, t0 + dt, ..., t0 + n * dt`` (bool scalar)."""
    step = jnp.asarray(step, jnp.int32)
    offset = step - begin_step
    return (offset >= 0) & (offset <= num_prunes * frequency) & (offset % frequency == 0)
