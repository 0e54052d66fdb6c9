#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The exported set of each installed library equals what its public headers
# declare (architecture issue 19): every function a header declares is
# exported, with a version from lib/libuffdsnap.map, and nothing else is.
# Usage: test-symbols.sh LIB.so HEADER...
set -euo pipefail
lib=$1
shift
exported=$(nm -D --defined-only "$lib" | awk '$2 == "T" { print $3 }' | sort)
unversioned=$(grep -v '@@LIBUFFDSNAP_' <<<"$exported" || true)
if [ -n "$unversioned" ]; then
	echo "exported without a version node (lib/libuffdsnap.map):"; echo "$unversioned"; exit 1
fi
declared=$(grep -hE '^[A-Za-z_][A-Za-z0-9_ ]*[ *]uffdsnap_[a-z0-9_]+\(' "$@" | grep -vE '^(typedef|#)' |
	grep -oE 'uffdsnap_[a-z0-9_]+\(' | tr -d '(' | sort -u)
names=$(sed 's/@@.*//' <<<"$exported")
if [ "$names" != "$declared" ]; then
	echo "exported (<) and declared (>) differ:"
	diff <(echo "$names") <(echo "$declared") || true
	exit 1
fi
echo "$(wc -l <<<"$names") functions: exported = declared, each with a version"
