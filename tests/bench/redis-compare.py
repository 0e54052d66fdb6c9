#!/usr/bin/env python3
"""examples/kvstore (BGSAVE = a libuffdsnap snapshot) beside redis-server (BGSAVE = fork)
under the same redis-benchmark load, in one run (issue 14).

usage: tests/bench/redis-compare.py --kvstore build/examples/kvstore [--keys 1500000]
           [--configs redis,kv-4k,kv-thp,kv-hugetlb] [--cases all,hot] [--json OUT.jsonl]
           [--doc docs/clients.md] [--png docs/clients-latency.png]

For every server configuration and load case: start the server on 127.0.0.1 in a fresh
directory, load --keys keys of --value bytes (key:%012d, as redis-benchmark -r names them)
through redis-cli --pipe, start redis-benchmark (-t set -d VALUE -c CLIENTS -r RANGE, for
as long as needed), and measure:
  - latency: a probe client (its own process, one connection) issuing the same SETs in a
    closed loop, every request timed: p50 / p99 / p99.9 / max before the snapshot and
    during it, and its latency over time (the PNG);
  - throughput: INFO stats total_commands_processed every 100 ms (every client's commands);
  - the snapshot: BGSAVE issued after --pre seconds, done when INFO says
    rdb_bgsave_in_progress:0 (polled every 100 ms);
  - memory: the PSS of the server and all its children (redis's fork child) every 100 ms:
    peak during the snapshot minus the median before it.
Cases: "all" = -r over the whole keyspace; "hot" = -r --hot-keys (a small hot set).
Needs root (kvstore's userfaultfd; huge pages and THP are switched on for their configs and
switched back afterwards), redis-server, redis-tools.
"""
import argparse
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot import Image, nice_step, BLACK, GREY, LIGHT  # noqa: E402  (the repo's PNG writer)

HUGE_PAGE = 2 << 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self):
        while b"\r\n" not in self.buf:
            self.buf += self.s.recv(1 << 16)
        line, self.buf = self.buf.split(b"\r\n", 1)
        if line[:1] == b"$" and int(line[1:]) >= 0:
            n = int(line[1:])
            while len(self.buf) < n + 2:
                self.buf += self.s.recv(1 << 16)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        return line

    def cmd(self, *args):
        self.s.sendall(resp(*args))
        return self.reply()

    def info(self, section):
        txt = self.cmd("INFO", section).decode()
        if ":" not in txt:
            print("INFO reply %r" % txt, file=sys.stderr)
        return dict(l.split(":", 1) for l in txt.split("\r\n") if ":" in l and not l.startswith("#"))


def values(size, seed):
    """Random values, every one different: neither LZF nor zstd finds repeats."""
    rnd = random.Random(seed)
    return lambda i: rnd.randbytes(size)


