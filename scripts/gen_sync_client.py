"""Generate the sync client (client/cronwire/client.py) from the async one (client/cronwire/aio.py).

Run `python scripts/gen_sync_client.py` after changing aio.py; `--check` fails if the committed
client.py is not what aio.py makes today. As in encode/httpcore's scripts/unasync.py, the sync code
is the async code with a list of substitutions applied line by line; ruff then sorts the imports
the renames leave unsorted and rejoins lines that are short once `await` is gone. Every rule must
match somewhere, so a rule that no longer applies is deleted instead of lingering.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path("client/cronwire/aio.py")
TARGET = Path("client/cronwire/client.py")

HEADER = (
    "# Generated from aio.py by `python scripts/gen_sync_client.py`: edit aio.py and run it again.\n"
    # An async generator cannot `yield from`, so its loops of `yield` come through as they are.
    "# ruff: noqa: UP028\n"
)

# Docstring sentences that say something different in each client (literal text).
DOCS: list[tuple[str, str]] = [
    (
        "The asyncio client (grpc.aio): the same methods as `Client`, as coroutines and async iterators.",
        "The synchronous client: one method per RPC, Python values in and out, typed errors.",
    ),
    (
        "An asyncio connection to a cronwire server (grpc.aio); create it inside a running loop.",
        "A synchronous connection to a cronwire server.",
    ),
    (
        "Use it as an async context manager, or `await close()`.",
        "Use it as a context manager, or call `close()`.",
    ),
    # CPython closes a sync generator as soon as the loop lets go of it; async ones wait for aclose().
    (
        " Iterate inside\n"
        "        `contextlib.aclosing(...)` to end the stream at once when leaving the loop early.",
        "",
    ),
    (
        " To end the stream at once when leaving the loop early, iterate inside\n"
        "        `contextlib.aclosing(client.watch(...))`.",
        "",
    ),
]

# Code: regular expressions applied to each line, in this order.
SUBS: list[tuple[str, str]] = [
    (r"^import asyncio$", "import time"),
    (r"\basyncio\.sleep\b", "time.sleep"),
    (r"\bgrpc\.aio\.", "grpc."),
    # The sync channel's close has no grace period (grpc.aio's wants one: None cancels at once).
    (r"\.close\(grace=None\)", ".close()"),
    # `(await self._call(...)).job` has its parentheses only for the await.
    (r"\(await (self\._call\([^()]*\))\)(?=\.)", r"\1"),
    (r"\bawait ", ""),
    (r"\basync (def|for|with)\b", r"\1"),
    (r"\b__a(enter|exit)__\b", r"__\1__"),
    (r"\bAwaitable\[(\w+(?:\[\w+\])?)\]", r"\1"),
    (r"\bAwaitable, ", ""),
    (r"\bAsyncGenerator\[(\w+), None\]", r"Generator[\1, None, None]"),
    (r"\bAsync([A-Z]\w*)", r"\1"),
    # ASYNC109 objects to a `timeout` parameter of a coroutine; the sync one has nothing to silence.
    (r"  # noqa: ASYNC109\b.*$", ""),
    # grpc-stubs leaves the sync Call.cancel unannotated.
    (r"\b(call\.cancel\(\))$", r"\1  # type: ignore[no-untyped-call]"),
]

# What no sync code may still say once the rules have run.
LEFTOVERS = re.compile(r"\b(async|await|asyncio|aclosing|aclose|AsyncIterator|AsyncGenerator)\b|grpc\.aio\b")


def unasync(source: str) -> str:
    """The sync module for the async `source`, before ruff."""
    unused = [old for old, _ in DOCS if old not in source]
    for old, new in DOCS:
        source = source.replace(old, new)
    compiled = [(re.compile(pattern), repl) for pattern, repl in SUBS]
    used: set[int] = set()
    lines = []
    for line in source.splitlines(keepends=True):
        for index, (regex, repl) in enumerate(compiled):
            line, count = regex.subn(repl, line)
            if count:
                used.add(index)
        lines.append(line)
    unused += [SUBS[i][0] for i in range(len(SUBS)) if i not in used]
    if unused:
        raise SystemExit("rules that match nothing in aio.py (delete or fix them):\n  " + "\n  ".join(unused))
    result = HEADER + "".join(lines)
    leftovers = sorted({m.group(0) for m in LEFTOVERS.finditer(result)})
    if leftovers:
        raise SystemExit(f"async code left in the sync client (add a rule): {', '.join(leftovers)}")
    return result


def _ruff(*args: str, source: str) -> str:
    # The project's ruff config applies through --stdin-filename, as it does to files on disk.
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET), "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"ruff {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def generate() -> str:
    """The sync client's full text, as committed."""
    code = unasync((ROOT / SOURCE).read_text(encoding="utf-8"))
    code = _ruff("check", "--fix", "--select", "I", "--quiet", source=code)
    return _ruff("format", "--quiet", source=code)


def check() -> int:
    """Return 0 when the committed client.py is what aio.py makes today."""
    expected = generate()
    actual = (ROOT / TARGET).read_text(encoding="utf-8")
    if actual == expected:
        print(f"{TARGET} is up to date")
        return 0
    diff = difflib.unified_diff(
        actual.splitlines(keepends=True),
        expected.splitlines(keepends=True),
        f"{TARGET} (committed)",
        f"{TARGET} (from {SOURCE})",
    )
    sys.stdout.writelines(diff)
    print(f"stale {TARGET}; run `python scripts/gen_sync_client.py`")
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed copy is stale")
    if parser.parse_args().check:
        return check()
    (ROOT / TARGET).write_text(generate(), encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
