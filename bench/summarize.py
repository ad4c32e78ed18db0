#!/usr/bin/env python3
"""Builds summary.md for one bench/run.sh results directory.

Reads what bench/run.sh left there: machine.txt, pgbouncer-vs-pgberth/runs.tsv (and
direct-vs-pgberth/runs.tsv when present) written by the shared harness's pooler-bench.sh,
idle-pgbouncer.txt / idle-pgberth.txt written by its idle-conns.py, and latency/<target>.<pid>
pgbench per-transaction logs. Medians and per-10k CPU figures come from the shared harness's
summarize.py (imported from --harness), so both summaries count the same way.

  summarize.py [--harness DIR] RESULTS_DIR > RESULTS_DIR/summary.md
"""
import argparse
import csv
import glob
import importlib.util
import os
import re
import statistics
import sys


def load_harness(path):
    spec = importlib.util.spec_from_file_location("harness_summarize", os.path.join(path, "summarize.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_runs(path):
    """{workload: {side: [rows]}} and {side: label}, in file order."""
    data, labels = {}, {}
    with open(path) as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            data.setdefault(r["workload"], {}).setdefault(r["side"], []).append(r)
            labels[r["side"]] = r["label"]
    return data, labels


def side_figures(h, runs):
    """(median tps, min, max, pooler CPU s per 10k txn or None, first error) of one side."""
    ok = h.ok_runs(runs)
    err = next((r["error"] for r in runs if r["rc"] != "0" and r["error"]), "")
    if not ok:
        return None, None, None, None, err or "failed"
    tps = [h.f(r["tps"]) for r in ok]
    cpu = h.per10k(ok, "cpu_s")
    return statistics.median(tps), min(tps), max(tps), (float(cpu) if cpu != "n/a" else None), err


def fmt_tps(med, lo, hi, err):
    if med is None:
        return f"FAIL: `{err[:80]}`" if err else "FAIL"
    return f"{med:,.0f} [{lo:,.0f}–{hi:,.0f}]"


def ratio(b, a, digits=2):
    return f"{b / a:.{digits}f}" if a and b else "–"


def other_cpu(h, runs):
    oth = [h.f(r.get("other_cpu_s")) for r in runs if h.f(r.get("other_cpu_s")) is not None]
    return max(oth) if oth else None


def comparison(h, path, name_a, name_b, out):
    data, _ = read_runs(path)
    out.append(f"| workload | {name_a} TPS median [min–max] | {name_b} TPS | {name_b} / {name_a} TPS "
               f"| pooler CPU s per 10k txn, {name_a} | {name_b} | ratio | other CPU s/run, max |")
    out.append("|---|---|---|---|---|---|---|---|")
    for wl, per in data.items():
        a = side_figures(h, per.get("A", []))
        b = side_figures(h, per.get("B", []))
        cpu_a = f"{a[3]:.3f}" if a[3] is not None else "–"
        cpu_b = f"{b[3]:.3f}" if b[3] is not None else "–"
        others = [x for x in (other_cpu(h, per.get("A", [])), other_cpu(h, per.get("B", []))) if x is not None]
        other = f"{max(others):.2f}" if others else "–"
        out.append(f"| {wl} | {fmt_tps(a[0], a[1], a[2], a[4])} | {fmt_tps(b[0], b[1], b[2], b[4])} "
                   f"| {ratio(b[0], a[0])} | {cpu_a} | {cpu_b} | {ratio(b[3], a[3])} | {other} |")


STEP = re.compile(r"^step (\d+): open=(\d+).*?pooler_cpu=[\d.]+s \((\d+) us/conn\).*?=> ([\d.]+) KiB/conn")


def idle(path):
    """(connections open, µs pooler CPU per connection, KiB RSS per connection, verify line)
    of the last step of an idle-conns.py output, or None."""
    if not os.path.exists(path):
        return None
    last, verify = None, ""
    with open(path) as fh:
        for line in fh:
            m = STEP.match(line)
            if m:
                last = (int(m.group(2)), int(m.group(3)), float(m.group(4)))
            if line.startswith("verify:"):
                verify = line.split(":", 1)[1].strip()
    return (*last, verify) if last else None


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def latencies(directory, name):
    """Per-transaction latencies in µs from pgbench -l logs: `client txn time_us script epoch us`."""
    values = []
    for log in glob.glob(os.path.join(directory, f"{name}.[0-9]*")):
        with open(log) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    values.append(int(parts[2]))
    return sorted(values)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--harness", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "..", "..", "shared", "bench"))
    ap.add_argument("results")
    a = ap.parse_args()
    h = load_harness(a.harness)
    res = a.results
    out = ["# pgberth benchmark", ""]

    machine = os.path.join(res, "machine.txt")
    if os.path.exists(machine):
        out += ["```", open(machine).read().rstrip(), "```", ""]

    tsv = os.path.join(res, "pgbouncer-vs-pgberth", "runs.tsv")
    if os.path.exists(tsv):
        out += ["## Throughput and pooler CPU: PgBouncer vs pgberth", "",
                "Medians over successful runs (runs alternate between the poolers). Pooler CPU is "
                "utime+stime of the pooler process per 10,000 transactions; `other` is CPU used by "
                "other processes on the machine during a run (interference). Harness tables: "
                "[pgbouncer-vs-pgberth/summary.md](pgbouncer-vs-pgberth/summary.md).", ""]
        comparison(h, tsv, "PgBouncer", "pgberth", out)
        out.append("")

    tsv = os.path.join(res, "direct-vs-pgberth", "runs.tsv")
    if os.path.exists(tsv):
        out += ["## Direct PostgreSQL vs pgberth", "",
                "Harness tables: [direct-vs-pgberth/summary.md](direct-vs-pgberth/summary.md). "
                "Direct PostgreSQL has no pooler CPU; `many` fails there by design "
                "(max_connections = 300).", ""]
        comparison(h, tsv, "direct", "pgberth", out)
        out.append("")

    rows = [(name, idle(os.path.join(res, f"idle-{name}.txt"))) for name in ("pgbouncer", "pgberth")]
    if any(r for _, r in rows):
        out += ["## Idle clients", "",
                "A freshly started pooler, idle clients logged in with SCRAM (idle-conns.py): RSS "
                "growth per open client, and pooler CPU per new connection while opening them.", "",
                "| pooler | clients open | RSS KiB per client | pooler CPU µs per connection | verify |",
                "|---|---|---|---|---|"]
        for name, r in rows:
            if r:
                out.append(f"| {name} | {r[0]:,} | {r[2]:.2f} | {r[1]} | {r[3]} |")
            else:
                out.append(f"| {name} | – | – | – | no result |")
        b, p = rows[0][1], rows[1][1]
        if b and p and b[2]:
            out += ["", f"pgberth / PgBouncer RSS per client: {p[2] / b[2]:.2f}"]
        out.append("")

    lat_dir = os.path.join(res, "latency")
    if os.path.isdir(lat_dir):
        out += ["## Latency at one client", "",
                "`pgbench -S -M simple -c 1` with a per-transaction log (`-l`); the added latency "
                "is the pooler's figure minus direct PostgreSQL's.", "",
                "| target | transactions | p50 µs | p99 µs | added p50 µs | added p99 µs |",
                "|---|---|---|---|---|---|"]
        base = None
        for name in ("direct", "pgbouncer", "pgberth"):
            v = latencies(lat_dir, name)
            if not v:
                out.append(f"| {name} | 0 | – | – | – | – |")
                continue
            p50, p99 = percentile(v, 50), percentile(v, 99)
            if name == "direct":
                base = (p50, p99)
            added = (f"{p50 - base[0]:+.0f} | {p99 - base[1]:+.0f}" if base and name != "direct"
                     else "– | –")
            out.append(f"| {name} | {len(v):,} | {p50:.0f} | {p99:.0f} | {added} |")
        out.append("")

    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
