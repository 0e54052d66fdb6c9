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
#
# A failing test (or build) does not stop the script: the other suites still
# run, and the script exits 1 at the end. It ends with the skipped and failed
# tests by name (a skipped test prints its reason in its log, shown here) and
# the line "suites: N passed, N failed, N skipped", counting meson tests over
# all suites (a timeout or an unexpected pass is a failure) plus the Valgrind
# run.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=${USNAP_BUILD_PREFIX:-build}
suites=${USNAP_SUITES:-plain valgrind asan tsan}

export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:strict_string_checks=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

passed=0 failed=0 skipped=0
failed_names='' skipped_names=''
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

wait_background_builds() {
	local rc=0 t0=$SECONDS
	[ -n "$bg_pid" ] || return 0
	wait "$bg_pid" || rc=$?
	bg_pid=
	if [ $rc != 0 ]; then
		cat "$bg_log"
		echo "=== the background build failed (exit $rc): output above ===" >&2
		return $rc
	fi
	grep -i 'warning' "$bg_log" || true
	echo "=== ${bg_suites% } built in the background ($(tail -n 1 "$bg_log")); waited $((SECONDS - t0)) s for it ==="
	rm -f "$bg_log"
}

# The number on the summary line `what` (Ok:, Fail:, ...) of a meson test log.
count() { # log what
	awk -v w="$2" '$0 ~ "^" w ":" { n = $NF } END { print n + 0 }' "$1"
}

# A failure that is not a meson test's (a build, Valgrind): one failed.
fail() { # what
	failed=$((failed + 1))
	failed_names+="  $1"$'\n'
	echo "=== FAILED: $1 ===" >&2
}

run() { # suite
	local suite=$1 dir t0=$SECONDS t1 how log rc=0 bad name
	dir=$(suite_dir "$suite")
	if [[ " $bg_suites " == *" $suite "* ]]; then
		wait_background_builds || { fail "$dir: the background build"; return 0; }
		how="built in the background"
	else
		build "$suite" || { fail "$dir: the build"; return 0; }
		how="built in $((SECONDS - t0)) s"
		[ "$suite" != plain ] || [ "${USNAP_BACKGROUND_BUILD:-1}" = 0 ] || start_background_builds
	fi
	t1=$SECONDS
	log=$(mktemp)
	meson test -C "$dir" --print-errorlogs | tee "$log" || rc=$?
	bad=$(($(count "$log" Fail) + $(count "$log" Timeout) + $(count "$log" 'Unexpected Pass')))
	passed=$((passed + $(count "$log" Ok) + $(count "$log" 'Expected Fail')))
	skipped=$((skipped + $(count "$log" Skipped)))
	failed=$((failed + bad))
	# " 3/36 matrix-migrate   SKIP   4.69s   exit status 77": the names (a
	# failure's line comes again in meson's summary of failures)
	while read -r name; do skipped_names+="  $dir: $name"$'\n'; done \
		< <(awk '$1 ~ /^[0-9]+\/[0-9]+$/ && $3 == "SKIP" && !seen[$2]++ { print $2 }' "$log")
	while read -r name; do failed_names+="  $dir: $name"$'\n'; done \
		< <(awk '$1 ~ /^[0-9]+\/[0-9]+$/ && ($3 == "FAIL" || $3 == "TIMEOUT" || $3 == "UNEXPECTEDPASS") &&
			!seen[$2]++ { print $2 }' "$log")
	rm -f "$log"
	if [ "$rc" != 0 ] && [ "$bad" = 0 ]; then
		fail "$dir: meson test exited $rc without a failed test"
	fi
	# the reasons, from the skipped programs' output
	grep -h -e ': SKIP: ' -e '^SKIP: ' "$dir/meson-logs/testlog.txt" 2>/dev/null | sed "s|^|  $dir: |" >>"$skip_reasons" || true
	echo "=== $dir: $how, tests ran in $((SECONDS - t1)) s: $bad failed ==="
}

skip_reasons=$(mktemp)
trap 'stop_background_builds; rm -f "$skip_reasons"' EXIT
for s in $suites; do
	case $s in
	plain | asan | tsan) run "$s" ;;
	valgrind)
		t0=$SECONDS
		out=$(mktemp -d /var/tmp/usnap-valgrind.XXXXXX)
		if ninja -C "$prefix" examples/live-snapshot &&
			valgrind --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite,indirect \
				"$prefix/examples/live-snapshot" --writers 0 --size 16 --out "$out/snap"; then
			echo "=== valgrind memcheck of the demo: no error, no leak ($((SECONDS - t0)) s) ==="
			passed=$((passed + 1))
		else
			fail "valgrind memcheck of the demo"
		fi
		rm -rf "$out"
		;;
	*) echo "unknown suite '$s' (plain, valgrind, asan, tsan)" >&2; exit 2 ;;
	esac
done
if [ -n "$skipped_names" ]; then
	printf '=== skipped ===\n%s' "$skipped_names"
	sort -u "$skip_reasons"
fi
[ -z "$failed_names" ] || printf '=== failed ===\n%s' "$failed_names"
echo "=== $suites: $SECONDS s ==="
echo "suites: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
