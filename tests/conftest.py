"""Shared fixtures: the real data directory and a tiny config reused across tests.

Compile time dominates on CPU, so every end-to-end test uses the same tiny shapes
(preset femto, context 64, batch 8) and one tokenizer trained once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from absl import logging

logging.set_verbosity(logging.WARNING)

ROOT = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    d = os.environ.get("JAXPRUNE_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    return Path(d)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = _data_dir()
    if not (d / "books" / "splits.json").is_file():
        pytest.fail(f"real data directory not found at {d}; set JAXPRUNE_DATA_DIR")
    return d


@pytest.fixture(scope="session")
def shared_tokenizer(tmp_path_factory, data_dir) -> Path:
    """A 512-token BPE trained once on 1 MB of the training novels."""
    from jaxprune.data import corpus
    from jaxprune.data.tokenizer import save_tokenizer, train_bpe

    texts = corpus.load_texts("books", "train", data_dir, max_bytes=1_000_000)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    save_tokenizer(train_bpe(texts, 512), path)
    return path


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


def tiny_config(data_dir: Path, tokenizer: Path, cache: Path, **overrides):
    """Femto GPT on 1 MB of real novels (tests/tiny_config.py) with this session's data paths."""
    import tiny_config as tiny

    c = tiny.get_config()
    c.data.data_dir = str(data_dir)
    c.data.tokenizer = str(tokenizer)
    c.data.cache_dir = str(cache)
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture
def make_config(data_dir, shared_tokenizer, token_cache):
    return lambda **kw: tiny_config(data_dir, shared_tokenizer, token_cache, **kw)
