#!/usr/bin/env python3
"""Turn uffdsnap-bench JSON lines into markdown tables (ratios vs the issue #4 targets).

usage: tests/bench/summarize.py results/2026-11-25-baseline.jsonl [...]
"""
import json
import sys
from collections import OrderedDict


def fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def main(paths):
    runs = OrderedDict()  # key: (label, size, pattern, writers, sink) -> dict of lines
    machine = None
    for path in paths:
        for line in open(path):
            line = line.strip()
            if not line.startswith("{"):
                continue
            o = json.loads(line)
            if o.get("kind") == "machine":
                machine = o
                continue
            key = (o.get("label", ""), o.get("size_mib"), o.get("pattern"), o.get("writers"), o.get("sink"))
            d = runs.setdefault(key, {})
            d[o.get("method") or o.get("kind")] = o
            if machine is not None and o.get("method") == "uffdsnap":
                d["machine"] = machine

    print("| engine run | MiB | pattern | W | sink | begin u/f | lost u/f | lost u/stw | stall u/f | total u/f | total/bound | rss u MiB (bound 64) | rss fork MiB | uffd p50 µs / wp_async µs | total ms u / fork / stw | lost ms u / fork / stw |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (label, size, pat, w, sink), d in runs.items():
        u, f, s, r = d.get("uffdsnap"), d.get("fork"), d.get("stw"), d.get("ratios")
        m = d.get("machine", {})
        if not (u and r):
            continue
        print("| " + " | ".join([
            label, fmt(size), pat, fmt(w), sink,
            fmt(r.get("begin_ms_vs_fork")), fmt(r.get("lost_work_ms_vs_fork")), fmt(r.get("lost_work_ms_vs_stw")),
            fmt(r.get("max_stall_ms_vs_fork")), fmt(r.get("total_ms_vs_fork")), fmt(u.get("total_over_bound")),
            fmt(u.get("extra_rss_peak_mib"), 1), fmt(f.get("extra_rss_peak_mib") if f else None, 1),
            f"{fmt(u.get('uffd_fault_p50_us'), 1)} / {fmt(m.get('wp_async_fault_p50_us'))}",
            " / ".join(fmt(x.get("total_ms") if x else None, 0) for x in (u, f, s)),
            " / ".join(fmt(x.get("lost_work_ms") if x else None, 0) for x in (u, f, s)),
        ]) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
