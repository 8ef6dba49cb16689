"""Import Hugging Face checkpoints (safetensors, single file or sharded) and their tokenizers, streamed.

A checkpoint is a directory holding `config.json` and either `model.safetensors` or
`model.safetensors.index.json` + its shards (what `save_pretrained` writes, or a hub
snapshot) of GPT-2, LLaMA 2/3, SmolLM, TinyLlama, Mistral or Qwen2 (`jaxprune.models.hf`
has the architecture table and the name map). Torch pickles (`pytorch_model.bin`) are
refused: loading them would run arbitrary code.

Every shard's header is read first, so a missing shard, a missing tensor or one of the
wrong shape is reported (by name) before any weight is read. Then parameters are read
tensor by tensor (memory-mapped) and, when shardings are given, each device's block is
read straight into its shard with `jax.make_array_from_callback`: host memory peaks at
about one tensor, and on a multi-host mesh each process reads only its own blocks.
bf16 / f16 tensors are converted to float32 on the fly.

    >>> params, cfg = load_hf("/data/Llama-3.2-1B", shardings=param_sh)   # doctest: +SKIP
    >>> tok = load_hf_tokenizer("/data/Llama-3.2-1B")                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxprune.models import hf as hf_names
from jaxprune.models.presets import ModelConfig
from jaxprune.models.trees import flatten, unflatten

HF_HOST = "huggingface.co"
SAFETENSORS = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLES = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")


# ---------------------------------------------------------------------------
# Locating a checkpoint: local directory, or the hub when online
# ---------------------------------------------------------------------------
def hub_reachable(host: str = HF_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """True if a TCP connection to the hub opens within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub repo id downloaded (config, safetensors, tokenizer files).

    Fails fast offline (3 s connectivity check) with instructions instead of hanging in retries.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{str(path)!r} is a file; pass the checkpoint directory (config.json + {SAFETENSORS})")
    name = str(name_or_path)
    if not hub_reachable():
        raise ConnectionError(
            f"{name!r} is not a local directory and the Hugging Face hub ({HF_HOST}:443) is unreachable. "
            f"Download it on a machine with internet access (`hf download {name} --local-dir "
            f"{name.split('/')[-1]}`), copy the directory here and pass its path as model.init_path.")
    from huggingface_hub import snapshot_download  # imported lazily: only needed online
    return Path(snapshot_download(
        name, allow_patterns=["config.json", "generation_config.json", "*.safetensors", INDEX, "tokenizer.json",
                              "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"],
        etag_timeout=10))


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------
def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's config.json as a dict."""
    f = Path(path) / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{str(f)!r} does not exist; a HF checkpoint directory needs config.json")
    try:
        return json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(f)!r} is not valid JSON ({e})") from None


def hf_model_config(name_or_path: str | os.PathLike, **overrides: Any) -> ModelConfig:
    """ModelConfig from a checkpoint's config.json (any architecture in `jaxprune.models.hf.ARCHITECTURES`)."""
    return hf_names.model_config_from_hf(read_hf_config(resolve_checkpoint(name_or_path)), **overrides)


# ---------------------------------------------------------------------------
# Safetensors files: headers first, data on demand
# ---------------------------------------------------------------------------
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "F64": np.float64}


def _bfloat16() -> np.dtype:
    import ml_dtypes  # ships with jax

    return np.dtype(ml_dtypes.bfloat16)


