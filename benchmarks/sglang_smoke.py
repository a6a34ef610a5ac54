"""GPU smoke run: Sluice with a worker on SGLang and the real model, its end-to-end tests, a
short throughput run.

On a GPU node with the weights (``pip install -e '.[sglang,test]'``)::

    python -m benchmarks.sglang_smoke --model /models/Llama-3.1-8B-Instruct [-- <sglang flags>]

``--sglang-url`` uses an SGLang server already running instead of starting one. Results go to
``<out>/sglang-smoke.json`` and ``.md``; the exit status is the tests' (0: all passed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import machine, report
from benchmarks.client import stream
from benchmarks.load import closed_loop, ms, run
from benchmarks.stack import MODEL, Stack, running

#: The end-to-end tests that hold for any model behind the served name (they use the SDKs).
TESTS = [
    "tests/test_openai_sdk.py",
    "tests/test_cloudflare_sdk.py",
    "tests/test_openai_features.py",
    "tests/test_native_features.py",
    "tests/test_abort.py",
]
PROMPT = "Write a long story about a lighthouse keeper and a storm."


def run_tests(stack: Stack, models: str) -> int:
    env = {**os.environ, "SLUICE_TEST_URL": stack.url, "SLUICE_TEST_REDIS_URL": stack.redis_url}
    env["SLUICE_MODELS"] = models
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *TESTS], env=env, check=False).returncode


def throughput(stack: Stack, concurrencies: list[int], seconds: float, max_tokens: int) -> list[report.Row]:
    body = {"messages": [{"role": "user", "content": PROMPT}], "stream": True, "max_tokens": max_tokens}
    rows: list[report.Row] = []
    for concurrency in concurrencies:
        results, wall = run(
            closed_loop(lambda: stream(stack.url, stack.run_path, body, limit=300), concurrency, seconds)
        )
        ok = [r for r in results if r.status == 200]
        gaps = [g for r in ok for g in r.gaps]
        row: report.Row = {
            "concurrency": concurrency,
            "requests": len(results),
            "failed": len(results) - len(ok),
            "output_tokens_per_s": round(sum(r.tokens for r in ok) / wall),
            "ttft_p50_ms": ms([r.ttft for r in ok], 50),
            "ttft_p99_ms": ms([r.ttft for r in ok], 99),
            "frame_gap_p50_ms": ms(gaps, 50),
            "frame_gap_p99_ms": ms(gaps, 99),
        }
        rows.append(row)
        print(
            f"  sglang @ {concurrency}: {row['output_tokens_per_s']} tok/s, TTFT p50 {row['ttft_p50_ms']} ms"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sglang_smoke", description=__doc__)
    parser.add_argument("--model", required=True, help="weights folder or hub id SGLang loads")
    parser.add_argument("--sglang-url", help="an SGLang server already running with that model")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--seconds", type=float, default=20.0, help="per concurrency")
    parser.add_argument("--concurrency", default="1,16,64,256", help="comma-separated")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--ready-timeout", type=float, default=1800.0, help="seconds to load the model")
    args = parser.parse_args(argv[:split])
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    models = json.dumps([{"name": MODEL, "engine": "sglang", "model": args.model}])
    failed = 0
    with running(
        args.out / "logs" / "sglang",
        synthetic=False,
        ready_timeout=args.ready_timeout,
        models=models,
        worker_concurrency=str(max(256, *concurrencies)),
        sglang_args=json.dumps(argv[split + 1 :]),
        sglang_url=args.sglang_url or "",  # empty: the worker starts SGLang itself
    ) as stack:
        if not args.skip_tests:
            failed = run_tests(stack, models)
        rows = throughput(stack, concurrencies, args.seconds, args.max_tokens)
    facts = machine.describe()
    result = {
        "machine": facts,
        "model": args.model,
        "tests_passed": not failed,
        "throughput": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sglang-smoke.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "sglang-smoke.md").write_text(report.markdown({f"SGLang: {args.model}": rows}, facts))
    print(f"results in {args.out}/sglang-smoke.md; end-to-end tests {'passed' if not failed else 'FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
