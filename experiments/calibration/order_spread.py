"""SparseGPT 2:4 on SmolLM2-135M: jaxprune vs the reference implementation over K calibration orders.

    python scripts/fetch_smollm2.py
    git clone https://github.com/IST-DASLab/sparsegpt /tmp/sparsegpt-ref   # commit 147d2159dc4f3e9f73e47b32c04d7b3708f44436
    JAXPRUNE_DATA_DIR=/work/shared/data python experiments/calibration/order_spread.py \\
        --reference-dir /tmp/sparsegpt-ref --orders 8 --work /tmp/order_spread
    python experiments/calibration/order_spread.py --analyse --work /tmp/order_spread   # table + per-block divergence

Both sides start from the same float32 weights (the GGUF imported by jaxprune, exported with
``jaxprune.models.export_hf`` and loaded by the reference's own ``get_llama``) and get the same token
sets: the 32 x 512 calibration windows of ``compare.py`` (seed 0, books train split), in K orders
(order 0: as drawn; order k: a fixed permutation of the same windows). SparseGPT's Hessian is a sum
over tokens, so the order changes only float rounding; the spread over orders is therefore the
method's sensitivity to rounding in the propagated block inputs, on the same data, and any
systematic difference between the sides' means is procedural.

* jaxprune: ``calibrate_and_prune`` with ``layer_pruner("sparsegpt", 0.5, pattern="nm")`` (2:4),
  mini-batches of ``--calib-batch`` sequences.
* reference: the unmodified ``llama.llama_sequential`` + ``sparsegpt.SparseGPT`` of the checkout
  (``--prunen 2 --prunem 4 --sparsity 0.5``, blocksize 128, percdamp 0.01, not true-sequential),
  one sequence per forward, on the CPU. Two adapters, neither touching the arithmetic: its
  ``torch.cuda.synchronize()`` is a no-op on the CPU, and each decoder layer is wrapped so that a
  call without ``position_embeddings`` (the reference predates transformers passing the rotary
  cos/sin from the model) gets them from the model's own rotary embedding for positions 0..T-1.

Both pruned models are scored by the same code (``compare.py``'s perplexity on the first
``--windows`` 512-token windows of WikiText-2 test, jaxprune's float32 model; the reference's
weights are read back with ``jaxprune.models.import_hf.params_from_state_dict``), and each is
checked to be exactly 2:4 on every pruned kernel. Per run, the packed masks and the residual stream
entering every block for calibration window 0 are kept under ``--work`` for ``--analyse``. Each
finished run appends one JSON line to ``--out`` (a rerun skips those done).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import make_ppl, windows  # noqa: E402
from parity_lambada import load_jaxprune  # noqa: E402  (compare put experiments/smollm2 on the path)

SIDES = ("jaxprune", "reference")


def calibration_windows(train: np.ndarray, count: int, length: int) -> np.ndarray:
    """compare.py's calibration draw: ``count`` random windows of ``length`` tokens (seed 0), in start order."""
    starts = np.random.default_rng(0).choice(len(train) - length, count, replace=False)
    return np.stack([train[s: s + length] for s in np.sort(starts)])


def order(k: int, count: int) -> np.ndarray:
    """Calibration order ``k``: the identity for 0, else a fixed permutation of the windows."""
    return np.arange(count) if k == 0 else np.random.default_rng(1000 + k).permutation(count)


def kernel_masks(params, masks=None) -> dict[str, np.ndarray]:
    """``{"h_0/attn/q_proj/kernel": keep (in, out)}`` of every block kernel: the given masks, else ``kernel != 0``."""
    from jaxprune.models.trees import flatten

    flat_p = flatten(params)
    flat_m = flatten(masks) if masks is not None else {}
    out = {}
    for key, w in flat_p.items():
        if key.startswith("h_") and key.endswith("/kernel"):
            m = flat_m.get(key)
            out[key] = np.asarray(m, bool) if m is not None else np.asarray(w) != 0
    return out


