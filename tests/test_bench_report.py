"""A benchmark run says, per measurement, whether DESIGN.md's budget for it was met."""

from __future__ import annotations

from typing import Any

from benchmarks.report import budgets, markdown


def overhead(rate: float, p50: float, p99: float, cpu: float, **more: Any) -> dict[str, Any]:
    row = {"rate": rate, "auth": "open", "added_ttft_p50_ms": p50, "added_ttft_p99_ms": p99}
    return row | {"gateway_cpu_ms_per_request": cpu, "sent": 100, "ok": 100, "machine_busy_pct": 40} | more


def verdicts(results: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    return {row["measured"]: row["verdict"] for row in budgets(results)}


def test_each_measurement_is_judged_against_its_budget() -> None:
    rows = [
        overhead(400.0, 5.2, 25.0, 1.2, auth="key"),
        overhead(600.0, 3.0, 9.0, 1.6),
        overhead(1000.0, 5.8, 22.0, 0.5),
        overhead(1400.0, 40.0, 900.0, 1.1, saturated=True, machine_busy_pct=93, ok=97),
    ]
    relay = [{"tokens_per_s": 19_000}, {"tokens_per_s": 24_300}]
    assert verdicts({"overhead": rows, "relay": relay}) == {
        "overhead @ 400 req/s, key: added TTFT p50 ms": "5.2 MISSED",
        "overhead @ 400 req/s, key: added TTFT p99 ms": "25.0 met",
        "overhead @ 400 req/s, key: gateway CPU ms/request": "1.2 (judged at 600 req/s and above)",
        "overhead @ 600 req/s, open: added TTFT p50 ms": "3.0 met",
        "overhead @ 600 req/s, open: added TTFT p99 ms": "9.0 met",
        "overhead @ 600 req/s, open: gateway CPU ms/request": "1.6 MISSED",
        "overhead @ 1000 req/s, open: added TTFT p50 ms": "5.8 (headroom)",
        "overhead @ 1000 req/s, open: added TTFT p99 ms": "22.0 (headroom)",
        "overhead @ 1000 req/s, open: gateway CPU ms/request": "0.5 met",
        "overhead @ 1400 req/s, open": "saturated (93 % busy, 97 of 100 answered): not judged",
        "relay: most tokens/s one gateway process relayed": "24300 met",
    }


def test_a_run_that_saturates_below_the_capacity_rate_does_not_pass_for_one_that_met_it() -> None:
    rows = [overhead(200.0, 3.0, 9.0, 1.2), overhead(400.0, 30.0, 400.0, 1.1, saturated=True, ok=90)]
    judged = verdicts({"overhead": rows})
    assert judged["overhead @ 400 req/s, open"] == "MISSED: saturated (40 % busy, 90 of 100 answered)"
    assert judged["gateway CPU ms/request at 600 req/s or more"] == (
        "NOT SHOWN: the machine saturated at 400 req/s"
    )


def test_a_run_that_never_reached_the_capacity_rate_says_so() -> None:
    judged = verdicts({"overhead": [overhead(200.0, 3.0, 9.0, 1.2)]})
    assert judged["gateway CPU ms/request at 600 req/s or more"] == "NOT SHOWN: not measured"


def test_the_results_page_draws_latency_against_load_as_text() -> None:
    """results.md carries the plots as Mermaid charts, which the README renders without an image."""
    rows = [overhead(25.0, 1.7, 2.9, 2.2), overhead(600.0, 2.3, 12.1, 0.66)]
    for row in rows:
        row["floor_cpu_ms_per_request"] = 0.4
    facts = {"cpu": "x86_64", "cores": 2, "python": "3.11", "python_loop_ns": 20, "loopback_round_trip_us": 9}
    page = markdown({"overhead": rows}, facts)
    chart = page[page.index("```mermaid") :]
    assert 'x-axis "requests/s" [25, 600]' in chart
    assert "line [2.9, 12.1]" in chart
    assert "line [1.7, 2.3]" in chart
