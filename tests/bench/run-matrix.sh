#!/bin/sh
# Run the benchmark matrix, appending one JSON object per line to $OUT.
#   tests/bench/run-matrix.sh BENCH_BINARY LABEL OUT SIZES [RUNS] [EXTRA ARGS...]
# e.g. tests/bench/run-matrix.sh build-bench/tests/bench/uffdsnap-bench engine=HEAD out.jsonl "256 1024" 2
# Every configuration runs RUNS times (default 2) so noise on this shared
# machine shows; each run is bounded by --timeout and leaves no files behind.
set -u
bin=$1 label=$2 out=$3 sizes=$4 runs=${5:-2}
shift 5 2>/dev/null || shift $#
sinks=${SINKS:-"null file"} writers=${WRITERS:-"1 2"} patterns=${PATTERNS:-"random sequential"}
for size in $sizes; do
  for sink in $sinks; do
    for pattern in $patterns; do
      for w in $writers; do
        for run in $(seq 1 "$runs"); do
          "$bin" --json --size "$size" --writers "$w" --pattern "$pattern" --sink "$sink" \
            --out /var/tmp --timeout 600 --label "$label run=$run" "$@" >>"$out" ||
            echo "run failed: size=$size sink=$sink pattern=$pattern writers=$w run=$run" >&2
          rm -f /var/tmp/uffdsnap-bench-*
        done
      done
    done
  done
done
