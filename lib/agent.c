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
 *  - munmap() leaves for the mappings it removed.
 *
 * Interposing mmap rather than rescanning /proc/self/maps on a signal: a
 * rescan leaves a window between the mapping and the join in which stores
 * go untracked, and a signal can arrive at any point of the program. The real
 * calls are made with syscall(2): dlsym(RTLD_NEXT) may allocate, and
 * allocators call mmap. mremap of a joined mapping is not followed (the
 * coordinator's end-of-snapshot check then fails the snapshot, never passes
 * it wrongly). A join that fails (no permission to handle kernel-mode
 * faults, say) is reported on stderr once and the mapping is left alone:
 * the agent never turns the program's read(2) into EFAULT.
 */
#include <errno.h>
#include <pthread.h>
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
		agent.joins[agent.njoins++] = (struct joined_map){ addr + (lo - off), addr + (lo - off) + (hi - lo), p };
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

__attribute__((visibility("default"))) int munmap(void *addr, size_t len)
{
	long r = syscall(SYS_munmap, addr, len);
	uintptr_t a = (uintptr_t)addr;

	if (r)
		return (int)r;
	if (agent.njoins && !inside) {
		pthread_mutex_lock(&agent.lock);
		inside = true;
		for (unsigned i = 0; i < agent.njoins;) {
			if (agent.joins[i].start < a + len && a < agent.joins[i].end) {
				uffdsnap_leave(agent.joins[i].p);
				agent.joins[i] = agent.joins[--agent.njoins];
			} else {
				i++;
			}
		}
		inside = false;
		pthread_mutex_unlock(&agent.lock);
	}
	return 0;
}
