"""The scheduler's core: the model, resource names and errors, trigger arithmetic, tick and retry
planning, argument schemas, and the job-independent operations on schedules and executions.

It imports neither grpc, SQLAlchemy, the database drivers, httpx nor the SDK (a test checks
it): adapters (api/, storage/, executors/, auth/, metrics) depend on it, never the reverse. It
reaches the database only through the `Store` protocol (storage/base.py), the settings' defaults
through `config.Settings`, and the caller through `auth.principal`.
"""
