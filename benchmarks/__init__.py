"""Load benchmarks for the bridge: simulated viewers against a real server.

``python -m benchmarks SCENARIO``, from a source checkout, starts
the server in a subprocess, drives it from client worker processes, and
reports per-viewer and aggregate figures, each target judged PASS or FAIL,
as a table, JSON lines, Markdown and PNG plots. See ``benchmarks/RESULTS.md``.
"""
