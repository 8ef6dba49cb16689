"""Runs every CPU benchmark in sequence and prints one table of their RESULT lines.

Each benchmark runs in its own process (``sys.executable``, this checkout's benchmarks/, the
caller's environment: set JAXPRUNE_DATA_DIR for the LAMBADA evaluation), one after the other,
each with a time limit; a failing or timed-out benchmark is reported in the table, not fatal.
Sized to finish in under 20 minutes on 2 CPU cores. Timings on a shared machine are noisy:
the load average before and after is printed, and the ratios (masked/dense, library/sort,
forward-equivalents, compacted/dense) are the comparable numbers.

    JAXPRUNE_DATA_DIR=/work/shared/data python benchmarks/run_all.py [--only threshold mask_overhead]
        [--log-dir DIR]

Prints each benchmark's own output as it runs, then the table (benchmark, RESULT key, value,
seconds the benchmark took).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, script and arguments, time limit in seconds)
BENCHMARKS: list[tuple[str, list[str], int]] = [
    ("mask_overhead", ["mask_overhead.py"], 240),
    ("train_throughput", ["train_throughput.py"], 180),
    ("threshold", ["threshold.py", "--sizes", "1.8M", "14M", "99M", "--repeats", "2"], 900),
    ("calibrated_prune", ["calibrated_prune.py", "--samples", "16", "--seq", "128"], 300),
    ("eval_throughput", ["eval_throughput.py"], 420),
    ("structured_speedup", ["structured_speedup.py", "--rounds", "3"], 360),
    ("sparse_export", ["sparse_export.py"], 120),
]

RESULT = re.compile(r"^RESULT (\S+)=(\S+)\s*$")


def run(name: str, argv: list[str], limit: int, log_dir: Path | None) -> tuple[list[tuple[str, str]], str, float]:
    """Runs one benchmark; returns (RESULT pairs, status, seconds)."""
    print(f"=== {name}: {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], capture_output=True, text=True,
                              timeout=limit, env=os.environ.copy())
        out, status = proc.stdout, ("ok" if proc.returncode == 0 else f"exit {proc.returncode}")
        err = proc.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, status = "", f"timeout after {limit} s"
    seconds = time.perf_counter() - t0
    print(out, end="", flush=True)
    if status != "ok":
        print("\n".join(err.strip().splitlines()[-15:]), flush=True)
    if log_dir is not None:
        (log_dir / f"{name}.log").write_text(out + ("\n--- stderr ---\n" + err if err else ""))
    pairs = [m.groups() for m in map(RESULT.match, out.splitlines()) if m]
    return pairs, status, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=[b[0] for b in BENCHMARKS], help="run only these")
    ap.add_argument("--log-dir", type=Path, default=None, help="also write each benchmark's output here")
    args = ap.parse_args()
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    start = time.perf_counter()
    rows = []
    for name, argv, limit in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        pairs, status, seconds = run(name, argv, limit, args.log_dir)
        rows.append((name, pairs, status, seconds))
    total = time.perf_counter() - start
    load1 = os.getloadavg()
    print(f"\n{'benchmark':20s} {'RESULT':45s} {'value':>10s} {'seconds':>8s}")
    for name, pairs, status, seconds in rows:
        if status != "ok":
            print(f"{name:20s} {'(' + status + ')':45s} {'':>10s} {seconds:8.0f}")
        for i, (key, value) in enumerate(pairs):
            secs = f"{seconds:.0f}" if i == 0 else ""
            print(f"{name if i == 0 else '':20s} {key:45s} {value:>10s} {secs:>8s}")
    print(f"total {total / 60:.1f} min on {os.cpu_count()} CPUs; load average (1/5/15 min) before "
          f"{load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, after {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} "
          "(shared machine: wall times are noisy; compare ratios)")
    if any(status != "ok" for _, _, status, _ in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
