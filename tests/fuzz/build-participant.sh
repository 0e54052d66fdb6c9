#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The libFuzzer target for the participant protocol, both ends (fuzz-participant.c;
# root: it needs real userfaultfds):
#   tests/fuzz/build-participant.sh [OUTDIR] [run SECS | merge]   (see build-lib-target.sh)
FUZZ_MAX_LEN=${FUZZ_MAX_LEN:-8192} exec "$(dirname "$0")/build-lib-target.sh" participant "$@"
