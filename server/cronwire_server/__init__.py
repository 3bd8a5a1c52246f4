"""cronwire_server: the cronwire gRPC server, its scheduler core and its storage."""

from __future__ import annotations

from cronwire import __version__

__all__ = ["__version__"]
