#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Build the libFuzzer target for the snapshot readers and, optionally, run it.
#   tests/fuzz/build.sh [OUTDIR]          build OUTDIR/fuzz-reader (default build-fuzz)
#   tests/fuzz/build.sh OUTDIR run SECS   ... then fuzz for SECS seconds on a scratch
#                                         corpus seeded from tests/fuzz/corpus
#   tests/fuzz/build.sh OUTDIR merge      add what the scratch corpus covers beyond tests/fuzz/corpus
# Needs clang and its libFuzzer runtime (Debian: apt-get install clang libclang-rt-14-dev).
# Every lib/ source (but the fault injection) is compiled into the target with
# coverage, ASan and UBSan: the readers, and the merge of a chain (its writer).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build-fuzz}
mkdir -p "$out"
CC=${CC:-clang}
srcs=$(ls lib/*.c | grep -v inject.c)
$CC -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-D_GNU_SOURCE -std=gnu11 -Iinclude -Ilib $srcs tests/fuzz/fuzz-reader.c \
	-lzstd -lxxhash -luv -lpthread -o "$out/fuzz-reader"
echo "built $out/fuzz-reader"
case ${2:-} in
run)
	mkdir -p "$out/corpus" "$out/artifacts"
	cp -n tests/fuzz/corpus/* "$out/corpus/" 2>/dev/null || true
	# malloc_limit: the reader's largest legitimate buffer is a chunk record
	# (64 MiB of pages, zstd bound) plus its decompressed pages
	"$out/fuzz-reader" -max_total_time="${3:-60}" -timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=200 \
		-max_len="${FUZZ_MAX_LEN:-131072}" \
		-print_final_stats=1 -artifact_prefix="$out/artifacts/" "$out/corpus"
	;;
merge)
	# the committed files stay (seeds, regress-*): new inputs are added only
	# where they reach coverage the corpus does not
	rm -rf "$out/merged" && mkdir -p "$out/merged"
	cp tests/fuzz/corpus/* "$out/merged/"
	"$out/fuzz-reader" -merge=1 -max_len="${FUZZ_MAX_LEN:-131072}" "$out/merged" "$out/corpus"
	cp -n "$out/merged"/* tests/fuzz/corpus/
	echo "tests/fuzz/corpus: $(ls tests/fuzz/corpus | wc -l) files, $(du -sh tests/fuzz/corpus | cut -f1)"
	;;
esac
