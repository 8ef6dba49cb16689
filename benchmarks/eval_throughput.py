"""LAMBADA evaluation throughput on this machine (examples per second).

Model: preset "nano" (4 layers, d_model 192, context 128), randomly initialised,
with a 4096-token byte-level BPE trained on the LAMBADA passages themselves (the
throughput does not depend on the weights). Evaluated zero-shot on the first
N real LAMBADA examples (default 300), batch size 32. The first pass compiles
(one function per length bucket); the reported rate is the second, warm pass.

    JAXPRUNE_DATA_DIR=/work/shared/data python benchmarks/eval_throughput.py [--examples 300] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax

from jaxprune.data.tasks import lambada
from jaxprune.data.tokenizer import train_bpe
from jaxprune.evaluation import harness
from jaxprune.evaluation.scoring import ModuleApply
from jaxprune.models import build_model, init_params, model_config_from_preset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--preset", default="nano")
    args = ap.parse_args()
    data_dir = Path(os.environ.get("JAXPRUNE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = data_dir / lambada.FILE
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    tok = train_bpe(texts, 4096)
    model = build_model(model_config_from_preset(args.preset, vocab_size=4096))
    params = jax.jit(lambda k: init_params(model, k)[0])(jax.random.key(0))
    data = lambada.load(data_dir)
    cfg = dict(max_len=model.cfg.max_len, shots=0, max_examples=args.examples, batch_size=args.batch)
    apply_fn = ModuleApply(model)
    t0 = time.perf_counter()
    harness.evaluate_task(data, apply_fn, params, tok, **cfg)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = harness.evaluate_task(data, apply_fn, params, tok, **cfg)
    warm = time.perf_counter() - t0
    print(f"model: {args.preset} random init, vocab 4096 BPE on LAMBADA; device: {jax.devices()[0].platform} "
          f"x{jax.device_count()}; {m['n']} examples, batch {args.batch}")
    print(f"first pass (with compilation): {cold:.2f} s = {m['n'] / cold:.1f} examples/s")
    print(f"warm pass: {warm:.2f} s; lambada_acc={m['acc']:.4f} lambada_ppl={m['ppl']:.1f} (random model)")
    print(f"RESULT lambada_examples_per_s={m['n'] / warm:.1f}")


if __name__ == "__main__":
    main()
