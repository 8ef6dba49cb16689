"""Tokenizer round trip, normalisation, packing and deterministic batches on real text."""

import numpy as np
import pytest

from jaxprune.data import corpus, tfds_catalog
from jaxprune.data.tokenizer import EOS, eos_id, load_tokenizer


def test_normalise_strips_bom_and_crlf():
    assert corpus.normalise("\ufeffIt was\r\nthe best\rof times\n") == "It was\nthe best\nof times\n"


def test_books_files_are_normalised(data_dir):
    texts = corpus.load_texts("books", "validation", data_dir)
    assert len(texts) == 6  # the six validation novels of splits.json
    assert all("\r" not in t and "\ufeff" not in t for t in texts)


def test_tokenizer_round_trip_on_real_text(shared_tokenizer, data_dir):
    tok = load_tokenizer(shared_tokenizer)
    assert tok.get_vocab_size() == 512
    text = corpus.load_texts("books", "test", data_dir, max_bytes=20_000)[0]
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text  # byte-level BPE is lossless, accents and punctuation included
    assert len(ids) < len(text.encode())  # and it compresses
    assert tok.id_to_token(eos_id(tok)) == EOS


def test_tokenize_puts_eos_after_each_document_and_caches(shared_tokenizer, tmp_path):
    tok = load_tokenizer(shared_tokenizer)
    docs = ["The cat sat.", "A dog ran home."]
    tokens = corpus.tokenize(tok, docs, tmp_path, key="t")
    eos = eos_id(tok)
    expect = tok.encode(docs[0]).ids + [eos] + tok.encode(docs[1]).ids + [eos]
    assert tokens.tolist() == expect
    assert len(list(tmp_path.glob("tokens-*.npy"))) == 1
    assert corpus.tokenize(tok, docs, tmp_path, key="t").tolist() == expect  # from the cache


def test_truncated_cache_is_rebuilt(shared_tokenizer, tmp_path):
    tok = load_tokenizer(shared_tokenizer)
    first = corpus.tokenize(tok, ["Call me Ishmael."], tmp_path, key="k")
    (cache,) = tmp_path.glob("tokens-*.npy")
    cache.write_bytes(cache.read_bytes()[:20])
    assert corpus.tokenize(tok, ["Call me Ishmael."], tmp_path, key="k").tolist() == first.tolist()


def test_packing_windows_overlap_by_one_token():
    tokens = np.arange(23, dtype=np.uint16)
    seqs = corpus.PackedSequences(tokens, seq_len=5)
    assert len(seqs) == 4  # (23 - 1) // 5
    assert seqs[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert seqs[3].tolist() == [15, 16, 17, 18, 19, 20]
    assert seqs[1].dtype == np.int32
    with pytest.raises(corpus.DataError, match="too few for one sequence"):
        corpus.PackedSequences(np.arange(4), seq_len=5)


def test_batches_are_a_pure_function_of_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    a = corpus.train_batches(tokens, 9, 4, seed=0)
    b = corpus.train_batches(tokens, 9, 4, seed=0)
    c = corpus.train_batches(tokens, 9, 4, seed=1)
    assert a[7].shape == (4, 10)
    np.testing.assert_array_equal(a[7], b[7])
    assert not np.array_equal(a[0], c[0])
    # one epoch (111 sequences -> 27 full batches) visits distinct sequences
    firsts = np.concatenate([a[s][:, 0] for s in range(27)])
    assert len(set(firsts.tolist())) == 108
    assert all(f % 9 == 0 for f in firsts)


def test_eval_batches_cover_the_split_evenly():
    tokens = np.arange(1001, dtype=np.uint16)
    batches = corpus.eval_batches(tokens, 10, 5, num_batches=2)
    starts = [int(row[0]) for b in batches for row in b]
    assert len(starts) == 10 and starts[0] == 0 and starts[-1] == 990
    assert len(corpus.eval_batches(tokens, 10, 5, 0)) == 20


def test_bad_files_raise_one_error_naming_the_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(corpus.DataError, match="empty.txt: file is empty"):
        corpus.read_text(empty)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"line one\nline two \xff\xfe\n")
    with pytest.raises(corpus.DataError, match="bad.txt: line 2: not valid UTF-8"):
        corpus.read_text(bad)
    with pytest.raises(corpus.DataError, match="missing data file"):
        corpus.read_text(tmp_path / "nope.txt")


def test_tfds_offline_fails_fast(monkeypatch, tmp_path):
    """An unprepared TFDS dataset offline raises at once, naming the data-directory alternative."""
    monkeypatch.setattr(tfds_catalog, "online", lambda *a, **k: False)
    with pytest.raises(corpus.DataError, match="not prepared and there is no internet connection.*data_dir"):
        corpus.load_texts("tfds:tiny_shakespeare", "train", tmp_path)
