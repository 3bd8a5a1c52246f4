"""`python -m cronwire_server` is `cronwire-server`."""

from __future__ import annotations

from cronwire_server.cli import main

raise SystemExit(main())
