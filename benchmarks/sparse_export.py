"""Bytes on disk of compressed sparse checkpoints against dense (jaxprune.sparsity.export).

The model of benchmarks/structured_speedup.py (d_model 1024, 4 layers, vocab 8192; or
any size via flags), randomly initialised, pruned by global magnitude at 50 %
unstructured and at 2:4, saved with ``save_sparse`` (safetensors: kept float32 values
plus a bitmask, or 2-bit N:M indices) and compared with the same container holding
every parameter dense. Each file is loaded back and checked bit-exact. Only the
attention/MLP kernels are prunable (embeddings, norms and biases stay dense), so
the whole-file ratio is also broken down to the prunable part, whose ideal ratio at
50 % is (0.5 * 4 + 1/8) / 4 = 0.531 (bitmask, and equally 2:4 with 2-bit indices).

    python benchmarks/sparse_export.py [--d_model 1024 --n_layer 4 --vocab 8192]

Last line: ``RESULT sparse_bytes_over_dense_at_50=<fraction>`` (whole files, 50 % unstructured).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import numpy as np

from jaxprune import sparsity
from jaxprune.models import build_model, init_params
from jaxprune.models.presets import ModelConfig
from jaxprune.sparsity.export import load_sparse, save_sparse, tree_equal_bits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d_model", type=int, default=1024)
    ap.add_argument("--n_layer", type=int, default=4)
    ap.add_argument("--n_head", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--max_len", type=int, default=544)
    args = ap.parse_args()
    cfg = ModelConfig(vocab_size=args.vocab, max_len=args.max_len, n_layer=args.n_layer, d_model=args.d_model,
                      n_head=args.n_head, d_ff=4 * args.d_model)
    params = jax.jit(lambda k: init_params(build_model(cfg), k)[0])(jax.random.key(0))
    base = sparsity.create_masks(params)
    n_all = sum(x.size for x in jax.tree.leaves(params))
    n_prunable = sum(x.size for x in jax.tree.leaves(base))
    print(f"model: {n_all:,} parameters, {n_prunable:,} prunable (attention/MLP kernels)")
    with tempfile.TemporaryDirectory() as tmp:
        dense = save_sparse(Path(tmp) / "dense.safetensors", params, None)
        print(f"{'checkpoint':>24} {'bytes':>13} {'/ dense':>8} {'prunable part / dense':>22}")
        print(f"{'dense':>24} {dense:>13,} {1.0:>8.3f} {1.0:>22.3f}")
        ratio50 = None
        for name, masks, nm in (
            ("50% unstructured", sparsity.prune(params, base, 0.5), None),
            ("2:4", sparsity.prune(params, base, pattern="nm", n=2, m=4), (2, 4)),
        ):
            path = Path(tmp) / "sparse.safetensors"
            size = save_sparse(path, params, masks, nm=nm)
            p2, m2 = load_sparse(path)
            assert tree_equal_bits(p2, jax.tree.map(np.asarray, sparsity.apply_masks(params, masks)))
            assert tree_equal_bits(m2, jax.tree.map(lambda m: None if m is None else np.asarray(m), masks,
                                                    is_leaf=lambda x: x is None))
            fixed = 4 * (n_all - n_prunable)  # dense leaves, same bytes in both files
            part = (size - fixed - (dense - 4 * n_all)) / (4 * n_prunable)
            print(f"{name:>24} {size:>13,} {size / dense:>8.3f} {part:>22.3f}   (round trip bit-exact)")
            if nm is None:
                ratio50 = size / dense
    print(f"RESULT sparse_bytes_over_dense_at_50={ratio50:.3f}")


if __name__ == "__main__":
    main()
