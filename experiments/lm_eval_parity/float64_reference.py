"""Which float32 evaluation is closer to exact arithmetic? HellaSwag loglikelihoods in float64.

    JAXPRUNE_DATA_DIR=/work/shared/data nice -n 15 python experiments/lm_eval_parity/float64_reference.py \\
        --n 200 --out experiments/lm_eval_parity/float64_reference.json [--check_hf_weights]
    ... float64_reference.py --n 200 --softmax_check 40 --out experiments/lm_eval_parity/softmax_check.json
    ... float64_reference.py --n 200 --hf_softmax_dtype float64 --out experiments/lm_eval_parity/hf_softmax64.json

The first N HellaSwag examples (4 requests each), tokenised by the own harness (the same ids
as lm-eval's, see tokenisation.py), are scored by a float64 LLaMA forward written here in torch
(its own code, neither jaxprune's nor transformers'): the weights are jaxprune's dequantised
float32 values (exactly representable in float64), the rotary inverse frequencies the float32
ones both implementations use, and everything else (norms, rotary angles, attention softmax,
log-softmax, the sum over continuation tokens) is computed in float64. Each float32 pipeline of
`results.json` (own harness, lm-eval on jaxprune, lm-eval on transformers) is then compared with
it per request. --check_hf_weights also loads transformers' model from the GGUF and reports the
largest difference between its weights and jaxprune's (0 means both float32 pipelines score the
same discrete model). --softmax_check K then takes transformers' float32 logits of the first K
requests through three log-softmaxes (torch float32 as lm-eval's HFLM, jax float32 as jaxprune,
float64), which locates the transformers pipeline's difference, and --hf_softmax_dtype float64
reruns lm-eval's HF backend with its log-softmax in float64.
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
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.setdefault("JAXPRUNE_DATA_DIR", str(ROOT.parent / "shared" / "data")))


def requests(tok, n: int) -> list[tuple[list[int], list[int]]]:
    """The own harness's (context, continuation) ids of the first n HellaSwag examples, 4 per example."""
    from jaxprune.data.tasks import load_task
    from jaxprune.evaluation import harness

    data = load_task("hellaswag", DATA)
    _, reqs = harness.loglikelihood_requests(data, harness.prompts_for(data, 0, n), tok)
    return reqs


class Float64Llama:
    """A LLaMA forward in float64 over a jaxprune parameter tree (tied embeddings, grouped-query attention)."""

    def __init__(self, params, cfg):
        import torch

        from jaxprune.models.transformer import rope_inv_freq

        t = lambda x: torch.from_numpy(np.asarray(x, np.float64))  # noqa: E731
        self.cfg, self.torch = cfg, torch
        self.wte = t(params["wte"]["embedding"])  # (V, E)
        self.ln_f = t(params["ln_f"]["scale"])
        self.layers = []
        for i in range(cfg.n_layer):
            p = params[f"h_{i}"]
            a, m = p["attn"], p["mlp"]
            self.layers.append({k: t(v["kernel"]) for k, v in {**a, **m}.items()}
                               | {"ln_1": t(p["ln_1"]["scale"]), "ln_2": t(p["ln_2"]["scale"])})
        self.inv_freq = t(rope_inv_freq(cfg))  # the float32 values, as both float32 pipelines use them

    def _rms(self, x, w):
        return x * self.torch.rsqrt((x * x).mean(-1, keepdim=True) + self.cfg.norm_eps) * w

    def _rope(self, x, cos, sin):  # x (B, N, T, D), "rotate half" layout
        d = x.shape[-1] // 2
        return x * cos + self.torch.cat([-x[..., d:], x[..., :d]], -1) * sin

    def logprobs(self, ids: np.ndarray, positions: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """log p(targets[b, s] | ids[b, :positions[b, s] + 1]) in float64: (B, S)."""
        torch, cfg = self.torch, self.cfg
        b, t = ids.shape
        h, kv, d = cfg.n_head, cfg.kv_heads, cfg.head_dim
        ang = torch.arange(t, dtype=torch.float64)[:, None] * self.inv_freq[None, :]  # (T, D/2)
        cos, sin = torch.cos(torch.cat([ang, ang], -1)), torch.sin(torch.cat([ang, ang], -1))
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        x = self.wte[torch.from_numpy(ids)]  # (B, T, E)
        for w in self.layers:
            y = self._rms(x, w["ln_1"])
            q = (y @ w["q_proj"]).view(b, t, h, d).transpose(1, 2)  # (B, H, T, D)
            k = (y @ w["k_proj"]).view(b, t, kv, d).transpose(1, 2)  # (B, K, T, D)
            v = (y @ w["v_proj"]).view(b, t, kv, d).transpose(1, 2)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            k, v = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)  # query head j: kv head j // (H/K)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(d)  # (B, H, T, T)
            s = s.masked_fill(~causal, -math.inf)
            att = torch.softmax(s, -1) @ v  # (B, H, T, D)
            x = x + att.transpose(1, 2).reshape(b, t, h * d) @ w["o_proj"]
            y = self._rms(x, w["ln_2"])
            x = x + (torch.nn.functional.silu(y @ w["gate_proj"]) * (y @ w["up_proj"])) @ w["down_proj"]
        x = self._rms(x, self.ln_f)
        sel = torch.gather(x, 1, torch.from_numpy(positions)[..., None].expand(-1, -1, x.shape[-1]))  # (B, S, E)
        logits = sel @ self.wte.T  # (B, S, V)
        logp = logits - torch.logsumexp(logits, -1, keepdim=True)
        return torch.gather(logp, -1, torch.from_numpy(targets)[..., None])[..., 0].numpy()


