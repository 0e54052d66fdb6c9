#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Build a libFuzzer target that needs the whole library and, optionally, run it
# (build-migrate.sh and build-participant.sh call this with their target).
#   tests/fuzz/build-lib-target.sh NAME [OUTDIR]          build OUTDIR/fuzz-NAME (default build-fuzz)
#   tests/fuzz/build-lib-target.sh NAME OUTDIR run SECS   ... then fuzz for SECS seconds on a scratch
#                                                         corpus seeded from tests/fuzz/corpus-NAME
#   tests/fuzz/build-lib-target.sh NAME OUTDIR merge      add what the scratch corpus covers beyond it
# Needs clang and its libFuzzer runtime. Every lib/ source (but the fault
# injection) is compiled in with coverage, ASan and UBSan.
set -euo pipefail
cd "$(dirname "$0")/../.."
name=$1
out=${2:-build-fuzz}
maxlen=${FUZZ_MAX_LEN:-65536}
mkdir -p "$out"
CC=${CC:-clang}
srcs=$(ls lib/*.c | grep -v inject.c)
$CC -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-D_GNU_SOURCE -std=gnu11 -Iinclude -Ilib $srcs "tests/fuzz/fuzz-$name.c" \
	-lzstd -lxxhash -luv -lpthread -o "$out/fuzz-$name"
echo "built $out/fuzz-$name"
case ${3:-} in
run)
	mkdir -p "$out/corpus-$name" "$out/artifacts-$name"
	cp -n "tests/fuzz/corpus-$name"/* "$out/corpus-$name/" 2>/dev/null || true
	"$out/fuzz-$name" -max_total_time="${4:-60}" -timeout=20 -rss_limit_mb=2048 -max_len="$maxlen" \
		-print_final_stats=1 -artifact_prefix="$out/artifacts-$name/" "$out/corpus-$name"
	;;
merge)
	rm -rf "$out/merged-$name" && mkdir -p "$out/merged-$name"
	cp "tests/fuzz/corpus-$name"/* "$out/merged-$name/"
	"$out/fuzz-$name" -merge=1 -max_len="$maxlen" "$out/merged-$name" "$out/corpus-$name"
	cp -n "$out/merged-$name"/* "tests/fuzz/corpus-$name/"
	echo "tests/fuzz/corpus-$name: $(ls "tests/fuzz/corpus-$name" | wc -l) files"
	;;
esac
