#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The uffdsnap tool as a user meets it (issue 18), run by meson as test 'cli':
#   tests/test-cli.sh UFFDSNAP LIVE_SNAPSHOT TEST_CHAIN
# - outputs never destroy a file: extract / restore / live-snapshot --out
#   refuse a device node (made here with mknod), FIFO, directory and symlink,
#   and an existing file survives a corrupt or incomplete snapshot;
# - serve refuses a socket another server listens on, replaces a stale one,
#   and refuses an incomplete snapshot;
# - every command takes --help (exit 0, its own usage only); a wrong argument
#   count prints that command's usage; exit codes 0/1/2 (diff: 3 different);
# - messages: "not a snapshot" for empty input, errno once, the bad file
#   named, streams handled or refused plainly, no API names;
# - clean lists and removes temporaries of dead writers;
# - deltas (forged by TEST_CHAIN --forge): info shows ids, parent and depth;
#   a delta alone verifies but is not read; --parent reads its chain in
#   verify, extract, restore and diff; merge writes the chain as one full
#   snapshot later deltas apply to, and refuses to overwrite an input.
# Needs root (userfaultfd for kernel-mode faults, mknod): else exits 77.
set -u

tool=$(realpath "$1")
live=$(realpath "$2")
chainbin=$(realpath "$3")
if [ "$(id -u)" != 0 ]; then
	echo "SKIP: needs root: snapshots need userfaultfd for kernel faults, the device cases mknod"
	exit 77
