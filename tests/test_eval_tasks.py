"""Task readers: real files parse to the documented counts; malformed files fail with file and line."""

from __future__ import annotations

import bz2
import os
from pathlib import Path

import pytest

from jaxprune.data import tfds_catalog
from jaxprune.data.tasks import READERS, TaskDataError, base, hellaswag, lambada, load_task, nq_open, storycloze, \
    triviaqa, webquestions

DATA = Path(os.environ.get("JAXPRUNE_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.mark.parametrize("task, n_eval, n_fewshot, kind", [
    ("lambada", 5153, 5153, "lambada"),
    ("hellaswag", 10042, 10042, "multiple_choice"),
    ("storycloze", 1871, 1871, "multiple_choice"),
    ("nq_open", 3610, 3610, "qa"),
    ("webquestions", 2032, 2834, "qa"),
    ("triviaqa", 3000, 3000, "qa"),
])
def test_real_files_parse(task, n_eval, n_fewshot, kind):
    data = load_task(task, DATA)
    assert (len(data.examples), len(data.fewshot), data.kind) == (n_eval, n_fewshot, kind)
    for ex in data.examples:
        assert ex.context
        if kind == "qa":
            assert ex.answers and all(isinstance(a, str) for a in ex.answers)
        else:
            assert 0 <= ex.label < len(ex.choices)


def test_real_first_items():
    lam = load_task("lambada", DATA).examples[0]
    assert lam.context.endswith("I don't care about") and lam.choices == ("signs",)
    hs = load_task("hellaswag", DATA).examples[0]
    assert hs.context == "Roof shingle removal: A man is sitting on a roof. he"
    assert hs.label == 3 and hs.choices[3] == "starts pulling up roofing on a roof."
    sc = load_task("storycloze", DATA)
    assert sc.examples[0].label == 1
    assert sc.examples[0].choices[1] == "The next weekend, I was asked to please stay home."
    assert sc.fewshot[0].context.startswith("Rick grew up in a troubled household.")
    nq = load_task("nq_open", DATA).examples[1]
    assert nq.context == "who wrote he ain't heavy he's my brother lyrics"
    assert nq.answers == ("Bobby Scott", "Bob Russell")
    wq = load_task("webquestions", DATA)
    assert wq.examples[0].context == "what does jamaican people speak?"
    assert wq.fewshot[0].answers == ("Padm\u00e9 Amidala",)
    tq = load_task("triviaqa", DATA).examples[1]
    assert tq.context == "What type of animal is a dik-dik?"
    assert tq.answers[0] == "Antelope" and "Hybrid antelope" in tq.answers and len(set(tq.answers)) == len(tq.answers)


# -- malformed inputs -------------------------------------------------------
def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "lambada.jsonl"
    p.write_text('{"text": "a b c"}\n{"text": "d e\n')
    with pytest.raises(TaskDataError, match=rf"{p}: line 2: malformed JSON"):
        lambada.read_local(p)


def test_jsonl_missing_or_wrong_field(tmp_path):
    p = tmp_path / "nq.jsonl"
    p.write_text('{"question": "q", "answer": ["a"]}\n\n{"question": "q2"}\n')
    with pytest.raises(TaskDataError, match=rf"{p}: line 3: missing field 'answer'"):
        nq_open.read_local(p)
    p.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(TaskDataError, match=rf"{p}: line 1: field 'answer' should be list"):
        nq_open.read_local(p)
    p.write_text('{"context": "Who?", "answer": "a", "aliases": []}\n')
    with pytest.raises(TaskDataError, match=rf"{p}: line 1: context is not of the form"):
        triviaqa.read_local(p)


def test_empty_and_missing_files(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    with pytest.raises(TaskDataError, match=rf"{p}: file is empty"):
        lambada.read_local(p)
    p.write_text("\n\n")
    with pytest.raises(TaskDataError, match=rf"{p}: file has no records"):
        lambada.read_local(p)
    with pytest.raises(TaskDataError, match="does not exist"):
        load_task("nq_open", tmp_path)


def test_csv_missing_column_and_short_row(tmp_path):
    p = tmp_path / "cloze.csv"
    cols = list(storycloze.COLUMNS)
    p.write_text(",".join(cols[:-1]) + "\n" + ",".join("x" * 6) + "\n")
    with pytest.raises(TaskDataError, match=rf"{p}: line 1: missing columns \['AnswerRightEnding'\]"):
        storycloze.read_local(p)
    p.write_text(",".join(cols) + "\n" + ",".join(["s"] * 6 + ["1"]) + "\n" + ",".join(["s"] * 5) + "\n")
    with pytest.raises(TaskDataError, match=rf"{p}: line 3: expected 7 columns"):
        storycloze.read_local(p)
    p.write_text(",".join(cols) + "\n" + ",".join(["s"] * 6 + ["3"]) + "\n")
    with pytest.raises(TaskDataError, match=rf"{p}: line 2: AnswerRightEnding must be 1 or 2"):
        storycloze.read_local(p)
    p.write_text(",".join(cols) + "\n" + ",".join([f"s{i}" for i in range(6)] + ["2"]) + "\n")
    (ex,) = storycloze.read_local(p)
    assert (ex.context, ex.choices, ex.label) == ("s0 s1 s2 s3", ("s4", "s5"), 1)


def test_hellaswag_malformed(tmp_path):
    p = tmp_path / "hs.txt.bz2"
    item = ["ctx", "2", "e0", "e1", "e2", "e3"]
    p.write_bytes(bz2.compress("\n".join(item + item[:4]).encode() + b"\n"))
    with pytest.raises(TaskDataError, match=rf"{p}: line 7: incomplete item"):
        hellaswag.read_local(p)
    p.write_bytes(bz2.compress("\n".join(item + ["ctx", "x", "a", "b", "c", "d"]).encode()))
    with pytest.raises(TaskDataError, match=rf"{p}: line 8: label must be 0-3"):
        hellaswag.read_local(p)
    p.write_bytes(b"not bz2")
    with pytest.raises(TaskDataError, match=rf"{p}: not a valid bz2"):
        hellaswag.read_local(p)


def test_json_array_malformed(tmp_path):
    p = tmp_path / "wq.json"
    p.write_text('[\n {"qText": "q", "answers": ["a"]},\n {"qText": "q2", "answers": ["a"]\n]')
    with pytest.raises(TaskDataError, match=rf"{p}: line 4: malformed JSON"):
        webquestions.read_local(p)
    p.write_text('[\n {"qText": "q", "answers": ["a"]},\n {"qText": "q2"}\n]')
    with pytest.raises(TaskDataError, match=rf"{p}: entry 1: missing field 'answers'"):
        webquestions.read_local(p)


# -- TFDS: never minutes of retries offline ---------------------------------
def test_tfds_fails_fast_offline(monkeypatch, tmp_path):
    import socket

    import tensorflow_datasets as tfds

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # nothing is prepared here
    real_builder = tfds.builder
    monkeypatch.setattr(tfds, "builder", lambda name, **kw: real_builder(name, **{**kw, "data_dir": str(tmp_path)}))

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert tfds_catalog.online() is False
    with pytest.raises(TaskDataError, match=r"not prepared and there is no internet.*JAXPRUNE_DATA_DIR"):
        load_task("nq_open", None)
    assert set(READERS) == {"lambada", "hellaswag", "storycloze", "nq_open", "webquestions", "triviaqa"}


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown evaluation task 'squad'"):
        load_task("squad", DATA)
