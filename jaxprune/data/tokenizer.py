"""Byte-level BPE tokenizer (GPT-2 style) trained offline with `tokenizers`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxprune.data.errors import DataError

EOS = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int, progress: bool = False) -> Tokenizer:
    """Trains a GPT-2-style byte-level BPE with `vocab_size` entries (EOS included); `progress` shows the
    tokenizers library's own progress bars."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads a tokenizer.json (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file {str(path)!r} does not exist")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise DataError(f"tokenizer file {str(path)!r} is malformed: {' '.join(str(e).split())}") from e
    if tok.get_vocab_size() == 0:
        raise DataError(f"tokenizer file {str(path)!r} has an empty vocabulary")
    return tok


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> None:
    """Writes atomically, so a killed run never leaves half a tokenizer behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    os.replace(tmp, path)


def eos_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOS)
    if i is None:
        raise DataError(f"the tokenizer has no {EOS} token (needed between documents)")
    return i


def fingerprint(tok: Tokenizer) -> str:
    """Short content hash, used to key caches of tokenised text."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]
