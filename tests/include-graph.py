#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Print the graph of #include "..." among lib/ files and fail on a cycle
(architecture issue 19). Usage: include-graph.py LIBDIR"""
import os
import re
import sys

libdir = sys.argv[1]
edges = {}
for name in sorted(os.listdir(libdir)):
    if name.endswith(('.c', '.h')):
        with open(os.path.join(libdir, name)) as f:
            edges[name] = [m for m in re.findall(r'^#include "([^"]+)"', f.read(), re.M)
                           if os.path.exists(os.path.join(libdir, m))]
for name, deps in edges.items():
    print(f"{name}: {' '.join(deps)}")

state = {}  # 1 visiting, 2 done


def visit(node, path):
    if state.get(node) == 1:
        sys.exit("include cycle: " + " -> ".join(path[path.index(node):] + [node]))
    if state.get(node) == 2:
        return
    state[node] = 1
    for dep in edges.get(node, []):
        visit(dep, path + [node])
    state[node] = 2


for n in edges:
    visit(n, [])
print(f"{len(edges)} files, no include cycle")
