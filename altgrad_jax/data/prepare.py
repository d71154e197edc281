"""Downloads EURLEX57K from the Hugging Face hub into a local data directory.

Usage::

    python -m altgrad_jax.data.prepare --out DIR [--hub_name NLP-AUEB/eurlex] [--overwrite]

then ``export ALTGRAD_DATA_DIR=DIR`` (or ``--config.data.data_dir=DIR``). Writes
``DIR/{train,validation,test}.jsonl.gz`` with ``text`` and ``labels`` per line, plus
``DIR/source.json``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from altgrad_jax.data.hub import DEFAULT_HUB_NAME, download_from_hub

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m altgrad_jax.data.prepare",
        description="Download EURLEX57K from the Hugging Face hub into local JSONL files.")
    parser.add_argument("--out", required=True, help="output folder (the future ALTGRAD_DATA_DIR)")
    parser.add_argument("--hub_name", default=DEFAULT_HUB_NAME, help="hub dataset name")
    parser.add_argument("--overwrite", action="store_true", help="re-download existing files")
    args = parser.parse_args(argv)
    out = download_from_hub(args.out, args.hub_name, overwrite=args.overwrite)
    print(f"Wrote {out}. Use it with: export ALTGRAD_DATA_DIR={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
