/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target for the migration receiver (lib/migrate-recv.c, its frames
 * delimited by usnap_mig_parse in lib/migrate.c): the input is what
 * a sender sends. It is written into a socketpair (by a thread, then the
 * write side is shut) while uffdsnap_migrate_recv() and
 * uffdsnap_incoming_complete() read it, twice: as it is, and with the CRC of
 * every frame it can delimit recomputed ("repaired"), which takes the
 * fuzzer past the checksums to the checks behind them (region table,
 * page ranges, round ends). A finding is a crash, a sanitizer report, a
 * hang, or a receiver that reports success on a stream with no final round.
 * Built with clang -fsanitize=fuzzer (tests/fuzz/build-migrate.sh) and with
 * corpus-main.c as the `fuzz-migrate-corpus` test over tests/fuzz/corpus-migrate/.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "uffdsnap.h"
#include "migrate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct feed {
	int fd;
	const uint8_t *p;
	size_t n;
};

static void *feeder(void *arg)
{
	struct feed *f = arg;

	while (f->n) {
		ssize_t k = send(f->fd, f->p, f->n, MSG_NOSIGNAL);
		if (k <= 0)
			break; /* the receiver gave up and closed */
		f->p += k, f->n -= (size_t)k;
	}
	shutdown(f->fd, SHUT_WR);
	return NULL;
}

/* A final ROUND_END frame is somewhere in the input (else success is a lie). */
static int has_final(const uint8_t *p, size_t n)
{
	for (size_t off = 0; off + sizeof(struct usnap_mig_hdr) <= n;) {
		struct usnap_mig_hdr h;
		memcpy(&h, p + off, sizeof(h));
		if (h.len > n - off - sizeof(h))
			return 0;
		if (h.type == USNAP_MIG_ROUND_END && h.len == sizeof(struct usnap_mig_round)) {
			struct usnap_mig_round r;
			memcpy(&r, p + off + sizeof(h), sizeof(r));
			if (r.final == 1)
				return 1;
		}
		off += sizeof(h) + h.len;
	}
	return 0;
}

static void run(const uint8_t *data, size_t size)
{
	uffdsnap_incoming_t *in;
	struct feed f = { .p = data, .n = size };
	pthread_t t;
	int sv[2], r;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		abort();
	f.fd = sv[0];
	if (pthread_create(&t, NULL, feeder, &f))
		abort();
	r = uffdsnap_migrate_recv(sv[1], NULL, &in);
	if (!r) {
		/* complete, not wait: a post-copy stream is usable (wait) before
		 * it is whole */
		r = uffdsnap_incoming_complete(in);
		if (!r && !has_final(data, size)) {
			fprintf(stderr, "the receiver accepted a stream without a final round\n");
			abort();
		}
		uffdsnap_incoming_free(in);
	}
	close(sv[1]);
	pthread_join(t, NULL);
	close(sv[0]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *fixed;

	run(data, size);
	if (!(fixed = malloc(size ? size : 1)))
		return 0;
	memcpy(fixed, data, size);
	for (size_t off = 0; off + sizeof(struct usnap_mig_hdr) <= size;) {
		struct usnap_mig_hdr h;
		memcpy(&h, fixed + off, sizeof(h));
		if (h.len > size - off - sizeof(h))
			break;
		h.crc = usnap_mig_crc(&h, fixed + off + sizeof(h), h.len);
		memcpy(fixed + off, &h, sizeof(h));
		off += sizeof(h) + h.len;
	}
	run(fixed, size);
	free(fixed);
	return 0;
}
