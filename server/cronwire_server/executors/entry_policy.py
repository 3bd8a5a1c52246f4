"""Which functions a `python` job may call: modules under the packages of --python-path-allow,
else any but those that run programs, run code or change the interpreter; and which interpreter
and environment may run them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cronwire_server.core.errors import FieldViolation
from cronwire_server.core.parameter_paths import field_path

__all__ = ["REFUSED_MODULES", "EntryPolicy"]


# Modules (and their submodules) a python job's `callable` may not name unless the server lists
# them in --python-path-allow: they run programs, run code given as text or files, load native
# code or change files and the interpreter. A deny list cannot know every installed package
# that can do so; --python-path-allow, which admits only the packages listed, is the real fence.
REFUSED_MODULES = frozenset(
    {
        "__main__",
        "asyncio",
        "bdb",
        "builtins",
        "code",
        "codeop",
        "concurrent",
        "cProfile",
        "cronwire",
        "cronwire_server",
        "ctypes",
        "dill",
        "distutils",
        "doctest",
        "ensurepip",
        "fcntl",
        "fileinput",
        "importlib",
        "imp",
        "io",
        "IPython",
        "jsonpickle",
        "logging.config",
        "marshal",
        "mmap",
        "multiprocessing",
        "nt",
        "os",
        "pathlib",
        "pdb",
        "pexpect",
        "pickle",
        "pip",
        "pkg_resources",
        "pkgutil",
        "platform",
        "posix",
        "profile",
        "pty",
        "runpy",
        "setuptools",
        "sh",
        "shelve",
        "shutil",
        "site",
        "socket",
        "subprocess",
        "sys",
        "tarfile",
        "tempfile",
        "termios",
        "timeit",
        "trace",
        "tty",
        "unittest",
        "venv",
        "webbrowser",
        "yaml",
        "zipfile",
        "zipimport",
    }
)


_IMPLEMENTED_BY = {"os": ("posix", "nt")}
_PYTHON = re.compile(r"[\w.+-]*(?:python|pypy)[0-9.]*")
# Interpreter variables that only change how output looks or bytecode is kept.
_HARMLESS_PYTHON_VARIABLES = frozenset(
    {"PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE"}
)


def _loads_code(name: str) -> bool:
    upper = name.upper()
    if upper.startswith("PYTHON"):
        return upper not in _HARMLESS_PYTHON_VARIABLES
    return upper.startswith("LD_") or upper == "BROWSER"


def _within(module: str, packages: Iterable[str]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


@dataclass(frozen=True)
class EntryPolicy:
    """Which modules a python job's `callable` (`module:function`) may name.

    With `allow` empty (the default) every module but the REFUSED_MODULES and private top-level
    ones (`_posixsubprocess`); with `allow`, only those packages and their submodules. The
    function's path never has a part starting with `_` (`tempfile:_os.system`). The run checks
    the same again, and also that no module reached through the path (`tasks:os.system`) is
    refused and that the function itself is not one of a refused module's.
    """

    allow: tuple[str, ...] = ()

    def permits_module(self, module: str) -> bool:
        if self.allow:
            return _within(module, self.allow)
        return not module.startswith("_") and not _within(module, REFUSED_MODULES)

    def refusal(self, spec: str) -> str | None:
        """Why `spec` may not be called; None if it may (a malformed spec is the schema's to report)."""
        module, _, path = spec.partition(":")
        if not module:
            return None
        if not self.permits_module(module):
            if self.allow:
                return f"module {module!r} is not under the packages python jobs may call: " + ", ".join(
                    self.allow
                )
            return (
                f"module {module!r} may not be called by python jobs (it can run programs or "
                "arbitrary code); the server's --python-path-allow lists the packages they may call"
            )
        if any(part.startswith("_") for part in path.split(".")):
            return f"{path!r}: a python job's function path may not have private (`_`) parts"
        return None

    def violations(self, parameters: Mapping[str, Any]) -> list[FieldViolation]:
        """What a python job's parameters may not do here, each naming its parameter: the
        `callable`'s module, an interpreter that is no Python, and environment variables that
        make the interpreter load other code (`PYTHONPATH`, `PYTHONSTARTUP`, `LD_PRELOAD`...)."""
        found: list[FieldViolation] = []
        spec = parameters.get("callable")
        if isinstance(spec, str) and (refusal := self.refusal(spec)) is not None:
            found.append(FieldViolation("parameters.callable", refusal))
        python = parameters.get("python")
        if isinstance(python, str) and not _PYTHON.fullmatch(python.rsplit("/", 1)[-1]):
            found.append(
                FieldViolation(
                    "parameters.python", "must be a Python interpreter (python, python3.12, pypy3...)"
                )
            )
        env = parameters.get("env")
        for name in env if isinstance(env, Mapping) else ():
            if _loads_code(str(name)):
                found.append(
                    FieldViolation(
                        field_path(["env", name]),
                        "may not be set for python jobs: it makes the interpreter load other code",
                    )
                )
        return found

    def to_json(self) -> dict[str, Any]:
        """What the child checks the modules it reaches with."""
        # os's functions belong to posix (or nt): allowing os allows them.
        implementations = [alias for package in self.allow for alias in _IMPLEMENTED_BY.get(package, ())]
        return {"allow": [*self.allow, *implementations], "refuse": sorted(REFUSED_MODULES)}
