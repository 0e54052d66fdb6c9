#!/bin/sh
# The runs behind docs/performance.md, then its table and plot:
#   tests/bench/run-performance.sh BUILD_DIR OUT_PREFIX
# e.g. tests/bench/run-performance.sh build tests/bench/results/2026-11-26
# writes OUT_PREFIX-dense.jsonl (256 MiB, 1 GiB: 3 runs; 4 GiB: 2 runs; random and
# sequential; 1 writer; null sink), OUT_PREFIX-file.jsonl (1 GiB, file sink, 2 runs)
# and OUT_PREFIX-sparse.jsonl (1 GiB of data in a 64 GiB region, uffdsnap and fork,
# 2 runs), then prints the tables (summarize.py --doc) and draws docs/performance-rate.png.
# About 20 minutes on 2 vCPUs; needs ~9 GiB of free memory (4 GiB fork and stw).
set -eu
build=$1 out=$2
bin=$build/tests/bench/uffdsnap-bench
here=$(dirname "$0")
label="engine=$(git -C "$here" rev-parse --short HEAD)"
export WRITERS=1
SINKS=null "$here/run-matrix.sh" "$bin" "$label" "$out-dense.jsonl" "256 1024" 3
SINKS=null "$here/run-matrix.sh" "$bin" "$label" "$out-dense.jsonl" "4096" 2
SINKS=file "$here/run-matrix.sh" "$bin" "$label" "$out-file.jsonl" "1024" 2
SINKS=null PATTERNS=random "$here/run-matrix.sh" "$bin" "$label" "$out-sparse.jsonl" "1024" 2 \
  --region-mib 65536 --method uffdsnap,fork
"$here/summarize.py" --doc "$out"-*.jsonl
"$here/plot.py" -o "$here/../../docs/performance-rate.png" "$out-dense.jsonl"
