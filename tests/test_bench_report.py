"""A benchmark run says, per measurement, whether DESIGN.md's budget for it was met."""

from __future__ import annotations

from benchmarks.report import budgets


def test_each_measurement_is_judged_against_its_budget() -> None:
    overhead = {"rate": 400.0, "auth": "key", "added_ttft_p50_ms": 5.2, "added_ttft_p99_ms": 25.0}
    overhead["gateway_cpu_ms_per_request"] = 1.2
    relay = [{"tokens_per_s": 19_000}, {"tokens_per_s": 24_300}]
    verdicts = {row["measured"]: row["verdict"] for row in budgets({"overhead": [overhead], "relay": relay})}
    assert verdicts == {
        "overhead @ 400 req/s, key: added TTFT p50 ms": "5.2 MISSED",
        "overhead @ 400 req/s, key: added TTFT p99 ms": "25.0 met",
        "overhead @ 400 req/s, key: gateway CPU ms/request": "1.2 met",
        "relay: most tokens/s one gateway process relayed": "24300 met",
    }
