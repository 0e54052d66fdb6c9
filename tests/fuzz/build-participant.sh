#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Build the libFuzzer target for the participant protocol and, optionally, run it.
#   tests/fuzz/build-participant.sh [OUTDIR]          build OUTDIR/fuzz-participant (default build-fuzz)
#   tests/fuzz/build-participant.sh OUTDIR run SECS   ... then fuzz for SECS seconds on a scratch
#                                                     corpus seeded from tests/fuzz/corpus-participant
#   tests/fuzz/build-participant.sh OUTDIR merge      add what the scratch corpus covers beyond the committed one
# Needs clang and its libFuzzer runtime, and root (a real coordinator and real
# userfaultfds). The whole library is compiled in with coverage, ASan and UBSan.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build-fuzz}
mkdir -p "$out"
CC=${CC:-clang}
srcs=$(ls lib/*.c | grep -v inject.c)
$CC -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-D_GNU_SOURCE -std=gnu11 -Iinclude -Ilib $srcs tests/fuzz/fuzz-participant.c \
	-lzstd -luv -lpthread -o "$out/fuzz-participant"
echo "built $out/fuzz-participant"
case ${2:-} in
run)
	mkdir -p "$out/corpus-participant" "$out/artifacts-participant"
	cp -n tests/fuzz/corpus-participant/* "$out/corpus-participant/" 2>/dev/null || true
	"$out/fuzz-participant" -max_total_time="${3:-60}" -timeout=20 -rss_limit_mb=2048 -max_len=8192 \
		-print_final_stats=1 -artifact_prefix="$out/artifacts-participant/" "$out/corpus-participant"
	;;
merge)
	rm -rf "$out/merged-participant" && mkdir -p "$out/merged-participant"
	cp tests/fuzz/corpus-participant/* "$out/merged-participant/"
	"$out/fuzz-participant" -merge=1 -max_len=8192 "$out/merged-participant" "$out/corpus-participant"
	cp -n "$out/merged-participant"/* tests/fuzz/corpus-participant/
	echo "tests/fuzz/corpus-participant: $(ls tests/fuzz/corpus-participant | wc -l) files"
	;;
esac