def score(model: Float64Llama, reqs, group: int = 4) -> list[float]:
    """Float64 loglikelihood of each request (sum over its continuation tokens), `group` requests per forward."""
    out = []
    for s in range(0, len(reqs), group):
        rows = [list(c) + list(t) for c, t in reqs[s:s + group]]
        width = max(len(r) for r in rows) - 1
        n = max(len(t) for _, t in reqs[s:s + group])
        ids = np.zeros((len(rows), width), np.int64)
        pos = np.zeros((len(rows), n), np.int64)
        tgt = np.zeros((len(rows), n), np.int64)
        mask = np.zeros((len(rows), n), bool)
        for r, (full, (_, cont)) in enumerate(zip(rows, reqs[s:s + group])):
            m = len(full) - 1
            ids[r, :m] = full[:-1]  # right padding: a causal row never sees it
            pos[r, :len(cont)] = np.arange(m - len(cont), m)
            tgt[r, :len(cont)] = cont
            mask[r, :len(cont)] = True
        lp = model.logprobs(ids, pos, tgt)
        out += [float(np.sum(lp[r][mask[r]], dtype=np.float64)) for r in range(len(rows))]
    return out


def versus(ref: list[float], other: list[float], tokens: list[int]) -> dict:
    """Per-request |other - ref| statistics (ref the float64 loglikelihoods)."""
    d = np.asarray(other, np.float64) - np.asarray(ref, np.float64)
    a, n = np.abs(d), np.asarray(tokens, np.float64)
    return {"requests": len(d), "max_abs": float(a.max()), "mean_abs": float(a.mean()),
            "median_abs": float(np.median(a)), "over_1e-4": int((a > 1e-4).sum()), "over_1e-5": int((a > 1e-5).sum()),
            "mean_signed": float(d.mean()), "mean_abs_per_token": float((a / n).mean()),
            "corr_abs_vs_tokens": float(np.corrcoef(a, n)[0, 1])}


def hf_weight_check(path: Path, params, cfg) -> dict:
    """Largest |transformers' weight - jaxprune's| over all tensors of the model both build from the GGUF."""
    import torch
    import transformers

    from jaxprune.models.hf import tensor_map
    from jaxprune.models.trees import flatten

    hm = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32)
    sd = {k: v.detach().numpy() for k, v in hm.state_dict().items()}
    flat = flatten(params)
    worst, n = 0.0, 0
    for ours, theirs in tensor_map(cfg).items():
        if theirs.name not in sd:
            continue
        w = sd[theirs.name].T if theirs.transposed else sd[theirs.name]
        worst, n = max(worst, float(np.max(np.abs(w - np.asarray(flat[ours]))))), n + 1
    return {"tensors_compared": n, "max_abs_weight_diff": worst}


def softmax_check(path: Path, reqs, ref: list[float]) -> dict:
    """Where the transformers pipeline's bias comes from: its float32 logits of `reqs` (one row each, no padding),
    turned into continuation loglikelihoods by torch's float32 log_softmax (what lm-eval's HFLM does by default),
    by jax.nn.log_softmax in float32 (what jaxprune does), and in float64; each against the float64 reference."""
    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    hm = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    sums: dict[str, list[float]] = {"torch_float32": [], "jax_float32": [], "float64": []}
    for context, cont in reqs:
        full = list(context) + list(cont)
        with torch.no_grad():
            logits = hm(torch.tensor([full[:-1]])).logits[0, len(context) - 1:]  # (n, V) float32
        tgt = torch.tensor(cont)
        pick = lambda lp: float(lp[torch.arange(len(cont)), tgt].double().sum())  # noqa: E731
        sums["torch_float32"].append(pick(torch.log_softmax(logits, -1)))
        sums["float64"].append(pick(torch.log_softmax(logits.double(), -1)))
        lj = np.asarray(jax.jit(lambda x: jax.nn.log_softmax(x, axis=-1))(jnp.asarray(logits.numpy())))
        sums["jax_float32"].append(pick(torch.from_numpy(lj)))
    tokens = [len(t) for _, t in reqs]
    return {k: versus(ref, v, tokens) for k, v in sums.items()}


