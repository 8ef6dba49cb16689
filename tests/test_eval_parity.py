"""Parity with Hugging Face transformers: a randomly initialised GPT-2 imported into jaxprune gives the
same loglikelihoods (through jaxprune's batched, bucketed scorer) as the torch model on real LAMBADA and
HellaSwag items. Both models see the same token ids (a small byte-level BPE trained here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxprune.data.tasks import load_task  # noqa: E402
from jaxprune.data.tokenizer import train_bpe  # noqa: E402
from jaxprune.evaluation import harness, prompts  # noqa: E402
from jaxprune.evaluation.scoring import ModuleApply, loglikelihood  # noqa: E402
from jaxprune.models import build_model  # noqa: E402
from jaxprune.models.hf import model_config_from_hf  # noqa: E402
from jaxprune.models.import_hf import params_from_state_dict  # noqa: E402

DATA = Path(os.environ.get("JAXPRUNE_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
N_POS, VOCAB = 128, 512


def _requests(tok, n_lambada: int = 6, n_hellaswag: int = 3):
    lam = load_task("lambada", DATA)
    hs = load_task("hellaswag", DATA)
    pairs = [(prompts.query("lambada", ex), prompts.targets("lambada", ex)[0]) for ex in lam.examples[:n_lambada]]
    pairs += [(prompts.query("multiple_choice", ex), t) for ex in hs.examples[:n_hellaswag]
              for t in prompts.targets("multiple_choice", ex)]
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    return [(enc(c), enc(t)) for c, t in pairs]


def _torch_loglikelihood(hf, ctx, cont):
    full = (ctx + cont)[-(N_POS + 1):]
    n = min(len(cont), len(full) - 1)
    with torch.no_grad():
        logits = hf(torch.tensor([full[:-1]])).logits[0].double()  # (T, V)
    logp = torch.log_softmax(logits, -1).numpy()
    pos = np.arange(len(full) - 1 - n, len(full) - 1)
    targets = np.array(full[1:])[pos]
    greedy = bool(np.all(logits.numpy().argmax(-1)[pos] == targets))
    return float(logp[pos, targets].sum()), greedy, n


def test_loglikelihoods_match_transformers_gpt2():
    with open(DATA / "lambada" / "lambada_test.jsonl") as f:
        tok = train_bpe([json.loads(next(f))["text"] for _ in range(400)], VOCAB)
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=N_POS,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():  # default init has zero biases and unit norms: randomise them so they are tested too
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    cfg = model_config_from_hf(hf_cfg.to_dict())
    params = params_from_state_dict({k: v.detach().numpy() for k, v in hf.state_dict().items()}, cfg)
    model = build_model(cfg)
    reqs = _requests(tok)
    assert any(len(c) + len(t) > N_POS + 1 for c, t in reqs)  # some LAMBADA passages are left-truncated
    ours = loglikelihood(ModuleApply(model), params, reqs, max_len=cfg.max_len, batch_size=8)
    for (ctx, cont), r in zip(reqs, ours):
        lp, greedy, n = _torch_loglikelihood(hf, ctx, cont)
        assert r.num_tokens == n
        assert r.logprob == pytest.approx(lp, abs=1e-4)
        assert r.is_greedy == greedy
    # The harness's multiple-choice decision agrees as well.
    torch_lls = [_torch_loglikelihood(hf, c, t)[0] for c, t in reqs[6:]]
    assert harness.multiple_choice_metrics([torch_lls[i:i + 4] for i in (0, 4, 8)], [["x"] * 4] * 3, [0, 0, 0]) == \
        harness.multiple_choice_metrics([[r.logprob for r in ours[6 + i:10 + i]] for i in (0, 4, 8)],
                                        [["x"] * 4] * 3, [0, 0, 0])
