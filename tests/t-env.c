/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test helpers, the environment: the suite runner (skips, the exclusive
 * lock), root and userfaultfd checks, watchdogs, child processes, clocks, files
 * and directories (see helpers.h).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

size_t t_page = 4096;

/* ---- environment --------------------------------------------------------- */

static void exclusive_lock(void);

void t_test_init(void)
{
	t_page = (size_t)sysconf(_SC_PAGESIZE);
	setvbuf(stdout, NULL, _IOLBF, 0);
	setvbuf(stderr, NULL, _IONBF, 0);
	exclusive_lock();
	if (geteuid() == 0)
		t_knob_reap();
}

void t_test_require_root(void)
{
	t_test_init();
	if (geteuid() != 0) {
		printf("SKIP: this test needs root (mounts tmpfs / switches users); euid is %u\n", geteuid());
		exit(T_SKIP);
	}
}

void t_test_require_uffd(void)
{
	uffdsnap_t *ctx = NULL;
	uffdsnap_opts_t o;
	int r;

	t_test_init();
	if (geteuid() != 0 && access("/dev/userfaultfd", R_OK | W_OK) != 0) {
		printf("SKIP: not root and /dev/userfaultfd is not accessible (%s): "
		       "userfaultfd with kernel-mode faults is unavailable\n", strerror(errno));
		exit(T_SKIP);
	}
	uffdsnap_opts_init(&o);
	o.buffer_bytes = 4 * MiB; /* keep the probe cheap */
	r = uffdsnap_new(&ctx, &o);
	if (r == -EPERM || r == -ENOSYS || r == -EOPNOTSUPP || r == -EACCES) {
		printf("SKIP: uffdsnap_new: %s (%s)\n", uffdsnap_strerror(r), uffdsnap_last_error());
		exit(T_SKIP);
	}
	if (r) {
		printf("ERROR: uffdsnap_new failed unexpectedly: %d %s (%s)\n", r, uffdsnap_strerror(r),
		       uffdsnap_last_error());
		exit(1);
	}
	uffdsnap_free(ctx);
}

/* Cases skipped in this run: shared with the forked case children, which
 * Check starts after t_run_suite() has mapped it. */
static _Atomic unsigned *skipped_cases;

void t_skip(const char *name, const char *fmt, ...)
{
	va_list ap;

	ck_assert_msg(skipped_cases != NULL, "t_skip outside t_run_suite");
	printf("%s: SKIP: ", name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	atomic_fetch_add(skipped_cases, 1);
}

/*
 * tests/run-suite.sh runs two suites at once (plain beside the sanitizer
 * builds). Tests that change what the whole machine shares (vm.nr_hugepages,
 * memory blocks offlined for migration) or count its events get
 * USNAP_EXCLUSIVE=1 from tests/meson.build and hold this lock for their whole
 * run, so two of them never overlap: one would otherwise restore a knob the
 * other still relies on. The kernel drops the lock when the process ends,
 * however it ends. Taken first thing (t_test_init): a main() that changes a
 * knob before it runs its suite (test-hugetlb reserves its huge pages) must
 * already hold it, or two such tests read, raise and restore the knob
 * interleaved (a CI run's ASan hugetlb found 600 pages that the plain one had
 * reserved, added 600 more, and lost all 1,200 when the other restored 0; the
 * machine kept 600 pages).
 */
static void exclusive_lock(void)
{
	static bool held;
	int fd;

	if (held || !getenv("USNAP_EXCLUSIVE"))
		return;
	held = true;
	fd = open(T_EXCLUSIVE_LOCK, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
	if (fd < 0 || flock(fd, LOCK_EX) != 0) {
		printf("ERROR: %s: %s\n", T_EXCLUSIVE_LOCK, strerror(errno));
		exit(1);
	}
	/* fd stays open: Check's forked test children inherit the lock, harmlessly */
}

int t_run_cases(const char *name, unsigned timeout, const TTest *const *cases)
{
	Suite *s = suite_create(name);
	TCase *tc = tcase_create(name);

	tcase_set_timeout(tc, timeout);
	for (unsigned i = 0; cases[i]; i++)
		tcase_add_test(tc, cases[i]);
	suite_add_tcase(s, tc);
	return t_run_suite(s);
}

int t_run_suite(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed, run;
	unsigned skipped;

	exclusive_lock();

	skipped_cases = mmap(NULL, sizeof(*skipped_cases), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (skipped_cases == MAP_FAILED) {
		printf("ERROR: mmap of the skip counter: %s\n", strerror(errno));
		exit(1);
	}
	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	run = srunner_ntests_run(sr);
	srunner_free(sr);
	skipped = atomic_load(skipped_cases);
	if (failed)
		return 1;
	if (!skipped)
		return 0;
	/* meson counts a program, not a case: a program with a skipped case is
	 * reported SKIP, so tests/meson.build gives the cases that can skip
	 * their own test (CK_INCLUDE_TAGS) and the others still count as run */
	printf("SKIP: %u of %d cases skipped (reasons above)\n", skipped, run);
	return T_SKIP;
}

static char watchdog_what[256];

static void watchdog_fire(int sig)
{
	char msg[400];
	int n;

	(void)sig;
	n = snprintf(msg, sizeof(msg), "\nWATCHDOG: timed out: %s\n", watchdog_what);
	if (write(2, msg, (size_t)n) < 0) {
		/* nothing to do */
	}
	abort();
}

void t_watchdog(unsigned seconds, const char *what)
{
	struct sigaction sa = { 0 };

	snprintf(watchdog_what, sizeof(watchdog_what), "%s", what ? what : "");
	sa.sa_handler = watchdog_fire;
	sigaction(SIGALRM, &sa, NULL);
	alarm(seconds);
}

int t_join_timeout(pthread_t t, unsigned seconds)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += seconds;
	return pthread_timedjoin_np(t, NULL, &ts);
}

uint64_t t_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double t_ms_since(uint64_t t0)
{
	return (double)(t_now_ns() - t0) / 1e6;
}

void t_find_tool(char *tool)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n <= 0)
		exit(T_SKIP);
	self[n] = '\0';
	snprintf(tool, PATH_MAX, "%s/../util/uffdsnap", dirname(self));
	if (access(tool, X_OK)) {
		printf("SKIP: the uffdsnap tool is not at %s\n", tool);
		exit(T_SKIP);
	}
}

