"""cronwire: the client SDK and CLI of the cronwire job-scheduling service."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
