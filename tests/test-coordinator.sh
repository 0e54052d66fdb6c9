#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The standalone coordinator (issue 13): `uffdsnap coordinator` maps a file
# of /dev/shm, an unmodified program (tests/agent/victim.c) joins it through
# libuffdsnap-agent.so, and `uffdsnap snap` takes snapshots on request. The
# snapshot verifies and holds the file's bytes; the answer counts the
# participant; a second coordinator may not take the socket; a request for a
# bad path fails with a reason. (Exactness under writes: tests/test-agent.c.)
# Usage: test-coordinator.sh UFFDSNAP AGENT.so VICTIM
set -u
tool=$(realpath "$1") agent=$(realpath "$2") victim=$(realpath "$3")
[ "$(id -u)" = 0 ] || { echo "SKIP: needs root (userfaultfd for kernel-mode faults)"; exit 77; }
[ -z "${USNAP_SANITIZE:-}" ] || [ "$USNAP_SANITIZE" = none ] ||
	{ echo "SKIP: a $USNAP_SANITIZE-built LD_PRELOAD agent cannot run in a program built without it"; exit 77; }
dir=$(mktemp -d /var/tmp/usnap-coord.XXXXXX)
shm=/dev/shm/usnap-coord-$$
coord= vic=
cleanup() {
	[ -z "$vic" ] || kill "$vic" 2>/dev/null
	[ -z "$coord" ] || kill "$coord" 2>/dev/null
	wait 2>/dev/null
	rm -rf "$dir" "$shm"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
wait_for() { # what, command...
	local what=$1; shift
	for _ in $(seq 100); do "$@" && return 0; sleep 0.1; done
	fail "$what"
}

head -c $((4 << 20)) /dev/urandom > "$shm"
timeout 60 "$tool" coordinator --socket "$dir/sock" --region ram="$shm" > "$dir/coord.log" 2>&1 &
coord=$!
wait_for "the coordinator did not start" test -S "$dir/sock.ctl"
"$tool" coordinator --socket "$dir/sock" --region ram="$shm" > "$dir/second.log" 2>&1 &&
	fail "a second coordinator took over a live socket"
grep -q "listens on" "$dir/second.log" || fail "a second coordinator: $(cat "$dir/second.log")"

mkfifo "$dir/in"
LD_PRELOAD=$agent UFFDSNAP_COORDINATOR=$dir/sock timeout 60 "$victim" "$shm" $((4 << 20)) < "$dir/in" > "$dir/victim.out" &
vic=$!
exec 3> "$dir/in"
wait_for "the program did not map its file" grep -q R "$dir/victim.out"

"$tool" snap --socket "$dir/sock" "$dir/a.snap" > "$dir/snap.out" || fail "snap: $(cat "$dir/snap.out")"
cat "$dir/snap.out"
grep -q "participants 1" "$dir/snap.out" || fail "the program is not counted as a participant"
"$tool" verify "$dir/a.snap" > /dev/null || fail "the snapshot does not verify"
"$tool" extract -q "$dir/a.snap" ram "$dir/a.bin" || fail "extract"
cmp -s "$dir/a.bin" "$shm" || fail "the snapshot is not the file's contents"
"$tool" snap --socket "$dir/sock" /nonexistent-dir/x.snap 2> "$dir/err" && fail "a snapshot into a missing directory succeeded"
grep -q "^error" "$dir/err" || fail "no reason for the failed request: $(cat "$dir/err")"
exec 3>&-
echo "coordinator: a joined program's file snapshotted on request, exact; refusals said why"
