"""The HTTP listener: dashboard, /metrics, /healthz and /readyz (see listener.py)."""
