#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# examples/kvstore driven by the real redis-cli and redis-benchmark
# (Debian redis-tools) on 127.0.0.1, with bounded counts:
#   1. commands and replies, binary values, bad input (garbage, a huge bulk
#      length, a client gone mid-command): errors, never a crash;
#   2. BGSAVE while redis-benchmark writes: the snapshot completes, overlaps
#      writes (write faults counted), verifies, and restores into a
#      consistent arena (--check);
#   3. restart restores the data byte for byte (DEBUG DIGEST, a binary
#      value, DBSIZE), lazily, with BGSAVE refused while the restore is in
#      progress, and eagerly;
#   4. BGSAVE and a lazy restore with the arena on hugetlbfs (32 huge pages
#      reserved for it, vm.nr_hugepages restored afterwards);
#   5. a client that pipelines GETs and never reads: bounded server memory
#      (--client-output-limit), other clients served, every reply delivered.
# Usage: test-kvstore.sh BUILD/examples/kvstore
set -u
KV=${1:?usage: test-kvstore.sh path/to/kvstore}
BUILD=$(dirname "$(dirname "$KV")")
TOOL=$BUILD/util/uffdsnap

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (userfaultfd for kernel-mode faults)"
command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null ||
	skip "redis-cli and redis-benchmark missing (apt-get install redis-tools)"
[ -x "$KV" ] || skip "no $KV"

# Fewer benchmark requests under a sanitizer (several times slower per request)
REQUESTS=60000
ldd "$KV" | grep -qE 'lib[at]san' && REQUESTS=25000

D=$(mktemp -d /var/tmp/kvstore-test.XXXXXX)
PID=
BENCH=
HUGE_OLD=
cleanup() {
	[ -n "$BENCH" ] && kill "$BENCH" 2>/dev/null
	[ -n "$PID" ] && kill -9 "$PID" 2>/dev/null
	[ -n "$HUGE_OLD" ] && echo "$HUGE_OLD" > /proc/sys/vm/nr_hugepages
	rm -rf "$D"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*"
	echo "--- server log:"; cat "$D/log" 2>/dev/null
	exit 1
}

# start [options]: run kvstore on a free port, set PID and PORT
start() {
	: > "$D/out"
	"$KV" --port 0 --dir "$D" --arena-mib 64 "$@" > "$D/out" 2>> "$D/log" &
	PID=$!
	for _ in $(seq 200); do
		PORT=$(sed -n 's/^kvstore: listening on 127.0.0.1:\([0-9]*\),.*/\1/p' "$D/out")
		[ -n "$PORT" ] && return 0
		kill -0 "$PID" 2>/dev/null || fail "kvstore $* exited at start-up"
		sleep 0.05
	done
	fail "kvstore did not listen within 10 s"
}
# stop: SHUTDOWN and wait for a clean exit
stop() {
	cli shutdown > /dev/null 2>&1
	for _ in $(seq 200); do
		kill -0 "$PID" 2>/dev/null || break
		sleep 0.05
	done
	kill -0 "$PID" 2>/dev/null && fail "kvstore did not exit after SHUTDOWN"
	wait "$PID" || fail "kvstore exited with status $?"
	PID=
}
cli() { timeout 20 redis-cli -p "$PORT" "$@"; }
expect() { # expect WANT redis-cli args...
	local want=$1 got
	shift
	got=$(cli "$@") || fail "redis-cli $*: status $?"
	[ "$got" = "$want" ] || fail "redis-cli $*: '$got', expected '$want'"
}
info_field() { cli info persistence | tr -d '\r' | sed -n "s/^$1://p"; }
wait_bgsave() {
	for _ in $(seq 600); do
		[ "$(info_field rdb_bgsave_in_progress)" = 0 ] && return 0
		sleep 0.1
	done
	fail "BGSAVE still in progress after 60 s"
}
raw_send() { # raw_send BYTES: send to the server, print what comes back within 2 s
	timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT; printf '$1' >&3; timeout 2 cat <&3" 2>/dev/null
}

