"""SparseGPT: one-shot pruning with OBS weight reconstruction (Frantar & Alistarh 2023,
"SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", arXiv:2301.00774).

For one linear layer ``y = x @ W`` with calibration inputs ``X`` (tokens x in), SparseGPT
minimises ``||X W - X W_hat||^2`` under a sparsity mask. With ``H = 2 X^T X / n`` (plus a
dampening ``lambda = damp * mean(diag H)``) and the upper Cholesky factor ``U`` of
``H^-1`` (``H^-1 = U^T U``), it visits the input dimensions in order, in blocks of
``blocksize``. At the start of a block it chooses the mask of that block adaptively by
the OBS saliency ``w^2 / U_jj^2`` (unstructured; for N:M at the start of every group of
``m`` inputs), then for each input ``j`` zeroes the pruned weights and spreads the error
``(w - q) / U_jj`` onto the not yet visited inputs (``- err * U[j, j:]``); after a block
the accumulated errors update all later inputs at once (lazy batch updates). The same
lazy update also runs one level down: the per-input rank-1 updates touch only a
sub-block of ``_SUB`` inputs, whose errors reach the rest of its block by one matmul
(the same arithmetic, regrouped: on a CPU the per-input loop is what costs).

The paper's weight is ``(out, in)`` = (rows, columns); this works on the kernel's own
``(in, out)`` layout, so the paper's column ``j`` is row ``j`` here (contiguous in memory).
Everything runs in float32. Inputs that never fire (``diag H == 0``)
get ``H_jj = 1`` and zero weights. Counts: the unstructured target ``k`` is reached
exactly per layer (block ``b`` prunes up to ``floor(k * end_b / in)`` entries in total,
the last block up to ``k``); entries pruned before (the given mask) are pruned first
and stay pruned.

Layers fed the same inputs (q/k/v, gate/up) share ``H`` and so ``U``:
:func:`sparsegpt_prune_layers` factors it once and runs one column loop over their
outputs side by side (each output's reconstruction depends only on its own column, and
the counts and block targets stay per layer, so the result is each layer pruned alone).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.sparsity.select import nm_keep, order_keys, select_smallest_each

# Inputs per sub-block of the column loop (see _prune); a multiple of every N:M group size m used.
_SUB = 16


def damped_hessian(xtx: jax.Array, n_tokens: jax.Array | int, damp: float = 0.01) -> tuple[jax.Array, jax.Array]:
    """``(H, dead)``: ``H = 2 X^T X / n`` with dead inputs set to 1 on the diagonal, plus
    ``damp * mean(diag H) * I``; ``dead`` marks inputs with ``diag(X^T X) == 0``."""
    h = 2.0 * xtx.astype(jnp.float32) / jnp.asarray(n_tokens, jnp.float32)
    diag = jnp.diag(h)
    dead = diag == 0
    h = h + jnp.diag(jnp.where(dead, 1.0, 0.0))
    lam = damp * jnp.mean(jnp.diag(h))
    return h + lam * jnp.eye(h.shape[0], dtype=jnp.float32), dead


def inverse_cholesky_upper(h: jax.Array) -> jax.Array:
    """Upper-triangular ``U`` with ``H^-1 = U^T U``, from one Cholesky factorization: with ``J``
    the order reversal, ``J H J = L L^T`` gives ``H^-1 = (J L^-1 J)^T (J L^-1 J)``, and
    ``J L^-1 J`` is upper triangular with a positive diagonal, hence the (unique) factor."""
    eye = jnp.eye(h.shape[0], dtype=h.dtype)
    lower = jnp.linalg.cholesky(h[::-1, ::-1])
    return jax.scipy.linalg.solve_triangular(lower, eye, lower=True)[::-1, ::-1]


def _prune(w: jax.Array, keep: jax.Array, u: jax.Array, ks: jax.Array, widths: tuple[int, ...], *, pattern: str,
           n: int, m: int, blocksize: int, sub: int) -> tuple[jax.Array, jax.Array]:
    """The column loop over inputs of ``w`` ``(in, out)`` (float32, zero where ``keep`` is False), whose
    outputs are ``len(widths)`` layers side by side (``widths`` outputs each, pruned to ``ks[s]`` entries
    each if unstructured). Returns ``(w, keep)`` before the final masking."""
    cols = w.shape[0]
    bs = min(blocksize, cols)
    n_blocks, rest = divmod(cols, bs)
    edges = np.cumsum((0,) + widths)

    def block(i1: jax.Array, size: int, is_last: jax.Array, w: jax.Array, keep: jax.Array,
              pruned_before: jax.Array):
        """Prunes inputs ``[i1, i1 + size)`` and spreads their errors onto the later inputs."""
        i2 = i1 + size
        w1 = jax.lax.dynamic_slice_in_dim(w, i1, size)  # (B, out)
        keep1 = jax.lax.dynamic_slice_in_dim(keep, i1, size)
        u1 = jax.lax.dynamic_slice(u, (i1, i1), (size, size))  # (B, B)
        d1 = jnp.diag(u1)  # (B,)
        if pattern == "unstructured":
            # floor(k * i2 / cols) in float32: only the last block's totals must be exact
            target = jnp.where(is_last, ks, jnp.minimum(
                jnp.floor(ks.astype(jnp.float32) * (i2.astype(jnp.float32) / cols)).astype(jnp.int32), ks))
            keys = jnp.where(keep1, order_keys(w1 ** 2 / d1[:, None] ** 2), jnp.uint32(0))
            segs = [keys[:, a:b] for a, b in zip(edges[:-1], edges[1:])]
            prune1 = jnp.concatenate(select_smallest_each(segs, jnp.maximum(target - pruned_before, 0)), axis=1)
            keep1 = keep1 & ~prune1
            pruned_before = pruned_before + jnp.stack(
                [jnp.sum(~s, dtype=jnp.int32) for s in jnp.split(keep1, edges[1:-1], axis=1)])

        # Inside the block, sub-blocks of `sub` inputs: per-input rank-1 updates touch only the
        # sub-block, its accumulated errors reach the rest of the block by one matmul.
        sb = sub if size % sub == 0 and (pattern != "nm" or sub % m == 0) else size

        def sub_block(j, carry):
            w1, keep1, err1 = carry
            j1 = j * sb
            ws = jax.lax.dynamic_slice_in_dim(w1, j1, sb)  # (S, out)
            ks1 = jax.lax.dynamic_slice_in_dim(keep1, j1, sb)
            us = jax.lax.dynamic_slice(u1, (j1, j1), (sb, sb))

            def step(i, c):
                ws, ks1, es = c
                if pattern == "nm":
                    def choose(ks1):
                        grp = jax.lax.dynamic_slice_in_dim(ws, i, m)  # (m, out)
                        dg = jax.lax.dynamic_slice_in_dim(jnp.diag(us), i, m)
                        kg = jax.lax.dynamic_slice_in_dim(ks1, i, m)
                        keys = jnp.where(kg, order_keys(grp ** 2 / dg[:, None] ** 2), jnp.uint32(0))
                        return jax.lax.dynamic_update_slice_in_dim(ks1, kg & nm_keep(keys, n, m), i, axis=0)
                    ks1 = jax.lax.cond(i % m == 0, choose, lambda x: x, ks1)
                wi = ws[i]  # (out,)
                q = jnp.where(ks1[i], wi, 0.0)
                e = (wi - q) / us[i, i]
                ws = ws - us[i][:, None] * e[None, :]  # U is upper triangular: only inputs >= i change
                ws = ws.at[i].set(q)
                return ws, ks1, es.at[i].set(e)

            ws, ks1, es = jax.lax.fori_loop(0, sb, step, (ws, ks1, jnp.zeros_like(ws)))
            later = jnp.arange(size) >= j1 + sb
            upd = jax.lax.dynamic_slice_in_dim(u1, j1, sb).T @ es  # (B, out); zero above the sub-block
            w1 = jax.lax.dynamic_update_slice_in_dim(w1 - jnp.where(later[:, None], upd, 0.0), ws, j1, axis=0)
            keep1 = jax.lax.dynamic_update_slice_in_dim(keep1, ks1, j1, axis=0)
            return w1, keep1, jax.lax.dynamic_update_slice_in_dim(err1, es, j1, axis=0)

        w1, keep1, err1 = jax.lax.fori_loop(0, size // sb, sub_block, (w1, keep1, jnp.zeros_like(w1)))
        w = jax.lax.dynamic_update_slice_in_dim(w, jnp.where(keep1, w1, 0.0), i1, axis=0)
        keep = jax.lax.dynamic_update_slice_in_dim(keep, keep1, i1, axis=0)
        # lazy batch update of the later inputs (U's rows i1..i2 are zero left of i1; rows < i2 are kept)
        later = jnp.arange(cols) >= i2
        upd = jax.lax.dynamic_slice_in_dim(u, i1, size).T @ err1  # (in, out)
        w = w - jnp.where(later[:, None], upd, 0.0)
        return w, keep, pruned_before

    # All full blocks share one compiled body; a shorter last block (if any) runs after them.
    def full_block(b, carry):
        return block(b * bs, bs, (b == n_blocks - 1) & (rest == 0), *carry)

    carry = jax.lax.fori_loop(0, n_blocks, full_block, (w, keep, jnp.zeros((len(widths),), jnp.int32)))
    if rest:
        carry = block(jnp.int32(n_blocks * bs), rest, jnp.bool_(True), *carry)
    return carry[0], carry[1]


_STATIC = ("pattern", "n", "m", "blocksize", "damp", "sub")


@functools.partial(jax.jit, static_argnames=_STATIC)
def sparsegpt_prune_layers(
    kernels: Sequence[jax.Array],
    masks: Sequence[jax.Array],
    xtx: jax.Array,
    n_tokens: jax.Array | int,
    ks: Sequence[jax.Array | int] | None = None,
    *,
    pattern: str = "unstructured",
    n: int = 2,
    m: int = 4,
    blocksize: int = 128,
    damp: float = 0.01,
    sub: int = _SUB,
) -> list[tuple[jax.Array, jax.Array]]:
    """:func:`sparsegpt_prune_layer` for several kernels ``(in, out_i)`` fed the same inputs (q/k/v,
    gate/up): one inverse Hessian factor and one column loop over their outputs side by side. Every
    output's reconstruction depends only on its own weights and mask, and unstructured counts stay per
    layer (``ks[i]``, the block targets per layer), so each result equals that layer pruned alone."""
    if pattern not in ("unstructured", "nm"):
        raise ValueError(f"sparsegpt supports pattern 'unstructured' or 'nm', got {pattern!r}")
    cols = kernels[0].shape[0]
    if any(k.shape[0] != cols for k in kernels):
        raise ValueError(f"kernels fed the same inputs need the same input size, got {[k.shape for k in kernels]}")
    if pattern == "nm" and (blocksize % m or cols % m):
        raise ValueError(f"N:M needs blocksize ({blocksize}) and the input size ({cols}) divisible by m={m}")
    h, dead = damped_hessian(xtx, n_tokens, damp)
    u = inverse_cholesky_upper(h)  # (in, in), H^-1 = U^T U
    mask = jnp.concatenate(masks, axis=1)
    w = jnp.concatenate([k.astype(jnp.float32) for k in kernels], axis=1)
    w = jnp.where(dead[:, None] | ~mask, 0.0, w)  # (in, out)
    ks = jnp.stack([jnp.asarray(k, jnp.int32) for k in (ks if ks is not None else [0] * len(kernels))])
    widths = tuple(int(k.shape[1]) for k in kernels)
    w, keep = _prune(w, mask, u, ks, widths, pattern=pattern, n=n, m=m, blocksize=blocksize, sub=sub)
    w = jnp.where(keep, w, 0.0)
    cut = np.cumsum(widths)[:-1]
    return list(zip(jnp.split(w, cut, axis=1), jnp.split(keep, cut, axis=1)))


@functools.partial(jax.jit, static_argnames=_STATIC[:-1])
def sparsegpt_prune_layer(
    kernel: jax.Array,
    mask: jax.Array,
    xtx: jax.Array,
    n_tokens: jax.Array | int,
    k: jax.Array | int = 0,
    *,
    pattern: str = "unstructured",
    n: int = 2,
    m: int = 4,
    blocksize: int = 128,
    damp: float = 0.01,
) -> tuple[jax.Array, jax.Array]:
    """Prunes one kernel ``(in, out)`` and reconstructs the remaining weights.

    Args:
      kernel: weights ``(in, out)``.
      mask: current mask (True = keep); the new mask is a subset of it.
      xtx: ``X^T X`` summed over the calibration tokens, ``(in, in)``.
      n_tokens: number of calibration tokens summed into ``xtx``.
      k: unstructured: total entries of this layer to prune (cumulative, see
        :func:`jaxprune.sparsity.select.num_to_prune`); ignored for N:M.
      pattern: ``"unstructured"`` or ``"nm"`` (keep ``n`` of every ``m`` consecutive inputs).
      blocksize: inputs per lazy-update block (the paper's ``B = 128``); for N:M a multiple of ``m``.
      damp: dampening as a fraction of ``mean(diag H)``.

    Returns:
      ``(kernel, mask)``: the updated float32 kernel (zero where the mask is False) and the new mask.
    """
    return sparsegpt_prune_layers([kernel], [mask], xtx, n_tokens, [k], pattern=pattern, n=n, m=m,
                                  blocksize=blocksize, damp=damp)[0]
