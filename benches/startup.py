#!/usr/bin/env python3
"""Start to first answer of `electra-edge run` (docs/performance.md, start-up), wall time.

Each run starts the binary, writes one line of text and measures until the first answer line
arrives (load, self-check if the folder has goldens, warm-up, one answer); then closes stdin.
Several binaries (`--binary` repeated, e.g. the build before and after a change) are run in
turn, so that they share the host's state; prints min and median per binary and thread count.

    python3 benches/startup.py [--binary target/release/electra-edge]... [--model DIR]
        [--runs 20] [--threads 1,2] [--text 我门今天去学校上课。]

The packed-weights sidecar is made first (`ELECTRA_EDGE_CACHE`, a temporary folder unless set),
so every measured run maps it, as a deployed service does after its first start.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def once(binary, model, threads, text, env):
    t = time.perf_counter()
    p = subprocess.Popen([binary, "run", "--model", model, "--threads", str(threads)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdin.write((text + "\n").encode())
    p.stdin.flush()
    line = p.stdout.readline()
    ms = (time.perf_counter() - t) * 1e3
    p.stdin.close()
    err = p.stderr.read()
    if p.wait() != 0 or not line.startswith(b"{"):
        sys.exit(f"{binary} failed (exit {p.returncode}): {err.decode(errors='replace')}")
    return ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", action="append")
    ap.add_argument("--model", default=str(REPO.parent / "shared/fixtures/electra-small-zh/discriminator"))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--text", default="我门今天去学校上课。")
    a = ap.parse_args()
    binaries = a.binary or [str(REPO / "target/release/electra-edge")]
    threads = [int(t) for t in a.threads.split(",")]
    env = dict(os.environ)
    cache = None
    if not env.get("ELECTRA_EDGE_CACHE"):
        cache = tempfile.TemporaryDirectory(prefix="ee-startup-")
        env["ELECTRA_EDGE_CACHE"] = cache.name
    for b in binaries:  # makes the sidecar; not measured
        once(b, a.model, 1, a.text, env)
    times = {}
    for _ in range(a.runs):
        for b in binaries:
            for t in threads:
                times.setdefault((b, t), []).append(once(b, a.model, t, a.text, env))
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"# benches/startup.py --model {a.model} --runs {a.runs}; load after: {load}")
    print("| binary | threads | min ms | median ms |")
    print("| --- | --- | --- | --- |")
    for (b, t), v in times.items():
        print(f"| {b} | {t} | {min(v):.1f} | {statistics.median(v):.1f} |")


if __name__ == "__main__":
    main()
