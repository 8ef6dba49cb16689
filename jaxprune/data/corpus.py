"""Training text -> tokens -> packed fixed-length sequences -> deterministic batches.

Sources: the books corpus (books/splits.json), tiny Shakespeare, WikiText-2 or any
text files from an offline data directory, or a TFDS catalog dataset. Text is
normalised (byte-order marks, CRLF), tokenised once, cached as .npy, and packed
into sequences of `seq_len + 1` tokens (documents separated by EOS). The batch at
step s is a pure function of (seed, s), served by a grain MapDataset, so the data
position is just the step counter saved in every checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import grain
import numpy as np
from tokenizers import Tokenizer

from tqdm.auto import tqdm

from jaxprune.data import tfds_catalog
from jaxprune.data.errors import DataError
from jaxprune.data.tokenizer import eos_id, fingerprint

__all__ = ["DataError", "load_texts", "read_text", "tokenize", "train_batches", "eval_batches"]

# Text a tokenizer can learn from: real prose has no control characters and no "word" (run without
# whitespace) longer than a few hundred characters; a long run makes BPE training orders of magnitude slower.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
MAX_CONTROL_FRACTION = 0.001
MAX_WORD_CHARS = 10_000
_LONG_WORD = re.compile(r"\S{%d}" % MAX_WORD_CHARS)


def normalise(text: str) -> str:
    """Strips byte-order marks and turns CRLF / CR line endings into LF."""
    return text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")


def read_text(path: Path) -> str:
    """Reads one UTF-8 text file; raises DataError naming the file if it is unusable."""
    if not path.is_file():
        raise DataError(f"missing data file {str(path)!r}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 ({e.reason})") from e
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    check_text(text, str(path))
    return normalise(text)


def check_text(text: str, where: str) -> None:
    """Raises DataError if `text` is not prose: control characters (NUL, ...) or a huge run without whitespace."""
    control = _CONTROL.findall(text)
    if len(control) > max(10, MAX_CONTROL_FRACTION * len(text)):
        first = _CONTROL.search(text)
        line = text.count("\n", 0, first.start()) + 1
        raise DataError(f"{where}: line {line}: {len(control)} of {len(text)} characters are control characters "
                        f"(NUL, ...); this is not a text file")
    long = _LONG_WORD.search(text)
    if long:
        line = text.count("\n", 0, long.start()) + 1
        raise DataError(f"{where}: line {line}: more than {MAX_WORD_CHARS} characters without whitespace; a "
                        f"degenerate text (BPE training on it would take very long)")


def _book_names(splits_file: Path, split: str) -> list[str]:
    """The file names of one split of books/splits.json ({"train": [...], "validation": [...], "test": [...]})."""
    try:
        splits = json.loads(read_text(splits_file))
    except json.JSONDecodeError as e:
        raise DataError(f"{splits_file}: line {e.lineno}: malformed JSON ({e.msg})") from e
    if not isinstance(splits, dict):
        raise DataError(f"{splits_file}: expected a JSON object {{\"train\": [...], \"validation\": [...], "
                        f"\"test\": [...]}}, got a {type(splits).__name__}")
    names = splits.get(split)
    if names is None:
        raise DataError(f"{splits_file}: has no {split!r} split (keys: {', '.join(map(str, splits)) or 'none'})")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{splits_file}: {split!r} must be a list of file names in books/, got "
                        f"{type(names).__name__} {str(names)[:60]!r}")
    if not names:
        raise DataError(f"{splits_file}: the {split!r} split lists no books")
    return names


def _tfds_texts(name: str, split: str, data_dir: Path | None) -> list[str]:
    """Reads a prepared TFDS dataset's text; fails at once if it would need a download offline."""
    builder = tfds_catalog.prepared_builder(
        name, str(data_dir / "tensorflow_datasets") if data_dir else None, DataError)
    tfds_split = {"validation": "validation", "train": "train", "test": "test"}[split]
    ds = builder.as_data_source(split=tfds_split)
    out = []
    for ex in ds:
        value = ex.get("text", ex.get("content"))
        out.append(normalise(value.decode() if isinstance(value, bytes) else str(value)))
    return out