fi
dir=$(mktemp -d /var/tmp/usnap-cli.XXXXXX) || exit 1
server=
cleanup() {
	[ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir" || exit 1

failed=0
log=$dir/messages.log   # every message but --help texts: checked for API names at the end

# expect RC PATTERN CMD...: CMD exits RC and its output (stdout+stderr) matches PATTERN (grep -E; "" = any)
expect() {
	local want=$1 pat=$2 rc
	shift 2
	out=$(timeout 20 "$@" 2>&1)
	rc=$?
	# the demo names API functions, as a program using the library may
	if [ "$1" = "$live" ]; then printf '%s\n' "$out" >>"$dir/live.log"; else printf '%s\n' "$out" >>"$log"; fi
	if [ "$rc" != "$want" ] || { [ -n "$pat" ] && ! grep -qE -- "$pat" <<<"$out"; }; then
		echo "FAIL: $* -> exit $rc (want $want), output:"
		printf '%s\n' "$out" | sed 's/^/    /'
		[ -n "$pat" ] && echo "    (wanted /$pat/)"
		failed=1
	else
		local first=${out%%$'\n'*}
		echo "ok: $* -> $rc: ${first:0:110}"
	fi
}

# assert DESCRIPTION TEST...: a shell condition that must hold
assert() {
	local what=$1
	shift
	if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; failed=1; fi
}

keep_ok() { [ "$(cat keep 2>/dev/null)" = precious ]; }
no_temps() { ! ls -a | grep -q '\.tmp\.'; }

# ---- snapshots to work with ---------------------------------------------------
"$live" --size 2 --writers 1 --seconds 0 --out "$dir/a.snap" >live.log 2>&1 || { cat live.log; exit 1; }
size=$(stat -c %s a.snap)
head -c $((size / 2)) a.snap >cut.snap
cp a.snap flip.snap
printf '\125' | dd of=flip.snap bs=1 seek=$((size / 2)) conv=notrunc status=none
: >empty
echo precious >keep

# ---- help and usage -------------------------------------------------------------
cmds="info verify extract restore diff cat serve merge clean"
for c in $cmds; do
	for h in --help -h; do
		out=$("$tool" "$c" "$h" 2>&1)
		rc=$?
		ok=1
		[[ $rc = 0 && $out == "Usage: uffdsnap $c "* ]] || ok=0
		for o in $cmds; do [[ $o != "$c" && $out == *"uffdsnap $o "* ]] && ok=0; done
		assert "$c $h: exit 0, its own usage only" test $ok = 1
	done
done
out=$("$tool" --help)
n=0
for c in $cmds; do [[ $out == *$'\n'"  $c "* ]] && n=$((n + 1)); done
assert "--help lists every command" test $n = 9
expect 2 '^Usage: uffdsnap info ' "$tool" info
expect 2 "unexpected argument 'b'" "$tool" info a.snap b
expect 2 '^Usage: uffdsnap extract ' "$tool" extract a.snap demo
expect 2 "unknown option '--frob'" "$tool" cat --frob a.snap demo 0 1
expect 2 '--region REGION is required' "$tool" restore a.snap --to x
expect 2 'needs a value' "$tool" restore a.snap --region
expect 2 'argument 3 is empty' "$tool" extract a.snap demo ""
expect 2 "option '--to' has an empty value" "$tool" restore a.snap --region demo --to ""
expect 2 "unknown command 'frob'" "$tool" frob
expect 2 'no command' "$tool"
out=$("$tool" info 2>&1)
assert "a wrong argument count prints only that command's usage" \
	test "$(grep -c '^Usage: ' <<<"$out")" = 1 -a "$(grep -c '^ *uffdsnap [a-z]* ' <<<"$out")" = 0

# ---- inputs and exit codes -------------------------------------------------------
expect 0 'state: +complete \(not verified' "$tool" info a.snap
expect 0 'complete \(not verified' "$tool" info flip.snap
expect 1 '^CORRUPT' "$tool" verify flip.snap
expect 1 'state: +INCOMPLETE' "$tool" info cut.snap
expect 1 'empty: not a snapshot: it is empty' "$tool" info empty
expect 1 '/dev/null: not a snapshot' "$tool" info /dev/null
expect 1 'not a snapshot' "$tool" verify - </dev/null
expect 1 '^uffdsnap info: nosuch: No such file or directory$' "$tool" info nosuch
expect 1 'is a directory' "$tool" verify "$dir"
expect 0 '^OK' "$tool" verify a.snap
expect 2 "LEN '1X' is not a number" "$tool" cat a.snap demo 0 1X
expect 2 "OFFSET 0 \+ LEN 1G goes past the end of region 'demo'" "$tool" cat a.snap demo 0 1G
expect 2 "OFFSET 2M \+ LEN 1 goes past the end" "$tool" cat a.snap demo 2M 1
expect 0 '^1024$' sh -c "'$tool' cat a.snap demo 0x1000 1K | wc -c"
expect 1 "no region 'nope'" "$tool" cat a.snap nope 0 1
expect 0 'identical' "$tool" diff a.snap a.snap
expect 1 '^uffdsnap diff: flip.snap: the snapshot file is corrupt' "$tool" diff a.snap flip.snap
expect 1 '^uffdsnap diff: flip.snap: the snapshot file is corrupt' "$tool" diff flip.snap a.snap
expect 1 'cut.snap: the snapshot is incomplete' "$tool" diff a.snap cut.snap
expect 1 'nosuch: No such file' "$tool" diff a.snap nosuch
# streams: info and verify read them; the others say plainly that they cannot
expect 0 'complete, verified' sh -c "cat a.snap | '$tool' info -"
expect 0 '^OK' sh -c "cat a.snap | '$tool' verify -"
expect 1 'INCOMPLETE' sh -c "cat cut.snap | '$tool' info -"
expect 2 "standard input is a pipe: 'extract' needs a snapshot file it can seek in" \
	sh -c "cat a.snap | '$tool' extract - demo x"
expect 1 "is a pipe: 'cat' needs a snapshot file" bash -c "'$tool' cat <(cat a.snap) demo 0 1"
assert "no partial output from refused streams" test ! -e x
# no progress text unless stderr is a terminal
"$tool" verify a.snap 2>err.txt >/dev/null
assert "no progress on a non-terminal" test ! -s err.txt

# ---- outputs never destroy a file --------------------------------------------------
expect 1 'flip.snap: the snapshot file is corrupt' "$tool" extract flip.snap demo keep
assert "keep survives a corrupt snapshot" keep_ok
expect 1 'cut.snap: the snapshot is incomplete' "$tool" extract cut.snap demo keep
expect 1 'cut.snap: the snapshot is incomplete' "$tool" restore cut.snap --region demo --to keep
assert "keep survives an incomplete snapshot" keep_ok
ln -s keep link
expect 1 'link is a symbolic link' "$tool" extract a.snap demo link
expect 1 'link is a symbolic link' "$tool" restore a.snap --region demo --to link
assert "the link and its target survive" test -L link -a "$(cat keep)" = precious
mkdir sub
expect 1 'sub is a directory' "$tool" extract a.snap demo sub
expect 1 'sub is a directory' "$tool" restore a.snap --region demo --to sub
mkfifo fifo
expect 1 'fifo is a FIFO' "$tool" extract a.snap demo fifo
assert "the FIFO is still one" test -p fifo
mknod null c 1 3
expect 1 'null is a character device' "$tool" extract a.snap demo null
expect 1 'null is a character device' "$tool" restore a.snap --region demo --to null
expect 1 'null is a character device' "$live" --size 2 --writers 0 --seconds 0 --out "$dir/null"
assert "the device node is untouched" test -c null -a "$(stat -c %t:%T null)" = 1:3
expect 1 'sub is a directory' "$live" --size 2 --writers 0 --seconds 0 --out "$dir/sub"
assert "no 'unknown error' from the demo" test -z "$(grep -l 'unknown error' "$dir/live.log")"
assert "no temporary file left by any refused or failed output" no_temps
# and a good snapshot replaces the file, to a file or to standard output
expect 0 '' "$tool" extract a.snap demo keep
assert "extract wrote the region" test "$(stat -c %s keep)" = $((2 << 20))
"$tool" cat a.snap demo 0 2M >cat.bin
"$tool" extract a.snap demo - >stdout.bin
assert "extract to a file, to stdout and cat agree" cmp -s keep cat.bin
assert "extract to stdout" cmp -s keep stdout.bin
# cat goes by 1 MiB pieces: a range across a piece boundary, raw and as a hexdump
"$tool" cat a.snap demo 0xffff3 29 >mid.bin
assert "cat across a piece boundary" cmp -s mid.bin <(tail -c +$((0xffff3 + 1)) keep | head -c 29)
"$tool" cat -x a.snap demo 0 2M >hex.all
"$tool" cat -x a.snap demo 0xffff0 32 >hex.mid
assert "cat -x across a piece boundary" test "$(grep -E '^(000ffff0|00100000) ' hex.all)" = "$(head -2 hex.mid)"
assert "cat -x ends with the end offset once" test "$(grep -c '^00200000$' hex.all)" = 1 -a "$(tail -1 hex.mid)" = 00100010
expect 0 'restored r.bin' "$tool" restore a.snap --region 0 --to r.bin
assert "restore wrote the region" cmp -s keep r.bin

# ---- leftover temporaries --------------------------------------------------------
sh -c 'exit 0' &
dead=$!
wait $dead
: >"out.tmp.uffdsnap-$dead-abcdef"
: >"out.tmp.uffdsnap-$$-ghijkl"   # this shell is alive: in use
expect 0 "stale +out.tmp.uffdsnap-$dead-abcdef \(its writer, pid $dead, is gone\)" "$tool" clean -n out
expect 0 "in use +out.tmp.uffdsnap-$$-ghijkl" "$tool" clean -n out
assert "a dry run removes nothing" test -e "out.tmp.uffdsnap-$dead-abcdef"
expect 0 "removed +out.tmp.uffdsnap-$dead-abcdef" "$tool" clean out
assert "clean removed the stale one only" test ! -e "out.tmp.uffdsnap-$dead-abcdef" -a -e "out.tmp.uffdsnap-$$-ghijkl"
: >"out.tmp.uffdsnap-$dead-abcdef"
expect 0 '' "$tool" extract a.snap demo out
assert "the next output to the path removed the stale temporary" test ! -e "out.tmp.uffdsnap-$dead-abcdef"
rm -f "out.tmp.uffdsnap-$$-ghijkl"
expect 0 'no temporary files of out' "$tool" clean out
# a killed writer's temporary is a partial snapshot: info says so and fails
cp cut.snap "out.tmp.uffdsnap-$dead-zzzzzz"
expect 1 'state: +INCOMPLETE' "$tool" info "out.tmp.uffdsnap-$dead-zzzzzz"
expect 0 "removed +out.tmp.uffdsnap-$dead-zzzzzz" "$tool" -q clean out

# ---- serve: live sockets are not stolen ---------------------------------------------
expect 1 'cut.snap: the snapshot is incomplete' "$tool" serve cut.snap --socket s
assert "serve of an incomplete snapshot made no socket" test ! -e s
"$tool" serve a.snap --socket s >serve.log 2>&1 &
server=$!
for _ in $(seq 100); do grep -q serving serve.log && break; sleep 0.1; done
assert "the first server is serving" grep -q 'serving a.snap on s' serve.log
expect 1 's: another server is listening on it: it is not replaced' "$tool" serve a.snap --socket s
assert "the first server's socket is still there" test -S s
kill -KILL "$server"
wait "$server" 2>/dev/null
server=
assert "a killed server leaves a stale socket" test -S s
"$tool" serve a.snap --socket s --once >serve2.log 2>&1 &
server=$!
for _ in $(seq 100); do grep -q serving serve2.log && break; sleep 0.1; done
assert "a stale socket is replaced" grep -q 'serving a.snap on s' serve2.log
kill "$server"
wait "$server" 2>/dev/null
server=
: >plain
expect 1 'plain exists and is not a socket' "$tool" serve a.snap --socket plain

# ---- deltas and chains --------------------------------------------------------------
mkdir chain
"$chainbin" --forge "$dir/chain" >chain/forge.log 2>&1 || { cat chain/forge.log; exit 1; }
cd chain || exit 1
p="--parent full0.snap --parent delta1.snap --parent delta2.snap"
expect 0 'id: +[0-9a-f]{32}' "$tool" info full0.snap
expect 0 'parent: +[0-9a-f]{32}' "$tool" info delta3.snap
expect 0 'depth: +3' "$tool" info delta3.snap
assert "a delta's parent is its parent's id" test \
	"$("$tool" info delta3.snap | sed -n 's/^parent: *//p')" = "$("$tool" info delta2.snap | sed -n 's/^id: *//p')"
expect 0 '^OK' "$tool" verify delta3.snap
expect 1 '^uffdsnap extract: delta3.snap: .*delta.*parent chain' "$tool" extract delta3.snap pool x.bin
expect 0 'chain of 4 files' "$tool" verify $p delta3.snap
expect 0 '' "$tool" extract full3.snap pool want.bin
expect 0 '' "$tool" extract $p delta3.snap pool got.bin
assert "extract --parent: the image at the delta's instant" cmp -s want.bin got.bin
rm -f got.bin
expect 0 '^restored' "$tool" restore $p delta3.snap --region pool --to got.bin
assert "restore --parent: the image at the delta's instant" cmp -s want.bin got.bin
expect 0 'identical' "$tool" diff $p delta3.snap full3.snap
expect 3 'pages differ' "$tool" diff --parent full0.snap --parent delta1.snap delta2.snap delta3.snap
expect 1 'delta2.snap is a delta of snapshot [0-9a-f]+, but the file before it, full0.snap.*missing' \
	"$tool" verify --parent full0.snap --parent delta2.snap delta3.snap
expect 0 '^merged 4 files into m.snap' "$tool" merge m.snap full0.snap delta1.snap delta2.snap delta3.snap
expect 0 '^OK' "$tool" verify m.snap
expect 0 'version 1$' "$tool" info m.snap
expect 0 'identical' "$tool" diff m.snap full3.snap
expect 0 'chain of 2 files' "$tool" verify --parent m.snap delta4.snap
expect 0 'identical' "$tool" diff --parent m.snap delta4.snap full4.snap
expect 1 'delta2.snap is a delta of snapshot' "$tool" serve --parent full0.snap --parent delta2.snap delta3.snap \
	--socket "$dir/chain.sock" --once
expect 2 'is the input delta2.snap' "$tool" merge delta2.snap full0.snap delta1.snap delta2.snap
expect 1 'delta2.snap.*out of order' "$tool" merge n.snap full0.snap delta2.snap delta1.snap
assert "no output from a refused merge" test ! -e n.snap
cd "$dir" || exit 1

# ---- messages --------------------------------------------------------------------
assert "no API names in any message" test -z "$(grep -E 'uffdsnap_[a-z]+' "$log")"
grep -nE 'uffdsnap_[a-z]+' "$log" | head -5

[ "$failed" = 0 ] && echo "test-cli: all passed" || echo "test-cli: FAILED"
exit "$failed"
