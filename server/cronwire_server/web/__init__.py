"""The HTTP listener: dashboard, /metrics, /healthz and /readyz (see listener.py)."""


# Here rather than in listener.py: a server catches it without loading the HTTP stack.
class HttpUnavailable(Exception):
    """The listener cannot be served at the address asked for; the message says why."""
