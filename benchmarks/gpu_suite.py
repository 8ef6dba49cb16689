"""Every GPU figure the project claims, in one command (sized for one H200: under 8 minutes).

    python benchmarks/gpu_suite.py            # on the accelerator
    python benchmarks/gpu_suite.py --tiny     # the same code paths at toy sizes, on CPU (tested in CI)

Sections (each one of the benchmarks in this folder, run in this process with the arguments below;
a failing section is reported and the others still run):

* train      GPT-2 124M, bfloat16, batch 16 x 1024: dense train-step MFU (goal >= 0.5) and the
             50 %-masked / dense step-time ratio (train_throughput.py).
* selection  global exact-k magnitude pruning of a 1.3B-parameter GPT-shaped tree (24 x 2048) and of a
             99M one, against jnp.sort (threshold.py; goal < 100 ms at 1.3B).
* lambada    the whole LAMBADA test set, 5153 passages, through the scoring path with GPT-2 124M in
             bfloat16 (lambada_full.py; data carried in benchmarks/data/lambada_test.npz; goal < 5 s).
* calibrated Wanda and SparseGPT one-shot 50 % pruning of a GPT-3 350M-shaped model on 32 x 512
             calibration tokens, compile included, also as forward-equivalents (calibrated_prune.py).
* structured 25/50/75 % structured pruning compacted into smaller dense models: measured speedup over
             the FLOP ratio at 50 % (structured_speedup.py; goal >= 0.85).

Ends with a table of every RESULT line and the suite's wall time. ``--only`` runs some sections.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (script, full-size arguments, --tiny arguments)
SECTIONS: dict[str, tuple[str, list[str], list[str]]] = {
    "train": ("train_throughput.py",
              ["--preset", "gpt2", "--dtype", "bfloat16", "--batch", "16", "--seq", "1024", "--rounds", "4",
               "--steps", "5"],
              ["--preset", "femto", "--batch", "2", "--rounds", "2", "--steps", "1"]),
    "selection": ("threshold.py", ["--sizes", "99M", "1.3B", "--repeats", "5"], ["--sizes", "0.2M", "--repeats", "1"]),
    "lambada": ("lambada_full.py", ["--preset", "gpt2", "--dtype", "bfloat16", "--batch", "128", "--rounds", "3"],
                ["--preset", "femto", "--examples", "48", "--batch", "16", "--rounds", "1"]),
    "calibrated": ("calibrated_prune.py", ["--preset", "gpt3-350m", "--samples", "32", "--seq", "512", "--batch", "8"],
                   ["--preset", "femto", "--samples", "2", "--seq", "16", "--batch", "2"]),
    "structured": ("structured_speedup.py",
                   ["--d_model", "2048", "--n_layer", "8", "--n_head", "16", "--vocab", "50257", "--batch", "16",
                    "--prefill_len", "1024", "--rounds", "5"],
                   ["--d_model", "64", "--n_layer", "1", "--n_head", "4", "--vocab", "256", "--batch", "1",
                    "--prefill_len", "16", "--decode_steps", "2", "--rounds", "1", "--rates", "0.5"]),
}

RESULT = re.compile(r"^RESULT (\S+)=(\S+)\s*$")


class _Tee(io.TextIOBase):
    """Writes to the real stdout and keeps a copy."""

    def __init__(self, out):
        self.out, self.buf = out, io.StringIO()

    def write(self, s: str) -> int:
        self.out.write(s)
        self.out.flush()
        return self.buf.write(s)


def run_section(name: str, tiny: bool) -> tuple[list[tuple[str, str]], str, float]:
    """Runs one benchmark script as __main__ in this process; (RESULT pairs, status, seconds)."""
    script, full, small = SECTIONS[name]
    argv = small if tiny else full
    print(f"=== {name}: {script} {' '.join(argv)}", flush=True)
    tee = _Tee(sys.stdout)
    saved = sys.argv
    sys.argv = [str(HERE / script), *argv]
    sys.path.insert(0, str(HERE))
    t0 = time.perf_counter()
    status = "ok"
    try:
        with contextlib.redirect_stdout(tee):
            runpy.run_path(str(HERE / script), run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            status = f"exit {e.code}"
    except Exception:  # a broken section must not hide the others' figures
        traceback.print_exc()
        status = "error"
    finally:
        sys.argv = saved
        sys.path.remove(str(HERE))
    pairs = [m.groups() for m in map(RESULT.match, tee.buf.getvalue().splitlines()) if m]
    return pairs, status, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="toy sizes (CPU smoke run of the same code paths)")
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS))
    args = ap.parse_args()
    import jax

    print(f"gpu_suite{' --tiny' if args.tiny else ''}: backend={jax.default_backend()} "
          f"devices={[d.device_kind for d in jax.devices()]}", flush=True)
    start = time.perf_counter()
    rows = [(n, *run_section(n, args.tiny)) for n in SECTIONS if not args.only or n in args.only]
    print(f"\n{'section':12s} {'RESULT':45s} {'value':>12s} {'seconds':>8s}")
    for name, pairs, status, seconds in rows:
        if status != "ok" or not pairs:
            print(f"{name:12s} {'(' + (status if status != 'ok' else 'no RESULT') + ')':45s} {'':>12s} {seconds:8.0f}")
        for i, (key, value) in enumerate(pairs):
            secs = f"{seconds:.0f}" if i == 0 else ""
            print(f"{name if i == 0 else '':12s} {key:45s} {value:>12s} {secs:>8s}")
    print(f"suite wall time {time.perf_counter() - start:.0f} s")
    if any(status != "ok" or not pairs for _, pairs, status, _ in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