class TensorSource:
    """The tensors of a checkpoint directory: name -> (file, dtype, shape), with lazy, sliceable reads.

    Data are memory-mapped, so reading a block of a tensor touches only that block's pages.
    (safetensors' own numpy reader has no bfloat16, so the documented layout — 8-byte header length,
    JSON header, raw little-endian data — is mapped directly.)
    """

    def __init__(self, path: str | os.PathLike, files: list[Path] | None = None):
        """`path`: a checkpoint directory (its single file or index shards); or `files` to read just those."""
        self.path = Path(path)
        self.files = files if files is not None else _safetensors_files(self.path)
        self.entries: dict[str, tuple[Path, str, tuple[int, ...], int]] = {}
        for f in self.files:
            for name, (dtype, shape, offset) in _header(f).items():
                self.entries[name] = (f, dtype, shape, offset)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][2]

    def array(self, name: str) -> np.ndarray:
        """A read-only memory map of just this tensor, in its stored dtype (nothing read yet).

        Each call maps only the tensor's own bytes and the map is released with the array, so the
        pages of tensors already loaded do not stay in the process's resident set.
        """
        f, dtype, shape, offset = self.entries[name]
        np_dtype = _bfloat16() if dtype == "BF16" else np.dtype(_DTYPES[dtype])
        if not shape or 0 in shape:
            return np.zeros(shape, np_dtype)
        return np.memmap(f, dtype=np_dtype, mode="r", offset=offset, shape=tuple(shape))

    def read(self, name: str, start: int, stop: int, rest: tuple[slice, ...] = ()) -> np.ndarray:
        """Rows [start, stop) of the tensor, sliced by `rest` along the other axes, in the stored dtype.

        Only those rows are memory-mapped (and unmapped again when the copy is returned)."""
        f, dtype, shape, offset = self.entries[name]
        np_dtype = _bfloat16() if dtype == "BF16" else np.dtype(_DTYPES[dtype])
        row = int(np.prod(shape[1:], dtype=np.int64)) * np_dtype.itemsize
        if stop <= start or row == 0:
            return np.zeros((max(stop - start, 0), *shape[1:]), np_dtype)[(slice(None),) + rest]
        rows = np.memmap(f, dtype=np_dtype, mode="r", offset=offset + start * row, shape=(stop - start, *shape[1:]))
        return np.array(rows[(slice(None),) + rest])

    def close(self) -> None:
        """Nothing stays open between reads; kept so callers can release a source explicitly."""


