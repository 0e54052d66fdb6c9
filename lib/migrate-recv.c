/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Live migration, the receiver (docs/migration.md): the region table, the
 * frames of the rounds, the API (uffdsnap_migrate_recv, uffdsnap_incoming_*).
 * Post-copy's part is migrate-postcopy.c; the transport migrate.c.
 *
 * Every byte is the sender's and hostile. The receiver's thread runs its
 * libuv loop; the read callback delimits and checks frames
 * (usnap_mig_parse) and hands each to take_frame, which checks it against
 * the state (the round, post-copy or not) and applies it: no I/O of its own
 * but the memfds' and the userfaultfd's, and answers queued on the link.
 * The region table is read on that thread too: uffdsnap_migrate_recv()
 * waits for it (hello_done), so that a refusal is its return value.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bitmap.h"
#include "migrate-private.h"
#include "uffd.h"

void usnap_in_mark(struct uffdsnap_incoming *in, bool *flag)
{
	pthread_mutex_lock(&in->state_lock);
	*flag = true;
	pthread_cond_broadcast(&in->state_cond);
	pthread_mutex_unlock(&in->state_lock);
}

int usnap_in_send_status(struct uffdsnap_incoming *in, uint16_t type, uint32_t value, int status)
{
	struct usnap_mig_status st = { value, status };

	return usnap_mig_write(in->link, type, &st, sizeof(st), NULL, 0);
}

