"""Chaos test: SIGKILL a small prune -> fine-tune experiment at random moments, resume, compare.

    python tests/chaos.py --trials 10 [--seed 0] [--data_dir /path/to/data] [--keep DIR]

Runs the tiny config (tests/tiny_config.py, 20 pretraining steps, two pruning stages with
controls) once uninterrupted, then for each trial starts it in a fresh workdir and kills
it with SIGKILL once or twice, each time at one of: the moment an orbax checkpoint's
temporary directory appears (inside a checkpoint write), shortly after a pruning stage
starts (between its pruning and its fine-tuning), or a random time. After the kills the
same command is rerun to completion and its final params and masks of every stage,
and results.jsonl without wall times, are compared with the uninterrupted run. The
last line is `RESULT resumed_identical=<k>/<n>`. About 30 s per trial on two CPU cores.
Not part of the pytest suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ("--config.pretrain.steps=20",)
KINDS = ("checkpoint_write", "between_prune_and_finetune", "random")


def command(workdir: Path, data_dir: Path, tokenizer: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "jaxprune.main", "--config=tests/tiny_config.py", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", f"--config.data.tokenizer={tokenizer}",
            f"--config.data.cache_dir={cache}", "--noprogress", *OVERRIDES]


def _tmp_checkpoints(workdir: Path) -> list[Path]:
    return list(workdir.glob("*/checkpoints/*.orbax-checkpoint-tmp*"))


def kill_once(cmd: list[str], env: dict, workdir: Path, kind: str, rng: random.Random, ref_seconds: float) -> str:
    """Starts the run and SIGKILLs it at a moment of the given kind; returns what happened."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    seen: set[str] = set()
    target = rng.randint(1, 8)  # kill at the target-th checkpoint write this run starts
    stage = rng.choice(["prune_1", "prune_2"])
    delay = rng.uniform(0.0, 1.5)
    at = rng.uniform(0.0, ref_seconds)
    what = ""
    while proc.poll() is None:
        if kind == "checkpoint_write":
            for p in _tmp_checkpoints(workdir):
                if str(p) not in seen:
                    seen.add(str(p))
                    if len(seen) == target:
                        proc.send_signal(signal.SIGKILL)
                        what = f"inside the write of {p.relative_to(workdir)}"
                        break
        elif kind == "between_prune_and_finetune":
            if (workdir / stage / "checkpoints").exists():
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                what = f"{delay:.2f}s after {stage} started (pruning / before its first checkpoint)"
        elif time.monotonic() - t0 >= at:
            proc.send_signal(signal.SIGKILL)
            what = f"at {at:.1f}s"
        if what:
            break
        time.sleep(0.005)
    rc = proc.wait()
    if not what:
        return f"{kind}: run ended (rc={rc}) before the kill"
    return f"{kind}: killed {what}"


def final_arrays(workdir: Path, config) -> list:
    """Params and masks of every stage's final checkpoint, as numpy arrays."""
    import jax
    import numpy as np

    from jaxprune import experiment

    exp = experiment.Experiment(config, workdir, progress=False)
    out = []
    for stage in experiment.plan(config):
        state = experiment.final_state(workdir / stage.name, exp._abstract_state(stage, stage.kind == "pruned"))
        out += [np.asarray(x) for x in jax.tree.leaves((state.params, state.masks))]
    return out


def rows(workdir: Path) -> list[dict]:
    out = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    for r in out:
        r.pop("wall_time_s", None)
        r.pop("prune_seconds", None)
    return out


def load_config(data_dir: Path, tokenizer: Path, cache: Path):
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_config

    c = tiny_config.get_config()
    c.data.data_dir, c.data.tokenizer, c.data.cache_dir = str(data_dir), str(tokenizer), str(cache)
    for o in OVERRIDES:
        key, value = o.removeprefix("--config.").split("=")
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = type(node[leaf])(value)
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data_dir", default=os.environ.get("JAXPRUNE_DATA_DIR") or str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--keep", default="", help="directory for the workdirs (default: a temporary one, removed)")
    args = ap.parse_args()

    t_start = time.monotonic()
    tmp = tempfile.TemporaryDirectory(prefix="jaxprune-chaos-") if not args.keep else None
    root = Path(args.keep or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data_dir)
    sys.path.insert(0, str(ROOT))
    from jaxprune.data import corpus
    from jaxprune.data.tokenizer import save_tokenizer, train_bpe

    tokenizer, cache = root / "tokenizer.json", root / "token_cache"
    if not tokenizer.is_file():
        save_tokenizer(train_bpe(corpus.load_texts("books", "train", data_dir, max_bytes=1_000_000), 512), tokenizer)
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    config = load_config(data_dir, tokenizer, cache)

    ref = root / "reference"
    subprocess.run(command(ref, data_dir, tokenizer, cache), cwd=ROOT, env=env, check=True, capture_output=True)
    ref_rows, ref_arrays = rows(ref), final_arrays(ref, config)
    # the first run compiled into the cache; time a warm one for the random kill times
    warm = root / "warm"
    t0 = time.monotonic()
    subprocess.run(command(warm, data_dir, tokenizer, cache), cwd=ROOT, env=env, check=True, capture_output=True)
    ref_seconds = time.monotonic() - t0
    print(f"reference run: {len(ref_rows)} stages, {ref_seconds:.1f}s warm", flush=True)

    rng = random.Random(args.seed)
    identical = 0
    for trial in range(args.trials):
        t_trial = time.monotonic()
        workdir = root / f"trial_{trial}"
        cmd = command(workdir, data_dir, tokenizer, cache)
        kinds = [KINDS[trial % len(KINDS)]] + ([rng.choice(KINDS)] if rng.random() < 0.5 else [])
        events = [kill_once(cmd, env, workdir, kind, rng, ref_seconds) for kind in kinds]
        final = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        ok = final.returncode == 0
        problem = "" if ok else f"rerun failed (rc={final.returncode}): {final.stderr.strip()[-500:]}"
        if ok:
            same_rows = rows(workdir) == ref_rows
            arrays = final_arrays(workdir, config)
            same_arrays = len(arrays) == len(ref_arrays) and all(
                a.dtype == b.dtype and a.shape == b.shape and (a == b).all() for a, b in zip(arrays, ref_arrays))
            ok = same_rows and same_arrays
            problem = "" if ok else f"differs: results {'same' if same_rows else 'DIFFER'}, params/masks " \
                                    f"{'same' if same_arrays else 'DIFFER'}"
            leftovers = _tmp_checkpoints(workdir)
            if leftovers:
                ok, problem = False, f"temporary checkpoint dirs left: {leftovers}"
        identical += ok
        print(f"trial {trial}: {'; '.join(events)} -> {'identical' if ok else problem} "
              f"({time.monotonic() - t_trial:.1f}s)", flush=True)
    print(f"total {time.monotonic() - t_start:.0f}s", flush=True)
    if tmp is not None:
        tmp.cleanup()
    print(f"RESULT resumed_identical={identical}/{args.trials}", flush=True)


if __name__ == "__main__":
    main()
