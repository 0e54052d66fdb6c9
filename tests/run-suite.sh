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
# USNAP_SUITES="plain valgrind asan tsan" picks which to run, USNAP_TESTS="zap
# alias" which tests (meson test names) of each.
#
# Two lanes run side by side: plain, valgrind and asan in one, tsan (the
# slowest, several times slower per byte) in the other. The tests of one lane
# run one at a time (tests/meson.build: is_parallel false), and the plain
# suite spends most of its time waiting (slowed sinks, blocked writers, timed
# runs: about 115 of its 316 seconds use a CPU on 2 cores), which the other
# lane fills. Tests that change what the machine shares take a lock
# (tests/meson.build: exclusive), so they never overlap. The plain suite is
# built first; the tsan lane's output goes to a log shown when both lanes are
# done. In a lane, the sanitizer builds after its first suite compile in the
# background at nice 19 while that suite's tests run.
# The tsan suite leaves out the tests of meson suite no-tsan (kernel-event
# matrix, file parsers, shell-driven clients: tests/meson.build says why).
# With two lanes, those tests' plain run (~60 s) moves to the tsan lane, to
# even the lanes out (lane entries plain/rest and plain/no-tsan), and runs
# first there, while tsan compiles in the background; and the tsan tests of
# meson suite late (~20 s) run at the end of the other lane (tsan/late),
# which would otherwise finish first and leave a CPU idle.
# USNAP_LANES=1 runs every suite in one lane, in the order of USNAP_SUITES.
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

lanes=${USNAP_LANES:-2}
late=''                # 1: the tsan tests of meson suite late run in the other lane
results=$(mktemp)      # what each suite counted: "passed N", "failed NAME", ...
skip_reasons=$(mktemp)
digest=$(mktemp)       # the last lines of each failed test's output
bg_pid='' bg_log='' bg_t0=0 bg_suites=''
built=''               # suites built before their lane ran them

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
	# one build of a directory at a time: tsan/late in one lane waits here
	# for the other lane's background build of tsan, then finds it done
	# shellcheck disable=SC2086 # opts: words
	(
		flock 9
		(meson setup --reconfigure "$dir" $opts >/dev/null 2>&1 || meson setup "$dir" $opts)
		ninja -C "$dir"
	) 9>"$dir.lock"
}

# Build the given suites in the background, in their own process group
# (killed if the script stops early), at nice 19: the tests keep the CPUs
# whenever they want them. The output goes to a log, shown if it fails.
start_background_builds() { # suite...
	bg_suites="$* "
	bg_log=$(mktemp /tmp/usnap-build.XXXXXX)
	bg_t0=$SECONDS
	echo "=== building ${bg_suites% } in the background, at nice 19 ==="
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
	echo "failed $1" >>"$results"
	echo "=== FAILED: $1 ===" >&2
}

run() { # suite[/rest|/no-tsan]: all its tests, or those outside / inside meson suite no-tsan
	local suite=${1%%/*} part='' dir t0=$SECONDS t1 how log rc=0 bad testlog states st name
	[[ $1 != */* ]] || part=${1#*/}
	dir=$(suite_dir "$suite")
	if [[ " $bg_suites " == *" $suite "* ]]; then
		wait_background_builds || { fail "$dir: the background build"; return 0; }
		how="built in the background"
	elif [ "$part" = late ]; then
		# the other lane builds it (in the background): wait for that
		(flock 9 && ninja -C "$dir" >/dev/null) 9>"$dir.lock" || { fail "$dir: the build"; return 0; }
		how="built by the other lane"
	elif [[ " $built " == *" $suite "* ]]; then
		how="built before"
	else
		build "$suite" || { fail "$dir: the build"; return 0; }
		how="built in $((SECONDS - t0)) s"
	fi
	t1=$SECONDS
	log=$(mktemp)
	# the tsan lane leaves out the tests of suite no-tsan (tests/meson.build
	# says why); the two parts of plain may run at once in the same build
	# directory: logs of their own, nothing rebuilt (built above)
	testlog=$dir/meson-logs/testlog.txt
	case $suite/$part in
	tsan/) set -- --no-suite no-tsan ${late:+--no-suite late} ;;
	*/rest) set -- --no-suite no-tsan ;;
	*/no-tsan) set -- --suite no-tsan --logbase testlog-no-tsan; testlog=$dir/meson-logs/testlog-no-tsan.txt ;;
	*/late) set -- --suite late --no-suite no-tsan --logbase testlog-late; testlog=$dir/meson-logs/testlog-late.txt ;;
	*) set -- ;;
	esac
	# shellcheck disable=SC2086 # USNAP_TESTS: words
	meson test -C "$dir" --no-rebuild --print-errorlogs "$@" ${USNAP_TESTS:-} | tee "$log" || rc=$?
	bad=$(($(count "$log" Fail) + $(count "$log" Timeout) + $(count "$log" 'Unexpected Pass')))
	# " 3/36 matrix-migrate   SKIP   4.69s   exit status 77", or with a
	# suite " 4/36 libuffdsnap:no-tsan / matrix-swap   OK ...": the names
	# (a failure's line comes again in meson's summary of failures)
	states=$(awk '$1 ~ /^[0-9]+\/[0-9]+$/ {
		name = $2; st = $3
		if ($3 == "/") { name = $4; st = $5 }
		if (!seen[name]++) print st, name
	}' "$log")
	{
		echo "passed $(($(count "$log" Ok) + $(count "$log" 'Expected Fail')))"
		echo "skipped $(count "$log" Skipped)"
		echo "failures $bad"
		awk -v d="$dir" '$1 == "SKIP" { print "skip " d ": " $2 }
			$1 == "FAIL" || $1 == "TIMEOUT" || $1 == "UNEXPECTEDPASS" { print "failname " d ": " $2 }' <<<"$states"
	} >>"$results"
	rm -f "$log"
	if [ "$rc" != 0 ] && [ "$bad" = 0 ]; then
		fail "$dir: meson test exited $rc without a failed test"
	fi
	# the reasons, from the skipped programs' output
	grep -h -e ': SKIP: ' -e '^SKIP: ' "$testlog" 2>/dev/null | sed "s|^|  $dir: |" >>"$skip_reasons" || true
	# why each failed, at the end of the output where a CI log's tail shows
	# it: the last lines of its block in meson's log ("test: ... / NAME" up
	# to the next rule of '=')
	while read -r st name; do
		case $st in FAIL | TIMEOUT | UNEXPECTEDPASS) ;; *) continue ;; esac
		awk -v d="$dir" -v want="$name" '
			/^test: / { inblock = ($NF == want); n = 0; next }
			inblock && /^====================*$/ { inblock = 0; last = n; for (i = 0; i < n; i++) keep[i] = line[i] }
			inblock { line[n++] = $0 }
			END {
				print "--- " d ": " want ": the last lines of its output ---"
				for (i = (last > 30 ? last - 30 : 0); i < last; i++) print "  " keep[i]
			}' "$testlog" >>"$digest"
	done <<<"$states"
	echo "=== $dir${part:+ ($part)}: $how, tests ran in $((SECONDS - t1)) s: $bad failed ==="
}

