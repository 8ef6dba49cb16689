"""compressed-tensors export: a 50 % unstructured and a 2:4 pruned model written as sparse-bitmask /
sparse-24-bitmask, decompressed by the library on CPU, bit-exact to jaxprune's masked weights.

Runs where the `compressed` extra is installed (compressed-tensors < 0.15 needs transformers < 5, so
`.ci/run` runs this file in an environment of its own); elsewhere it is skipped."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

pytest.importorskip("compressed_tensors.compressors", reason="needs the 'compressed' extra")
try:
    from compressed_tensors.compressors import BitmaskCompressor  # noqa: F401
except ImportError:
    pytest.skip("compressed-tensors >= 0.15 has no sparse compressors", allow_module_level=True)

from jaxprune import sparsity  # noqa: E402
from jaxprune.models import Transformer, init_params  # noqa: E402
from jaxprune.models import export_compressed, export_hf  # noqa: E402
from jaxprune.models.hf import tensor_map  # noqa: E402
from jaxprune.models.presets import ModelConfig  # noqa: E402
from jaxprune.models.trees import flatten  # noqa: E402

CFG = ModelConfig(arch="llama", vocab_size=96, max_len=32, n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=96,
                  tie_embeddings=True)


@pytest.fixture(scope="module")
def params():
    p, _ = init_params(Transformer(CFG), jax.random.key(0))
    return jax.tree.map(np.asarray, p)


@pytest.mark.parametrize("pattern", ["unstructured", "nm"])
def test_library_decompresses_the_export_bit_exactly(params, tmp_path, pattern):
    masks = sparsity.create_masks(params, sparsity.DEFAULT_INCLUDE)
    masks = sparsity.prune(params, masks, 0.5, pattern=pattern, scope="layerwise")
    nm = (2, 4) if pattern == "nm" else None
    export_compressed.save_compressed(tmp_path, params, CFG, masks=masks, nm=nm, max_shard_size="60KB")
    config = json.loads((tmp_path / "config.json").read_text())
    sc = config["quantization_config"]["sparsity_config"]
    assert sc["format"] == ("sparse-24-bitmask" if nm else "sparse-bitmask")
    assert sc["global_sparsity"] == pytest.approx(0.5, abs=1e-6)
    ours = export_hf.state_dict(params, CFG, masks)
    back = export_compressed.decompress(tmp_path)
    assert back.keys() == ours.keys()
    for k, v in ours.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    # the pruned linear weights are stored compressed, not dense
    names = tensor_map(CFG)
    stored = set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"])
    for path in flatten(masks):
        base = names[path].name.removesuffix(".weight")
        assert f"{base}.weight" not in stored and f"{base}.bitmask" in stored, base


def test_compressed_refuses_what_the_format_cannot_hold(params, tmp_path):
    masks = sparsity.prune(params, sparsity.create_masks(params, sparsity.DEFAULT_INCLUDE), 0.5)
    with pytest.raises(ValueError, match="is not 2:4 sparse along its inputs"):
        export_compressed.save_compressed(tmp_path / "a", params, CFG, masks=masks, nm=(2, 4))
    with pytest.raises(ValueError, match="a sparse format for 2:4 only, got 1:4"):
        export_compressed.save_compressed(tmp_path / "b", params, CFG, masks=masks, nm=(1, 4))
    with pytest.raises(ValueError, match="needs the masks of a pruned model"):
        export_compressed.save_compressed(tmp_path / "c", params, CFG)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
