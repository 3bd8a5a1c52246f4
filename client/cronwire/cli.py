"""The `cronwire` command line. For now it only reports its version."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cronwire import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cronwire", description="Talk to a cronwire server.")
    parser.add_argument("--version", action="version", version=f"cronwire {__version__}")
    parser.parse_args(argv)
    print(f"cronwire {__version__}")
    return 0