/* Parse the region table from hostile bytes and create the memfds. */
static int take_hello(struct uffdsnap_incoming *in, const uint8_t *p, uint32_t len)
{
	struct usnap_mig_hello h;
	size_t off = sizeof(h);
	uint64_t total = 0;

	if (len < sizeof(h))
		return usnap_in_fail(in, -EBADMSG, "region table of %u bytes is too short", len);
	memcpy(&h, p, sizeof(h));
	if (h.version != USNAP_MIG_VERSION)
		return usnap_in_fail(in, -EPROTONOSUPPORT, "the sender speaks protocol version %u; this library %u",
			       h.version, USNAP_MIG_VERSION);
	if (h.page_size != in->ps)
		return usnap_in_fail(in, -EBADMSG, "the sender's page size is %u; ours is %zu", h.page_size, in->ps);
	if (!h.nregions || h.nregions > USNAP_MAX_REGIONS || (h.flags & ~USNAP_MIG_HELLO_POSTCOPY))
		return usnap_in_fail(in, -EBADMSG, "region table: %u regions (1..%d), flags 0x%x", h.nregions,
			       USNAP_MAX_REGIONS, h.flags);
	if (h.flags & USNAP_MIG_HELLO_POSTCOPY) {
		uint64_t lack = 0;
		in->postcopy = true;
		in->uffd = usnap_uffd_new_missing(&lack);
		if (in->uffd < 0)
			return usnap_in_fail(in, in->uffd, "post-copy needs a userfaultfd with missing-page faults on shmem "
				       "and UFFDIO_POISON (Linux 6.6+): %s%s%s", strerror(-in->uffd),
				       lack & UFFD_FEATURE_MISSING_SHMEM ? "; no UFFD_FEATURE_MISSING_SHMEM" : "",
				       lack & UFFD_FEATURE_POISON ? "; no UFFD_FEATURE_POISON" : "");
	}
	if (!(in->regs = calloc(h.nregions, sizeof(*in->regs))))
		return usnap_in_fail(in, -ENOMEM, "the region table");
	for (unsigned i = 0; i < h.nregions; i++) {
		struct in_reg *r = &in->regs[in->nregs];
		uint64_t rl;
		uint32_t nl;
		if (len - off < 12)
			return usnap_in_fail(in, -EBADMSG, "region table: region %u is cut short", i);
		memcpy(&rl, p + off, 8), memcpy(&nl, p + off + 8, 4);
		off += 12;
		if (!nl || nl > USNAP_MAX_NAME || nl > len - off || memchr(p + off, 0, nl))
			return usnap_in_fail(in, -EBADMSG, "region table: region %u has a bad name (%u bytes)", i, nl);
		if (!rl || rl % in->ps || rl > (1ull << 47) || __builtin_add_overflow(total, rl, &total) ||
		    total > (1ull << 47))
			return usnap_in_fail(in, -EBADMSG, "region table: region %u has a bad length %" PRIu64, i, rl);
		for (unsigned j = 0; j < in->nregs; j++)
			if (strlen(in->regs[j].name) == nl && !memcmp(in->regs[j].name, p + off, nl))
				return usnap_in_fail(in, -EBADMSG, "region table: region %u repeats a name", i);
		if (!(r->name = strndup((const char *)p + off, nl)))
			return usnap_in_fail(in, -ENOMEM, "region names");
		off += nl;
		r->fd = -1;
		r->len = rl, r->npages = rl / in->ps;
		in->nregs++;
		/* memfd names are at most 249 bytes: the rest of a long name is cut */
		char mname[250];
		snprintf(mname, sizeof(mname), "uffdsnap-in:%s", r->name);
		r->fd = memfd_create(mname, MFD_CLOEXEC);
		if (r->fd < 0)
			return usnap_in_fail(in, -errno, "region '%s': memfd_create: %s", r->name, strerror(errno));
		if (ftruncate(r->fd, (off_t)rl))
			return usnap_in_fail(in, -errno, "region '%s': sizing its memfd to %" PRIu64 ": %s", r->name, rl,
				       strerror(errno));
		r->addr = mmap(NULL, rl, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
		if (r->addr == MAP_FAILED) {
			r->addr = NULL;
			return usnap_in_fail(in, -errno, "region '%s': mapping %" PRIu64 " bytes: %s", r->name, rl,
				       strerror(errno));
		}
		/* post-copy: every page is final until a DISCARD says otherwise
		 * (round 1 sends them all, holes as holes) */
		if (in->postcopy) {
			if (!(r->dropped = usnap_bits_map(r->npages)) || !(r->asked = usnap_bits_map(r->npages)))
				return usnap_in_fail(in, -ENOMEM, "region '%s': page bitmaps", r->name);
		}
	}
	if (off != len)
		return usnap_in_fail(in, -EBADMSG, "region table: %u bytes, %zu used", len, off);
	return 0;
}

/* Apply a PAGES or ZERO frame after checking it names pages that exist. */
static int take_pages(struct uffdsnap_incoming *in, const struct usnap_mig_hdr *h, const uint8_t *payload)
{
	struct usnap_mig_pages p;
	uint64_t end;

	if (h->len < sizeof(p))
		return usnap_in_fail(in, -EBADMSG, "page frame of %u bytes", h->len);
	memcpy(&p, payload, sizeof(p));
	if (p.region >= in->nregs || !p.npages || p.npages > USNAP_MIG_BATCH ||
	    __builtin_add_overflow(p.first, (uint64_t)p.npages, &end) || end > in->regs[p.region].npages)
		return usnap_in_fail(in, -EBADMSG, "page frame: region %u pages %" PRIu64 "+%u are not in the migration",
			       p.region, p.first, p.npages);
	const struct in_reg *r = &in->regs[p.region];
	off_t off = (off_t)(p.first * in->ps);
	size_t len = (size_t)p.npages * in->ps;
	const uint8_t *data = payload + sizeof(p);
	if (h->type == USNAP_MIG_PAGES_Z) {
		/* decompressed into a buffer of exactly the pages' size: a frame
		 * that decompresses to more, or less, is refused */
		if (!in->zd && (!(in->zd = ZSTD_createDCtx()) || !(in->zout = malloc(USNAP_MIG_BATCH * in->ps))))
			return usnap_in_fail(in, -ENOMEM, "decompression buffers");
		size_t z = ZSTD_decompressDCtx(in->zd, in->zout, len, data, h->len - sizeof(p));
		if (ZSTD_isError(z) || z != len)
			return usnap_in_fail(in, -EBADMSG, "compressed page frame: %s",
				       ZSTD_isError(z) ? ZSTD_getErrorName(z) : "not the announced pages");
		data = in->zout;
	}
	if (h->type == USNAP_MIG_ZERO && h->len != sizeof(p))
		return usnap_in_fail(in, -EBADMSG, "zero frame of %u bytes", h->len);
	if (h->type == USNAP_MIG_PAGES && h->len != sizeof(p) + len)
		return usnap_in_fail(in, -EBADMSG, "page frame of %u bytes for %u pages", h->len, p.npages);
	if (in->running) {
		int e = usnap_in_place(in, p.region, p.first, p.npages, h->type == USNAP_MIG_ZERO ? NULL : data);
		if (e)
			return e;
	} else if (h->type == USNAP_MIG_ZERO) {
		/* the pages read as zero again and cost no memory */
		if (fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)len))
			return usnap_in_fail(in, -errno, "region '%s': punching pages: %s", r->name, strerror(errno));
	} else {
		for (size_t done = 0; done < len;) {
			ssize_t k = pwrite(r->fd, data + done, len - done, off + (off_t)done);
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				return usnap_in_fail(in, k < 0 ? -errno : -EIO, "region '%s': writing pages: %s", r->name,
					       k < 0 ? strerror(errno) : "short write");
			done += (size_t)k;
		}
	}
	in->count += p.npages;
	return 0;
}

