"""Sluice's benchmarks: what the gateway and queue cost, side by side with the engine alone.

``python -m benchmarks`` starts what it needs on loopback (Redis, gateway, workers), drives load,
stops by itself, and writes JSON, a Markdown table and PNG plots into ``benchmarks/results/``.
Every number is reported with its baseline, measured in the same run.
"""
