"""Command line: python -m worker.demo_model --out DIR [--preset P] [--arch A] [--seed N]."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import get_args

from worker.demo_model.build import build_model
from worker.demo_model.presets import ARCHS, PresetName


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.demo_model",
        description="Build a small model directory (tokenizer, config, weights) offline and reproducibly.",
    )
    parser.add_argument("--out", required=True, help="model directory to create (reused when up to date)")
    parser.add_argument("--preset", choices=get_args(PresetName), default="demo")
    parser.add_argument("--arch", choices=ARCHS, default="llama")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # Progress goes to stderr as log lines; stdout carries only the resulting path.
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
    )
    path = build_model(args.out, preset=args.preset, arch=args.arch, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
