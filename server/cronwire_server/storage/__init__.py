"""Storage: one interface (`Store`) with a SQLAlchemy implementation for SQLite and PostgreSQL."""

from __future__ import annotations

from cronwire_server.storage.base import Store

__all__ = ["Store"]
