"""Authentication and authorization: API keys, roles, namespace scopes, per-key request rates."""
