"""The optimizer and the pure, jit-compiled train and eval steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxprune.sparsity.masks import apply_masks
from jaxprune.sparsity.transform import masked_update
from jaxprune.training.state import TrainState


def lr_schedule(phase: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup to phase.lr, then cosine decay to lr * min_lr_ratio at phase.steps."""
    steps = max(phase.steps, 1)
    warmup = min(phase.warmup_steps, steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else phase.lr, peak_value=phase.lr, warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1), end_value=phase.lr * phase.min_lr_ratio)


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices (kernels, embeddings) only, not on norms and biases."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(phase: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
    """AdamW with warmup+cosine and global-norm clipping, wrapped in the masked update."""
    inner = optax.chain(
        optax.clip_by_global_norm(phase.grad_clip) if phase.grad_clip > 0 else optax.identity(),
        optax.adamw(lr_schedule(phase), b1=phase.b1, b2=phase.b2, weight_decay=phase.weight_decay,
                    mask=_decay_mask),
    )
    return masked_update(inner)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood, float32. logits (B, T, V), targets (B, T)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def distillation_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Per-token KL(teacher || student) of the temperature-softened distributions, times T^2 (Hinton et al.
    2015, so its gradients keep the scale of cross-entropy's as T changes), float32. logits (B, T, V)."""
    t = jnp.float32(temperature)
    log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    return (jnp.exp(log_p) * (log_p - log_q)).sum(-1) * t * t


def hidden_state_mse(student: jax.Array, teacher: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Mean squared error between block outputs (B, T, E), each token's vector first scaled to unit RMS (what
    the next block's RMS/LayerNorm sees, before its gain), float32 scalar. The scaling makes blocks of very
    different residual norms weigh alike and bounds the loss: 0 for equal directions, 2 for orthogonal ones."""
    def unit_rms(h):
        h = h.astype(jnp.float32)
        return h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + eps)
    return jnp.mean(jnp.square(unit_rms(student) - unit_rms(teacher)))


def chunked_token_losses(head: Callable[[jax.Array], jax.Array], x: jax.Array, targets: jax.Array, chunk: int,
                         teacher_head: Callable[[jax.Array], jax.Array] | None = None,
                         teacher_x: jax.Array | None = None, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Summed `cross_entropy` (and summed `distillation_kl` to the teacher) over all (B, T) tokens, running the
    LM head on `chunk` positions of every row at a time, rematerialised in the backward pass: only
    (B, chunk, V) logits are ever live instead of (B, T, V). x, teacher_x: final hidden states (B, T, E);
    head maps (B, c, E) -> (B, c, V) float32 logits. Chunks run over positions, so batch sharding is kept.
    Returns (ce_sum, kl_sum); kl_sum is 0 without a teacher."""
    b, t = targets.shape
    n = -(-t // chunk)
    pad = n * chunk - t

    def split(a):  # (B, T, ...) -> (n, B, chunk, ...), zero-padded at the end
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return jnp.moveaxis(a.reshape(b, n, chunk, *a.shape[2:]), 1, 0)

    weight = split(jnp.ones((b, t), jnp.float32))
    xs = (split(x), split(targets), weight, None if teacher_x is None else split(teacher_x))

    @jax.checkpoint
    def body(carry, inp):
        xc, tc, wc, txc = inp
        logits = head(xc)
        ce = (cross_entropy(logits, tc) * wc).sum()
        kl = jnp.float32(0.0) if txc is None else (
            distillation_kl(logits, jax.lax.stop_gradient(teacher_head(txc)), temperature) * wc).sum()
        return (carry[0] + ce, carry[1] + kl), None

    (ce_sum, kl_sum), _ = jax.lax.scan(body, (jnp.float32(0.0), jnp.float32(0.0)), xs)
    return ce_sum, kl_sum


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformationExtraArgs, grad_accum: int = 1,
                    loss: str = "ce", kd_temperature: float = 2.0, kd_alpha: float = 0.5,
                    head: Callable[[Any, jax.Array], jax.Array] | None = None, loss_chunk: int = 0,
                    hidden_layers: tuple[int, ...] = (), hidden_weight: float = 1.0,
                    ) -> Callable[..., tuple[TrainState, dict]]:
    """Returns train_step(state, batch[, teacher]) with batch int32 (B, T+1); pure, to be jitted.

    loss: "ce" (cross-entropy), "kd" (`distillation_kl` to the teacher's logits) or "ce+kd"
    ((1 - kd_alpha) ce + kd_alpha kd). `teacher` are the frozen params of the teacher (same model); its
    logits are computed in the same step, under stop_gradient, and it is never updated.
    loss_chunk > 0: the losses run through `chunked_token_losses` with `head(params, hidden)` as the LM
    head (apply_fn must accept hidden=True), so the (B, T, V) logits are never all live.
    hidden_layers (kd and ce+kd only): intermediate-layer distillation, + hidden_weight x the
    mean over those blocks of `hidden_state_mse` between the student's and the teacher's block outputs.
    """
    if loss not in ("ce", "kd", "ce+kd"):
        raise ValueError(f"loss must be 'ce', 'kd' or 'ce+kd', got {loss!r}")
    if loss_chunk and head is None:
        raise ValueError("loss_chunk needs the model's LM head function")
    match_hidden = bool(hidden_layers)
    if match_hidden and loss == "ce":
        raise ValueError("hidden-state matching needs a teacher: loss 'kd' or 'ce+kd'")

    def forward(params, inputs, **kw):
        """apply_fn's output and, when matching hidden states, the chosen blocks' outputs (else None)."""
        if not match_hidden:
            return apply_fn({"params": params}, inputs, **kw), None
        out, inter = apply_fn({"params": params}, inputs, mutable=["intermediates"], **kw)
        return out, [inter["intermediates"][f"out_{i}"][0] for i in hidden_layers]

    def token_losses(params, tokens, rng, teacher):
        """Mean cross-entropy, mean KL to the teacher (None for loss "ce") and the hidden-state MSE (None
        unless matching), chunked or not."""
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        train = dict(deterministic=False, rngs={"dropout": rng})
        if loss_chunk:
            x, hs = forward(params, inputs, hidden=True, **train)
            t_x, t_hs = (None, None) if loss == "ce" else jax.lax.stop_gradient(forward(teacher, inputs, hidden=True))
            ce_sum, kl_sum = chunked_token_losses(lambda h: head(params, h), x, targets, loss_chunk,
                                                  None if loss == "ce" else (lambda h: head(teacher, h)), t_x,
                                                  kd_temperature)
            ce, kl = ce_sum / targets.size, None if loss == "ce" else kl_sum / targets.size
        else:
            logits, hs = forward(params, inputs, **train)
            ce = cross_entropy(logits, targets).mean()
            if loss == "ce":
                return ce, None, None
            t_logits, t_hs = jax.lax.stop_gradient(forward(teacher, inputs))
            kl = distillation_kl(logits, t_logits, kd_temperature).mean()
        mse = None if hs is None else sum(hidden_state_mse(a, b) for a, b in zip(hs, t_hs)) / len(hs)
        return ce, kl, mse

    def loss_fn(params, tokens, rng, teacher):
        ce, kl, mse = token_losses(params, tokens, rng, teacher)
        if kl is None:
            return ce, {"ce": ce}
        total = kl if loss == "kd" else (1.0 - kd_alpha) * ce + kd_alpha * kl
        if mse is None:
            return total, {"ce": ce, "kl": kl}
        return total + hidden_weight * mse, {"ce": ce, "kl": kl, "hidden_mse": mse}

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: jax.Array, teacher: Any = None) -> tuple[TrainState, dict]:
        if loss != "ce" and teacher is None:
            raise ValueError(f"loss={loss!r} needs the teacher's params")
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if grad_accum == 1:
            (value, parts), grads = grad_fn(state.params, batch, rng, teacher)
        else:
            micro = batch.reshape(grad_accum, batch.shape[0] // grad_accum, *batch.shape[1:])

            def body(carry, xs):
                i, mb = xs
                out = grad_fn(state.params, mb, jax.random.fold_in(rng, i), teacher)
                return jax.tree.map(jnp.add, carry, out), None

            shapes = jax.eval_shape(grad_fn, state.params, micro[0], rng, teacher)
            zero = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
            total, _ = jax.lax.scan(body, zero, (jnp.arange(grad_accum), micro))
            (value, parts), grads = jax.tree.map(lambda x: x / grad_accum, total)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, masks=state.masks)
        params = apply_masks(optax.apply_updates(state.params, updates), state.masks)
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads)}
        if loss != "ce":
            metrics.update(parts)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(apply_fn: Callable) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]:
    """Returns eval_step(params, batch) -> (summed NLL, token count); pure, to be jitted."""

    def eval_step(params: Any, batch: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = apply_fn({"params": params}, batch[:, :-1])
        nll = cross_entropy(logits, batch[:, 1:])
        return nll.sum(), jnp.asarray(nll.size, jnp.float32)

    return eval_step
