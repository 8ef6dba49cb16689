"""How often the harness's old tokenisation (context and " continuation" encoded separately) differs
from lm-eval's (joint encoding, trailing context space moved), on the first N LAMBADA and HellaSwag
items with SmolLM2's tokenizer (GGUF). Tokenisation only: seconds.

    JAXPRUNE_DATA_DIR=/work/shared/data python experiments/lm_eval_parity/tokenisation.py --n 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.setdefault("JAXPRUNE_DATA_DIR", str(ROOT.parent / "shared" / "data")))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    import ml_collections

    from jaxprune.data.tasks import load_task
    from jaxprune.evaluation import harness
    from jaxprune.models import load_pretrained_tokenizer
    from jaxprune.models.fetch import fetch

    tok = load_pretrained_tokenizer(ml_collections.ConfigDict({"model": {"init": "gguf",
                                                                         "init_path": str(fetch("smollm2"))}}))
    out = {}
    for name in ("lambada", "hellaswag"):
        data = load_task(name, DATA)
        prompts = harness.prompts_for(data, 0, args.n)
        conts, joint = harness.loglikelihood_requests(data, prompts, tok)
        sep = [(harness._encode(tok, [p])[0], harness._encode(tok, [c])[0])
               for p, cs in zip(prompts, conts) for c in cs]
        out[name] = {"requests": len(joint), "differ": sum(a != b for a, b in zip(joint, sep))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
