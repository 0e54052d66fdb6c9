/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Resource limits at the edge (issue 16): with RLIMIT_NOFILE a few
 * descriptors above what the process holds, and with RLIMIT_AS a little
 * above its size, every step (uffdsnap_new, add_region, begin, wait) either
 * works or fails with a negative errno and a sentence; whatever happened, no
 * page is left protected and a writer of the region is never blocked. The
 * sweep must cross the edge: some attempts fail and some succeed.
 *
 * map_count_edge: the same with the process's mappings a few short of
 * vm.max_map_count (filled by the test itself: the sysctl is never changed).
 * memcg_edge: a child in a memory cgroup the test creates and removes, its
 * limit a little above what it uses (wider steps under a sanitizer, whose
 * shadow memory is charged too): there the kernel does not fail an
 * allocation but kills the process (OOM), so each attempt must succeed, fail
 * cleanly, or be killed by the OOM killer (counted by the cgroup), never hang,
 * and a survivor mapping the region writes every page at once afterwards.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define LEN (8 * MiB)

static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int top = 0;

	ck_assert(d);
	while ((e = readdir(d)))
		if (atoi(e->d_name) > top)
			top = atoi(e->d_name);
	closedir(d);
	return top;
}

struct outcome {
	int fail, ok;
};

/* One attempt under the current limits: a snapshot of m to dir/snap while
 * the program stores into every page (none may hang). Returns its result;
 * check() looks at it once the limits are lifted again. */
static volatile int *stage; /* where an attempt got to (memcg_edge: seen by the parent after a kill) */

static int attempt(struct usnap_mem *m, const char *dir, char *why, size_t cap, const uffdsnap_opts_t *o)
{
	char path[PATH_MAX + 16];
	uffdsnap_t *ctx = NULL;
	uffdsnap_snap_t *s = NULL;
	int r;

	snprintf(path, sizeof(path), "%s/snap", dir);
	r = uffdsnap_new(&ctx, o);
	if (!r)
		r = uffdsnap_add_region(ctx, "r", m->addr, LEN) < 0 ? -1 : 0;
	if (!r && stage)
		*stage = 1;
	if (!r)
		r = uffdsnap_begin_file(ctx, path, &s);
	if (!r && stage)
		*stage = 2;
	if (!r) {
		for (size_t i = 0; i < LEN / usnap_page; i++)
			m->addr[i * usnap_page] ^= 1;
		r = uffdsnap_wait(s);
	}
	snprintf(why, cap, "%s", s ? uffdsnap_snap_error(s) : uffdsnap_last_error());
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	return r;
}

static void check(struct usnap_mem *m, const char *dir, int r, const char *why, struct outcome *o, const char *what)
{
	char path[PATH_MAX + 16];

	snprintf(path, sizeof(path), "%s/snap", dir);
	if (r) {
		ck_assert_msg(r < 0 && *why, "%s: failed with %d and no reason", what, r);
		printf("  %s: %s\n", what, why);
		o->fail++;
	} else {
		ck_assert_msg(usnap_file_verifies(path), "%s: the snapshot reported good does not verify", what);
		o->ok++;
	}
	ck_assert_int_eq(usnap_pagemap_protected(m->addr, LEN), 0);
	for (size_t i = 0; i < LEN / usnap_page; i++)
		m->addr[i * usnap_page] ^= 1;
	unlink(path);
}

static size_t vm_size(void)
{
	FILE *f = fopen("/proc/self/statm", "re");
	unsigned long pages = 0;

	ck_assert(f && fscanf(f, "%lu", &pages) == 1);
	fclose(f);
	return pages * usnap_page;
}

/*
 * Steps 0..nsteps of `resource`: RLIMIT_NOFILE with every free descriptor
 * number below the limit taken but `step` of them, RLIMIT_AS `step` x 16 MiB
 * above the process's size.
 */
