#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Build and run the whole test suite three times, each in its own build
# directory (CI runs this through the README's test command, .ci/run):
#
#   build        plain (debugoptimized): the suite, fault injection, fuzz corpus
#   build-asan   -Db_sanitize=address,undefined (LeakSanitizer included)
#   build-tsan   -Db_sanitize=thread
#
# and Valgrind memcheck on the demo (build/examples/live-snapshot without
# writers: valgrind runs one thread at a time, see docs/design.md).
# Every sanitizer halts on its first finding, so a finding fails the run.
# USNAP_BUILD_PREFIX=build-foo uses build-foo, build-foo-asan, build-foo-tsan.
# USNAP_SUITES="plain valgrind asan tsan" picks which to run.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=${USNAP_BUILD_PREFIX:-build}
suites=${USNAP_SUITES:-plain valgrind asan tsan}

export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:strict_string_checks=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

passed=0 failed=0 skipped=0

run() { # dir, meson options...
	local dir=$1 t0=$SECONDS log
	shift
	echo "=== $dir: meson setup $* ==="
	(meson setup --reconfigure "$dir" "$@" >/dev/null 2>&1 || meson setup "$dir" "$@")
	ninja -C "$dir"
	log=$(mktemp)
	meson test -C "$dir" --print-errorlogs | tee "$log"
	passed=$((passed + $(awk '/^Ok:/ { print $2 }' "$log")))
	skipped=$((skipped + $(awk '/^Skipped:/ { print $2 }' "$log")))
	rm -f "$log"
	echo "=== $dir: built and passed in $((SECONDS - t0)) s ==="
}

for s in $suites; do
	case $s in
	plain) run "$prefix" ;;
	valgrind)
		t0=$SECONDS
		ninja -C "$prefix" examples/live-snapshot
		out=$(mktemp -d /var/tmp/usnap-valgrind.XXXXXX)
		valgrind --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite,indirect \
			"$prefix/examples/live-snapshot" --writers 0 --size 16 --out "$out/snap"
		rm -rf "$out"
		echo "=== valgrind memcheck of the demo: no error, no leak ($((SECONDS - t0)) s) ==="
		passed=$((passed + 1))
		;;
	asan) run "$prefix-asan" -Db_sanitize=address,undefined -Db_lundef=false ;;
	tsan) run "$prefix-tsan" -Db_sanitize=thread -Db_lundef=false ;;
	*) echo "unknown suite '$s' (plain, valgrind, asan, tsan)" >&2; exit 2 ;;
	esac
done
echo "=== all suites passed ($suites) in $SECONDS s ==="
# set -e stopped at the first failure, so reaching here means none
echo "suites: $passed passed, $failed failed, $skipped skipped"