def _safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's safetensors files (one, or the index's shards); clear errors for the alternatives."""
    if (path / INDEX).is_file():
        try:
            weight_map = json.loads((path / INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{str(path / INDEX)!r} is not a safetensors index (needs a 'weight_map'): {e}") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{str(path)!r} is missing shard {missing[0]} named in {INDEX}"
                                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return [path / f for f in files]
    if (path / SAFETENSORS).is_file():
        return [path / SAFETENSORS]
    found = [p for p in PICKLES if (path / p).is_file()] + sorted(p.name for p in path.glob("pytorch_model*.bin"))
    if found:
        raise ValueError(
            f"{str(path)!r} has only {found[0]}, a pickle that jaxprune refuses to load (unpickling runs "
            f"arbitrary code). Convert it to {SAFETENSORS} (e.g. with transformers: "
            f"model.save_pretrained(dir, safe_serialization=True)) or download the safetensors files.")
    raise FileNotFoundError(f"no {SAFETENSORS} or {INDEX} in {str(path)!r}")


def _header(f: Path) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """name -> (dtype, shape, absolute byte offset) of one safetensors file."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        raw = fh.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < n <= size - 8:
            raise ValueError(f"{str(f)!r} is not a safetensors file (bad header length)")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{str(f)!r} is not a safetensors file (header is not JSON)") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{str(f)!r}: tensor {name} has dtype {info['dtype']}; jaxprune reads "
                             f"{', '.join(_DTYPES)}")
        begin, end = info["data_offsets"]
        if 8 + n + end > size:
            raise ValueError(f"{str(f)!r} is truncated: tensor {name} ends past the end of the file")
        out[name] = (info["dtype"], tuple(info["shape"]), 8 + n + begin)
    return out


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one safetensors file as float32 numpy arrays (bf16/f16 upcast)."""
    src = TensorSource(Path(path).parent, files=[Path(path)])
    return {k: np.array(src.array(k), np.float32) for k in src.entries}


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------
def plan_tensors(src: TensorSource, cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
    """jaxprune path -> (checkpoint key, transposed), after checking every tensor's presence and shape.

    ValueError naming each missing or misshapen tensor (and unexpected ones) before anything is read.
    A GPT-2 position table longer than cfg.max_len is accepted (its first rows are used).
    """
    from jaxprune.models.pretrained import expected_shapes

    want = expected_shapes(cfg)
    names = hf_names.tensor_map(cfg)
    prefixes = hf_names.checkpoint_prefixes(cfg)
    plan, problems, used = {}, [], set()
    for path, shape in want.items():
        key, transposed = names[path]
        if key not in src:
            bare = next((key.removeprefix(p) for p in prefixes if key.startswith(p) and key.removeprefix(p) in src),
                        None)
            if bare is None:
                problems.append(f"tensor {key} (for {path}) is missing")
                continue
            key = bare
        used.add(key)
        got = src.shape(key)[::-1] if transposed else src.shape(key)
        ok = got == shape or (path == "wpe/embedding" and got[1:] == shape[1:] and got[0] >= shape[0])
        if not ok:
            stored = src.shape(key)
            expect = shape[::-1] if transposed else shape
            problems.append(f"tensor {key} has shape {stored}, the model expects {expect}")
            continue
        plan[path] = (key, transposed)
    extra = [k for k in src.entries if k not in used and not k.endswith(hf_names.IGNORED_SUFFIXES)
             and not (cfg.tie_embeddings and k.removeprefix("model.").removeprefix("transformer.") == "lm_head.weight")]
    problems += [f"tensor {k} is in the checkpoint but not in the model" for k in sorted(extra)]
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise ValueError(f"checkpoint {str(src.path)!r} does not match the model ({len(problems)} problems): "
                         + "; ".join(shown))
    return plan


def check_checkpoint(name_or_path: str | os.PathLike, cfg: ModelConfig) -> None:
    """Reads only headers: raises the error `load_hf` would raise for this checkpoint and model, if any."""
    src = TensorSource(resolve_checkpoint(name_or_path))
    plan_tensors(src, cfg)


CHUNK_BYTES = 8 << 20  # rows mapped at a time while reading a block


def _reader(src: TensorSource, key: str, transposed: bool, shape: tuple[int, ...]) -> Callable[[Any], np.ndarray]:
    """read(index) -> float32 block `index` (slices over the jaxprune-layout `shape`) of tensor `key`.

    The stored rows the block needs are mapped a few MiB at a time and copied into the output, so a
    read holds about one block, not the mapped file pages of the whole tensor as well; a block several
    devices hold is read once (the reader lives as long as one tensor's placement).
    """
    stored = src.shape(key)
    seen: dict[tuple, np.ndarray] = {}  # devices replicating a block (data axis) share one read

    def read(index: Any = None) -> np.ndarray:
        index = tuple(index) if index is not None else tuple(slice(0, n) for n in shape)
        cache_key = tuple(sl.indices(n) for sl, n in zip(index, shape))
        if cache_key not in seen:
            seen[cache_key] = _read_block(index)
        return seen[cache_key]

    def _read_block(index: tuple) -> np.ndarray:
        block = tuple(len(range(*sl.indices(n))) for sl, n in zip(index, shape))
        out = np.empty(block, np.float32)
        if not stored or 0 in block:
            out[...] = np.asarray(src.array(key), np.float32)[index] if not stored else 0
            return out
        own = index[::-1] if transposed else index  # the same block in the stored layout
        start, stop, step = own[0].indices(stored[0])
        if step != 1:
            raise ValueError(f"strided shard index {own[0]} of {key}")
        row_bytes = max(1, int(np.prod(stored[1:], dtype=np.int64)) * 4)
        n = max(1, CHUNK_BYTES // row_bytes)
        for r0 in range(start, stop, n):
            r1 = min(stop, r0 + n)
            piece = src.read(key, r0, r1, own[1:])
            if transposed:
                out[:, r0 - start: r1 - start] = piece.T
            else:
                out[r0 - start: r1 - start] = piece
            del piece
        return out
    return read


def load_hf(name_or_path: str | os.PathLike, cfg: ModelConfig | None = None, shardings: Any = None,
            progress: bool = False) -> tuple[dict[str, Any], ModelConfig]:
    """(params, ModelConfig) of a HF checkpoint, read tensor by tensor.

    cfg: the model to load into (default: the checkpoint's own config). shardings: a pytree of
    `jax.sharding.Sharding` with the structure of the params (e.g. `parallel.param_shardings`): each
    tensor is then read block by block straight into its device shards (jax.Arrays); without it,
    float32 numpy arrays are returned.
    """
    import jax
    from tqdm.auto import tqdm

    from jaxprune.models.pretrained import expected_shapes

    path = resolve_checkpoint(name_or_path)
    cfg = cfg or hf_names.model_config_from_hf(read_hf_config(path))
    src = TensorSource(path)
    plan = plan_tensors(src, cfg)
    shapes = expected_shapes(cfg)
    flat_sh = flatten(shardings) if shardings is not None else {}
    flat: dict[str, Any] = {}
    try:
        for p in tqdm(list(plan), desc=f"loading {path.name}", unit="tensor", disable=not progress, leave=False):
            key, transposed = plan[p]
            read = _reader(src, key, transposed, shapes[p])
            if p in flat_sh:
                flat[p] = jax.make_array_from_callback(shapes[p], flat_sh[p], read)
            else:
                flat[p] = read()
    finally:
        src.close()
    return unflatten(flat), cfg


def params_from_state_dict(tensors: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, Any]:
    """jaxprune params from an in-memory HF state dict (e.g. `{k: v.numpy() for k, v in model.state_dict()}`)."""
    names, prefixes = hf_names.tensor_map(cfg), hf_names.checkpoint_prefixes(cfg)
    flat = {}
    for path, (key, transposed) in names.items():
        if key not in tensors:
            key = next((key.removeprefix(p) for p in prefixes if key.removeprefix(p) in tensors), key)
        if key not in tensors:
            raise KeyError(f"state dict is missing tensor {key!r} (for {path})")
        a = np.asarray(tensors[key], np.float32)
        flat[path] = np.ascontiguousarray(a.T) if transposed else a
    return unflatten(flat)


def load_hf_checkpoint(name_or_path: str | os.PathLike, **overrides: Any) -> tuple[dict[str, Any], ModelConfig]:
    """(float32 numpy params, ModelConfig) of a HF checkpoint with its own architecture (+ overrides)."""
    path = resolve_checkpoint(name_or_path)
    cfg = hf_names.model_config_from_hf(read_hf_config(path), **overrides)
    return load_hf(path, cfg)


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------
def byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], special: list[str],
                   add_prefix_space: bool = False) -> "tokenizers.Tokenizer":  # noqa: F821
    """GPT-2-style byte-level BPE from a vocab and merge list; `special` tokens are never split."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if special:
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    return tok


def load_hf_tokenizer(name_or_path: str | os.PathLike) -> "tokenizers.Tokenizer":  # noqa: F821
    """tokenizer.json if present, else vocab.json + merges.txt as a byte-level BPE (GPT-2's)."""
    from tokenizers import Tokenizer

    path = resolve_checkpoint(name_or_path)
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    vf, mf = path / "vocab.json", path / "merges.txt"
    if not (vf.is_file() and mf.is_file()):
        raise FileNotFoundError(f"{str(path)!r} has neither tokenizer.json nor vocab.json + merges.txt")
    vocab = json.loads(vf.read_text(encoding="utf-8"))
    merges = []
    for line in mf.read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        a, b = line.split(" ")
        merges.append((a, b))
    special = [s for s in ("<|endoftext|>",) if s in vocab]
    return byte_level_bpe(vocab, merges, special)
