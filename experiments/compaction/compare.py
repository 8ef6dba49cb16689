"""Quality at equal size: structured-and-compacted vs unstructured, from the trained dense GPT.

Loads the final dense checkpoint of the headline run (preset "nano", books; default
``runs/gpt_lambada``), prunes 50 % of the prunable MLP/attention kernel weights

* ``neuron+head`` (layerwise): half of the MLP neurons and half of the heads of every
  block (lowest L1 norm), compacted into a smaller dense model (uniform widths);
* ``neuron+head`` (global): the same counts, ranked across blocks (non-uniform widths);
* ``unstructured``: global magnitude at exactly the same number of nonzero kernel
  weights (a masked dense model);

checks that each compacted model's logits equal its masked model's, and evaluates
held-out perplexity on the books validation split (the run's own held-out batches).
With ``--finetune_steps N`` each pruned model is also fine-tuned for N steps
(the run's fine-tune phase settings; the compacted models as ordinary dense models,
the unstructured one with its masks) and evaluated again.

    .venv/bin/python experiments/compaction/compare.py [--run runs/gpt_lambada] [--finetune_steps 0]

Writes ``experiments/compaction/compare_ft<N>.jsonl`` (one row per model) and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxprune import experiment, sparsity
from jaxprune.config import default_config
from jaxprune.data import corpus
from jaxprune.models import build_model, param_count
from jaxprune.models.compact import compact_model, prune_structured
from jaxprune.training.loop import final_state
from jaxprune.training.state import create_state
from jaxprune.training.step import make_eval_step, make_optimizer, make_train_step

HERE = Path(__file__).resolve().parent


def _merged(c: ml_collections.ConfigDict, saved: dict) -> ml_collections.ConfigDict:
    """The default config overridden by a run's saved config.json values (keys added since keep defaults)."""
    for k, v in saved.items():
        if isinstance(v, dict) and isinstance(c.get(k), ml_collections.ConfigDict):
            _merged(c[k], v)
            continue
        if isinstance(c.get(k), tuple) and isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        c[k] = v
    return c


def heldout_ppl(model, params, batches) -> float:
    step = jax.jit(make_eval_step(model.apply))
    nll = tokens = 0.0
    for b in batches:
        s, n = step(params, jnp.asarray(b))
        nll, tokens = nll + float(s), tokens + float(n)
    return float(np.exp(nll / tokens))


def finetune(model, params, masks, exp: experiment.Experiment, steps: int) -> tuple[dict, float]:
    phase = ml_collections.ConfigDict(exp.config.finetune.to_dict())
    phase.steps = steps
    tx = make_optimizer(phase)
    state = create_state(params, tx, masks, exp.config.seed + 1)
    step = jax.jit(make_train_step(model.apply, tx, phase.grad_accum), donate_argnums=0)
    batches = corpus.train_batches(exp.train_tokens, exp.seq_len, phase.batch_size, exp.config.seed + 1)
    t0 = time.time()
    for i in range(steps):
        state, _ = step(state, jnp.asarray(batches[i]))
    return state.params, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/gpt_lambada")
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--finetune_steps", type=int, default=0)
    args = ap.parse_args()
    run = Path(args.run)
    saved = json.loads((run / "config.json").read_text())
    exp = experiment.Experiment(_merged(default_config(), saved["config"]), run, progress=False, read_only=True)
    dense_stage = experiment.plan(exp.config)[0]
    state = final_state(run / dense_stage.name, exp._abstract_state(dense_stage, masked=False),
                        {"digest": exp.digest, "phase": dense_stage.name})
    params = jax.tree.map(np.asarray, state.params)
    cfg, model = exp.model_cfg, exp.model
    heldout = [np.asarray(b) for b in exp.heldout]
    base = sparsity.create_masks(params, exp.config.pruning.include, exp.config.pruning.exclude)
    prunable = sum(int(np.prod(m.shape)) for m in jax.tree.leaves(base))
    rows = [dict(model="dense", params=param_count(cfg), nonzero_kernel=prunable,
                 ppl=heldout_ppl(model, params, heldout))]
    print(rows[-1], flush=True)

    variants = []
    for scope in ("layerwise", "global"):
        masks = prune_structured(cfg, params, base, args.rate, scope=scope)
        c2, p2 = compact_model(cfg, params, masks)
        want = model.apply({"params": sparsity.apply_masks(params, masks)}, jnp.asarray(heldout[0][:4, :-1]))
        got = build_model(c2).apply({"params": p2}, jnp.asarray(heldout[0][:4, :-1]))
        err = float(jnp.max(jnp.abs(got - want)))
        assert err < 1e-3, err
        nz = sum(int(np.sum(m)) for m in jax.tree.leaves(masks))
        variants.append((f"neuron+head {scope} (compacted)", build_model(c2), p2, None,
                         dict(params=param_count(c2), nonzero_kernel=nz, max_logit_diff=err,
                              layer_d_ff=list(c2.layer_d_ff), layer_n_head=list(c2.layer_n_head))))
        n_struct = nz
    masks_u = sparsity.prune(params, base, 1.0 - n_struct / prunable)  # same nonzero count as structured
    nz_u = sum(int(np.sum(m)) for m in jax.tree.leaves(masks_u))
    variants.append(("unstructured global magnitude (masked)", model, sparsity.apply_masks(params, masks_u), masks_u,
                     dict(params=param_count(cfg), nonzero_kernel=nz_u)))

    for name, mdl, p, masks, info in variants:
        row = dict(model=name, **info, ppl=heldout_ppl(mdl, p, heldout))
        if args.finetune_steps:
            p_ft, wall = finetune(mdl, p, masks, exp, args.finetune_steps)
            row.update(finetune_steps=args.finetune_steps, finetune_wall_s=round(wall, 1),
                       ppl_finetuned=heldout_ppl(mdl, p_ft, heldout))
        rows.append(row)
        print(row, flush=True)

    out = HERE / f"compare_ft{args.finetune_steps}.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ft = args.finetune_steps
    print(f"\n| model | params | nonzero MLP/attn kernel weights | held-out ppl |" + (f" ppl after {ft} steps |" if ft else ""))
    print("|---|---:|---:|---:|" + ("---:|" if ft else ""))
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['nonzero_kernel']:,} | {r['ppl']:.2f} |"
              + (f" {r['ppl_finetuned']:.2f} |" if ft and 'ppl_finetuned' in r else (" – |" if ft else "")))


if __name__ == "__main__":
    main()
