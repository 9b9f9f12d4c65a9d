#!/usr/bin/env python3
"""onnxruntime side of benches/compare.sh, and the table.

  compare.py ort --model DIR [--seqs 8,32,128,512] [--runs 30]   # JSON lines, like compare.rs
  compare.py table FILE.jsonl                                     # the markdown table

onnxruntime runs with intra_op_num_threads=1, inter_op_num_threads=1, sequential execution, one
process per graph (its own peak). Memory is the Python process's: the interpreter with numpy and
onnxruntime imported (`base_*`) and after creating the session and one run (`rss_*`).
"""
import json
import os
import subprocess
import sys
import time


def status(keys=("RssAnon", "RssFile", "VmRSS", "VmHWM")):
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0])
    return [out.get(k, 0) for k in keys]


def ids(seq):
    return [101 if j == 0 else 102 if j == seq - 1 else (100 + 37 * j) % 5000 + 200 for j in range(seq)]


def one(model_dir, name, seqs, runs):
    t0 = time.perf_counter()
    import numpy as np
    import onnxruntime as ort

    base = status()
    file = {"ort-int8": "model.onnx", "ort-fp32": "model.fp32.onnx"}[name]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    t = time.perf_counter()
    sess = ort.InferenceSession(os.path.join(model_dir, file), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def feed(seq):
        x = np.array([ids(seq)], dtype=np.int64)
        d = {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)}
        return {n: d[n] for n in names}

    load_ms = (time.perf_counter() - t) * 1e3
    sess.run(None, feed(8))
    ready_ms = (time.perf_counter() - t) * 1e3
    steady = status()
    per_seq = {}
    for seq in seqs:
        f = feed(seq)
        sess.run(None, f)
        walls, cpu_min = [], float("inf")
        for _ in range(runs):
            t1, c1 = time.perf_counter(), time.process_time()
            sess.run(None, f)
            cpu_min = min(cpu_min, (time.process_time() - c1) * 1e3)
            walls.append((time.perf_counter() - t1) * 1e3)
        walls.sort()
        per_seq[str(seq)] = {"median_ms": walls[len(walls) // 2], "min_ms": walls[0], "cpu_min_ms": cpu_min, "runs": runs}
    return {
        "config": name, "threads": 1, "load_ms": load_ms, "ready_ms": ready_ms,
        "ort_version": ort.__version__,
        "base_anon_kb": base[0], "base_file_kb": base[1],
        "rss_anon_kb": steady[0], "rss_file_kb": steady[1], "rss_kb": steady[2], "rss_sidecar_kb": 0,
        "peak_load_kb": steady[3], "peak_kb": status()[3], "seqs": per_seq,
    }


def best_rounds(rows):
    """One row per config: over the rounds (`compare.sh --rounds`), per length the lowest
    median, minimum and CPU time, the quickest ready; memory of the first round."""
    merged = {}
    for r in rows:
        m = merged.get(r["config"])
        if m is None:
            merged[r["config"]] = dict(r, seqs={k: dict(v) for k, v in r["seqs"].items()}, rounds=1)
            continue
        m["rounds"] += 1
        m["ready_ms"] = min(m["ready_ms"], r["ready_ms"])
        for seq, v in r["seqs"].items():
            w = m["seqs"].setdefault(seq, dict(v))
            for k in ("median_ms", "min_ms", "cpu_min_ms", "cpu_mean_ms", "faults"):
                if k in v:
                    w[k] = min(w.get(k, v[k]), v[k])
    return list(merged.values())


def table(path):
    rows = best_rounds([json.loads(l) for l in open(path) if l.strip().startswith("{")])
    by = {r["config"]: r for r in rows}
    ref = by.get("ort-int8")
    seqs = sorted({int(s) for r in rows for s in r["seqs"]})
    label = {
        "ours-int8": "electra-edge int8 (fused, mapped sidecar)",
        "ours-cli": "electra-edge run, whole requests (CLI, mapped sidecar)",
        "ours-int8-heap": "electra-edge int8 (fused, heap weights)",
        "ours-int8-t2": "electra-edge int8 (fused, mapped), 2 threads",
        "ours-fp32": "electra-edge fp32 graph (= tract f32)",
        "tract-int8": "tract int8 (--tract-int8)",
        "ort-int8": "onnxruntime int8",
        "ort-fp32": "onnxruntime fp32",
    }
    out = []
    rounds = max(r["rounds"] for r in rows)
    if rounds > 1:
        out.append(f"Best of {rounds} rounds per path and length.")
        out.append("")
    out.append("Latency, ms: median wall (x onnxruntime int8 median) / minimum CPU time")
    out.append("")
    out.append("| path | " + " | ".join(f"seq {s}" for s in seqs) + " |")
    out.append("| --- |" + " --- |" * len(seqs))
    for r in rows:
        cells = []
        for s in seqs:
            v = r["seqs"].get(str(s))
            if not v:
                cells.append("-")
                continue
            c = f'{v["median_ms"]:.2f}'
            if ref and str(s) in ref["seqs"]:
                c += f' ({v["median_ms"] / ref["seqs"][str(s)]["median_ms"]:.2f}x)'
            c += f' / {v["cpu_min_ms"]:.2f}'
            cells.append(c)
        out.append(f'| {label.get(r["config"], r["config"])} | ' + " | ".join(cells) + " |")
    if ref:
        out.append("")
        out.append("CPU-time ratios to onnxruntime int8 (minimum CPU time, robust on a shared host):")
        out.append("")
        out.append("| path | " + " | ".join(f"seq {s}" for s in seqs) + " |")
        out.append("| --- |" + " --- |" * len(seqs))
        for r in rows:
            if r["config"].endswith("-t2"):
                continue  # CPU time of 2 threads is not latency
            cells = []
            for s in seqs:
                v, w = r["seqs"].get(str(s)), ref["seqs"].get(str(s))
                cells.append(f'{v["cpu_min_ms"] / w["cpu_min_ms"]:.2f}x' if v and w else "-")
            out.append(f'| {label.get(r["config"], r["config"])} | ' + " | ".join(cells) + " |")
    cli, fwd = by.get("ours-cli"), by.get("ours-int8")
    if cli and fwd:
        out.append("")
        out.append("Whole requests (`electra-edge run`, one line in, its answer out, one at a time) against the")
        out.append("forward alone (`ours-int8`, the same weights), one thread: median wall / minimum CPU / mean")
        out.append("CPU ms (x the forward's), minor page faults per request or run:")
        out.append("")
        out.append("| tokens | forward | whole request | page faults (forward / request) |")
        out.append("| --- | --- | --- | --- |")
        for s in seqs:
            v, w = cli["seqs"].get(str(s)), fwd["seqs"].get(str(s))
            if not v or not w:
                continue
            f = lambda x: f'{x["median_ms"]:.2f} / {x["cpu_min_ms"]:.2f} / {x.get("cpu_mean_ms", float("nan")):.2f}'
            ratio = lambda k: v.get(k, float("nan")) / w.get(k, float("nan"))
            tokens = f' ({v["tokens"]} tokens)' if v.get("tokens") not in (None, s) else ""
            out.append(
                f'| {s}{tokens} | {f(w)} | {f(v)} ({ratio("median_ms"):.2f}x / {ratio("cpu_min_ms"):.2f}x / '
                f'{ratio("cpu_mean_ms"):.2f}x) | {w.get("faults", float("nan")):.1f} / {v.get("faults", float("nan")):.1f} |'
            )
    out.append("")
    out.append("Start-up and memory (MB; steady = loaded + one run; peak load = VmHWM then; peak = after all runs up to the longest length):")
    out.append("")
    out.append("| path | ready ms | RssAnon | RssFile (of it sidecar) | RSS | peak load | peak |")
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    mb = lambda kb: f"{kb / 1024:.1f}"
    for r in rows:
        anon = mb(r["rss_anon_kb"])
        if "base_anon_kb" in r:
            anon += f' (Python+ort {mb(r["base_anon_kb"])})'
        out.append(
            f'| {label.get(r["config"], r["config"])} | {r["ready_ms"]:.0f} | {anon} | '
            f'{mb(r["rss_file_kb"])} ({mb(r["rss_sidecar_kb"])}) | {mb(r["rss_kb"])} | '
            f'{mb(r["peak_load_kb"])} | {mb(r["peak_kb"])} |'
        )
    print("\n".join(out))


def main():
    args = sys.argv[1:]
    if args[:1] == ["table"]:
        return table(args[1])
    assert args[:1] == ["ort"], __doc__
    opts = {"--model": None, "--seqs": "8,32,128,512", "--runs": "30", "--one": None}
    it = iter(args[1:])
    for a in it:
        opts[a] = next(it)
    seqs = [int(s) for s in opts["--seqs"].split(",")]
    if opts["--one"]:
        print(json.dumps(one(opts["--model"], opts["--one"], seqs, int(opts["--runs"]))))
        return
    for name in ("ort-int8", "ort-fp32"):
        print(f"running {name} ...", file=sys.stderr)
        r = subprocess.run(
            [sys.executable, __file__, "ort", "--model", opts["--model"], "--seqs", opts["--seqs"], "--runs", opts["--runs"], "--one", name],
            stdout=subprocess.PIPE, check=True, text=True,
        )
        sys.stdout.write(r.stdout)


if __name__ == "__main__":
    main()
