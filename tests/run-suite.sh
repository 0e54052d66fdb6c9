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
#
# The tests run one at a time (tests/meson.build: is_parallel false), and the
# plain suite spends most of its time waiting (slowed sinks, blocked writers,
# timed runs): about 115 of its 316 CPU-seconds on 2 cores. So once the plain
# build is done, the sanitizer builds of the suites after it compile in the
# background at the lowest CPU priority (nice 19: the tests keep the CPUs
# whenever they want them) while the plain suite runs; their output goes to
# a log, shown if they fail (their warnings in any case).
# USNAP_BACKGROUND_BUILD=0 builds each suite just before it runs instead.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=${USNAP_BUILD_PREFIX:-build}
suites=${USNAP_SUITES:-plain valgrind asan tsan}

export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:strict_string_checks=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

passed=0 failed=0 skipped=0
bg_pid='' bg_log='' bg_t0=0 bg_suites=''

suite_dir() { # suite
	case $1 in plain) echo "$prefix" ;; *) echo "$prefix-$1" ;; esac
}
suite_opts() { # suite
	case $1 in
	asan) echo "-Db_sanitize=address,undefined -Db_lundef=false" ;;
	tsan) echo "-Db_sanitize=thread -Db_lundef=false" ;;
	esac
}

build() { # suite: configure and compile its build directory
	local dir opts
	dir=$(suite_dir "$1")
	opts=$(suite_opts "$1")
	echo "=== $dir: meson setup $opts ==="
	# shellcheck disable=SC2086 # opts: words
	(meson setup --reconfigure "$dir" $opts >/dev/null 2>&1 || meson setup "$dir" $opts)
	ninja -C "$dir"
}

# The sanitizer builds of the suites listed after plain, in the background,
# in their own process group (killed if the script stops early), at nice 19.
start_background_builds() {
	local s after=0
	for s in $suites; do
		case $s in
		plain) after=1 ;;
		asan | tsan) [ $after = 0 ] || bg_suites+="$s " ;;
		esac
	done
	[ -n "$bg_suites" ] || return 0
	bg_log=$(mktemp /tmp/usnap-build.XXXXXX)
	bg_t0=$SECONDS
	echo "=== building ${bg_suites% } in the background, at nice 19, while the plain suite runs ==="
	set -m
	(
		renice -n 19 -p $BASHPID >/dev/null 2>&1 || true
		for s in $bg_suites; do build "$s"; done
		echo "took $((SECONDS - bg_t0)) s"
	) >"$bg_log" 2>&1 &
	bg_pid=$!
	set +m
}
stop_background_builds() {
	[ -z "$bg_pid" ] || kill -- -"$bg_pid" 2>/dev/null || true
}
trap stop_background_builds EXIT

wait_background_builds() {
	local rc=0 t0=$SECONDS
	[ -n "$bg_pid" ] || return 0
	wait "$bg_pid" || rc=$?
	bg_pid=
	if [ $rc != 0 ]; then
		cat "$bg_log"
		echo "=== the background build failed (exit $rc): output above ===" >&2
		exit $rc
	fi
	grep -i 'warning' "$bg_log" || true
	echo "=== ${bg_suites% } built in the background ($(tail -n 1 "$bg_log")); waited $((SECONDS - t0)) s for it ==="
	rm -f "$bg_log"
}

run() { # suite
	local suite=$1 dir t0=$SECONDS t1 how log
	dir=$(suite_dir "$suite")
	if [[ " $bg_suites " == *" $suite "* ]]; then
		wait_background_builds
		how="built in the background"
	else
		build "$suite"
		how="built in $((SECONDS - t0)) s"
		[ "$suite" != plain ] || [ "${USNAP_BACKGROUND_BUILD:-1}" = 0 ] || start_background_builds
	fi
	t1=$SECONDS
	log=$(mktemp)
	meson test -C "$dir" --print-errorlogs | tee "$log"
	passed=$((passed + $(awk '/^Ok:/ { print $2 }' "$log")))
	skipped=$((skipped + $(awk '/^Skipped:/ { print $2 }' "$log")))
	rm -f "$log"
	echo "=== $dir: $how, tests passed in $((SECONDS - t1)) s ==="
}

for s in $suites; do
	case $s in
	plain | asan | tsan) run "$s" ;;
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
	*) echo "unknown suite '$s' (plain, valgrind, asan, tsan)" >&2; exit 2 ;;
	esac
done
echo "=== all suites passed ($suites) in $SECONDS s ==="
# set -e stopped at the first failure, so reaching here means none
echo "suites: $passed passed, $failed failed, $skipped skipped"
