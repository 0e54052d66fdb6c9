#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Build the libFuzzer target for the migration receiver and, optionally, run it.
#   tests/fuzz/build-migrate.sh [OUTDIR]          build OUTDIR/fuzz-migrate (default build-fuzz)
#   tests/fuzz/build-migrate.sh OUTDIR run SECS   ... then fuzz for SECS seconds on a scratch
#                                                 corpus seeded from tests/fuzz/corpus-migrate
# Needs clang and its libFuzzer runtime. The whole library is compiled in (the
# receiver uses its thread and error helpers) with coverage, ASan and UBSan.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build-fuzz}
mkdir -p "$out"
CC=${CC:-clang}
srcs=$(ls lib/*.c | grep -v inject.c)
$CC -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-D_GNU_SOURCE -std=gnu11 -Iinclude -Ilib $srcs tests/fuzz/fuzz-migrate.c \
	-lzstd -luv -lpthread -o "$out/fuzz-migrate"
echo "built $out/fuzz-migrate"
case ${2:-} in
run)
	mkdir -p "$out/corpus-migrate" "$out/artifacts-migrate"
	cp -n tests/fuzz/corpus-migrate/* "$out/corpus-migrate/" 2>/dev/null || true
	"$out/fuzz-migrate" -max_total_time="${3:-60}" -timeout=20 -rss_limit_mb=2048 -max_len=65536 \
		-print_final_stats=1 -artifact_prefix="$out/artifacts-migrate/" "$out/corpus-migrate"
	;;
esac