valgrind_demo() {
	local t0=$SECONDS out
	out=$(mktemp -d /var/tmp/usnap-valgrind.XXXXXX)
	if ninja -C "$prefix" examples/live-snapshot &&
		valgrind --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite,indirect \
			"$prefix/examples/live-snapshot" --writers 0 --size 16 --out "$out/snap"; then
		echo "=== valgrind memcheck of the demo: no error, no leak ($((SECONDS - t0)) s) ==="
		echo "passed 1" >>"$results"
	else
		fail "valgrind memcheck of the demo"
	fi
	rm -rf "$out"
}

# One lane: its suites one after the other. The first is built now (unless
# built before); the sanitizer builds of the others compile in the
# background at nice 19 while the first one's tests run.
lane() { # suite...
	local s bg=''
	if [[ " $built " != *" ${1%%/*} "* ]] && [ "$1" != valgrind ]; then
		build "${1%%/*}" && built+=" ${1%%/*}" || fail "$(suite_dir "${1%%/*}"): the build"
	fi
	for s in "${@:2}"; do case $s in asan | tsan) bg+="$s " ;; esac; done
	# shellcheck disable=SC2086 # bg: words
	[ -z "$bg" ] || [ "${USNAP_BACKGROUND_BUILD:-1}" = 0 ] || start_background_builds $bg
	for s in "$@"; do
		case $s in
		plain* | asan | tsan*) run "$s" ;;
		valgrind) valgrind_demo ;;
		esac
	done
}

lane1='' lane2=''
for s in $suites; do
	case $s in
	plain | asan | valgrind) lane1+="$s " ;;
	tsan) lane2+="$s " ;;
	*) echo "unknown suite '$s' (plain, valgrind, asan, tsan)" >&2; exit 2 ;;
	esac
done
lane2_pid='' lane2_log=''
trap 'stop_background_builds; [ -z "$lane2_pid" ] || kill -- -"$lane2_pid" 2>/dev/null; rm -f "$results" "$skip_reasons" "$digest" "$lane2_log"' EXIT
if [ "$lanes" = 1 ] || [ -z "$lane1" ] || [ -z "$lane2" ]; then
	# shellcheck disable=SC2086 # suites: words
	lane $suites
else
	# the plain build first: a compile error shows at once, and the second
	# lane's build does not slow it down
	case " $lane1 " in *" plain "*) build plain && built+=" plain" || fail "$prefix: the build" ;; esac
	if [[ " $built " == *" plain "* ]]; then
		lane1=${lane1/plain/plain/rest}
		lane2="plain/no-tsan $lane2"
	fi
	if [[ " $lane2 " == *" tsan "* ]]; then
		late=1
		lane1+="tsan/late "
	fi
	lane2_log=$(mktemp /tmp/usnap-lane2.XXXXXX)
	echo "=== ${lane2% } runs beside ${lane1% }: its output follows when both are done ==="
	set -m
	# shellcheck disable=SC2086 # lane2: words
	lane $lane2 >"$lane2_log" 2>&1 &
	lane2_pid=$!
	set +m
	# shellcheck disable=SC2086 # lane1: words
	lane $lane1
	wait "$lane2_pid" || true
	lane2_pid=
	echo "=== ${lane2% }, which ran beside ${lane1% } ==="
	cat "$lane2_log"
fi

sum() { # what
	awk -v w="$1" '$1 == w { n += $2 } END { print n + 0 }' "$results"
}
passed=$(sum passed)
skipped=$(sum skipped)
failed=$(($(sum failures) + $(grep -c '^failed ' "$results" || true)))
if grep -q '^skip ' "$results"; then
	echo '=== skipped ==='
	sed -n 's/^skip /  /p' "$results"
	sort -u "$skip_reasons"
fi
if grep -q -e '^failname ' -e '^failed ' "$results"; then
	echo '=== failed ==='
	sed -n -e 's/^failname /  /p' -e 's/^failed /  /p' "$results"
	cat "$digest"
fi
echo "=== $suites: $SECONDS s ==="
echo "suites: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