# ---- 1. commands -----------------------------------------------------------------
start
expect PONG ping
expect OK set k1 v1
expect v1 get k1
expect "" get nothere
expect 1 incr n
expect 2 incr n
expect "ERR value is not an integer or out of range" incr k1
expect OK mset a 1 b 2 c 3
expect "$(printf '1\n2\n\nv1')" mget a b zz k1
expect 2 exists a b zz
expect 1 del a zz
expect 4 dbsize
expect "$(printf 'save\n')" config get save
head -c 5000 /dev/urandom > "$D/bin"
cli -x set bin < "$D/bin" > /dev/null || fail "set bin"
cli --raw get bin | head -c 5000 | cmp - "$D/bin" || fail "binary value differs"
# pipelined: one write, 1000 commands
for i in $(seq 1000); do printf 'SET p%d %d\r\n' "$i" "$i"; done | cli --pipe > "$D/pipe" 2>&1
grep -q "errors: 0, replies: 1000" "$D/pipe" || fail "pipe: $(cat "$D/pipe")"
expect 1000 get p1000
# the exact bytes of pipelined inline commands' replies (redis-cli forgives a stray byte)
raw_send 'PING\r\nSET r 5\r\nINCR r\r\nGET r\r\nGET none\r\nBGSAVE\r\nEXISTS r none\r\nDBSIZE\r\n' > "$D/raw"
printf '+PONG\r\n+OK\r\n:6\r\n$1\r\n6\r\n$-1\r\n+Background saving started\r\n:1\r\n:1006\r\n' |
	cmp - "$D/raw" || fail "replies differ: $(od -c "$D/raw" | head)"
wait_bgsave
# bad input: an error reply and a closed connection, never a crash
raw_send '*abc\r\n' | grep -q "Protocol error" || fail "garbage multibulk length not refused"
raw_send '*1\r\n$99999999999\r\n' | grep -q "invalid bulk length" || fail "huge bulk length not refused"
raw_send '*2\r\n$3\r\nGET\r\n#xx\r\n' | grep -q "Protocol error" || fail "garbage argument not refused"
raw_send '*3\r\n$3\r\nSET\r\n$2\r\nmc\r\n$100\r\nonly part' > /dev/null # gone mid-command
before=$(cli debug digest)
for i in 1 2 3 4 5; do # random bytes, with and without a multibulk header in front
	{ [ $((i % 2)) = 0 ] && printf '*2\r\n$3\r\nGET\r\n'; head -c 65536 /dev/urandom; } > "$D/garbage"
	timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT; cat '$D/garbage' >&3; timeout 1 cat <&3 > /dev/null" 2>/dev/null
done
expect "$before" debug digest
expect PONG ping
expect "" get mc
expect 1006 dbsize
expect OK flushall
expect 0 dbsize
echo "commands: ok"

# ---- 2. BGSAVE under redis-benchmark load ----------------------------------------------
timeout 120 redis-benchmark -p "$PORT" -t set -n $REQUESTS -r 20000 -d 512 -c 20 -q > "$D/bench" 2>&1 &
BENCH=$!
for _ in $(seq 200); do
	[ "$(cli dbsize)" -gt 5000 ] 2>/dev/null && break
	sleep 0.05
done
overlapped=0
for try in 1 2 3 4 5; do
	kill -0 "$BENCH" 2>/dev/null || break
	expect "Background saving started" bgsave
	wait_bgsave
	[ "$(info_field rdb_last_bgsave_status)" = ok ] || fail "BGSAVE under load failed"
	faults=$(info_field usnap_last_faults)
	echo "BGSAVE $try under load: $faults write faults, begin $(info_field usnap_last_begin_ms) ms"
	# only the benchmark writes: a write fault is one of its writes during
	# the snapshot (it may have ended since, on a slow sanitizer build)
	if [ "$faults" -gt 0 ]; then
		overlapped=1
		break
	fi
done
[ "$overlapped" = 1 ] || fail "no BGSAVE overlapped the benchmark's writes: $(tr "\r" "\n" < "$D/bench" | tail -3)"
cp "$D/dump.usnap" "$D/midload.usnap"
wait "$BENCH" || fail "redis-benchmark: $(cat "$D/bench")"
BENCH=
tr '\r' '\n' < "$D/bench" | grep "requests per second" || fail "redis-benchmark printed no result"
"$TOOL" verify "$D/midload.usnap" > /dev/null || fail "the snapshot taken under load does not verify"
echo "BGSAVE under load: ok"

# ---- 3. restart restores the data byte for byte --------------------------------------
cli -x set bin < "$D/bin" > /dev/null
expect OK mset x 1 y 2
digest=$(cli debug digest)
keys=$(cli dbsize)
expect "Background saving started" bgsave
wait_bgsave
[ "$(info_field rdb_last_bgsave_status)" = ok ] || fail "BGSAVE failed"
[ "$(info_field rdb_changes_since_last_save)" = 0 ] || fail "changes since the save not 0"
stop

# lazily, only touched pages: the restore stays in progress, BGSAVE is refused
start --restore lazy-touch
[ "$(info_field usnap_lazy_restore_in_progress)" = 1 ] || fail "lazy-touch restore not in progress"
expect "ERR Background save already in progress" bgsave
cli --raw get bin | head -c 5000 | cmp - "$D/bin" || fail "binary value differs after a lazy restore"
expect "$digest" debug digest
expect "$keys" dbsize
stop

# lazily with the background pass, walking the whole arena once restored
start --check
expect "$digest" debug digest
for _ in $(seq 200); do
	[ "$(info_field usnap_lazy_restore_in_progress)" = 0 ] && break
	sleep 0.05
