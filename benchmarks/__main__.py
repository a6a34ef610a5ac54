"""``python -m benchmarks [scenario ...] [--quick]``: run, then write results/."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import machine, report, scenarios

SCENARIOS = ("overhead", "relay", "cpu", "pickup", "soak")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("scenario", nargs="*", choices=[*SCENARIOS, []], help="default: all")
    parser.add_argument("--quick", action="store_true", help="fewer points, shorter runs (about 2 minutes)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    chosen = args.scenario or list(SCENARIOS)
    seconds = 2.0 if args.quick else 5.0
    logs = args.out / "logs"
    facts = machine.describe()
    print(f"machine: {machine.summary(facts)}")
    results: dict[str, list[scenarios.Row]] = {}
    if "overhead" in chosen:
        with scenarios.section("overhead (TTFT through Sluice vs the engine in-process)"):
            rates = [25.0, 100.0, 200.0] if args.quick else [25.0, 50.0, 100.0, 200.0, 300.0, 400.0]
            # On to saturation, through the rate the CPU budget is judged at (report.py).
            beyond = [600.0] if args.quick else [600.0, 800.0, 1000.0, 1400.0, 2000.0, 2800.0]
            keyed = [100.0, 600.0] if args.quick else [25.0, 100.0, 200.0, 400.0, 600.0]
            results["overhead"] = scenarios.overhead(logs, rates, keyed, seconds, beyond)
    if "relay" in chosen:
        with scenarios.section("relay (one gateway process)"):
            results["relay"] = scenarios.relay(logs, [64, 256] if args.quick else [64, 256, 512], seconds * 2)
    if "cpu" in chosen:
        with scenarios.section("cpu engine (SmolLM2 through Sluice vs transformers generate)"):
            results["cpu"] = scenarios.cpu_engine(logs, [1, 4, 8], 32 if args.quick else 64)
    if "pickup" in chosen:
        with scenarios.section("queue pickup (enqueue → worker starts the job)"):
            results["pickup"] = scenarios.pickup(logs, [20.0, 200.0], 100 if args.quick else 400)
    if "soak" in chosen:
        with scenarios.section("soak (memory and Redis keys across thousands of requests)"):
            results["soak"] = scenarios.soak(logs, 2000 if args.quick else 10000)
    report.write(results, facts, args.out)


if __name__ == "__main__":
    main()
