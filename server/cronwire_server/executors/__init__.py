"""Executors: the kinds of work a job runs (`shell`, `python`, `http`, `noop`).

`registry` names the kinds and validates their parameters.
"""
