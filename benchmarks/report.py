"""Results as JSON, a Markdown table per scenario, and PNG plots of latency against load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.machine import summary

Row = dict[str, Any]

#: DESIGN.md: the gateway's CPU per streamed 16-token request.
BUDGET_CPU_MS = 1.5


def markdown(results: dict[str, list[Row]], facts: dict[str, Any]) -> str:
    lines = [f"# Sluice benchmarks\n\nMachine: {summary(facts)}\n"]
    for name, rows in results.items():
        if not rows:
            continue
        columns = list(rows[0])
        lines += [f"\n## {name}\n", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, list[Row]], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[Path] = []
    # The plots are of the open deployment at every rate; the keyed rows are in the table.
    if opened := [r for r in results.get("overhead", []) if r.get("auth", "open") == "open"]:
        rows = opened
        figure, axes = plt.subplots(figsize=(7, 4))
        rates = [r["rate"] for r in rows]
        for prefix, style in (("engine", "--"), ("sluice", "-")):
            for q in ("p50", "p99"):
                axes.plot(
                    rates,
                    [r[f"{prefix}_ttft_{q}_ms"] for r in rows],
                    style,
                    marker="o",
                    label=f"{prefix} {q}",
                )
        axes.set(
            xlabel="requests/s",
            ylabel="time to first token (ms)",
            title="TTFT: engine alone vs through Sluice",
        )
        axes.legend()
        made.append(_save(figure, folder / "overhead.png"))
        made.append(_save(_cpu_figure(plt, rows), folder / "gateway-cpu.png"))
    if rows := results.get("relay", []):
        figure, axes = plt.subplots(figsize=(7, 4))
        concurrency = [r["concurrency"] for r in rows]
        axes.plot(concurrency, [r["tokens_per_s"] for r in rows], marker="o", label="relayed")
        axes.plot(concurrency, [r["ideal_tokens_per_s"] for r in rows], "--", label="offered")
        axes.set(xlabel="concurrent streams", ylabel="tokens/s", title="One gateway process relaying tokens")
        axes.legend()
        made.append(_save(figure, folder / "relay.png"))
    return made


def _cpu_figure(plt: Any, rows: list[Row]) -> Any:
    """The gateway's CPU per request against its bare HTTP server's, and the budget."""
    figure, axes = plt.subplots(figsize=(7, 4))
    rates = [r["rate"] for r in rows]
    axes.plot(rates, [r["gateway_cpu_ms_per_request"] for r in rows], marker="o", label="gateway")
    floor = [r["floor_cpu_ms_per_request"] for r in rows]
    axes.plot(rates, floor, "--", marker="o", label="bare HTTP server")
    axes.axhline(BUDGET_CPU_MS, color="grey", linestyle=":", label=f"budget ({BUDGET_CPU_MS} ms)")
    axes.set(
        xlabel="requests/s",
        ylabel="CPU ms per 16-token stream",
        title="Gateway CPU per request vs its HTTP server alone",
        ylim=(0, None),
    )
    axes.legend()
    return figure


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def write(results: dict[str, list[Row]], facts: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"machine": facts, **results}, indent=2))
    (folder / "results.md").write_text(markdown(results, facts))
    for path in plot(results, folder):
        print(f"wrote {path}")
    print(f"wrote {folder / 'results.json'} and {folder / 'results.md'}")