def hf_backend(path: Path, n: int, batch: int, softmax_dtype: str) -> list[float]:
    """lm-eval's HFLM (transformers from the GGUF, CPU, float32 forward) with its `softmax_dtype` option:
    the loglikelihood of every HellaSwag request of the first n documents, in request order."""
    import lm_eval
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    from jaxprune.evaluation import lm_eval_backend as B

    htok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hm = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    lm = HFLM(pretrained=hm, tokenizer=htok, batch_size=batch, device="cpu", softmax_dtype=softmax_dtype)
    res = lm_eval.simple_evaluate(model=lm, tasks=["hellaswag_local"], limit=n, log_samples=True,
                                  task_manager=B.task_manager(), batch_size=batch, bootstrap_iters=0)
    docs = sorted(res["samples"]["hellaswag_local"], key=lambda s: s["doc_id"])
    return [float(r[0][0]) for s in docs for r in s["resps"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="HellaSwag examples (4 requests each)")
    ap.add_argument("--results", default=str(Path(__file__).with_name("results.json")))
    ap.add_argument("--out", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check_hf_weights", action="store_true")
    ap.add_argument("--softmax_check", type=int, default=0, metavar="K",
                    help="only: transformers' float32 logits of the first K requests through three log-softmaxes, "
                         "against the float64 values in --reference")
    ap.add_argument("--reference", default=str(Path(__file__).with_name("float64_reference.json")))
    ap.add_argument("--hf_softmax_dtype", default="", metavar="DTYPE",
                    help="only: lm-eval's HF backend on the first --n documents with HFLM(softmax_dtype=DTYPE), "
                         "against the float64 values in --reference and the own harness in --results")
    args = ap.parse_args()

    import ml_collections
    import torch

    from jaxprune.models import load_pretrained, load_pretrained_tokenizer, model_config_from_preset
    from jaxprune.models.fetch import fetch

    torch.set_num_threads(args.threads)
    path = fetch("smollm2")
    c = ml_collections.ConfigDict({"model": {"init": "gguf", "init_path": str(path)}})
    cfg = model_config_from_preset("smollm2-135m")
    params, tok = load_pretrained(c, cfg), load_pretrained_tokenizer(c)
    reqs = requests(tok, args.n)
    if args.softmax_check:
        ref = json.loads(Path(args.reference).read_text())["float64"][:args.softmax_check]
        res = {"requests": args.softmax_check, "vs_float64": softmax_check(path, reqs[:args.softmax_check], ref)}
        print(json.dumps(res, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return
    if args.hf_softmax_dtype:
        t0 = time.time()
        ll = hf_backend(path, args.n, 16, args.hf_softmax_dtype)
        ref = json.loads(Path(args.reference).read_text())["float64"][:len(ll)]
        own = [x for d in json.loads(Path(args.results).read_text())["examples"]["own"]["hellaswag"][:args.n]
               for x in d["ll"]]
        tokens = [len(t) for _, t in reqs]
        res = {"softmax_dtype": args.hf_softmax_dtype, "seconds": round(time.time() - t0, 1),
               "hf_vs_float64": versus(ref, ll, tokens), "hf_vs_own": versus(own, ll, tokens), "hf": ll}
        print(json.dumps({k: v for k, v in res.items() if k != "hf"}, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return
    out: dict = {"gguf": path.name, "n_examples": args.n, "requests": len(reqs)}
    if args.check_hf_weights:
        out["hf_weights"] = hf_weight_check(path, params, cfg)
        print(out["hf_weights"], flush=True)

    t0 = time.time()
    model = Float64Llama(params, cfg)
    ref = []
    for s in range(0, len(reqs), 40):
        ref += score(model, reqs[s:s + 40])
        print(f"{len(ref)}/{len(reqs)} requests, {time.time() - t0:.0f} s", flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    tokens = [len(t) for _, t in reqs]
    pipelines = json.loads(Path(args.results).read_text())["examples"]
    flat = {p: [x for d in docs["hellaswag"][:args.n] for x in d["ll"]] for p, docs in pipelines.items()}
    out["vs_float64"] = {p: versus(ref, ll, tokens) for p, ll in flat.items()}
    # decisions: how many acc / acc_norm choices each float32 pipeline shares with float64
    choices = [d["choices"] for d in pipelines["own"]["hellaswag"][:args.n]]
    def picks(ll):
        g = np.asarray(ll).reshape(-1, 4)
        return g.argmax(1), (g / np.array([[len(c) for c in cs] for cs in choices])).argmax(1)
    r_acc, r_norm = picks(ref)
    out["decisions_differ_from_float64"] = {p: {"acc": int((picks(ll)[0] != r_acc).sum()),
                                                "acc_norm": int((picks(ll)[1] != r_norm).sum())}
                                            for p, ll in flat.items()}
    out["float64"] = ref
    out["continuation_tokens"] = tokens
    print(json.dumps({k: v for k, v in out.items() if k not in ("float64", "continuation_tokens")}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
