"""Calibration-aware pruning of one linear layer from its input statistics ``X^T X``.

The model-aware part (running the model block by block and collecting ``X^T X`` of
every linear layer) is :mod:`jaxprune.models.capture`; this module only maps
``(kernel, mask, X^T X, n_tokens)`` to ``(kernel, mask)`` for a method name, so it
stays model-agnostic:

* ``"wanda"`` (Sun et al. 2023): per-output selection by ``|w| * ||X_j||``; weights unchanged.
* ``"sparsegpt"`` (Frantar & Alistarh 2023): per-layer count, OBS reconstruction of the rest.
* ``"magnitude"``: per-output selection by ``|w|`` (the calibration-free baseline of the
  same per-output rule; handy for comparisons).

Rates: Wanda and magnitude prune ``floor(rate * in)`` weights in every output; SparseGPT
prunes ``floor(rate * in * out)`` weights per layer (chosen adaptively across outputs).
The experiment's ``pruning.scope`` does not apply to these per-layer methods.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxprune.sparsity.select import num_to_prune
from jaxprune.sparsity.sparsegpt import sparsegpt_prune_layer, sparsegpt_prune_layers
from jaxprune.sparsity.wanda import _nm_mask, prune_per_output, wanda_prune_layer

CALIBRATED_METHODS = ("wanda", "sparsegpt")

LayerPruneFn = Callable[[str, jax.Array, jax.Array, jax.Array, int], tuple[jax.Array, jax.Array]]


def _prune_kernel(kernel: jax.Array, mask: jax.Array, stat: jax.Array, n_tokens: jax.Array, *, method: str,
                  rate: float, pattern: str, n: int, m: int, blocksize: int, damp: float) -> tuple[jax.Array, jax.Array]:
    """One kernel ``(in, out)`` pruned by ``method``: ``(kernel, mask)``."""
    if method == "sparsegpt":
        return sparsegpt_prune_layer(kernel, mask, stat, n_tokens, num_to_prune(rate, kernel.size), pattern=pattern,
                                     n=n, m=m, blocksize=blocksize, damp=damp)
    if method == "wanda":
        sq_norms = stat if stat.ndim == 1 else jnp.diag(stat)
        new = wanda_prune_layer(kernel, mask, sq_norms, rate=rate, pattern=pattern, n=n, m=m)
    else:
        s = jnp.abs(kernel).astype(jnp.float32)
        new = _nm_mask(s, mask, n, m) if pattern == "nm" else \
            prune_per_output(s, mask, num_to_prune(rate, kernel.shape[0]))
    return jnp.where(new, kernel, 0).astype(kernel.dtype), new


@functools.partial(jax.jit, static_argnames=("method", "rate", "pattern", "n", "m", "blocksize", "damp", "split"))
def _prune_layer(kernel: jax.Array, mask: jax.Array, stat: jax.Array, n_tokens: jax.Array, *, method: str,
                 rate: float, pattern: str, n: int, m: int, blocksize: int, damp: float,
                 split: OutputSplit | None = None) -> tuple[jax.Array, jax.Array]:
    """:func:`_prune_kernel` compiled once per shape (and sharding). With ``split`` the kernel's outputs are
    divided over the devices (every output needs only the shared statistic, so no device needs another's
    columns: SparseGPT's row split), the statistic is replicated, and the result goes back to the kernel's
    own sharding."""
    if split is None:
        return _prune_kernel(kernel, mask, stat, n_tokens, method=method, rate=rate, pattern=pattern, n=n, m=m,
                             blocksize=blocksize, damp=damp)
    stat = jax.lax.with_sharding_constraint(stat, NamedSharding(split.mesh, P()))
    w, keep = _prune_kernel(split.to_columns(kernel), split.to_columns(mask), stat, n_tokens, method=method,
                            rate=rate, pattern=pattern, n=n, m=m, blocksize=blocksize, damp=damp)
    return split.back(w), split.back(keep)


@functools.partial(jax.jit, static_argnames=("rate", "pattern", "n", "m", "blocksize", "damp"))
def _sparsegpt_group(kernels: tuple[jax.Array, ...], masks: tuple[jax.Array, ...], stat: jax.Array,
                     n_tokens: jax.Array, *, rate: float, pattern: str, n: int, m: int, blocksize: int,
                     damp: float) -> list[tuple[jax.Array, jax.Array]]:
    """SparseGPT on kernels fed the same inputs, one factorization and column loop for all
    (:func:`jaxprune.sparsity.sparsegpt.sparsegpt_prune_layers`); kernels keep their dtypes."""
    out = sparsegpt_prune_layers(kernels, masks, stat, n_tokens, [num_to_prune(rate, k.size) for k in kernels],
                                 pattern=pattern, n=n, m=m, blocksize=blocksize, damp=damp)
    return [(w.astype(k.dtype), keep) for (w, keep), k in zip(out, kernels)]


@dataclasses.dataclass(frozen=True)
class OutputSplit:
    """How a kernel ``(in, out)`` sharded ``P(rows, cols)`` goes to its outputs split over the devices and
    back, by explicit collectives (XLA's own resharding gathers the whole kernel first):

    * ``cols``: the axes that already split the outputs (they stay, as the major part);
    * ``moved``: axes splitting the inputs that move to the outputs (an all-to-all);
    * ``gathered``: axes splitting the inputs whose outputs do not divide further (an all-gather
      of the inputs only: the result is still split over ``cols`` and ``moved``);
    * ``sliced``: axes the kernel is replicated over (each device keeps its part: no communication).

    Back: the ``sliced`` parts are gathered (the result is split over ``cols`` and ``moved``),
    then the all-to-all reverses and ``gathered`` slices again.
    """

    mesh: jax.sharding.Mesh
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    moved: tuple[str, ...]
    gathered: tuple[str, ...]
    sliced: tuple[str, ...]

    @property
    def spec(self) -> P:
        return P(None, self.cols + self.moved + self.sliced)

    def _kernel_spec(self) -> P:
        return P(self.rows or None, self.cols or None)

    def to_columns(self, x: jax.Array) -> jax.Array:
        def local(b):  # (in / rows, out / cols)
            if self.gathered:
                b = jax.lax.all_gather(b, self.gathered, axis=0, tiled=True)
            if self.moved:
                b = jax.lax.all_to_all(b, self.moved, split_axis=1, concat_axis=0, tiled=True)
            if self.sliced:
                k = b.shape[1] // _size(self.mesh, self.sliced)
                b = jax.lax.dynamic_slice_in_dim(b, jax.lax.axis_index(self.sliced) * k, k, axis=1)
            return b
        return jax.shard_map(local, mesh=self.mesh, in_specs=self._kernel_spec(), out_specs=self.spec,
                             check_vma=False)(x)

    def back(self, x: jax.Array) -> jax.Array:
        def local(b):  # (in, out / devices)
            if self.sliced:
                b = jax.lax.all_gather(b, self.sliced, axis=1, tiled=True)
            if self.moved:
                b = jax.lax.all_to_all(b, self.moved, split_axis=0, concat_axis=1, tiled=True)
            if self.gathered:
                k = b.shape[0] // _size(self.mesh, self.gathered)
                b = jax.lax.dynamic_slice_in_dim(b, jax.lax.axis_index(self.gathered) * k, k, axis=0)
            return b
        return jax.shard_map(local, mesh=self.mesh, in_specs=self.spec, out_specs=self._kernel_spec(),
                             check_vma=False)(x)


def _size(mesh: jax.sharding.Mesh, axes: tuple[str, ...]) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def output_split(kernel: jax.Array) -> OutputSplit | None:
    """How to split a kernel's outputs (axis 1) over as many of its mesh's devices as divide them: its
    output axes, then its input axes, then the axes it is replicated over (the last dropped until the
    product divides). None for an unsharded kernel or a one-device mesh."""
    sh = getattr(kernel, "sharding", None)
    if not isinstance(sh, NamedSharding) or sh.mesh.size == 1 or kernel.ndim != 2:
        return None
    spec = tuple(sh.spec) + (None,) * (2 - len(sh.spec))
    rows, cols = (tuple(a for a in (ax if isinstance(ax, tuple) else (ax,)) if a is not None) for ax in spec)
    rest = tuple(a for a in sh.mesh.axis_names if a not in rows + cols and sh.mesh.shape[a] > 1)
    if kernel.shape[0] % _size(sh.mesh, rows) or kernel.shape[1] % _size(sh.mesh, cols):
        return None  # an uneven sharding: leave the layout to XLA
    extra = [a for a in rows + rest if sh.mesh.shape[a] > 1]
    while extra and (kernel.shape[1] // _size(sh.mesh, cols)) % _size(sh.mesh, tuple(extra)):
        extra.pop()
    moved = tuple(a for a in extra if a in rows)
    split = OutputSplit(sh.mesh, rows, cols, moved, tuple(a for a in rows if a not in moved),
                        tuple(a for a in extra if a in rest))
    return split if _size(sh.mesh, split.cols + split.moved + split.sliced) > 1 else None


def layer_pruner(
    method: str,
    rate: float = 0.5,
    *,
    pattern: str = "unstructured",
    n: int = 2,
    m: int = 4,
    blocksize: int = 128,
    damp: float = 0.01,
) -> LayerPruneFn:
    """``fn(path, kernel, mask, stat, n_tokens) -> (kernel, mask)`` for ``method``.

    ``kernel`` and ``mask`` are ``(in, out)``; ``stat`` is ``X^T X`` over the calibration
    tokens, ``(in, in)``, or for Wanda and magnitude also just its diagonal (the squared
    input norms, ``(in,)``). ``fn.statistic`` names the cheapest statistic the method
    needs (``"xtx"`` for SparseGPT, ``"sq_norm"`` otherwise), which
    :func:`jaxprune.models.capture.calibrate_and_prune` then collects. The returned mask
    is a subset of ``mask`` and the kernel is zero wherever the mask is False.
    ``fn.group(paths, kernels, masks, stat, n_tokens)`` prunes several kernels that share
    one statistic (q/k/v, gate/up) and returns their ``(kernel, mask)`` pairs, the same as
    ``fn`` on each (SparseGPT computes the shared inverse Hessian factor once).

    A kernel sharded over a mesh is pruned on all its devices, its outputs split over
    them (:func:`output_split`), and comes back in its own sharding: no full kernel is
    gathered onto one device unless the kernel is replicated to begin with.
    """
    if pattern not in ("unstructured", "nm"):
        raise ValueError(f"calibrated pruning supports pattern 'unstructured' or 'nm', got {pattern!r}")
    if method not in CALIBRATED_METHODS + ("magnitude",):
        raise ValueError(f"unknown calibrated method {method!r}; known: {CALIBRATED_METHODS + ('magnitude',)}")

    def fn(path: str, kernel: jax.Array, mask: jax.Array, xtx: jax.Array, n_tokens: int):
        del path
        return _prune_layer(kernel, mask, xtx, jnp.asarray(n_tokens, jnp.float32), method=method, rate=float(rate),
                            pattern=pattern, n=n, m=m, blocksize=blocksize, damp=damp, split=output_split(kernel))

    def group(paths: list[str], kernels: list[jax.Array], masks: list[jax.Array], xtx: jax.Array,
              n_tokens: int) -> list[tuple[jax.Array, jax.Array]]:
        """``fn`` for kernels fed the same inputs (one statistic): SparseGPT prunes unsharded ones
        together (same results as one by one, see ``sparsegpt_prune_layers``), the rest go one by one."""
        if method != "sparsegpt" or len(kernels) < 2 or any(output_split(k) is not None for k in kernels):
            return [fn(p, k, mk, xtx, n_tokens) for p, k, mk in zip(paths, kernels, masks)]
        return _sparsegpt_group(tuple(kernels), tuple(masks), xtx, jnp.asarray(n_tokens, jnp.float32),
                                rate=float(rate), pattern=pattern, n=n, m=m, blocksize=blocksize, damp=damp)

    fn.statistic = "xtx" if method == "sparsegpt" else "sq_norm"
    fn.group = group
    return fn
