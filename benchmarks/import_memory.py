"""Peak host memory of a streamed, sharded HF import, against the model's size and its largest tensor.

    python benchmarks/import_memory.py            # builds a ~416 MB sharded LLaMA in /tmp, then imports it

Step 1 (its own process) builds a random LlamaForCausalLM with transformers and writes it with
`save_pretrained(max_shard_size="100MB")`. Step 2 (a fresh process) imports it with
`import_hf.load_hf(..., shardings=...)` onto a 1-device mesh and reports the growth of the
process's peak resident set (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) over its value just
before the import. On a CPU the "device" memory is host memory, so the imported parameters
themselves count: the bound to check is params + about one tensor (a whole-model read would
need at least twice the params).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(out: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=3,
                                   num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=256,
                                   tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(out, max_shard_size="100MB")


def measure(path: Path) -> dict:
    import jax
    import ml_collections

    sys.path.insert(0, str(ROOT))
    from jaxprune import parallel
    from jaxprune.config import default_config
    from jaxprune.models import Transformer, import_hf, logical_axes

    cfg = import_hf.hf_model_config(path)
    mesh_cfg = ml_collections.ConfigDict(default_config().mesh.to_dict())
    sh = parallel.param_shardings(logical_axes(Transformer(cfg)), parallel.make_mesh(mesh_cfg),
                                  parallel.rules(mesh_cfg))
    src = import_hf.TensorSource(path)
    sizes = {k: 4 * int(__import__("numpy").prod(v[2])) for k, v in src.entries.items()}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params, _ = import_hf.load_hf(path, cfg, shardings=sh)
    jax.block_until_ready(params)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"params_bytes": sum(sizes.values()), "largest_tensor_bytes": max(sizes.values()),
            "peak_rss_growth_bytes": after - before, "files": len(src.files)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/jaxprune_llama_400mb")
    ap.add_argument("--step", choices=["all", "build", "measure"], default="all")
    args = ap.parse_args()
    path = Path(args.dir)
    if args.step == "build":
        build(path)
        return
    if args.step == "measure":
        print(json.dumps(measure(path)))
        return
    if not (path / "model.safetensors.index.json").is_file():
        subprocess.run([sys.executable, __file__, "--dir", str(path), "--step", "build"], check=True)
    r = json.loads(subprocess.run([sys.executable, __file__, "--dir", str(path), "--step", "measure"], check=True,
                                  capture_output=True, text=True).stdout.strip().splitlines()[-1])
    mib = {k: v / 2**20 for k, v in r.items() if k.endswith("bytes")}
    print(f"checkpoint: {r['files']} shards, params {mib['params_bytes']:.1f} MiB, "
          f"largest tensor {mib['largest_tensor_bytes']:.1f} MiB")
    bound = 2 * mib["largest_tensor_bytes"] + mib["params_bytes"]
    print(f"RESULT import_peak_rss_growth_mib={mib['peak_rss_growth_bytes']:.1f} "
          f"(params + 2 x largest tensor = {bound:.1f} MiB; "
          f"ratio to params = {r['peak_rss_growth_bytes'] / r['params_bytes']:.3f})")


if __name__ == "__main__":
    main()
