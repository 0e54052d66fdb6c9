#!/bin/sh
# The runs behind docs/performance.md, then its table and plot:
#   tests/bench/run-performance.sh BUILD_DIR OUT_PREFIX
# e.g. tests/bench/run-performance.sh build tests/bench/results/2026-11-26
# writes, each configuration RUNS times (default 2; 1 writer):
#   OUT_PREFIX-dense.jsonl   256 MiB, 1 GiB, 4 GiB; random and sequential; null sink;
#                            the library's defaults and UFFDSNAP_OPT_ADAPT (--adapt)
#   OUT_PREFIX-kinds.jsonl   1 GiB and 4 GiB random on hugetlbfs (it reserves the huge
#                            pages and gives them back), 1 GiB random on THP for all three
#   OUT_PREFIX-file.jsonl    1 GiB, file sink
#   OUT_PREFIX-sparse.jsonl  1 GiB of data in a 64 GiB region, uffdsnap and fork
# then prints the tables (summarize.py --doc) and draws docs/performance-rate.png
# (and -adapt.png).
# About 25 minutes with RUNS=1 on 2 vCPUs; needs ~9 GiB of free memory (4 GiB fork and
# stw) plus 4 GiB of huge pages; root.
set -eu
build=$1 out=$2
bin=$build/tests/bench/uffdsnap-bench
here=$(dirname "$0")
label="engine=$(git -C "$here" rev-parse --short HEAD)"
runs=${RUNS:-2}
export WRITERS=1
for adapt in "" --adapt; do
  SINKS=null "$here/run-matrix.sh" "$bin" "$label" "$out-dense.jsonl" "256 1024 4096" "$runs" $adapt
done
hp=/proc/sys/vm/nr_hugepages
old=$(cat $hp)
trap 'echo "$old" > $hp' EXIT
echo 2100 > $hp
SINKS=null PATTERNS=random "$here/run-matrix.sh" "$bin" "$label" "$out-kinds.jsonl" "1024 4096" "$runs" \
  --memory hugetlb
echo "$old" > $hp
SINKS=null PATTERNS=random "$here/run-matrix.sh" "$bin" "$label" "$out-kinds.jsonl" "1024" "$runs" \
  --memory anon-thp
SINKS=file "$here/run-matrix.sh" "$bin" "$label" "$out-file.jsonl" "1024" "$runs"
SINKS=null PATTERNS=random "$here/run-matrix.sh" "$bin" "$label" "$out-sparse.jsonl" "1024" "$runs" \
  --region-mib 65536 --method uffdsnap,fork
"$here/summarize.py" --doc "$out"-*.jsonl
"$here/plot.py" -o "$here/../../docs/performance-rate.png" "$out-dense.jsonl"
"$here/plot.py" --adapt -o "$here/../../docs/performance-rate-adapt.png" "$out-dense.jsonl"