done
grep -q "arena consistent" "$D/log" || fail "--check did not run after the lazy restore"
expect "Background saving started" bgsave
wait_bgsave
[ "$(info_field rdb_last_bgsave_status)" = ok ] || fail "BGSAVE after a lazy restore failed"
stop

start --restore eager --check
expect "$digest" debug digest
expect "$keys" dbsize
expect 1 get x
stop

# the snapshot taken under load: a consistent arena, values of the benchmark's size
mv "$D/midload.usnap" "$D/dump.usnap"
: > "$D/log"
start --restore eager --check
grep -q "arena consistent" "$D/log" || fail "the snapshot taken under load is inconsistent"
n=$(cli dbsize)
[ "$n" -gt 5000 ] || fail "only $n keys in the snapshot taken under load"
for i in $(seq 0 100); do
	key=$(printf 'key:%012d' "$i")
	len=$(cli --raw get "$key" | wc -c) # --raw adds a newline
	[ "$len" -gt 1 ] && break
done
[ "$len" = 513 ] || fail "value of $key: $len bytes, not the benchmark's 512 (+1)"
stop
echo "restart: ok ($keys keys, digest $digest)"

# ---- 4. the same on hugetlbfs (the arena docs/clients.md recommends) ------------------
# 32 huge pages of 2 MiB for the 64 MiB arena, the system's count restored
# afterwards, under the lock of the tests that change it (tests/meson.build:
# exclusive), held until this script exits
exec 9>>/tmp/libuffdsnap-tests.lock
flock 9
HUGE_OLD=$(cat /proc/sys/vm/nr_hugepages)
echo $((HUGE_OLD + 32)) > /proc/sys/vm/nr_hugepages
if [ "$(awk '/HugePages_Free/ { print $2 }' /proc/meminfo)" -lt 32 ]; then
	echo "hugetlbfs: skipped, the kernel did not find 32 free huge pages"
else
	rm -f "$D/dump.usnap"
	start --huge hugetlb
	for i in $(seq 200); do printf 'SET h%d %d\r\n' "$i" "$((i * i))"; done | cli --pipe > /dev/null
	cli -x set bin < "$D/bin" > /dev/null
	digest=$(cli debug digest)
	expect "Background saving started" bgsave
	wait_bgsave
	[ "$(info_field rdb_last_bgsave_status)" = ok ] || fail "BGSAVE on hugetlbfs failed"
	stop
	start --huge hugetlb --check
	expect "$digest" debug digest
	cli --raw get bin | head -c 5000 | cmp - "$D/bin" || fail "binary value differs after a hugetlbfs restore"
	stop
	echo "hugetlbfs: ok"
fi
echo "$HUGE_OLD" > /proc/sys/vm/nr_hugepages
HUGE_OLD=

# ---- 5. a client that pipelines and never reads ----------------------------------------
# 200 GETs of a 256 KiB value (50 MiB of replies) against a 4 MiB output limit:
# the server stops taking that client's commands (its heap grows by the limit and
# a reply, not by 50 MiB), serves others meanwhile, and every reply arrives
# whole once the client reads.
rm -f "$D/dump.usnap"
start --client-output-limit 4
head -c 262144 /dev/urandom > "$D/big"
cli -x set big < "$D/big" > /dev/null || fail "set big"
anon() { awk '/^RssAnon:/ { print $2 }' "/proc/$PID/status"; }
anon0=$(anon)
exec 3<>"/dev/tcp/127.0.0.1/$PORT"
for _ in $(seq 200); do printf 'GET big\r\n'; done >&3
sleep 1
anon1=$(anon)
expect PONG ping
pauses=$(cli info stats | tr -d '\r' | sed -n 's/^client_output_limit_pauses://p')
[ "$pauses" -ge 1 ] 2>/dev/null || fail "the client that does not read was not paused ($pauses)"
[ $((anon1 - anon0)) -lt 32768 ] ||
	fail "the server's heap grew by $(((anon1 - anon0) / 1024)) MiB for a client that does not read (limit 4 MiB)"
timeout 30 head -c $((200 * (262144 + 11))) <&3 > "$D/replies"
exec 3<&-
got=$(stat -c %s "$D/replies")
[ "$got" = $((200 * (262144 + 11))) ] || fail "the slow client got $got bytes of replies, expected $((200 * (262144 + 11)))"
tail -c 262146 "$D/replies" | head -c 262144 | cmp -s - "$D/big" || fail "the last reply to the slow client differs from the value"
rm -f "$D/replies"
stop
echo "output limit: ok (heap +$(((anon1 - anon0) / 1024)) MiB while 50 MiB of replies waited; paused $pauses time(s))"
echo PASS