int t_wait_child(pid_t pid, unsigned seconds, const char *what)
{
	uint64_t t0 = t_now_ns();
	int status;

	while (waitpid(pid, &status, WNOHANG) != pid) {
		if (t_ms_since(t0) > seconds * 1000.0) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			ck_abort_msg("%s: process %d did not finish within %u s", what, (int)pid, seconds);
		}
		usleep(2000);
	}
	return status;
}

void t_sigbus_child(void)
{
	struct rlimit no_core = { 0, 0 };

	setrlimit(RLIMIT_CORE, &no_core);
	signal(SIGBUS, SIG_DFL);
	alarm(30);
}

/* ---- process accounting ---------------------------------------------------- */

int t_fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	ck_assert(d != NULL);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the DIR's own fd */
}

void t_fd_list(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	char p[300], t[PATH_MAX];

	while (d && (e = readdir(d))) {
		ssize_t n;
		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "/proc/self/fd/%s", e->d_name);
		n = readlink(p, t, sizeof(t) - 1);
		t[n > 0 ? n : 0] = '\0';
		printf("    fd %s -> %s\n", e->d_name, t);
	}
	if (d)
		closedir(d);
}

long t_proc_status(const char *key)
{
	FILE *f = fopen("/proc/self/status", "re");
	char line[256];
	size_t k = strlen(key);
	long v = -1;

	ck_assert(f != NULL);
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, k) && line[k] == ':' && sscanf(line + k + 1, "%ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* Exact to the allocation once glibc's tcache is off (it keeps freed chunks
 * counted as in use): t_exec_without_tcache. */
size_t t_heap_used(void)
{
	return mallinfo2().uordblks;
}

void t_exec_without_tcache(char **argv)
{
	if (T_SANITIZED || getenv("USNAP_TCACHE_OFF"))
		return;
	setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0", 1);
	setenv("USNAP_TCACHE_OFF", "1", 1);
	execv("/proc/self/exe", argv);
	perror("re-executing without tcache");
	exit(1);
}

/* ---- files and directories ----------------------------------------------------- */

void t_tmpdir(char *buf)
{
	snprintf(buf, PATH_MAX, "/var/tmp/usnap-test.XXXXXX");
	ck_assert_msg(mkdtemp(buf) != NULL, "mkdtemp: %s", strerror(errno));
}

void t_rmdir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[PATH_MAX * 2];

	if (d) {
		while ((e = readdir(d))) {
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
			unlink(p);
		}
		closedir(d);
	}
	rmdir(dir);
}

int t_dir_entries(const char *dir, bool print)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	ck_assert_msg(d != NULL, "opendir %s: %s", dir, strerror(errno));
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (print)
			printf("  entry in %s: %s\n", dir, e->d_name);
		n++;
	}
	closedir(d);
	return n;
}

void t_tmpfs_mount(char *dir, size_t size)
{
	char opts[64];

	snprintf(dir, PATH_MAX, "/tmp/usnap-tmpfs.XXXXXX");
	ck_assert_msg(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno));
	snprintf(opts, sizeof(opts), "size=%zu,mode=0700", size);
	ck_assert_msg(mount("tmpfs", dir, "tmpfs", 0, opts) == 0, "mount -t tmpfs -o %s %s: %s", opts, dir,
		      strerror(errno));
}

void t_tmpfs_umount(const char *dir)
{
	if (umount2(dir, MNT_DETACH))
		fprintf(stderr, "umount %s: %s\n", dir, strerror(errno));
	rmdir(dir);
}

uint8_t *t_slurp(const char *path, size_t *len)
{
	struct stat st;
	uint8_t *p;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
	ck_assert(fstat(fd, &st) == 0);
	p = malloc((size_t)st.st_size + 1);
	ck_assert(p != NULL);
	for (size_t off = 0; off < (size_t)st.st_size;) {
		ssize_t r = read(fd, p + off, (size_t)st.st_size - off);
		ck_assert_msg(r > 0, "read %s: %s", path, strerror(errno));
		off += (size_t)r;
	}
	close(fd);
	*len = (size_t)st.st_size;
	return p;
}

void t_write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
	for (size_t off = 0; off < len;) {
		ssize_t w = write(fd, (const uint8_t *)data + off, len - off);
		ck_assert_msg(w > 0, "write %s: %s", path, strerror(errno));
		off += (size_t)w;
	}
	close(fd);
}
