#!/usr/bin/env python3
"""Pools the PgBouncer-against-pgberth runs of several bench/run.sh results directories.

One run of the harness gives five runs per workload, and on a small machine a workload's TPS
and CPU move by 5-10% between runs of the same binary. Pooling the runs of several results
directories gives, per workload: the median TPS and pooler CPU per 10k transactions of each
pooler over all its runs, their ratios, and in how many of the alternating pairs (A's run i
and B's run i of one directory) pgberth ran at least as many transactions per second.

  pooled.py RESULTS_DIR... > pooled.md
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize import read_runs  # noqa: E402


def per_run(rows):
    """(tps, pooler CPU s per 10k transactions) of each successful run, in order."""
    return [(float(r["tps"]), float(r["cpu_s"]) / float(r["txns"]) * 1e4)
            for r in rows if r["rc"] == "0" and float(r.get("txns") or 0) > 0]


def main():
    dirs = sys.argv[1:]
    if not dirs:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    pooled = {}
    for d in dirs:
        data, _ = read_runs(os.path.join(d, "pgbouncer-vs-pgberth", "runs.tsv"))
        for workload, sides in data.items():
            a, b = per_run(sides.get("A", [])), per_run(sides.get("B", []))
            entry = pooled.setdefault(workload, {"a": [], "b": [], "pairs": 0, "wins": 0})
            entry["a"] += a
            entry["b"] += b
            entry["pairs"] += min(len(a), len(b))
            entry["wins"] += sum(1 for x, y in zip(a, b) if y[0] >= x[0])
    out = [f"Runs pooled from: {', '.join(os.path.basename(d.rstrip('/')) for d in dirs)}", "",
           "| workload | runs | PgBouncer TPS | pgberth TPS | TPS ratio | pairs pgberth ≥ PgBouncer "
           "| pooler CPU s per 10k, PgBouncer | pgberth | CPU ratio |",
           "|---|---|---|---|---|---|---|---|---|"]
    for workload, e in pooled.items():
        if not e["a"] or not e["b"]:
            # One pooler failed every run (PgBouncer with -M prepared): the other's figures.
            med = {k: (f"{statistics.median(x[0] for x in e[k]):,.0f}",
                       f"{statistics.median(x[1] for x in e[k]):.3f}") if e[k] else ("fails", "–")
                   for k in ("a", "b")}
            out.append(f"| {workload} | {len(e['a'])}, {len(e['b'])} | {med['a'][0]} | {med['b'][0]} "
                       f"| – | – | {med['a'][1]} | {med['b'][1]} | – |")
            continue
        tps_a = statistics.median(x[0] for x in e["a"])
        tps_b = statistics.median(x[0] for x in e["b"])
        cpu_a = statistics.median(x[1] for x in e["a"])
        cpu_b = statistics.median(x[1] for x in e["b"])
        out.append(f"| {workload} | {len(e['a'])}, {len(e['b'])} | {tps_a:,.0f} | {tps_b:,.0f} "
                   f"| {tps_b / tps_a:.2f} | {e['wins']} of {e['pairs']} | {cpu_a:.3f} | {cpu_b:.3f} "
                   f"| {cpu_b / cpu_a:.2f} |")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
