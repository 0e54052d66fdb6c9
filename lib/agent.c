/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libuffdsnap-agent.so: makes an unmodified program a participant
 * (participant.c). With UFFDSNAP_COORDINATOR=/path/to/socket in its
 * environment and the agent in LD_PRELOAD, the program joins the coordinator
 * with every MAP_SHARED mapping it has, or makes, of the coordinator's
 * regions' files:
 *
 *  - at start-up it asks the coordinator which files those are, and joins
 *    the mappings already in /proc/self/maps;
 *  - mmap() is interposed: a new mapping of such a file is joined before
 *    mmap returns, so the program never stores through it untracked (if a
 *    snapshot runs at that moment, the coordinator fails that snapshot: the
 *    mapping was not part of its instant);
 *  - munmap() leaves for the mappings it removed;
 *  - mremap() of a joined mapping leaves for the old range and joins the new
 *    one (and what stayed of the old one). Between the move and the join a
 *    store goes untracked only outside a snapshot: a snapshot that runs at
 *    that moment sees the unjoined mapping in its end-of-sweep check, or the
 *    join arriving mid-snapshot, and fails (-EBUSY), never passes wrongly.
 *
 * Interposing mmap rather than rescanning /proc/self/maps on a signal: a
 * rescan leaves a window between the mapping and the join in which stores
 * go untracked, and a signal can arrive at any point of the program. The real
 * calls are made with syscall(2): dlsym(RTLD_NEXT) may allocate, and
 * allocators call mmap. A join that fails (no permission to handle kernel-mode
 * faults, say) is reported on stderr once and the mapping is left alone:
 * the agent never turns the program's read(2) into EFAULT.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "maps.h"
#include "uffdsnap-private.h"

#define AGENT_MAX_JOINS 256

struct joined_map {
	uintptr_t start, end;
	uint64_t dev, ino, off;  /* the file, and the offset mapped at start */
	uffdsnap_participant_t *p;
};

static struct {
	pthread_mutex_t lock;
	const char *path;
	struct usnap_query_region regs[USNAP_QUERY_MAX];
	int nregs;
	struct joined_map joins[AGENT_MAX_JOINS];
	unsigned njoins;
	bool warned;
} agent = { .lock = PTHREAD_MUTEX_INITIALIZER };

static __thread bool inside; /* the join itself maps memory: no recursion */

/* Join [addr, addr + len), a MAP_SHARED mapping of (dev, ino) at file offset off, where it maps a region. */
static void join_mapping(uintptr_t addr, size_t len, uint64_t dev, uint64_t ino, uint64_t off)
{
	for (int i = 0; i < agent.nregs && agent.njoins < AGENT_MAX_JOINS; i++) {
		const struct usnap_query_region *r = &agent.regs[i];
		uint64_t lo = off > r->file_off ? off : r->file_off, hi = off + len;
		uffdsnap_join_region_t jr;
		uffdsnap_participant_t *p;

		if (r->dev != dev || r->ino != ino)
			continue;
		if (hi > r->file_off + r->len)
			hi = r->file_off + r->len;
		if (lo >= hi)
			continue;
		jr = (uffdsnap_join_region_t){ r->name, (void *)(addr + (lo - off)), hi - lo, lo - r->file_off };
		if (uffdsnap_join(&p, agent.path, &jr, 1)) {
			if (!agent.warned)
				fprintf(stderr, "libuffdsnap-agent: not joining %s: %s\n", agent.path, uffdsnap_last_error());
			agent.warned = true;
			continue;
		}
		agent.joins[agent.njoins++] = (struct joined_map){ addr + (lo - off), addr + (lo - off) + (hi - lo),
								   dev, ino, lo, p };
	}
}

__attribute__((constructor)) static void agent_start(void)
{
	struct usnap_maps mr;
	struct usnap_vma v;
	int n;

	agent.path = getenv("UFFDSNAP_COORDINATOR");
	if (!agent.path || !*agent.path)
		return;
	inside = true;
	n = usnap_query_regions(agent.path, agent.regs, USNAP_QUERY_MAX);
	if (n < 0)
		fprintf(stderr, "libuffdsnap-agent: cannot ask the coordinator at %s: %s\n", agent.path, strerror(-n));
	agent.nregs = n < 0 ? 0 : n;
	if (agent.nregs && !usnap_maps_open(&mr, 0)) {
		while (usnap_maps_next(&mr, &v))
			if (v.perms[3] == 's' && v.ino)
				join_mapping(v.start, v.end - v.start, v.dev, v.ino, v.off);
		usnap_maps_close(&mr);
	}
	inside = false;
}