def nm_check(params, keep: dict[str, np.ndarray]) -> dict[str, int | bool]:
    """2:4 compliance of every kernel: ``keep`` has exactly 2 of each 4 consecutive inputs per output
    (``exact``), the kernel is zero where pruned, and no group holds more than 2 nonzero weights;
    ``groups_under_2_nonzero`` counts groups with a kept weight that is exactly 0.0."""
    from jaxprune.models.trees import flatten

    flat = flatten(params)
    exact, zero_pruned, most, under = True, True, 0, 0
    for key, m in keep.items():
        w = np.asarray(flat[key])
        nz = (w != 0).reshape(w.shape[0] // 4, 4, -1).sum(1)
        exact &= bool(np.all(m.reshape(m.shape[0] // 4, 4, -1).sum(1) == 2))
        zero_pruned &= not np.any(w[~m] != 0)
        most, under = max(most, int(nz.max())), under + int(np.sum(nz < 2))
    return {"mask_exactly_2_4": exact, "zero_where_pruned": zero_pruned, "max_nonzero_per_group": most,
            "groups_under_2_nonzero": under}


def block_inputs(cfg, params, tokens: np.ndarray) -> np.ndarray:
    """The residual stream entering every block, ``(n_layer, T, E)``, for one token window ``(T,)``."""
    import jax

    from jaxprune.models.capture import block_forward, embed

    x = embed(cfg, {"wte": params["wte"]}, tokens[None, None])  # (1, 1, T, E)
    out = []
    for i in range(cfg.n_layer):
        out.append(np.asarray(x[0, 0]))
        x = block_forward(cfg, 0, jax.device_put(params[f"h_{i}"]), x)
    return np.stack(out)


def reference_prune(ref_dir: Path, hf_dir: Path, calib: np.ndarray,
                    threads: int = 1) -> tuple[dict[str, np.ndarray], float]:
    """The reference's SparseGPT 2:4 on ``calib`` ``(N, T)`` (in that order), on ``threads`` torch threads;
    ``(HF state dict, seconds)``."""
    from argparse import Namespace

    import torch

    torch.cuda.synchronize = lambda *a, **k: None  # the reference syncs CUDA after each layer
    torch.set_num_threads(threads)
    if str(ref_dir) not in sys.path:
        sys.path.insert(0, str(ref_dir))
    import llama as ref  # the reference's llama.py (imports its sparsegpt.py)

    class WithRotary(torch.nn.Module):
        """A decoder layer that computes its rotary cos/sin when the caller passes none."""

        def __init__(self, layer, rotary):
            super().__init__()
            self.layer = layer
            object.__setattr__(self, "rotary", rotary)  # not a child: find_layers sees only the layer

        def forward(self, hidden_states, **kw):
            if kw.get("position_embeddings") is None:
                pos = torch.arange(hidden_states.shape[1])[None]
                kw["position_embeddings"] = self.rotary(hidden_states, pos)
            return self.layer(hidden_states, **kw)

    model = ref.get_llama(str(hf_dir))
    model.eval()
    model.seqlen = calib.shape[1]
    layers = model.model.layers
    for i in range(len(layers)):
        layers[i] = WithRotary(layers[i], model.model.rotary_emb)
    ref.args = Namespace(nsamples=len(calib), true_sequential=False, minlayer=-1, maxlayer=1000, prune_only="",
                         invert=False, wbits=16, sparsity=0.5, prunen=2, prunem=4, percdamp=0.01, blocksize=128)
    loader = [(torch.from_numpy(calib[i: i + 1].astype(np.int64)),) for i in range(len(calib))]
    t0 = time.time()
    ref.llama_sequential(model, loader, torch.device("cpu"))
    seconds = time.time() - t0
    for i in range(len(layers)):
        layers[i] = layers[i].layer
    sd = {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}
    del model
    return sd, seconds


def dense_parity(cfg, dense, hf_dir: Path, tokens: np.ndarray) -> list[float]:
    """Per block, ``|x_jaxprune - x_hf| / |x_hf|`` of the dense residual stream entering it (one window)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    with torch.no_grad():
        hs = model(torch.from_numpy(tokens[None].astype(np.int64)), output_hidden_states=True).hidden_states
    hf = np.stack([h[0].numpy() for h in hs[: cfg.n_layer]])
    del model
    jx = block_inputs(cfg, dense, tokens)
    return [float(np.linalg.norm(jx[i] - hf[i]) / np.linalg.norm(hf[i])) for i in range(cfg.n_layer)]


def run(args) -> None:
    import jax

    from jaxprune import sparsity
    from jaxprune.config import DATA_DIR_ENV
    from jaxprune.data import corpus
    from jaxprune.models.capture import calibrate_and_prune
    from jaxprune.models.export_hf import save_hf
    from jaxprune.models.fetch import fetch
    from jaxprune.models.import_hf import params_from_state_dict

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(os.environ.get(DATA_DIR_ENV, str(ROOT.parent / "shared" / "data")))
    cfg, dense, tok = load_jaxprune(Path(args.gguf) if args.gguf else fetch("smollm2"))
    dense = jax.tree.map(lambda a: np.asarray(a, np.float32), dense)
    enc = lambda s: np.asarray(tok.encode(s).ids, np.int32)  # noqa: E731
    wiki = windows(enc(corpus.read_text(data / "wikitext-2" / "test.txt")), 512, args.windows)
    train = enc("\n\n".join(corpus.load_texts("books", "train", data, max_bytes=40_000 * args.calib)))
    calib = calibration_windows(train, args.calib, args.calib_len)
    ppl = make_ppl(cfg, args.batch)
    hf_dir = work / "hf_dense"
    if not (hf_dir / "config.json").is_file():
        save_hf(hf_dir, dense, cfg, tok)

    out = Path(args.out)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.is_file() else []
    done = {(r.get("order"), r.get("side")) for r in rows}
    if ("dense", "parity") not in done:
        rel = dense_parity(cfg, dense, hf_dir, calib[0])
        row = {"order": "dense", "side": "parity", "wikitext2_ppl": round(ppl(dense, wiki), 4),
               "block_input_rel_diff_max": max(rel), "block_input_rel_diff": [float(f"{r:.3g}") for r in rel]}
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    masks0 = sparsity.create_masks(dense)
    layer = sparsity.layer_pruner("sparsegpt", 0.5, pattern="nm", n=2, m=4)
    for k in range(args.orders):
        perm = order(k, args.calib)
        for side in args.sides:
            if (k, side) in done:
                continue
            t0 = time.time()
            if side == "jaxprune":
                params, masks = calibrate_and_prune(cfg, dense, masks0, calib[perm], layer, batch_size=args.calib_batch)
                params = jax.tree.map(np.asarray, jax.block_until_ready(params))
                keep = kernel_masks(params, masks)
                seconds = time.time() - t0
            else:
                sd, seconds = reference_prune(Path(args.reference_dir), hf_dir, calib[perm], args.torch_threads)
                params = params_from_state_dict(sd, cfg)
                del sd
                keep = kernel_masks(params)
            row = {"order": k, "side": side, "permutation_head": perm[:6].tolist(),
                   "wikitext2_ppl": round(ppl(params, wiki), 4), **nm_check(params, keep),
                   "kept_fraction": float(sum(m.sum() for m in keep.values()) / sum(m.size for m in keep.values())),
                   "prune_seconds": round(seconds, 1), "calibration": f"{args.calib}x{args.calib_len}",
                   "windows": int(len(wiki))}
            np.savez_compressed(work / f"masks_{side}_{k}.npz", **{key: np.packbits(m) for key, m in keep.items()})
            np.save(work / f"inputs_{side}_{k}.npy", block_inputs(cfg, params, calib[0]))
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            del params, keep


def _stats(x: list[float]) -> tuple[float, float, float]:
    a = np.asarray(x, float)
    sd = float(a.std(ddof=1)) if len(a) > 1 else float("nan")
    return float(a.mean()), sd, sd / math.sqrt(len(a))


def analyse(args) -> None:
    """Markdown: per-order perplexities, side statistics (Welch and paired), per-block mask and input divergence."""
    from scipy import stats as sps

    work = Path(args.work)
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
    parity = next((r for r in rows if r["side"] == "parity"), None)
    runs = {(r["order"], r["side"]): r for r in rows if r["side"] in SIDES}
    ks = sorted({k for k, s in runs if all((k, t) in runs for t in SIDES)})
    lines = ["# SparseGPT 2:4 on SmolLM2-135M: jaxprune vs reference over calibration orders", "",
             "Generated by `python experiments/calibration/order_spread.py --analyse` from `order_spread.jsonl`.", ""]
    if parity:
        lines += [f"Dense model: WikiText-2 ppl {parity['wikitext2_ppl']:.3f}; dense residual stream entering each "
                  f"block, jaxprune vs transformers, max relative difference {parity['block_input_rel_diff_max']:.2e}.",
                  ""]
    lines += ["| order | jaxprune ppl | reference ppl | jaxprune / reference | both 2:4 | prune s (jaxprune, reference) |",
              "|---|---|---|---|---|---|"]
    for k in ks:
        j, r = runs[k, "jaxprune"], runs[k, "reference"]
        lines.append(f"| {k} | {j['wikitext2_ppl']:.2f} | {r['wikitext2_ppl']:.2f} | "
                     f"{j['wikitext2_ppl'] / r['wikitext2_ppl']:.4f} | {j['max_nonzero_per_group'] <= 2 and r['max_nonzero_per_group'] <= 2} | "
                     f"{j['prune_seconds']:.0f}, {r['prune_seconds']:.0f} |")
    pj = [runs[k, "jaxprune"]["wikitext2_ppl"] for k in ks]
    pr = [runs[k, "reference"]["wikitext2_ppl"] for k in ks]
    lines += ["", "| side | n | mean ppl | SD | SE | min | max |", "|---|---|---|---|---|---|---|"]
    for name, p in (("jaxprune", pj), ("reference", pr)):
        m, sd, se = _stats(p)
        lines.append(f"| {name} | {len(p)} | {m:.2f} | {sd:.2f} | {se:.2f} | {min(p):.2f} | {max(p):.2f} |")
    if len(ks) > 1:
        mj, sdj, sej = _stats(pj)
        mr, sdr, ser = _stats(pr)
        welch = sps.ttest_ind(pj, pr, equal_var=False)
        logd = [math.log(a / b) for a, b in zip(pj, pr)]
        md, sdd, sed = _stats(logd)
        paired = sps.ttest_rel(np.log(pj), np.log(pr))
        lines += ["", f"Difference of means (jaxprune - reference): {mj - mr:+.2f} ppl "
                  f"({(mj / mr - 1) * 100:+.1f} %), SE {math.hypot(sej, ser):.2f} (Welch t = {welch.statistic:.2f}, "
                  f"p = {welch.pvalue:.3f}).",
                  f"Paired by order (same token order on both sides): mean log ratio {md:+.4f} "
                  f"({(math.exp(md) - 1) * 100:+.1f} %), SE {sed:.4f} (t = {paired.statistic:.2f}, p = {paired.pvalue:.3f}); "
                  f"95 % CI of the ratio [{math.exp(md - 1.96 * sed):.3f}, {math.exp(md + 1.96 * sed):.3f}] (normal approx.)."]
    # per-block divergence: cross-side pairs (same order) against within-side pairs (same data, other order)
    pairs = [(f"jaxprune {k} vs reference {k}", ("jaxprune", k), ("reference", k)) for k in ks[:2]]
    if len(ks) > 1:
        pairs += [(f"jaxprune 0 vs jaxprune {ks[1]}", ("jaxprune", 0), ("jaxprune", ks[1])),
                  (f"reference 0 vs reference {ks[1]}", ("reference", 0), ("reference", ks[1]))]
    if pairs:
        cache: dict = {}

        def load(side: str, k: int):
            if (side, k) not in cache:
                z = np.load(work / f"masks_{side}_{k}.npz")
                cache[side, k] = ({key: z[key] for key in z.files}, np.load(work / f"inputs_{side}_{k}.npy"))
            return cache[side, k]

        n_layer = load(*pairs[0][1])[1].shape[0]
        lines += ["", "Per block: fraction of the block's kernel entries whose masks differ / relative difference "
                  "of the residual stream entering the block (calibration window 0):", "",
                  "| block | " + " | ".join(p[0] for p in pairs) + " |", "|---|" + "---|" * len(pairs)]
        for i in [b for b in range(n_layer) if b < 4 or b % 4 == 0 or b == n_layer - 1]:
            cells = []
            for _, a, b in pairs:
                (ma, xa), (mb, xb) = load(*a), load(*b)
                keys = [key for key in ma if key.startswith(f"h_{i}/")]
                diff = sum(int(np.unpackbits(ma[key] ^ mb[key]).sum()) for key in keys)
                total = sum(ma[key].size * 8 for key in keys)
                rel = np.linalg.norm(xa[i] - xb[i]) / np.linalg.norm(xb[i])
                cells.append(f"{diff / total:.2e} / {rel:.1e}")
            lines.append(f"| {i} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        Path(args.md).write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference-dir", default="/tmp/sparsegpt-ref",
                    help="a checkout of github.com/IST-DASLab/sparsegpt (commit 147d2159dc4f3e9f73e47b32c04d7b3708f44436)")
    ap.add_argument("--orders", type=int, default=6, help="calibration orders K")
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    ap.add_argument("--calib", type=int, default=32, help="calibration sequences")
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--calib-batch", type=int, default=4, help="jaxprune: sequences per calibration forward")
    ap.add_argument("--windows", type=int, default=16, help="512-token WikiText-2 windows scored")
    ap.add_argument("--batch", type=int, default=4, help="windows per scoring forward")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="reference: torch intra-op threads (its per-column loop runs tiny ops; on a shared CPU "
                         "two threads made it 4-100x slower per column than one)")
    ap.add_argument("--gguf", default="")
    ap.add_argument("--work", default="/tmp/order_spread", help="scratch: dense HF export, masks, block inputs")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "calibration" / "order_spread.jsonl"))
    ap.add_argument("--analyse", action="store_true", help="only write the table from --out and --work")
    ap.add_argument("--md", default=str(ROOT / "experiments" / "calibration" / "order_spread.md"))
    args = ap.parse_args()
    if not args.analyse and "reference" in args.sides and not (Path(args.reference_dir) / "sparsegpt.py").is_file():
        sys.exit(f"error: --reference-dir {args.reference_dir} is not a checkout of IST-DASLab/sparsegpt "
                 "(no sparsegpt.py)")
    analyse(args) if args.analyse else run(args)


if __name__ == "__main__":
    main()