/* The first frame: the region table, answered (HELLO_OK, or the reason of a
 * refusal to a sender that speaks the protocol); recv may return then. */
static int take_first(struct uffdsnap_incoming *in, const struct usnap_mig_hdr *h, const uint8_t *p)
{
	int r;

	if (h->type != USNAP_MIG_HELLO || h->len > USNAP_MIG_MAX_FRAME)
		r = usnap_in_fail(in, -EBADMSG, "expected the region table, got a frame of type %u (%u bytes)", h->type,
				  h->len);
	else
		r = take_hello(in, p, h->len);
	if (r != -EBADMSG)
		usnap_in_send_status(in, USNAP_MIG_HELLO_OK, USNAP_MIG_VERSION, r);
	in->hello_seen = !r;
	usnap_in_mark(in, &in->hello_done);
	return r;
}

/* A ROUND_END: checked against what came, acknowledged. */
static int take_round_end(struct uffdsnap_incoming *in, const struct usnap_mig_hdr *h, const uint8_t *p)
{
	struct usnap_mig_round re;
	int r;

	if (h->len != sizeof(re))
		return usnap_in_fail(in, -EBADMSG, "round end frame of %u bytes", h->len);
	memcpy(&re, p, sizeof(re));
	/* post-copy: round 1, rounds of drops only, then after the switchover
	 * the end of the push, once every dropped page arrived */
	if (re.round != in->expect || re.pages != in->count || re.final > 1 ||
	    (in->postcopy && re.round > 1 && (in->running ? !re.final || in->missing : re.final)))
		return usnap_in_fail(in, -EBADMSG, "round end: round %u (final %u) with %" PRIu64 " pages; expected "
				     "round %u with %" PRIu64 " (%" PRIu64 " pages missing)", re.round, re.final,
				     re.pages, in->expect, in->count, in->missing);
	if ((r = usnap_in_send_status(in, USNAP_MIG_ACK, re.round, 0)))
		return r;
	if (re.final) {
		/* the end: what may follow is not read (the sender may hang up) */
		in->final_seen = true;
		usnap_mig_stop_reading(in->link);
		return 0;
	}
	if (in->expect++ == UFFDSNAP_MIGRATE_MAX_ROUNDS)
		return usnap_in_fail(in, -EBADMSG, "more than %d rounds", UFFDSNAP_MIGRATE_MAX_ROUNDS);
	in->count = 0;
	return 0;
}

