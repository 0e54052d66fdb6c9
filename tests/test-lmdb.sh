#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# examples/lmdb-snapshot on a real LMDB environment (MDB_WRITEMAP on /dev/shm),
# checked with the real mdb_stat, mdb_dump and mdb_copy (Debian lmdb-utils):
#   1. a snapshot taken while a writer commits (write faults counted) is the
#      database of one committed transaction exactly: the example's own check
#      (every key and value against the replayed log), and `uffdsnap extract`
#      of it opens with mdb_stat and dumps with mdb_dump byte for byte like the
#      same transaction replayed into a fresh environment (and unlike the one
#      before it, so the comparison can fail);
#   2. mdb_copy and mdb_copy -c of the same live database are checked the
#      same way;
#   3. LMDB growing its map during a snapshot fails it with -EBUSY, a context
#      made before the growth refuses to begin, a new one snapshots exactly.
# Usage: test-lmdb.sh BUILD/examples/lmdb-snapshot
set -u
LS=${1:?usage: test-lmdb.sh path/to/lmdb-snapshot}
BUILD=$(dirname "$(dirname "$LS")")
TOOL=$BUILD/util/uffdsnap

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (userfaultfd for kernel-mode faults)"
[ -x "$LS" ] || skip "$LS was not built: liblmdb-dev was missing when meson configured the build"
for t in mdb_stat mdb_dump mdb_copy; do
	command -v $t >/dev/null || skip "$t missing (apt-get install lmdb-utils)"
done
[ "$(stat -f -c %T /dev/shm)" = tmpfs ] || skip "/dev/shm is not tmpfs"

# A smaller database under a sanitizer (several times slower per transaction)
MIB=8
ldd "$LS" | grep -qE 'lib[at]san' && MIB=3

D=$(mktemp -d /dev/shm/lmdb-test.XXXXXX)
trap 'rm -rf "$D"' EXIT
fail() { echo "FAIL: $*"; echo "--- output:"; cat "$D/out" 2>/dev/null; exit 1; }

# 1-3 in one run of the example (it exits non-zero on any mismatch)
timeout 120 "$LS" --dir "$D/env" --mib $MIB --out "$D/snap.usnap" --extract "$D/snap" \
	--copy all --seconds 0 --grow-test > "$D/out" 2>&1 || fail "lmdb-snapshot exited with $?"
grep -q '^grow-test: map grown to .* during a snapshot: busy' "$D/out" ||
	fail "a snapshot during a map growth did not fail with -EBUSY"
grep -q "^  detail: region 'lmdb': its pages were mapped at .* during the snapshot" "$D/out" ||
	fail "the -EBUSY of a growth does not say why"
grep -q '^grow-test: begin on the context made before the growth: the address range is not' "$D/out" ||
	fail "begin on a context made before the growth did not fail with -EFAULT"
for m in "mdb_copy" "mdb_copy -c"; do
	grep -q "^$m: transaction [0-9]" "$D/out" || fail "$m's output was not verified"
done
N=$(sed -n 's/^snapshot: transaction \([0-9]*\) .*/\1/p' "$D/out")
[ -n "$N" ] || fail "the snapshot was not verified"
FAULTS=$(grep '^snapshot: [0-9.]* s' "$D/out" | tail -1 | sed -n 's/.*), \([0-9]*\) write faults.*/\1/p')
[ -n "$FAULTS" ] && [ "$FAULTS" -gt 0 ] || fail "the verified snapshot took no write fault: it did not overlap the writer"
KEYS=$(sed -n "s|^verified: $D/snap is the database of transaction $N exactly (\([0-9]*\) keys)|\1|p" "$D/out")
echo "snapshot: transaction $N, $KEYS keys, $FAULTS write faults"

# the real tools on the snapshot, extracted by the uffdsnap tool
"$TOOL" verify -q "$D/snap.usnap" || fail "uffdsnap verify"
mkdir -p "$D/x" && "$TOOL" extract -q "$D/snap.usnap" lmdb "$D/x/data.mdb" || fail "uffdsnap extract"
cmp -s "$D/x/data.mdb" "$D/snap/data.mdb" || fail "uffdsnap extract differs from the reader's extraction"
ENTRIES=$(mdb_stat "$D/x" | sed -n 's/^  Entries: \([0-9]*\)$/\1/p' | head -1)
[ "$ENTRIES" = $((KEYS + 2)) ] || fail "mdb_stat says $ENTRIES entries, expected $KEYS keys + ~params + ~txn"

# mdb_dump of the snapshot = mdb_dump of transaction N replayed (the map size
# differs: the snapshot's map was grown)
mdb_dump "$D/x" | grep -v '^mapsize=' > "$D/dump.snap" || fail "mdb_dump of the snapshot"
"$LS" --replay "$N" --dir "$D/ref" --mib $MIB > /dev/null || fail "replay of $N transactions"
mdb_dump "$D/ref" | grep -v '^mapsize=' > "$D/dump.ref" || fail "mdb_dump of the replay"
cmp -s "$D/dump.snap" "$D/dump.ref" || fail "mdb_dump of the snapshot differs from transaction $N's"
"$LS" --replay $((N - 1)) --dir "$D/ref" --mib $MIB > /dev/null || fail "replay of $((N - 1)) transactions"
# (without the "~txn" record, which alone would tell them apart)
no_txn() { sed '/^ 7e74786e$/{N;d}' "$1"; }
mdb_dump "$D/ref" | grep -v '^mapsize=' > "$D/dump.ref"
cmp -s <(no_txn "$D/dump.snap") <(no_txn "$D/dump.ref") &&
	fail "the dump comparison cannot tell transaction $N from $((N - 1))"
[ "$(no_txn "$D/dump.snap" | wc -l)" -lt "$(wc -l < "$D/dump.snap")" ] || fail "no ~txn record in the dump"
echo "mdb_stat: $ENTRIES entries; mdb_dump: transaction $N's database exactly ($(wc -c < "$D/dump.snap") bytes)"
echo "PASS"
