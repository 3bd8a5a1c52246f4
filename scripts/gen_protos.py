"""Regenerate the Python code for protos/ into client/ (messages, gRPC stubs, .pyi stubs).

Run with the pinned tools of the `dev` extra: `python scripts/gen_protos.py`.
`--check` regenerates into a scratch folder and fails if the committed copy differs.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "client"
PACKAGE = Path("cronwire") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    found = shutil.which(name) or str(Path(sysconfig.get_path("scripts")) / name)
    if not Path(found).exists():
        sys.exit(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools) with the mypy-protobuf plugins into `out`."""
    import grpc_tools

    protos = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)


def generated_files(root: Path) -> list[Path]:
    return sorted(
        p.relative_to(root) for p in (root / PACKAGE).glob("*") if p.name.endswith(GENERATED_SUFFIXES)
    )


def check() -> int:
    """Return 0 when the committed generated code matches a fresh generation."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        (fresh / PACKAGE).mkdir(parents=True)
        generate(fresh)
        expected, actual = generated_files(fresh), generated_files(OUT)
        stale = sorted(set(expected) ^ set(actual))
        stale += [p for p in expected if p in actual and not filecmp.cmp(fresh / p, OUT / p, shallow=False)]
    if stale:
        print("stale generated code; run `python scripts/gen_protos.py`:", *map(str, stale), sep="\n  ")
        return 1
    print("generated code is up to date")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed copy is stale")
    if parser.parse_args().check:
        return check()
    for old in generated_files(OUT):
        (OUT / old).unlink()
    generate(OUT)
    print(f"generated {len(generated_files(OUT))} files under {OUT / PACKAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