/* The link's on_frame: a whole frame of the sender's, its checksum right. */
static int take_frame(void *owner, const struct usnap_mig_hdr *h, const uint8_t *p)
{
	struct uffdsnap_incoming *in = owner;

	if (!in->hello_seen)
		return take_first(in, h, p);
	/* post-copy: the faults that came while this frame was read go first */
	if (in->running)
		usnap_in_faults(in);
	switch (h->type) {
	case USNAP_MIG_PAGES:
	case USNAP_MIG_PAGES_Z:
	case USNAP_MIG_ZERO:
		/* post-copy sends pages in round 1 and after the switchover only */
		if (in->postcopy && !in->running && in->expect > 1)
			return usnap_in_fail(in, -EBADMSG, "page frame in post-copy round %u, before the switchover",
					     in->expect);
		return take_pages(in, h, p);
	case USNAP_MIG_ROUND_END:
		return take_round_end(in, h, p);
	case USNAP_MIG_DISCARD:
	case USNAP_MIG_POSTCOPY:
		if (!in->postcopy || in->running || in->expect < 2)
			break;
		in->count = 0;
		if (h->type == USNAP_MIG_DISCARD)
			return usnap_in_take_discard(in, h, p);
		return usnap_in_start_postcopy(in, h, p);
	default:
		break;
	}
	return usnap_in_fail(in, -EBADMSG, "unexpected frame of type %u in round %u", h->type, in->expect);
}

/*
 * The receiver's thread: its loop until the final round's ACK is in the
 * kernel's socket buffer, or a failure. Library threads block every signal:
 * a write to a connection the sender closed gets EPIPE, and the SIGPIPE it
 * raises stays pending on this thread and is dropped with it.
 */
static void *receiver_main(void *arg)
{
	struct uffdsnap_incoming *in = arg;
	int r = 0;

	while (!r && !in->final_seen)
		r = usnap_mig_turn(in->link, true);
	if (!r)
		r = usnap_mig_flush(in->link);
	if (in->running)
		usnap_in_postcopy_end(in, r != 0);
	usnap_mig_link_close(in->link);
	in->result = usnap_mig_result(&in->latch, r);
	usnap_in_mark(in, &in->hello_done);
	if (!in->result)
		usnap_in_mark(in, &in->ready);
	usnap_in_mark(in, &in->finished);
	return NULL;
}

static void incoming_release(struct uffdsnap_incoming *in)
{
	for (unsigned i = 0; i < in->nregs; i++) {
		if (in->regs[i].addr)
			munmap(in->regs[i].addr, in->regs[i].len);
		if (in->regs[i].fd >= 0)
			close(in->regs[i].fd);
		free(in->regs[i].name);
		usnap_bits_unmap((void *)in->regs[i].dropped, in->regs[i].npages);
		usnap_bits_unmap(in->regs[i].asked, in->regs[i].npages);
	}
	free(in->regs);
	if (in->uffd >= 0)
		close(in->uffd);
	pthread_mutex_destroy(&in->state_lock);
	pthread_cond_destroy(&in->state_cond);
	ZSTD_freeDCtx(in->zd);
	free(in->zout);
	usnap_mig_link_free(in->link);
	pthread_mutex_destroy(&in->join_lock);
	free(in);
}