static void edge(int resource, int nsteps, const char *label)
{
	struct rlimit old, lim;
	struct outcome o = { 0 };
	struct usnap_mem m;
	char dir[PATH_MAX], what[64], why[600];

	usnap_memfd(&m, LEN);
	usnap_fill_random(m.addr, LEN, 5);
	usnap_tmpdir(dir);
	ck_assert(!getrlimit(resource, &old));
	for (int step = 0; step <= nsteps; step++) {
		int top = open_fds(), fill[1024], nfill = 0, fd, r;

		lim = old;
		if (resource == RLIMIT_NOFILE) {
			while ((fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0 && fd < top && nfill < 1024)
				fill[nfill++] = fd;
			if (fd >= 0)
				close(fd);
			lim.rlim_cur = (rlim_t)(top + 1 + step);
			snprintf(what, sizeof(what), "%d descriptors free", step);
		} else {
			lim.rlim_cur = (rlim_t)(vm_size() + (size_t)step * 16 * MiB);
			snprintf(what, sizeof(what), "%d MiB of address space free", step * 16);
		}
		ck_assert(!setrlimit(resource, &lim));
		r = attempt(&m, dir, why, sizeof(why), NULL);
		ck_assert(!setrlimit(resource, &old));
		check(&m, dir, r, why, &o, what);
		while (nfill)
			close(fill[--nfill]);
	}
	printf("%s: %d attempts failed cleanly, %d succeeded\n", label, o.fail, o.ok);
	ck_assert_msg(o.fail > 0 && o.ok > 0, "the sweep did not cross the edge (%d failed, %d succeeded)", o.fail,
		      o.ok);
	usnap_rmdir(dir);
	usnap_mem_free(&m);
}

START_TEST(nofile_edge) { usnap_watchdog(150, "nofile_edge"); edge(RLIMIT_NOFILE, 16, "nofile_edge"); }
END_TEST

START_TEST(address_space_edge)
{
	/* A sanitizer reserves terabytes of shadow address space up front:
	 * RLIMIT_AS cannot be brought near the program's size under one. */
	if (USNAP_SANITIZED)
		return usnap_skip("address_space_edge", "a sanitizer's shadow memory needs the address space");
	usnap_watchdog(150, "address_space_edge");
	edge(RLIMIT_AS, 10, "address_space_edge");
}
END_TEST

/* ---- vm.max_map_count -------------------------------------------------------------- */

/* A reserve of PROT_NONE pages whose odd pages are made readable one by one:
 * each makes two more mappings, until the kernel refuses (the map count). */
struct filler {
	uint8_t *base;
	size_t npages, nsplit;
};

static void fill_maps(struct filler *f)
{
	FILE *fp = fopen("/proc/sys/vm/max_map_count", "re");
	unsigned long max = 0;

	ck_assert(fp && fscanf(fp, "%lu", &max) == 1);
	fclose(fp);
	f->npages = 2 * max + 8;
	f->base = mmap(NULL, f->npages * usnap_page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ck_assert(f->base != MAP_FAILED);
	for (f->nsplit = 0; 2 * f->nsplit + 1 < f->npages; f->nsplit++)
		if (mprotect(f->base + (2 * f->nsplit + 1) * usnap_page, usnap_page, PROT_READ)) {
			ck_assert_int_eq(errno, ENOMEM);
			break;
		}
	ck_assert_msg(2 * f->nsplit + 1 < f->npages, "vm.max_map_count %lu was never reached", max);
}

/* Give back (merge) or take again (split) the last n readable pages. */
static void merge_maps(struct filler *f, size_t n, bool merge)
{
	for (size_t j = 0; j < n; j++) {
		uint8_t *pg = f->base + (2 * (f->nsplit - 1 - j) + 1) * usnap_page;
		if (mprotect(pg, usnap_page, merge ? PROT_NONE : PROT_READ) && !merge)
			break; /* a mapping the attempt keeps (glibc caches thread stacks) */
	}
}

START_TEST(map_count_edge)
{
	struct outcome o = { 0 };
	struct usnap_mem m;
	struct filler f;
	char dir[PATH_MAX], what[64], why[600];
	int r;

	/* a sanitizer's own allocator and shadow need mappings too: out of
	 * them it aborts the program, whatever the library does */
	if (USNAP_SANITIZED)
		return usnap_skip("map_count_edge", "a sanitizer's runtime needs mappings of its own");
	usnap_watchdog(150, "map_count_edge");
	usnap_memfd(&m, LEN);
	usnap_fill_random(m.addr, LEN, 6);
	usnap_tmpdir(dir);
	fill_maps(&f);
	/* step k: 2k mappings free (every merge gives two back); begin needs
	 * about 10 here (threads' stacks and guards, buffers, the index) */
	for (size_t k = 0; k <= 8; k++) {
		merge_maps(&f, k, true);
		r = attempt(&m, dir, why, sizeof(why), NULL);
		merge_maps(&f, 64, true); /* room for the checks (the reader maps) */
		snprintf(what, sizeof(what), "%zu mappings free", 2 * k);
		check(&m, dir, r, why, &o, what);
		merge_maps(&f, 64, false);
	}
	printf("map_count_edge: %d attempts failed cleanly, %d succeeded\n", o.fail, o.ok);
	ck_assert_msg(o.fail > 0 && o.ok > 0, "the sweep did not cross the edge (%d failed, %d succeeded)", o.fail,
		      o.ok);
	munmap(f.base, f.npages * usnap_page);
	usnap_rmdir(dir);
	usnap_mem_free(&m);
}
END_TEST

/* ---- a memory cgroup ---------------------------------------------------------------- */

/* A memory cgroup of our own: v2 (memory.max) where the memory controller is
 * there, else v1 (memory.limit_in_bytes). Empty path and a reason if neither. */
struct memcg {
	char dir[PATH_MAX];
	const char *limit, *usage, *events, *oom_key;
	bool v2;
};

static int write_file(const char *dir, const char *name, const char *val)
{
	char p[PATH_MAX + 64];
	int fd, r = 0;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	if ((fd = open(p, O_WRONLY | O_CLOEXEC)) < 0)
		return -errno;
	if (write(fd, val, strlen(val)) != (ssize_t)strlen(val))
		r = -errno;
	close(fd);
	return r;
}

static long long read_key(const char *dir, const char *name, const char *key)
{
	char p[PATH_MAX + 64], line[256];
	long long v = -1;
	FILE *fp;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	if (!(fp = fopen(p, "re")))
		return -1;
	while (fgets(line, sizeof(line), fp))
		if (!key ? sscanf(line, "%lld", &v) == 1
			 : !strncmp(line, key, strlen(key)) && line[strlen(key)] == ' ' &&
				   sscanf(line + strlen(key) + 1, "%lld", &v) == 1)
			break;
	fclose(fp);
	return v;
}

static bool memcg_create(struct memcg *g, char *why, size_t cap)
{
	static const char *v2 = "/sys/fs/cgroup", *v2u = "/sys/fs/cgroup/unified", *v1 = "/sys/fs/cgroup/memory";
	char ctl[256];
	const char *root = NULL;

	for (int i = 0; i < 2 && !root; i++) {
		const char *r = i ? v2u : v2;
		char p[64];
		FILE *fp;
		snprintf(p, sizeof(p), "%s/cgroup.controllers", r);
		if ((fp = fopen(p, "re"))) {
			if (fgets(ctl, sizeof(ctl), fp) && strstr(ctl, "memory"))
				root = r;
			fclose(fp);
		}
	}
	g->v2 = root != NULL;
	if (!root && !access("/sys/fs/cgroup/memory/memory.limit_in_bytes", W_OK))
		root = v1;
	if (!root) {
		snprintf(why, cap, "no cgroup v2 with the memory controller, and no cgroup v1 memory hierarchy");
		return false;
	}
	snprintf(g->dir, sizeof(g->dir), "%s/usnap-test-%d", root, (int)getpid());
	if (mkdir(g->dir, 0755)) {
		snprintf(why, cap, "mkdir %s: %s", g->dir, strerror(errno));
		return false;
	}
	g->limit = g->v2 ? "memory.max" : "memory.limit_in_bytes";
	g->usage = g->v2 ? "memory.current" : "memory.usage_in_bytes";
	g->events = g->v2 ? "memory.events" : "memory.oom_control";
	g->oom_key = "oom_kill";
	if (g->v2)
		write_file(g->dir, "memory.swap.max", "0");
	else
		write_file(g->dir, "memory.memsw.limit_in_bytes", "-1");
	return true;
}

static void memcg_remove(struct memcg *g)
{
	for (int i = 0; i < 100 && rmdir(g->dir) && errno == EBUSY; i++)
		usleep(10000); /* a killed child leaves it when its exit completes */
}

/* In the child: join g, take the limit to what it uses + slack, snapshot.
 * Exit 0: snapshot good; 1: failed with a reason (printed); 2: no reason. */
static int memcg_child(struct memcg *g, struct usnap_mem *m, const char *dir, size_t slack)
{
	uffdsnap_opts_t o;
	char val[32], why[600];
	int r;

	snprintf(val, sizeof(val), "%d", (int)getpid());
	if (write_file(g->dir, "cgroup.procs", val))
		return 3;
	snprintf(val, sizeof(val), "%lld", read_key(g->dir, g->usage, NULL) + (long long)slack);
	if (write_file(g->dir, g->limit, val))
		return 4;
	uffdsnap_opts_init(&o);
	o.buffer_bytes = 8 * MiB;
	r = attempt(m, dir, why, sizeof(why), &o);
	if (r)
		printf("  %zu KiB above its use: %d %s\n", slack >> 10, r, why);
	fflush(stdout);
	return !r ? 0 : r < 0 && *why ? 1 : 2;
}

START_TEST(memcg_edge)
{
	struct memcg g = { 0 };
	struct usnap_mem m;
	char dir[PATH_MAX + 16], why[PATH_MAX + 300];
	int ok = 0, failed = 0, killed = 0, late = 0;
	const size_t step = USNAP_SANITIZED ? 16 * MiB : 2 * MiB;

	usnap_watchdog(150, "memcg_edge");
	usnap_test_require_root();
	if (!memcg_create(&g, why, sizeof(why)))
		return usnap_skip("memcg_edge", "%s", why);
	usnap_memfd(&m, LEN); /* charged here, not to the child's cgroup */
	usnap_fill_random(m.addr, LEN, 7);
	usnap_tmpdir(dir);
	stage = mmap(NULL, sizeof(*stage), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert(stage != MAP_FAILED);
	/* a sanitizer's shadow memory is charged too: wider steps under one */
	for (size_t slack = 0; slack <= 8 * step; slack += step) {
		long long kills = read_key(g.dir, g.events, g.oom_key);
		char path[PATH_MAX + 32];
		int st;
		pid_t pid;

		*stage = 0;
		pid = fork();
		ck_assert_int_ge(pid, 0);
		if (!pid) {
			alarm(60);
			_exit(memcg_child(&g, &m, dir, slack));
		}
		st = usnap_wait_child(pid, 60, "a snapshot in a tight memory cgroup"); /* never hangs */
		snprintf(path, sizeof(path), "%s/snap", dir);
		if (WIFSIGNALED(st)) {
			ck_assert_msg(WTERMSIG(st) == SIGKILL && read_key(g.dir, g.events, g.oom_key) > kills,
				      "%zu KiB above its use: the child died of signal %d, not by the OOM killer",
				      slack >> 10, WTERMSIG(st));
			printf("  %zu KiB above its use: killed by the OOM killer %s\n", slack >> 10,
			       *stage == 0 ? "before begin" : *stage == 1 ? "in begin" : "after begin returned");
			killed++;
			late += *stage == 2;
		} else {
			ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) <= 1, "%zu KiB above its use: exit status 0x%x",
				      slack >> 10, st);
			if (WEXITSTATUS(st) == 0) {
				ck_assert_msg(usnap_file_verifies(path), "a snapshot reported good does not verify");
				ok++;
			} else {
				failed++;
			}
		}
		unlink(path);
		/* whatever happened to it, the memory is writable at once */
		ck_assert_int_eq(usnap_pagemap_protected(m.addr, LEN), 0);
		for (size_t i = 0; i < LEN / usnap_page; i++)
			m.addr[i * usnap_page] ^= 1;
	}
	printf("memcg_edge (cgroup %s): %d snapshots good, %d failed cleanly, %d killed by the OOM killer (%d of "
	       "them after begin returned)\n", g.v2 ? "v2" : "v1", ok, failed, killed, late);
	munmap((void *)stage, sizeof(*stage));
	stage = NULL;
	memcg_remove(&g);
	ck_assert_msg(ok > 0 && failed + killed > 0, "the sweep did not cross the edge");
	usnap_rmdir(dir);
	usnap_mem_free(&m);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("limits");
	TCase *tc = tcase_create("limits"), *as = tcase_create("as");

	usnap_test_require_uffd();
	tcase_set_timeout(tc, 160);
	tcase_set_timeout(as, 160);
	tcase_add_test(tc, nofile_edge);
	tcase_add_test(tc, memcg_edge);
	tcase_set_tags(as, "as"); /* skips under a sanitizer: a meson test of its own */
	tcase_add_test(as, address_space_edge);
	suite_add_tcase(s, tc);
	suite_add_tcase(s, as);
	as = tcase_create("maps"); /* skips under a sanitizer too */
	tcase_set_timeout(as, 160);
	tcase_set_tags(as, "maps");
	tcase_add_test(as, map_count_edge);
	suite_add_tcase(s, as);
	return usnap_run_suite(s);
}
