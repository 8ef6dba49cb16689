"""The bad-input matrix (issue 17): every case runs `python -m jaxprune.main` on the tiny test config with one
mistake in its config, data, checkpoints, workdir or model file, and records the exit code, the first
`error:` line, whether a traceback was printed and whether the failed run claimed its workdir (config.json).

    JAXPRUNE_DATA_DIR=../shared/data python tests/bad_inputs_matrix.py [--out experiments/bad_inputs/matrix.md]

Not collected by pytest (a few minutes: one process per case); tests/test_user_errors.py pins the cases
issue 17 lists. Exits 1 if any case breaks the contract (wrong code, a traceback, a claimed workdir).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Case:
    def __init__(self, name: str, area: str, code: int, args: list[str] = (), setup: Callable | None = None,
                 workdir_setup: Callable | None = None, env: dict | None = None, base: bool = True):
        self.name, self.area, self.code, self.args = name, area, code, list(args)
        self.setup, self.workdir_setup, self.env, self.base = setup, workdir_setup, env or {}, base


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _gguf(path: Path, zero_dim: bool = False) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.ones((0 if zero_dim else 8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _books_copy(data_dir: Path, dst: Path, splits) -> Path:
    (dst / "books").mkdir(parents=True)
    for f in (data_dir / "books").iterdir():
        if f.suffix == ".txt":
            (dst / "books" / f.name).symlink_to(f)
    (dst / "books" / "splits.json").write_text(splits if isinstance(splits, str) else json.dumps(splits))
    return dst


def _lambada_copy(data_dir: Path, dst: Path, content: bytes) -> Path:
    _books_copy(data_dir, dst, (data_dir / "books" / "splits.json").read_text())
    _write(dst / "lambada" / "lambada_test.jsonl", content)
    return dst


def cases(data_dir: Path) -> list[Case]:
    """Every case: (name, area, expected exit code, extra args, setup(tmp) -> extra args, workdir setup)."""
    tiny = "--config=tests/tiny_config.py"
    files = lambda content: lambda t: ["--config.data.source=files",  # noqa: E731
                                       f"--config.data.files=('{_write(t / 'train.txt', content)}',)"]
    data = lambda build: lambda t: [f"--config.data.data_dir={build(t)}"]  # noqa: E731
    tok = lambda content: lambda t: [f"--config.data.tokenizer={_write(t / 'tok.json', content)}"]  # noqa: E731
    gguf_init = lambda build: lambda t: ["--config.model.init=gguf", f"--config.model.init_path={build(t)}",  # noqa
                                         "--config.model.preset=llama-pico", "--config.data.tokenizer=",
                                         "--config.pretrain.steps=0"]
    books = lambda splits: data(lambda t: _books_copy(data_dir, t / "data", splits))  # noqa: E731
    lambada = lambda content: lambda t: [  # noqa: E731
        f"--config.data.data_dir={_lambada_copy(data_dir, t / 'data', content)}",
        "--config.eval.tasks=('heldout','lambada')"]

    def stage_dir(t: Path, results: str | None, checkpoints: bool = True) -> list[str]:
        run = t / "other"
        (run / "dense").mkdir(parents=True)
        if checkpoints:
            (run / "dense" / "checkpoints").mkdir()
        if results is not None:
            (run / "results.jsonl").write_text(results)
        return ["--config.model.init=checkpoint", f"--config.model.init_path={run / 'dense'}"]

    def config_file(body: str) -> Callable:
        return lambda t: [f"--config={_write(t / 'cfg.py', body)}"]

    def lock(owner: Callable[[], dict]) -> Callable:
        return lambda w: _write(w / ".lock", json.dumps(owner()))

    def saved_config(text: str) -> Callable:
        return lambda w: _write(w / "config.json", text)

    return [
        # --- config: flags, files, values ------------------------------------------------------------------
        Case("misspelt key --config.pruning.rats", "config", 2, [tiny, "--config.pruning.rats=(0.5,)"]),
        Case("misspelt top-level key --config.sed", "config", 2, [tiny, "--config.sed=1"]),
        Case("unknown flag --bogus", "config", 2, [tiny, "--bogus=1"]),
        Case("missing config file", "config", 2, ["--config=configs/nope.py"], base=False),
        Case("config file raises RuntimeError", "config", 2, [], config_file(
            "def get_config():\n    raise RuntimeError('broken')\n")),
        Case("config file with a syntax error", "config", 2, [], config_file("def get_config(:\n")),
        Case("config file without get_config", "config", 2, [], config_file("x = 1\n")),
        Case("unknown config variant (:bogus)", "config", 2, ["--config=configs/smollm2_lambada.py:bogus"],
             base=False),
        Case("override without --config", "config", 2, ["--config.seed=1"], base=False),
        Case("no --config", "config", 2, [], base=False),
        Case("unexpected positional argument", "config", 2, [tiny, "extra"]),
        Case("seed=abc (wrong type)", "config", 2, [tiny, "--config.seed=abc"]),
        Case("seed=-1", "config", 2, [tiny, "--config.seed=-1"]),
        Case("rate 1.5", "config", 2, [tiny, "--config.pruning.rates=(0.2,1.5)"]),
        Case("decreasing rates", "config", 2, [tiny, "--config.pruning.rates=(0.5,0.2)"]),
        Case("rates not a tuple (abc)", "config", 2, [tiny, "--config.pruning.rates=abc"]),
        Case("model.preset=gpt9", "config", 2, [tiny, "--config.model.preset=gpt9"]),
        Case("model.dtype=float16", "config", 2, [tiny, "--config.model.dtype=float16"]),
        Case("model.dropout=1.5", "config", 2, [tiny, "--config.model.dropout=1.5"]),
        Case("model.vocab_size=0", "config", 2, [tiny, "--config.model.vocab_size=0"]),
        Case("model.max_len=0", "config", 2, [tiny, "--config.model.max_len=0"]),
        Case("model.vocab_size below the tokenizer's 512", "config", 2, [tiny, "--config.model.vocab_size=300"]),
        Case("model.vocab_size=200 for a new byte-level BPE", "config", 2, [tiny, "--config.model.vocab_size=200",
                                                                             "--config.data.tokenizer="]),
        Case("pretrain.batch_size=0", "config", 2, [tiny, "--config.pretrain.batch_size=0"]),
        Case("grad_accum does not divide batch", "config", 2, [tiny, "--config.pretrain.grad_accum=3"]),
        Case("finetune.lr=0", "config", 2, [tiny, "--config.finetune.lr=0"]),
        Case("pruning.method=bogus", "config", 2, [tiny, "--config.pruning.method=bogus"]),
        Case("nm pattern with rate 0.3", "config", 2, [tiny, "--config.pruning.pattern=nm",
                                                        "--config.pruning.rates=(0.3,)"]),
        Case("nm with n >= m", "config", 2, [tiny, "--config.pruning.pattern=nm", "--config.pruning.n=4",
                                              "--config.pruning.m=2", "--config.pruning.rates=(0.5,)"]),
        Case("invalid include regex", "config", 2, [tiny, "--config.pruning.include=('[',)"]),
        Case("include matches no parameter", "config", 2, [tiny, "--config.pruning.include=('nothing',)"]),
        Case("exclude removes every prunable parameter", "config", 2, [tiny, "--config.pruning.exclude=('.*',)"]),
        Case("gradual with two rates", "config", 2, [tiny, "--config.pruning.schedule=gradual"]),
        Case("wanda with head pattern", "config", 2, [tiny, "--config.pruning.method=wanda",
                                                       "--config.pruning.pattern=head"]),
        Case("unknown eval task", "config", 2, [tiny, "--config.eval.tasks=('bogus',)"]),
        Case("eval task misspelt (lambda)", "config", 2, [tiny, "--config.eval.tasks=('heldout','lambda')"]),
        Case("eval.batch_size=0", "config", 2, [tiny, "--config.eval.batch_size=0"]),
        Case("mesh.data=0", "config", 2, [tiny, "--config.mesh.data=0"]),
        Case("two mesh axes -1", "config", 2, [tiny, "--config.mesh.fsdp=-1"]),
        Case("mesh needs more devices than exist", "config", 2, [tiny, "--config.mesh.data=4"]),
        Case("mesh axis not dividing the devices", "config", 2, [tiny, "--config.mesh.tensor=3"]),
        Case("checkpoint.every_steps=0", "config", 2, [tiny, "--config.checkpoint.every_steps=0"]),
        Case("model.init=bogus", "config", 2, [tiny, "--config.model.init=bogus"]),
        Case("model.init=gguf without init_path", "config", 2, [tiny, "--config.model.init=gguf"]),
        # --- data ----------------------------------------------------------------------------------------
        Case("data_dir does not exist", "data", 2, [tiny, "--config.data.data_dir=/nonexistent/data"]),
        Case("no data directory at all", "data", 2, [tiny, "--config.data.data_dir="],
             env={"JAXPRUNE_DATA_DIR": ""}),
        Case("data.source=bogus", "data", 2, [tiny, "--config.data.source=bogus"]),
        Case("source=files without files", "data", 2, [tiny, "--config.data.source=files"]),
        Case("data file does not exist", "data", 2, [tiny, "--config.data.source=files",
                                                      "--config.data.files=('/nonexistent.txt',)"]),
        Case("data file not UTF-8", "data", 2, [tiny], files(b"one\ntwo \xff\xfe three\n" * 100)),
        Case("data file empty", "data", 2, [tiny], files(b"  \n")),
        Case("data file mostly NUL", "data", 2, [tiny], files(b"a story\n" + b"\x00" * 200_000)),
        Case("data file one 50k-character word", "data", 2, [tiny], files(b"x" * 50_000)),
        Case("data file too small for one batch", "data", 2, [tiny], files(b"a tiny story about a cat.\n")),
        Case("books/splits.json is a list", "data", 2, [tiny], books(["a.txt"])),
        Case("splits 'train' is a string", "data", 2, [tiny], books({"train": "old_jack.txt", "validation": []})),
        Case("splits without 'train'", "data", 2, [tiny], books({"validation": ["old_jack.txt"]})),
        Case("splits.json malformed JSON", "data", 2, [tiny], books('{"train": [')),
        Case("splits name a missing book", "data", 2, [tiny], books(
            {"train": ["no_such_book.txt"], "validation": ["old_jack.txt"], "test": []})),
        Case("lambada line malformed JSON", "data", 2, [tiny], lambada(b'{"text": "a b"}\n{"text": \n')),
        Case("lambada file empty", "data", 2, [tiny], lambada(b"")),
        Case("lambada not UTF-8", "data", 2, [tiny], lambada(b'{"text": "a \xff b"}\n')),
        Case("tokenizer file does not exist", "data", 2, [tiny, "--config.data.tokenizer=/nonexistent/tok.json"]),
        Case("tokenizer.json malformed JSON", "data", 2, [tiny], tok("{not json")),
        Case("tokenizer.json empty", "data", 2, [tiny], tok("")),
        Case("tokenizer.json valid JSON, not a tokenizer", "data", 2, [tiny], tok('{"model": 3}')),
        # --- workdir ---------------------------------------------------------------------------------------
        Case("workdir is a file", "workdir", 2, [tiny], workdir_setup="FILE"),
        Case("read-only workdir", "workdir", 2, [tiny], workdir_setup="READONLY"),
        Case("workdir locked by a live run", "workdir", 3, [tiny],
             workdir_setup=lock(lambda: {"host": socket.gethostname(), "pid": 1})),
        Case("workdir locked from another host", "workdir", 3, [tiny],
             workdir_setup=lock(lambda: {"host": "other-host", "pid": 1})),
        Case("results.jsonl garbage line", "workdir", 2, [tiny],
             workdir_setup=lambda w: _write(w / "results.jsonl", "garbage\n")),
        Case("results.jsonl line is a list", "workdir", 2, [tiny],
             workdir_setup=lambda w: _write(w / "results.jsonl", "[1, 2]\n")),
        Case("workdir holds another config's run", "workdir", 2, [tiny],
             workdir_setup=saved_config('{"digest": "0123456789abcdef", "config": {"seed": 5}}')),
        Case("config.json garbage", "workdir", 2, [tiny], workdir_setup=saved_config("garbage")),
        # --- checkpoints (model.init=checkpoint) ------------------------------------------------------------
        Case("init=checkpoint path does not exist", "checkpoint", 2, [tiny, "--config.model.init=checkpoint",
                                                                       "--config.model.init_path=/nonexistent"]),
        Case("init=checkpoint not a stage directory", "checkpoint", 2, [tiny], lambda t: stage_dir(t, None)),
        Case("init=checkpoint unfinished stage", "checkpoint", 2, [tiny], lambda t: stage_dir(t, "")),
        Case("init=checkpoint finished stage, no checkpoint saved", "checkpoint", 4, [tiny], lambda t: stage_dir(
            t, json.dumps({"stage": "dense", "metrics": {}}) + "\n")),
        # --- model files -------------------------------------------------------------------------------------
        Case("gguf file does not exist", "model file", 2, [tiny, "--config.model.init=gguf",
                                                            "--config.model.init_path=/nonexistent.gguf"]),
        Case("gguf without magic", "model file", 2, [tiny], gguf_init(lambda t: _write(t / "m.gguf", b"hello"))),
        Case("gguf truncated", "model file", 2, [tiny], gguf_init(
            lambda t: _write(t / "m.gguf", _gguf(t / "ok.gguf").read_bytes()[:60]))),
        Case("gguf text with the magic", "model file", 2, [tiny], gguf_init(
            lambda t: _write(t / "m.gguf", b"GGUF is a file format\n" * 20))),
        Case("gguf zero-dimension tensor", "model file", 2, [tiny], gguf_init(
            lambda t: _gguf(t / "m.gguf", zero_dim=True))),
        Case("gguf without a tokenizer", "model file", 2, [tiny], gguf_init(lambda t: _gguf(t / "m.gguf"))),
        Case("hf_gpt2 hub id offline", "model file", 2, [tiny, "--config.model.init=hf_gpt2",
                                                          "--config.model.init_path=openai/gpt2-nope",
                                                          "--config.data.tokenizer="]),
        Case("hf_gpt2 directory without config.json", "model file", 2, [tiny], lambda t: [
            "--config.model.init=hf_gpt2", f"--config.model.init_path={(t / 'hf').mkdir() or t / 'hf'}",
            "--config.data.tokenizer="]),
        Case("hf_gpt2 path is a file", "model file", 2, [tiny], lambda t: [
            "--config.model.init=hf_gpt2", f"--config.model.init_path={_write(t / 'model.bin', b'x')}",
            "--config.data.tokenizer="]),
    ]


def run_case(case: Case, data_dir: Path, tokenizer: Path, cache: Path, tmp: Path) -> dict:
    workdir = tmp / "run"
    if case.workdir_setup == "FILE":
        _write(workdir, "not a directory")
    elif case.workdir_setup == "READONLY":
        workdir = Path("/proc/jaxprune_matrix/run") if os.geteuid() == 0 else tmp / "ro" / "run"
        if os.geteuid() != 0:
            (tmp / "ro").mkdir(mode=0o500)
    elif case.workdir_setup is not None:
        workdir.mkdir(parents=True)
        case.workdir_setup(workdir)
    claimed_before = (workdir / "config.json").is_file() if workdir.is_dir() else False
    args = list(case.args) + (case.setup(tmp) if case.setup else [])
    if case.base and not any(a.startswith("--config=") for a in args):
        args = ["--config=tests/tiny_config.py"] + args
    if case.base:
        base = [f"--config.data.data_dir={data_dir}", f"--config.data.tokenizer={tokenizer}",
                f"--config.data.cache_dir={cache}"]
        given = {a.split("=", 1)[0] for a in args}
        config = [a for a in args if a.startswith("--config=")]  # config_flags needs the file before overrides
        args = config + [a for a in base if a.split("=", 1)[0] not in given] + [a for a in args if a not in config]
    env = dict(os.environ, **case.env)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxprune.main", *args, f"--workdir={workdir}", "--progress=false"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    lines = proc.stderr.splitlines()
    first = next((line for line in lines if line.startswith(("error:", "preempted:"))), lines[-1] if lines else "")
    i = lines.index(first) if first in lines else -1
    if first.rstrip().endswith("invalid config:") and i + 1 < len(lines):
        first += " " + lines[i + 1].strip()
    claimed = workdir.is_dir() and (workdir / "config.json").is_file() and not claimed_before
    return {"case": case.name, "area": case.area, "expected": case.code, "code": proc.returncode,
            "first_line": first, "traceback": "Traceback" in proc.stderr, "claimed": claimed,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "bad_inputs" / "matrix.md")
    p.add_argument("-k", default="", help="only cases whose name contains this")
    args = p.parse_args()
    data_dir = Path(os.environ.get("JAXPRUNE_DATA_DIR") or ROOT.parent / "shared" / "data")
    from jaxprune.data import corpus
    from jaxprune.data.tokenizer import save_tokenizer, train_bpe

    root = Path(tempfile.mkdtemp(prefix="jaxprune-matrix-"))
    tokenizer = root / "tokenizer.json"
    save_tokenizer(train_bpe(corpus.load_texts("books", "train", data_dir, max_bytes=1_000_000), 512), tokenizer)
    rows = []
    selected = [c for c in cases(data_dir) if args.k in c.name]
    for n, case in enumerate(selected):
        tmp = root / f"case{n}"
        tmp.mkdir()
        row = run_case(case, data_dir, tokenizer, root / "cache", tmp)
        row["first_line"] = row["first_line"].replace(str(root), "$TMP")
        ok = row["code"] == row["expected"] and not row["traceback"] and not row["claimed"]
        row["ok"] = ok
        rows.append(row)
        print(f"{'ok ' if ok else 'BAD'} {row['code']:>3} {case.name}: {row['first_line'][:150]}", flush=True)
    bad = [r for r in rows if not r["ok"]]
    table = ["| # | area | case | exit | first line |", "|---|---|---|---|---|"]
    for n, r in enumerate(rows, start=1):
        line = r["first_line"].replace("|", "\\|").replace("`", "'")
        flag = "" if r["ok"] else f" **(expected {r['expected']}{', traceback' if r['traceback'] else ''}" \
                                  f"{', claimed the workdir' if r['claimed'] else ''})**"
        table.append(f"| {n} | {r['area']} | {r['case']} | {r['code']}{flag} | `{line}` |")
    summary = (f"{len(rows)} cases, {len(rows) - len(bad)} with the documented exit code, one error line, no "
               f"traceback and no config.json left behind; {len(bad)} not.")
    if not args.k:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Bad-input matrix (issue 17)\n\nEach case: `python -m jaxprune.main` on "
                            "`tests/tiny_config.py` with one mistake, run by `tests/bad_inputs_matrix.py`; the exit "
                            "code and the first error line (for a config error, also its first problem); `$TMP` is the "
                            "matrix's temporary directory.\n\n"
                            + summary + "\n\n" + "\n".join(table) + "\n")
        print(f"wrote {args.out}")
    print(f"RESULT cases={len(rows)} ok={len(rows) - len(bad)} bad={len(bad)}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
