#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Soak: back-to-back snapshots under mixed load for a given time (default 10
# minutes), every snapshot checked byte for byte (static data) and for one
# instant (sequence writers, one of them writing through read(2)), while RSS,
# open fds and threads must stay flat. Outside CI: it takes minutes.
#   tests/soak/soak.sh [SECONDS] [BUILD_DIR]      (root: userfaultfd)
# USNAP_SOAK_SIZE=MiB sets the main region's size (default 256); USNAP_SOAK_KEEP_GOING=1
# counts failed snapshots and goes on (exit 1 at the end) instead of stopping.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-600}
build=${2:-build}
(meson setup --reconfigure "$build" >/dev/null 2>&1 || meson setup "$build") >/dev/null
ninja -C "$build" tests/usnap-soak >/dev/null
exec "$build/tests/usnap-soak" --seconds "$secs" ${USNAP_SOAK_SIZE:+--size "$USNAP_SOAK_SIZE"} ${USNAP_SOAK_KEEP_GOING:+--keep-going}
