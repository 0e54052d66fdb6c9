/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The participant protocol's wire (lib/participant.c; its fuzz target,
 * tests/fuzz/fuzz-participant.c, builds messages from it). SOCK_SEQPACKET,
 * one message each way, host byte order (both ends on one machine):
 *   participant -> coordinator: usnap_join_hdr, nmaps x usnap_join_map, and
 *                               its userfaultfd (SCM_RIGHTS, alone)
 *   coordinator -> participant: usnap_join_reply
 *   agent -> coordinator:       usnap_join_hdr with USNAP_QUERY_MAGIC, nmaps 0
 *   coordinator -> agent:       usnap_query_reply, n x usnap_query_region
 */
#ifndef USNAP_PARTICIPANT_H
#define USNAP_PARTICIPANT_H

#include <stdint.h>

#include "format.h"

#define USNAP_JOIN_MAGIC 0x4e4a5355u  /* "USJN" */
#define USNAP_QUERY_MAGIC 0x52515355u /* "USQR" */
#define USNAP_JOIN_VERSION 1
#define USNAP_JOIN_MAX_MAPS 64

struct usnap_join_hdr {
	uint32_t magic, version, nmaps, reserved;
};

struct usnap_join_map {
	char name[USNAP_MAX_NAME + 1];
	uint64_t addr, len, offset;
};

struct usnap_join_reply {
	int32_t err;   /* 0, or a -errno (a peer's value outside -4095..-1 is taken as -EPROTO) */
	char msg[256]; /* the reason, NUL-terminated */
};

struct usnap_query_reply {
	int32_t err;
	uint32_t n;
};

#endif
