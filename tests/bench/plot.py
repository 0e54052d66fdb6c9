#!/usr/bin/env python3
"""Draw the writers' rate over time around each method's snapshot, from uffdsnap-bench JSON lines.

usage: tests/bench/plot.py [-o OUT.png] [--sink null] [--writers 1] RESULTS.jsonl [...]

One panel per (size, pattern) in the files (dense regions only), one line per method: the
writers' stores per ms (timeline_stores_per_ms, 10 ms steps) as a percentage of that method's
own undisturbed rate (base_rate_per_ms), from 0.5 s before the instant to the end of settle.
t = 0 is the call that fixes the instant (grey line); the dashed line in a method's colour is
when its snapshot was written (total_ms). Where a configuration ran several times, the run
with the median uffdsnap total_ms is drawn. Pure Python (zlib + struct): no matplotlib.
"""
import argparse
import json
import struct
import zlib

# colours: palette index -> RGB
PALETTE = [(255, 255, 255), (0, 0, 0), (150, 150, 150), (225, 225, 225),
           (31, 119, 180), (214, 39, 40), (44, 160, 44), (170, 200, 230), (240, 170, 170), (170, 220, 170)]
WHITE, BLACK, GREY, LIGHT = 0, 1, 2, 3
METHODS = [("uffdsnap", 4, 7), ("fork", 5, 8), ("stw", 6, 9)]  # name, line colour, marker colour

# 3x5 bitmap font, rows top to bottom; lower case is drawn as upper case
FONT = {c: g.replace(" ", "") for c, g in {
    "0": "111 101 101 101 111", "1": "010 110 010 010 111", "2": "111 001 111 100 111",
    "3": "111 001 011 001 111", "4": "101 101 111 001 001", "5": "111 100 111 001 111",
    "6": "111 100 111 101 111", "7": "111 001 001 010 010", "8": "111 101 111 101 111",
    "9": "111 101 111 001 111", "A": "010 101 111 101 101", "B": "110 101 110 101 110",
    "C": "011 100 100 100 011", "D": "110 101 101 101 110", "E": "111 100 110 100 111",
    "F": "111 100 110 100 100", "G": "011 100 101 101 011", "H": "101 101 111 101 101",
    "I": "111 010 010 010 111", "J": "001 001 001 101 010", "K": "101 101 110 101 101",
    "L": "100 100 100 100 111", "M": "101 111 111 101 101", "N": "110 101 101 101 101",
    "O": "010 101 101 101 010", "P": "110 101 110 100 100", "Q": "010 101 101 110 011",
    "R": "110 101 110 101 101", "S": "011 100 010 001 110", "T": "111 010 010 010 010",
    "U": "101 101 101 101 111", "V": "101 101 101 101 010", "W": "101 101 111 111 101",
    "X": "101 101 010 101 101", "Y": "101 101 010 010 010", "Z": "111 001 010 100 111",
    ".": "000 000 000 000 010", "-": "000 000 111 000 000", "%": "101 001 010 100 101",
    "(": "001 010 010 010 001", ")": "100 010 010 010 100", ",": "000 000 000 010 100",
    ":": "000 010 000 010 000", "/": "001 001 010 100 100", "=": "000 111 000 111 000",
    "+": "000 010 111 010 000", " ": "000 000 000 000 000"}.items()}


class Image:
    def __init__(self, w, h):
        self.w, self.h, self.px = w, h, bytearray(w * h)

    def set(self, x, y, c):
        if 0 <= x < self.w and 0 <= y < self.h:
            self.px[y * self.w + x] = c

    def rect(self, x0, y0, x1, y1, c):
        for y in range(max(y0, 0), min(y1, self.h)):
            self.px[y * self.w + max(x0, 0):y * self.w + min(x1, self.w)] = bytes([c]) * (min(x1, self.w) - max(x0, 0))

    def line(self, x0, y0, x1, y1, c, thick=2):
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.rect(x0, y0, x0 + thick, y0 + thick, c)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err, x0 = err + dy, x0 + sx
            if e2 <= dx:
                err, y0 = err + dx, y0 + sy

    def vdash(self, x, y0, y1, c, on=5, off=4):
        for y in range(y0, y1):
            if (y - y0) % (on + off) < on:
                self.rect(x, y, x + 2, y + 1, c)

    def text(self, x, y, s, c=BLACK, scale=2, right=False):
        if right:
            x -= len(s) * 4 * scale
        for ch in s.upper():
            g = FONT.get(ch, FONT[" "])
            for i, bit in enumerate(g):
                if bit == "1":
                    self.rect(x + i % 3 * scale, y + i // 3 * scale, x + (i % 3 + 1) * scale, y + (i // 3 + 1) * scale, c)
            x += 4 * scale

    def png(self):
        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        raw = b"".join(b"\0" + bytes(self.px[y * self.w:(y + 1) * self.w]) for y in range(self.h))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 3, 0, 0, 0)) +
                chunk(b"PLTE", b"".join(bytes(c) for c in PALETTE)) + chunk(b"IDAT", zlib.compress(raw, 9)) +
                chunk(b"IEND", b""))