def load_texts(source: str, split: str, data_dir: Path | None, files: tuple = (),
               max_bytes: int = 0) -> list[str]:
    """Returns the documents of one split ("train", "validation" or "test") of a source."""
    if source.startswith("tfds:"):
        texts = _tfds_texts(source[5:], split, data_dir)
    elif source == "files":
        texts = [read_text(Path(f)) for f in files]
    else:
        if data_dir is None:
            raise DataError("no data directory: set data.data_dir or $JAXPRUNE_DATA_DIR")
        if source == "books":
            names = _book_names(data_dir / "books" / "splits.json", split)
            texts = []
            total = 0
            for name in names:
                texts.append(read_text(data_dir / "books" / name))
                total += len(texts[-1])
                if max_bytes and total >= max_bytes:
                    break
        elif source == "tinyshakespeare":
            text = read_text(data_dir / "tinyshakespeare" / "input.txt")
            cut = int(len(text) * 0.9)  # the usual 90/10 split
            texts = [text[:cut] if split == "train" else text[cut:]]
        elif source == "wikitext2":
            name = {"validation": "valid.txt", "test": "test.txt"}.get(split)
            if name is None:
                raise DataError("wikitext2 in shared/data has only validation and test splits (eval only)")
            texts = [read_text(data_dir / "wikitext-2" / name)]
        else:
            raise DataError(f"unknown data source {source!r}")
    if max_bytes:
        out, total = [], 0
        for t in texts:
            out.append(t[: max_bytes - total])
            total += len(out[-1])
            if total >= max_bytes:
                break
        texts = out
    return texts


def tokenize(tok: Tokenizer, texts: list[str], cache_dir: Path | None = None, key: str = "",
             progress: bool = False) -> np.ndarray:
    """Concatenates the tokens of all documents, EOS after each; cached as .npy when cache_dir is set.
    `progress` shows a bar over the documents (labelled with `key`)."""
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256((fingerprint(tok) + key).encode())
        for t in texts:
            digest.update(hashlib.sha256(t.encode()).digest())
        path = Path(cache_dir) / f"tokens-{digest.hexdigest()[:20]}.npy"
        if path.is_file():
            try:
                return np.load(path, allow_pickle=False)
            except (ValueError, OSError):
                path.unlink()  # a truncated cache file is rebuilt, never trusted
    eos = eos_id(tok)
    dtype = np.uint16 if tok.get_vocab_size() <= 2**16 else np.uint32
    # Encode in paragraph-sized chunks so the tokenizer's thread pool has work to share.
    pieces = []
    for text in tqdm(texts, desc=f"tokenising {key}".strip(), unit="doc", disable=not progress, mininterval=2.0):
        chunks = [c for c in text.split("\n\n")]
        enc = tok.encode_batch([c + "\n\n" if i < len(chunks) - 1 else c for i, c in enumerate(chunks)])
        pieces.extend(np.asarray(e.ids, dtype) for e in enc)
        pieces.append(np.asarray([eos], dtype))
    tokens = np.concatenate(pieces) if pieces else np.zeros((0,), dtype)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, tokens)
        os.replace(tmp, path)
    return tokens


class PackedSequences:
    """Random-access view of a token array as non-overlapping windows of seq_len + 1 tokens."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n = (len(tokens) - 1) // seq_len
        if self.n <= 0:
            raise DataError(f"only {len(tokens)} tokens: too few for one sequence of {seq_len + 1}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(i) * self.seq_len
        return self.tokens[start: start + self.seq_len + 1].astype(np.int32)


@dataclass
class Batches:
    """Deterministic shuffled batches: `batches[step]` is an int32 array (batch_size, seq_len + 1)."""

    dataset: grain.MapDataset
    num_sequences: int

    def __getitem__(self, step: int) -> np.ndarray:
        return self.dataset[int(step)]


def train_batches(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int) -> Batches:
    seqs = PackedSequences(tokens, seq_len)
    if len(seqs) < batch_size:
        raise DataError(f"training text has {len(seqs)} sequences of {seq_len + 1} tokens, fewer than one "
                        f"batch of {batch_size}")
    ds = grain.MapDataset.source(seqs).shuffle(seed=seed).repeat(None).batch(batch_size, drop_remainder=True)
    return Batches(ds, len(seqs))


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, num_batches: int) -> list[np.ndarray]:
    """Evenly spaced, non-overlapping held-out windows (all of them when num_batches is 0)."""
    seqs = PackedSequences(tokens, seq_len)
    total = len(seqs) if num_batches == 0 else min(len(seqs), num_batches * batch_size)
    idx = np.linspace(0, len(seqs) - 1, total).astype(np.int64) if total < len(seqs) else np.arange(total)
    out = []
    for b in range(0, total - batch_size + 1, batch_size):
        out.append(np.stack([seqs[i] for i in idx[b: b + batch_size]]))
    if not out:  # fewer windows than one batch: one smaller batch
        out.append(np.stack([seqs[i] for i in idx]))
    return out
