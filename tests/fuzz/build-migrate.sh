#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The libFuzzer target for the migration receiver (fuzz-migrate.c):
#   tests/fuzz/build-migrate.sh [OUTDIR] [run SECS | merge]   (see build-lib-target.sh)
exec "$(dirname "$0")/build-lib-target.sh" migrate "$@"