def runs(paths):
    """One dict per bench invocation (a machine line starts one): method -> line."""
    out = []
    for path in paths:
        for line in open(path):
            if not line.startswith("{"):
                continue
            o = json.loads(line)
            if o.get("kind") == "machine":
                out.append({})
            elif "method" in o and out:
                out[-1][o["method"]] = o
    return [r for r in out if r]


def nice_step(span, most=8):
    for s in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100):
        if span / s <= most:
            return s
    return 200


def panel(img, x0, y0, w, h, title, run):
    img.text(x0, y0 - 18, title)
    lines = [(m, run[m], c, mc) for m, c, mc in METHODS if m in run and run[m].get("timeline_stores_per_ms")]
    t_lo = -0.5
    t_hi = max(o["timeline_t0_ms"] / 1e3 + len(o["timeline_stores_per_ms"]) * o["timeline_step_ms"] / 1e3
               for _, o, _, _ in lines)
    ymax = 125.0
    px = lambda t: x0 + int((t - t_lo) / (t_hi - t_lo) * (w - 1))
    py = lambda v: y0 + h - 1 - int(min(max(v, 0.0), ymax) / ymax * (h - 1))
    for v in (0, 50, 100):  # grid and y labels
        img.rect(x0, py(v), x0 + w, py(v) + 1, LIGHT)
        img.text(x0 - 6, py(v) - 5, f"{v}%", right=True)
    step = nice_step(t_hi - t_lo)
    k = int(t_lo / step)
    while k * step <= t_hi:
        t = k * step
        if t >= t_lo:
            img.rect(px(t), y0 + h, px(t) + 1, y0 + h + 5, BLACK)
            lab = f"{t:g}"
            img.text(px(t) - len(lab) * 4 + 1, y0 + h + 8, lab)
        k += 1
    img.rect(px(0), y0, px(0) + 2, y0 + h, GREY)
    for _, o, _, mc in lines:  # when each snapshot was written
        img.vdash(px(o["total_ms"] / 1e3), y0, y0 + h, mc)
    for _, o, c, _ in lines:
        base, t0, dt = o["base_rate_per_ms"], o["timeline_t0_ms"] / 1e3, o["timeline_step_ms"] / 1e3
        cols = {}  # pixel column -> values (average several steps per pixel)
        for i, v in enumerate(o["timeline_stores_per_ms"]):
            t = t0 + (i + 0.5) * dt
            if t >= t_lo:
                cols.setdefault(px(t), []).append(100.0 * v / base)
        pts = [(x, py(sum(vs) / len(vs))) for x, vs in sorted(cols.items())]
        for (ax, ay), (bx, by) in zip(pts, pts[1:]):
            img.line(ax, ay, bx, by, c)
    img.rect(x0, y0, x0 + 1, y0 + h, BLACK)  # axes
    img.rect(x0, y0 + h, x0 + w, y0 + h + 1, BLACK)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", default="performance-rate.png")
    ap.add_argument("--sink", default="null")
    ap.add_argument("--writers", type=int, default=1)
    ap.add_argument("--adapt", action="store_true", help="the runs with uffdsnap --adapt (default: without)")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()

    groups = {}
    for r in runs(a.files):
        u = r.get("uffdsnap")
        if (not u or "timeline_stores_per_ms" not in u or u["sink"] != a.sink or u["writers"] != a.writers
                or u.get("region_mib", u["size_mib"]) != u["size_mib"] or bool(u.get("adapt")) != a.adapt
                or u.get("memory", "memfd") != "memfd"):
            continue
        groups.setdefault((u["size_mib"], u["pattern"]), []).append(r)
    if not groups:
        raise SystemExit("plot.py: no matching runs with timelines")
    sizes = sorted({s for s, _ in groups})
    pats = sorted({p for _, p in groups})
    pw, ph, ml, mt, gap_x, gap_y, head = 560, 190, 70, 30, 40, 62, 70
    img = Image(ml + len(pats) * (pw + gap_x + ml) - ml, head + len(sizes) * (ph + gap_y) + 20)
    img.text(ml, 12, f"Writer rate, % of undisturbed, vs time (s) from the instant. {a.writers} writer, {a.sink} sink"
             + (", uffdsnap with UFFDSNAP_OPT_ADAPT" if a.adapt else ""))
    lx = ml
    for name, c, mc in METHODS:
        img.rect(lx, 40, lx + 24, 44, c)
        img.text(lx + 32, 37, name)
        lx += 32 + len(name) * 8 + 30
    img.vdash(lx, 34, 50, GREY)
    img.text(lx + 10, 37, "dashed: snapshot written. grey: t = 0")
    for (size, pat), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["uffdsnap"]["total_ms"])
        run = rs[(len(rs) - 1) // 2]
        label = f"{size // 1024} GiB" if size >= 1024 else f"{size} MiB"
        x = ml + pats.index(pat) * (pw + gap_x + ml)
        y = head + sizes.index(size) * (ph + gap_y) + 20
        panel(img, x, y, pw, ph, f"{label} {pat} (median of {len(rs)} runs by uffdsnap total)", run)
    with open(a.out, "wb") as f:
        f.write(img.png())


if __name__ == "__main__":
    main()
