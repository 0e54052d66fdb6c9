#!/usr/bin/env python3
"""Turn uffdsnap-bench JSON lines into markdown tables (ratios vs the issue #4 targets).

usage: tests/bench/summarize.py results/2026-11-25-baseline.jsonl [...]
       tests/bench/summarize.py --doc results/2026-11-26-*.jsonl
         (docs/performance.md: machine facts, per-method medians side by side,
          per-configuration ratios, and the targets met or not)
"""
import json
import statistics
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


def invocations(paths):
    """One dict per bench invocation (a machine line starts one): kind/method -> line."""
    out = []
    for path in paths:
        for line in open(path):
            if line.startswith("{"):
                o = json.loads(line)
                if o.get("kind") == "machine":
                    out.append({"machine": o})
                elif out:
                    out[-1][o.get("method") or o.get("kind")] = o
    return [r for r in out if "uffdsnap" in r]


def med(xs, nd=2, rng=True):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    m = fmt(float(statistics.median(xs)), nd)
    if rng and min(xs) != max(xs):
        return f"{m} ({fmt(float(min(xs)), nd)}–{fmt(float(max(xs)), nd)})"
    return m


def size_name(mib, region=None, variant=""):
    s = f"{mib // 1024} GiB" if mib >= 1024 else f"{mib} MiB"
    if region and region != mib:
        s += f" in {region // 1024} GiB" if region >= 1024 else f" in {region} MiB"
    return s + (f" ({variant})" if variant else "")


def variant(u):
    """uffdsnap's configuration when not the default: its memory kind, --adapt."""
    v = [u["memory"]] if u.get("memory", "memfd") != "memfd" else []
    return ", ".join(v + (["adapt"] if u.get("adapt") else []))


def doc(paths):
    inv = invocations(paths)
    groups = OrderedDict()
    for r in inv:
        u = r["uffdsnap"]
        key = (u["size_mib"], u.get("region_mib", u["size_mib"]), u["pattern"], u["sink"], u["writers"], variant(u))
        groups.setdefault(key, []).append(r)
    keys = sorted(groups, key=lambda k: (k[3] != "null", k[1] != k[0], k[5], k[0], k[2], k[4]))

    ms = [r["machine"] for r in inv]
    print(f"Machine, measured in each of the {len(ms)} runs (median, range):\n")
    print("| fact | value |\n|---|---|")
    for k, name in [("cores", "online CPUs"), ("memcpy_gb_s", "memcpy GB/s (one thread)"),
                    ("zstd_mb_s_1core", "zstd -1 MB/s, one thread"), ("zstd_mb_s", "zstd -1 MB/s, all cores"),
                    ("zstd_ratio", "zstd -1 ratio on the data"), ("sink_mb_s", "file sink MB/s (file-sink runs)"),
                    ("wp_async_fault_p50_us", "WP_ASYNC fault p50 µs"), ("ro_refault_p50_us", "read-only re-fault after un-protect p50 µs"),
                    ("wp_protect_ns_per_page", "UFFDIO_WRITEPROTECT ns/page (32 MiB, no writers)"),
                    ("loadavg_start", "load average at start")]:
        print(f"| {name} | {med([m.get(k) for m in ms], 0 if k == 'cores' else 2)} |")

    print("\nPer method, median over the runs (range in the ratio table):\n")
    print("| size | pattern | sink | runs | method | begin ms | max stall ms | lost work ms | window ms | total ms "
          "| faults | fault p50 / p99 µs | extra RSS peak MiB | MB/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in keys:
        size, region, pat, sink, w, var = key
        rs = groups[key]
        for m in ("uffdsnap", "fork", "stw"):
            xs = [r[m] for r in rs if m in r]
            if not xs:
                continue
            g = lambda f: med([x.get(f) for x in xs], rng=False)
            print(f"| {size_name(size, region, var)} | {pat} | {sink} | {len(xs)} | {m} | {g('begin_ms')} | {g('max_stall_ms')} "
                  f"| {g('lost_work_ms')} | {g('window_ms')} | {g('total_ms')} | {med([x['faults'] for x in xs], 0, False)} "
                  f"| {g('fault_p50_us')} / {g('fault_p99_us')} | {g('extra_rss_peak_mib')} | {g('mb_s')} |")

    print("\nRatios, each computed within one run, median (min–max) over the runs:\n")
    print("| size | pattern | sink | begin u/fork | lost work u/fork | lost work u/stw | max stall u/fork | total u/fork "
          "| total u / slowest stage | extra RSS u MiB / bound | fault p50 / WP_ASYNC | uffd round trip p50 / WP_ASYNC |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in keys:
        size, region, pat, sink, w, var = key
        rs = [r for r in groups[key] if "ratios" in r]
        g = lambda f: med([r["ratios"].get(f) for r in rs])
        print(f"| {size_name(size, region, var)} | {pat} | {sink} | {g('begin_ms_vs_fork')} | {g('lost_work_ms_vs_fork')} "
              f"| {g('lost_work_ms_vs_stw')} | {g('max_stall_ms_vs_fork')} | {g('total_ms_vs_fork')} "
              f"| {med([r['uffdsnap']['total_over_bound'] for r in rs])} | {med([r['uffdsnap']['extra_rss_peak_mib'] for r in rs], 1)} / "
              f"{fmt(rs[0]['ratios'].get('buffer_bound_mib'), 0) if rs else '-'} | {g('fault_p50_vs_wp_async')} "
              f"| {g('uffd_fault_p50_vs_wp_async')} |")

    print("\nTargets of issue #4, dense regions, null sink, by size: median (min–max) and runs meeting it:\n")
    targets = [
        ("begin_ms ≤ 0.5 × fork", lambda r: r["ratios"].get("begin_ms_vs_fork"), 0.5),
        ("lost_work_ms ≤ 0.5 × fork", lambda r: r["ratios"].get("lost_work_ms_vs_fork"), 0.5),
        ("lost_work_ms ≤ 0.1 × stw", lambda r: r["ratios"].get("lost_work_ms_vs_stw"), 0.1),
        ("extra_rss_peak ≤ bound (ratio)", lambda r: r["ratios"].get("extra_rss_peak_vs_bound"), 1.0),
        ("total_ms ≤ 1.3 × slowest stage", lambda r: r["uffdsnap"].get("total_over_bound"), 1.3),
        ("fault p50 (every slow store) ≤ 2 × WP_ASYNC", lambda r: r["ratios"].get("fault_p50_vs_wp_async"), 2.0),
        ("uffd round trip p50 ≤ 2 × WP_ASYNC", lambda r: r["ratios"].get("uffd_fault_p50_vs_wp_async"), 2.0),
    ]
    sizes = sorted({(k[5], k[0]) for k in keys if k[3] == "null" and k[0] == k[1]})
    print("| target | " + " | ".join(size_name(s, None, v) for v, s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name, f, lim in targets:
        cells = []
        for v, s in sizes:
            rs = [r for k in keys if k[0] == s and k[1] == s and k[3] == "null" and k[5] == v
                  for r in groups[k] if "ratios" in r]
            vs = [f(r) for r in rs if f(r) is not None]
            cells.append(f"{med(vs)}; {sum(v <= lim for v in vs)}/{len(vs)}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--doc"]:
        doc(sys.argv[2:])
    else:
        main(sys.argv[1:])
