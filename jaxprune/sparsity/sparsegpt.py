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
the accumulated errors update all later inputs at once (lazy batch updates).

The paper's weight is ``(out, in)`` = (rows, columns); this works on the kernel's own
``(in, out)`` layout, so the paper's column ``j`` is row ``j`` here (contiguous in memory). Everything runs in float32. Inputs that never fire (``diag H == 0``)
get ``H_jj = 1`` and zero weights. Counts: the unstructured target ``k`` is reached
exactly per layer (block ``b`` prunes up to ``floor(k * end_b / in)`` entries in total,
the last block up to ``k``); entries pruned before (the given mask) are pruned first
and stay pruned.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxprune.sparsity.select import nm_keep, order_keys, select_smallest


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
    """Upper-triangular ``U`` with ``H^-1 = U^T U`` (via two Cholesky factorizations)."""
    eye = jnp.eye(h.shape[0], dtype=h.dtype)
    hinv = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), eye)
    hinv = 0.5 * (hinv + hinv.T)
    return jnp.linalg.cholesky(hinv).T


@functools.partial(jax.jit, static_argnames=("pattern", "n", "m", "blocksize", "damp"))
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
    if pattern not in ("unstructured", "nm"):
        raise ValueError(f"sparsegpt supports pattern 'unstructured' or 'nm', got {pattern!r}")
    cols, rows = kernel.shape  # the paper's columns are our inputs (axis 0), its rows our outputs
    if pattern == "nm" and (blocksize % m or cols % m):
        raise ValueError(f"N:M needs blocksize ({blocksize}) and the input size ({cols}) divisible by m={m}")
    h, dead = damped_hessian(xtx, n_tokens, damp)
    u = inverse_cholesky_upper(h)  # (in, in), H^-1 = U^T U
    w = jnp.where(dead[:, None] | ~mask, 0.0, kernel.astype(jnp.float32))  # (in, out)
    k = jnp.asarray(k, jnp.int32)
    bs = min(blocksize, cols)
    n_blocks, rest = divmod(cols, bs)

    def block(i1: jax.Array, size: int, is_last: jax.Array, w: jax.Array, keep: jax.Array,
              pruned_before: jax.Array):
        """Prunes inputs ``[i1, i1 + size)`` and spreads their errors onto the later inputs."""
        i2 = i1 + size
        w1 = jax.lax.dynamic_slice_in_dim(w, i1, size)  # (B, out)
        keep1 = jax.lax.dynamic_slice_in_dim(keep, i1, size)
        u1 = jax.lax.dynamic_slice(u, (i1, i1), (size, size))  # (B, B)
        d1 = jnp.diag(u1)  # (B,)
        if pattern == "unstructured":
            # floor(k * i2 / cols) in float32: only the last block's total must be exact
            target = jnp.where(is_last, k, jnp.minimum(
                jnp.floor(k.astype(jnp.float32) * (i2.astype(jnp.float32) / cols)).astype(jnp.int32), k))
            keys = jnp.where(keep1, order_keys(w1 ** 2 / d1[:, None] ** 2), jnp.uint32(0))
            prune1 = select_smallest([keys], jnp.maximum(target - pruned_before, 0))[0]
            keep1 = keep1 & ~prune1
            pruned_before = pruned_before + jnp.sum(~keep1, dtype=jnp.int32)

        def step(i, carry):
            w1, keep1, err1 = carry
            if pattern == "nm":
                def choose(keep1):
                    grp = jax.lax.dynamic_slice_in_dim(w1, i, m)  # (m, out)
                    dg = jax.lax.dynamic_slice_in_dim(d1, i, m)
                    kg = jax.lax.dynamic_slice_in_dim(keep1, i, m)
                    keys = jnp.where(kg, order_keys(grp ** 2 / dg[:, None] ** 2), jnp.uint32(0))
                    return jax.lax.dynamic_update_slice_in_dim(keep1, kg & nm_keep(keys, n, m), i, axis=0)
                keep1 = jax.lax.cond(i % m == 0, choose, lambda x: x, keep1)
            wi = w1[i]  # (out,)
            q = jnp.where(keep1[i], wi, 0.0)
            e = (wi - q) / d1[i]
            w1 = w1 - u1[i][:, None] * e[None, :]  # U is upper triangular: only inputs >= i change
            w1 = w1.at[i].set(q)
            return w1, keep1, err1.at[i].set(e)

        w1, keep1, err1 = jax.lax.fori_loop(0, size, step, (w1, keep1, jnp.zeros_like(w1)))
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

    carry = jax.lax.fori_loop(0, n_blocks, full_block, (w, mask, jnp.int32(0)))
    if rest:
        carry = block(jnp.int32(n_blocks * bs), rest, jnp.bool_(True), *carry)
    w, keep, _ = carry
    return jnp.where(keep, w, 0.0), keep
