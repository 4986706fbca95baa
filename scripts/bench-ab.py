#!/usr/bin/env python3
"""Interleaved A/B runs of `flowcredits bench server` for two or more builds.

The host's speed moves by 20-30% within an hour, so builds are compared only within one
invocation: each round runs every binary's hook benchmark once, the order reversed every
other round, and the medians are printed at the end (BENCHMARKS.md quotes them).

    python3 scripts/bench-ab.py ROUNDS DURATION_S BINARY [BINARY ...]

Build each binary first (release), e.g. in a `git worktree` with its own CARGO_TARGET_DIR.
Standard library only.
"""

import json
import statistics
import subprocess
import sys

THREADS = ["tokio-rt-worker", "ledger-writer", "history-writer", "ledger-sync"]


def run(binary, duration_s):
    out = subprocess.run([binary, "bench", "server", "--duration-s", duration_s, "--json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    if len(sys.argv) < 4 or not sys.argv[1].isdigit():
        sys.exit(__doc__)
    rounds, duration_s, binaries = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    results = {binary: [] for binary in binaries}
    for round_no in range(rounds):
        for binary in binaries if round_no % 2 == 0 else binaries[::-1]:
            report = run(binary, duration_s)
            results[binary].append(report)
            by_thread = report["hook_cpu_us_per_request_by_thread"]
            print(f"round {round_no + 1} {binary}: {report['hook_requests_per_s']:.0f} calls/s, p50 {report['hook_p50_ms']} ms, p99 {report['hook_p99_ms']} ms, "
                  f"healthz {report['baseline_requests_per_s']:.0f} req/s, {report['hook_cpu_us_per_request']} µs/call "
                  + " ".join(f"{name}={by_thread.get(name, 0)}" for name in THREADS), flush=True)
    print("medians: calls/s, p50 ms, p99 ms, healthz req/s, CPU µs per call, then per thread: " + ", ".join(THREADS))
    for binary, reports in results.items():
        median = lambda key: statistics.median(report[key] for report in reports)
        threads = [statistics.median(report["hook_cpu_us_per_request_by_thread"].get(name, 0) for report in reports) for name in THREADS]
        print(binary, median("hook_requests_per_s"), median("hook_p50_ms"), median("hook_p99_ms"), median("baseline_requests_per_s"), median("hook_cpu_us_per_request"), *threads)


if __name__ == "__main__":
    main()