def fill(port, keys, size):
    val = values(size, 14)
    p = subprocess.Popen(["redis-cli", "-p", str(port), "--pipe"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    step = 10000
    for base in range(0, keys, step):
        p.stdin.write(b"".join(resp(b"SET", b"key:%012d" % i, val(i)) for i in range(base, min(keys, base + step))))
    p.stdin.close()
    out = p.stdout.read().decode()
    if p.wait() != 0 or "errors: 0" not in out:
        sys.exit("fill failed: " + out)


def probe(port, keyrange, size, stop, q):
    """Closed-loop SETs on one connection, each timed: (seconds since epoch-ish, latency s)."""
    c = Conn(port)
    val = values(size, 15)
    rnd = random.Random(16)
    out = []
    while not stop.is_set():
        i = rnd.randrange(keyrange)
        msg = resp(b"SET", b"key:%012d" % i, val(i))
        t0 = time.perf_counter()
        c.s.sendall(msg)
        c.reply()
        out.append((t0, time.perf_counter() - t0))
    q.put(out)


def timeline(lat, t0, step=0.01):
    """The probe's latencies as [t, max ms, requests] per 10 ms from t0 (the JSON stays small)."""
    b = {}
    for t, l in lat:
        k = int((t - t0) // step)
        m, n = b.get(k, (0.0, 0))
        b[k] = (max(m, l), n + 1)
    return [[round(k * step, 2), round(m * 1e3, 3), n] for k, (m, n) in sorted(b.items())]


def pss_tree(pid, skip=None):
    """PSS in bytes of pid and its descendants (a fork child's copy-on-write is its own),
    hugetlbfs pages included, leaving out the mappings whose name contains skip."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open("/proc/%s/stat" % d).read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        skipping = False
        try:
            for line in open("/proc/%d/%s" % (p, "smaps" if skip else "smaps_rollup")):
                first = line.split(None, 1)[0]
                if not first.endswith(":"):  # a mapping's header: "start-end perms ... name"
                    skipping = bool(skip) and skip in line
                elif not skipping and first[:-1] in ("Pss", "Shared_Hugetlb", "Private_Hugetlb"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


def set_sys(path, value):
    old = open(path).read().strip()
    if "[" in old:  # "always within_size advise [never] ..." -> the selected word
        old = old.split("[")[1].split("]")[0]
    with open(path, "w") as f:
        f.write(str(value))
    return old


def start_server(cfg, args, d, port):
    log = open(os.path.join(d, "log"), "w")
    if cfg == "redis":
        cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", d, "--dbfilename", "dump.rdb"]
    else:
        huge = {"kv-4k": "none", "kv-thp": "thp", "kv-hugetlb": "hugetlb"}[cfg.split("+")[0]]
        cmd = [args.kvstore, "--port", str(port), "--dir", d, "--huge", huge, "--arena-mib", str(args.arena_mib)]
        cmd += cfg.split("+")[1:]  # kv-4k+--snap-nice+10: extra kvstore options
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(200):
        try:
            Conn(port).cmd("PING")
            return p
        except OSError:
            time.sleep(0.05)
    sys.exit("%s did not start: %s" % (cfg, open(os.path.join(d, "log")).read()))


def run_one(cfg, case, args):
    d = tempfile.mkdtemp(prefix="redis-compare.", dir=args.dir)
    port = free_port()
    srv = start_server(cfg, args, d, port)
    keyrange = args.keys if case == "all" else args.hot_keys
    try:
        t_fill = time.time()
        fill(port, args.keys, args.value)
        t_fill = time.time() - t_fill
        c = Conn(port)
        dbsize = int(c.cmd("DBSIZE")[1:])
        bench = subprocess.Popen(["redis-benchmark", "-p", str(port), "-t", "set", "-n", "1000000000",
                                  "-r", str(keyrange), "-d", str(args.value), "-c", str(args.clients), "-q"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop, q = mp.Event(), mp.Queue()
        pr = mp.Process(target=probe, args=(port, keyrange, args.value, stop, q))
        pr.start()
        samples = []  # (t, commands, in_progress, pss)
        t0 = time.perf_counter()
        t_bg = t_end = None
        while True:
            now = time.perf_counter()
            st = c.info("stats")
            if "total_commands_processed" not in st:
                sys.exit("INFO stats: %r %r %r" % (st, c.buf, c.cmd("PING")))
            ps = c.info("persistence")
            # kvstore: memory besides the arena (a shmem arena that a THP split
            # unmaps for a while would look freed in PSS); its snapshot
            # buffers are in it from the start, hence buffer_mb below
            samples.append((now, int(st["total_commands_processed"]), int(ps["rdb_bgsave_in_progress"]),
                            pss_tree(srv.pid, None if cfg == "redis" else "kvstore-arena")))
            if t_bg is None and now - t0 >= args.pre:
                r = c.cmd("BGSAVE")
                if not r.startswith(b"+Background saving started"):
                    sys.exit("%s BGSAVE: %s" % (cfg, r))
                t_bg = time.perf_counter()
            elif t_bg is not None and t_end is None and samples[-1][2] == 0:
                t_end = now
            elif t_end is not None and now - t_end >= args.post:
                break
            if now - t0 > args.timeout:
                sys.exit("%s: BGSAVE not done in %d s" % (cfg, args.timeout))
            time.sleep(max(0, 0.1 - (time.perf_counter() - now)))
        stop.set()
        lat = q.get()
        pr.join()
        bench.terminate()
        bench.wait()
        ps = c.info("persistence")
        ok = ps.get("rdb_last_bgsave_status") == "ok"
        before = [l for t, l in lat if t < t_bg]
        during = [l for t, l in lat if t_bg <= t <= t_end]

        def rate(a, b):
            w = [s for s in samples if a <= s[0] <= b]
            return (w[-1][1] - w[0][1]) / (w[-1][0] - w[0][0]) if len(w) > 1 else float("nan")
        pss_before = statistics.median(s[3] for s in samples if s[0] < t_bg)
        pss_peak = max(s[3] for s in samples if t_bg <= s[0] <= t_end + 0.1)
        res = {
            "config": cfg, "case": case, "keys": dbsize, "value": args.value, "clients": args.clients,
            "keyrange": keyrange, "fill_s": round(t_fill, 1), "bgsave_ok": ok,
            "snapshot_s": round(t_end - t_bg, 2),
            "rps_before": round(rate(t0, t_bg)), "rps_during": round(rate(t_bg, t_end)),
            "pss_before_mb": round(pss_before / 1e6), "pss_peak_mb": round(pss_peak / 1e6),
            "extra_mb": round((pss_peak - pss_before) / 1e6),
            "dump_mb": round(os.path.getsize(os.path.join(d, "dump.rdb" if cfg == "redis" else "dump.usnap")) / 1e6),
            "probe_before": len(before), "probe_during": len(during),
        }
        for name, xs in (("before", before), ("during", during)):
            for p in (50, 99, 99.9):
                res["%s_p%s_ms" % (name, p)] = round(pct(xs, p) * 1e3, 3)
            res["%s_max_ms" % name] = round(max(xs) * 1e3, 3) if xs else float("nan")
        if cfg == "redis":
            res["redis_cow_mb"] = round(int(ps.get("rdb_last_cow_size", 0)) / 1e6)
        else:
            res["begin_ms"] = float(ps.get("usnap_last_begin_ms", "nan"))
            res["write_faults"] = int(ps.get("usnap_last_faults", 0))
            res["buffer_peak_mb"] = round(int(ps.get("usnap_last_buffer_peak", 0)) / 1e6)
            res["fault_wait_max_ms"] = float(ps.get("usnap_last_fault_wait_max_ms", "nan"))
            res["buffer_mb"] = 64 * 1048576 // 1000000  # kvstore's buffer_bytes, allocated at start
        res["timeline"] = timeline(lat, t_bg)
        res["snapshot_end"] = round(t_end - t_bg, 3)
        return res
    except BaseException:
        print("server (exit %s) log:\n%s" % (srv.poll(), open(os.path.join(d, "log")).read()), file=sys.stderr)
        raise
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.kill()
        subprocess.run(["rm", "-rf", d])


def extra(r):
    """Memory a snapshot adds: redis's growth (the child's copy-on-write); kvstore's growth
    besides the arena plus its snapshot buffers, which exist from start-up."""
    return r["extra_mb"] + r.get("buffer_mb", 0)


def table(rows, case):
    out = ["| server | snapshot | p50 / p99 / p99.9 / max before (ms) | p50 / p99 / p99.9 / max during (ms) "
           "| req/s before | req/s during | extra memory | dump |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["case"] != case:
            continue
        out.append("| %s | %.2f s%s | %s | %s | %d k | %d k | %d MB | %d MB |" % (
            r["config"], r["snapshot_s"], "" if r["bgsave_ok"] else " (failed)",
            " / ".join("%.2f" % r["before_%s_ms" % k] for k in ("p50", "p99", "p99.9", "max")),
            " / ".join("%.2f" % r["during_%s_ms" % k] for k in ("p50", "p99", "p99.9", "max")),
            r["rps_before"] / 1000, r["rps_during"] / 1000, extra(r), r["dump_mb"]))
    return "\n".join(out)


def ratios(rows, case):
    red = [r for r in rows if r["case"] == case and r["config"] == "redis"]
    if not red:
        return ""
    red = red[0]
    out = ["| server | p99 during / redis's | max during / redis's | req/s during / redis's | extra memory / redis's |",
           "|---|---|---|---|---|"]
    for r in rows:
        if r["case"] == case and r["config"] != "redis":
            out.append("| %s | %.2f | %.2f | %.2f | %.2f |" % (
                r["config"], r["during_p99_ms"] / red["during_p99_ms"], r["during_max_ms"] / red["during_max_ms"],
                r["rps_during"] / max(red["rps_during"], 1), extra(r) / max(extra(red), 1)))
    return "\n".join(out)


def draw(rows, path):
    """The probe's worst latency per 10 ms over time, one panel per run, t = 0 at BGSAVE."""
    W, H, ph = 1200, 0, 170
    runs = [r for r in rows if r.get("timeline")]
    H = 40 + ph * len(runs)
    img = Image(W, H)
    img.text(20, 10, "WORST PROBE SET LATENCY PER 10 MS (MS, CLIPPED AT THE TOP); T = 0 BGSAVE, DASHED: START AND END")
    for k, r in enumerate(runs):
        x0, y0, w, h = 90, 40 + k * ph + 20, W - 120, ph - 50
        tl = r["timeline"]
        tmin, tmax = min(e[0] for e in tl), max(e[0] for e in tl)
        top = max(1.0, pct([e[1] for e in tl], 99.5))
        img.rect(x0, y0, x0 + w, y0 + h, LIGHT)
        img.text(x0, y0 - 16, "%s, %s keyspace: max %.1f ms" % (r["config"], r["case"], r["during_max_ms"]))
        step = nice_step(top, 4)
        v = 0.0
        while v <= top:
            y = y0 + h - int(v / top * h)
            img.rect(x0, y, x0 + w, y + 1, GREY)
            img.text(x0 - 8, y - 4, "%g" % v, right=True)
            v += step
        t = math.ceil(tmin / nice_step(tmax - tmin)) * nice_step(tmax - tmin)
        while t <= tmax:
            x = x0 + int((t - tmin) / (tmax - tmin) * w)
            img.rect(x, y0 + h, x + 1, y0 + h + 4, BLACK)
            img.text(x - 6, y0 + h + 6, "%gs" % round(t, 1))
            t += nice_step(tmax - tmin)
        col = 5 if r["config"] == "redis" else 4
        for t, l, _ in tl:
            x = x0 + int((t - tmin) / (tmax - tmin) * (w - 2))
            y = y0 + h - 2 - int(min(l, top) / top * (h - 2))
            img.rect(x, y, x + 2, y + 2, col)
        for t in (0, r["snapshot_end"]):
            img.vdash(x0 + int((t - tmin) / (tmax - tmin) * w), y0, y0 + h, BLACK)
    with open(path, "wb") as f:
        f.write(img.png())


def write_doc(rows, path, args):
    begin, end = "<!-- redis-compare:begin -->", "<!-- redis-compare:end -->"
    body = ["", "Run of %s: %d keys of %d B, redis-benchmark -t set -c %d, BGSAVE after %g s; "
            "`tests/bench/redis-compare.py %s`." % (time.strftime("%Y-%m-%d"), args.keys, args.value, args.clients,
                                                     args.pre, " ".join(sys.argv[1:]))]
    for case, title in (("all", "SET over the whole keyspace (-r %d)" % args.keys),
                        ("hot", "SET over a hot set (-r %d)" % args.hot_keys)):
        if any(r["case"] == case for r in rows):
            body += ["", "### " + title, "", table(rows, case), "", ratios(rows, case)]
    kv = [r for r in rows if r["config"] != "redis"]
    if kv:
        body += ["", "kvstore snapshots: " + "; ".join(
            "%s/%s begin %.1f ms, %d write faults, longest wait of a fault for buffer space %.1f ms, buffer peak %d MB" % (
                r["config"], r["case"], r["begin_ms"], r["write_faults"], r.get("fault_wait_max_ms", float("nan")),
                r["buffer_peak_mb"]) for r in kv) + "."]
    red = [r for r in rows if r["config"] == "redis"]
    if red:
        body += ["", "redis-server's own count of copy-on-write: " + "; ".join(
            "%s %d MB" % (r["case"], r["redis_cow_mb"]) for r in red) + "."]
    body.append("")
    text = open(path).read() if os.path.exists(path) else "# Real clients\n\n%s\n%s\n" % (begin, end)
    a, b = text.index(begin) + len(begin), text.index(end)
    with open(path, "w") as f:
        f.write(text[:a] + "\n".join(body) + text[b:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvstore", required=True)
    ap.add_argument("--keys", type=int, default=1500000)
    ap.add_argument("--value", type=int, default=512)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--hot-keys", type=int, default=10000)
    ap.add_argument("--arena-mib", type=int, default=0, help="default: room for --keys (hugetlb reserves it)")
    ap.add_argument("--configs", default="redis,kv-4k,kv-thp,kv-hugetlb")
    ap.add_argument("--cases", default="all,hot")
    ap.add_argument("--pre", type=float, default=3)
    ap.add_argument("--post", type=float, default=1)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--json")
    ap.add_argument("--doc")
    ap.add_argument("--png")
    args = ap.parse_args()
    need = ["redis-cli", "redis-benchmark"] + (["redis-server"] if "redis" in args.configs.split(",") else [])
    missing = [p for p in need if not shutil.which(p)]
    if missing or os.geteuid() != 0:
        print("SKIP: %s" % ("needs " + ", ".join(missing) + " (apt-get install redis-server redis-tools)"
                            if missing else "needs root (kvstore's userfaultfd, huge pages)"))
        sys.exit(77)
    if not args.arena_mib:
        # entries of 32 B + key + value in 25 %-spaced size classes, a table of 8 B a key, twice
        per = args.value + 48
        args.arena_mib = (int(args.keys * per * 1.25 + args.keys * 32) >> 20) + 64
        args.arena_mib = (args.arena_mib + 1) // 2 * 2
    rows, restore = [], []
    try:
        for cfg in args.configs.split(","):
            if cfg.startswith("kv-hugetlb"):
                need = args.arena_mib * (1 << 20) // HUGE_PAGE + 8
                restore.append(("/proc/sys/vm/nr_hugepages", set_sys("/proc/sys/vm/nr_hugepages", need)))
            if cfg.startswith("kv-thp"):
                restore.append(("/sys/kernel/mm/transparent_hugepage/shmem_enabled",
                                set_sys("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "advise")))
            for case in args.cases.split(","):
                r = run_one(cfg, case, args)
                rows.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "timeline"}), flush=True)
            while restore:
                p, v = restore.pop()
                set_sys(p, v)
    finally:
        for p, v in reversed(restore):
            set_sys(p, v)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    if args.doc:
        write_doc(rows, args.doc, args)
    if args.png:
        draw(rows, args.png)


if __name__ == "__main__":
    main()