__attribute__((visibility("default"))) void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	long r = syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	struct stat st;

	if (r == -1) /* errno set by syscall() */
		return MAP_FAILED;
	if (agent.nregs && !inside && (flags & MAP_SHARED) && fd >= 0 && !fstat(fd, &st)) {
		pthread_mutex_lock(&agent.lock);
		inside = true;
		join_mapping((uintptr_t)r, len, (uint64_t)st.st_dev, (uint64_t)st.st_ino, (uint64_t)off);
		inside = false;
		pthread_mutex_unlock(&agent.lock);
	}
	return (void *)r;
}

/* Programs built with _FILE_OFFSET_BITS=64 call mmap64: the same call on
 * 64-bit systems, interposed too (agent.c is built without that define). */
__attribute__((visibility("default"), alias("mmap"))) void *mmap64(void *addr, size_t len, int prot, int flags, int fd,
								    off64_t off);

/*
 * Leave every join that overlaps [a, a + len), which the program just
 * unmapped or moved, and join again what it left mapped of them. Returns
 * the file and offset that was mapped at `a` if a join held it (for mremap).
 * Under agent.lock, inside.
 */
static bool leave_range(uintptr_t a, size_t len, struct joined_map *at_a)
{
	struct joined_map rest[2 * 8];
	unsigned nrest = 0;
	bool found = false;

	for (unsigned i = 0; i < agent.njoins;) {
		struct joined_map j = agent.joins[i];

		if (!(j.start < a + len && a < j.end)) {
			i++;
			continue;
		}
		uffdsnap_leave(j.p);
		agent.joins[i] = agent.joins[--agent.njoins];
		if (j.start <= a && a < j.end) {
			*at_a = (struct joined_map){ a, 0, j.dev, j.ino, j.off + (a - j.start), NULL };
			found = true;
		}
		if (j.start < a && nrest < 16)
			rest[nrest++] = (struct joined_map){ j.start, a, j.dev, j.ino, j.off, NULL };
		if (a + len < j.end && nrest < 16)
			rest[nrest++] = (struct joined_map){ a + len, j.end, j.dev, j.ino, j.off + (a + len - j.start),
							     NULL };
	}
	for (unsigned i = 0; i < nrest; i++)
		join_mapping(rest[i].start, rest[i].end - rest[i].start, rest[i].dev, rest[i].ino, rest[i].off);
	return found;
}

__attribute__((visibility("default"))) int munmap(void *addr, size_t len)
{
	long r = syscall(SYS_munmap, addr, len);
	struct joined_map unused;

	if (r)
		return (int)r;
	if (agent.njoins && !inside) {
		pthread_mutex_lock(&agent.lock);
		inside = true;
		leave_range((uintptr_t)addr, len, &unused);
		inside = false;
		pthread_mutex_unlock(&agent.lock);
	}
	return 0;
}

__attribute__((visibility("default"))) void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *want = NULL;
	struct joined_map was;
	va_list ap;
	long r;

	if (flags & MREMAP_FIXED) {
		va_start(ap, flags);
		want = va_arg(ap, void *);
		va_end(ap);
	}
	r = syscall(SYS_mremap, old, old_len, new_len, flags, want);
	if (r == -1)
		return MAP_FAILED;
	if (agent.njoins && !inside) {
		pthread_mutex_lock(&agent.lock);
		inside = true;
		/* a move (or a shrink) leaves the old range; a grow in place keeps
		 * its start, and the join is made again over the new length */
		if (leave_range((uintptr_t)old, old_len, &was))
			join_mapping((uintptr_t)r, new_len, was.dev, was.ino, was.off);
		inside = false;
		pthread_mutex_unlock(&agent.lock);
	}
	return (void *)r;
}