USNAP_EXPORT int uffdsnap_migrate_recv(int sock, const uffdsnap_migrate_opts_t *opts, uffdsnap_incoming_t **inp)
{
	struct uffdsnap_incoming *in;
	uffdsnap_migrate_opts_t o;
	bool hello_ok;
	int r;

	usnap_clear_err();
	if (inp)
		*inp = NULL;
	if (!inp || sock < 0)
		return usnap_err(-EINVAL, "uffdsnap_migrate_recv: in must not be NULL, sock must be open");
	if ((r = usnap_mig_opts_take(&o, opts)))
		return r;
	if (!(in = calloc(1, sizeof(*in))))
		return usnap_err(-ENOMEM, "allocating the receiver");
	pthread_mutex_init(&in->join_lock, NULL);
	pthread_mutex_init(&in->state_lock, NULL);
	pthread_cond_init(&in->state_cond, NULL);
	in->uffd = -1;
	in->expect = 1;
	in->ps = (size_t)sysconf(_SC_PAGESIZE);
	in->cap = sizeof(struct usnap_mig_pages) + USNAP_MIG_BATCH * in->ps;
	if (in->cap < USNAP_MIG_MAX_FRAME)
		in->cap = USNAP_MIG_MAX_FRAME;
	r = usnap_mig_link_open(&in->link, sock, in->cap, &in->latch, "the sender", take_frame, in, &in->wire);
	if (!r) {
		r = usnap_thread_start(&in->thread, receiver_main, in, "usnap-mig-recv");
		if (r)
			r = usnap_err(r, "starting the receiver thread: %s", strerror(-r));
	}
	if (r) {
		incoming_release(in);
		return r;
	}
	/* the region table is read, checked and answered on the thread */
	pthread_mutex_lock(&in->state_lock);
	while (!in->hello_done)
		pthread_cond_wait(&in->state_cond, &in->state_lock);
	hello_ok = in->hello_seen;
	pthread_mutex_unlock(&in->state_lock);
	if (!hello_ok) {
		pthread_join(in->thread, NULL);
		r = usnap_err(in->result, "%s", usnap_latch_msg(&in->latch));
		incoming_release(in);
		return r;
	}
	*inp = in;
	return 0;
}

USNAP_EXPORT int uffdsnap_incoming_wait(uffdsnap_incoming_t *in)
{
	bool failed;

	if (!in)
		return usnap_err(-EINVAL, "in is NULL");
	pthread_mutex_lock(&in->state_lock);
	while (!in->ready && !in->finished)
		pthread_cond_wait(&in->state_cond, &in->state_lock);
	failed = in->finished && in->result;
	pthread_mutex_unlock(&in->state_lock);
	return failed ? usnap_err(in->result, "incoming migration: %s", usnap_latch_msg(&in->latch)) : 0;
}

USNAP_EXPORT int uffdsnap_incoming_complete(uffdsnap_incoming_t *in)
{
	if (!in)
		return usnap_err(-EINVAL, "in is NULL");
	usnap_mig_join_once(&in->join_lock, &in->joined, in->thread);
	return in->result ? usnap_err(in->result, "incoming migration: %s", usnap_latch_msg(&in->latch)) : 0;
}

USNAP_EXPORT int uffdsnap_incoming_count(const uffdsnap_incoming_t *in)
{
	return in ? (int)in->nregs : usnap_err(-EINVAL, "in is NULL");
}

USNAP_EXPORT int uffdsnap_incoming_region(const uffdsnap_incoming_t *in, unsigned id, uffdsnap_incoming_region_t *out)
{
	uffdsnap_incoming_region_t r = { .size = sizeof(r) };

	if (!in || !out)
		return usnap_err(-EINVAL, "uffdsnap_incoming_region: in and out must not be NULL");
	if (usnap_check_size("uffdsnap_incoming_region", "uffdsnap_incoming_region_t", out->size,
			     USNAP_SIZE_UPTO(uffdsnap_incoming_region_t, addr), sizeof(r)))
		return -EINVAL;
	if (id >= in->nregs)
		return usnap_err(-ENOENT, "no region %u (%u regions)", id, in->nregs);
	r.name = in->regs[id].name;
	r.len = in->regs[id].len;
	r.fd = in->regs[id].fd;
	r.addr = in->regs[id].addr;
	r.size = out->size;
	memcpy(out, &r, out->size);
	return 0;
}

USNAP_EXPORT void uffdsnap_incoming_free(uffdsnap_incoming_t *in)
{
	if (!in)
		return;
	usnap_mig_link_cancel(in->link);
	uffdsnap_incoming_complete(in);
	incoming_release(in);
}
