"""cronwire_server: the cronwire gRPC server, its scheduler core and its storage."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# Read from the installed distribution, not from the SDK package: importing `cronwire` would load
# grpc and the whole client into every module of the core.
try:
    __version__ = version("cronwire")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
