/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The reader tests' fixture (reader-fixture.h): a real snapshot file taken by
 * the engine in a helper process, its records, the regions' contents at the
 * instant, and the helpers test-reader.c and test-reader-damage.c share.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "reader-fixture.h"

/* Set up by reader_fixture_run() before the runner forks the tests. */
const char *self;          /* this program, for helper() */
char dir[PATH_MAX];
char snap_path[PATH_MAX + 32];
uint8_t *file;             /* the snapshot's bytes */
size_t file_len;
uint8_t *expect[2];        /* region contents at the instant */
const char *const names[2] = { "pool", "meta" };
const size_t lens[2] = { POOL_PAGES * PS, META_PAGES * PS };

struct rec recs[4096];
unsigned nrecs;

/* ---- small helpers -------------------------------------------------------- */

void fill_random(uint8_t *p, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = t_splitmix64(&seed);
		memcpy(p + i, &v, len - i < 8 ? len - i : 8);
	}
}

void write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* the reader went away: that is what some tests do */
		p += n, len -= (size_t)n;
	}
}

/* Write buf to the file `name` in dir; returns its path (a static buffer), NULL on error. */
const char *save(const char *name, const void *buf, size_t len)
{
	static char path[PATH_MAX + 64];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return NULL;
	write_all(fd, buf, len);
	close(fd);
	return path;
}

const char *put_file(const char *name, const void *buf, size_t len)
{
	const char *path = save(name, buf, len);

	ck_assert_msg(path, "%s/%s: %s", dir, name, strerror(errno));
	return path;
}

bool rc_in(int rc, const int *ok, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (rc == ok[i])
			return true;
	return false;
}

static void *feed_main(void *arg)
{
	struct feeder *f = arg;

	write_all(f->fd, f->buf, f->len);
	close(f->fd);
	return NULL;
}

/* Start feeding; returns the read end. */
int feed_start(struct feeder *f, const uint8_t *buf, size_t len)
{
	int p[2];

	ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
	*f = (struct feeder){ .fd = p[1], .buf = buf, .len = len };
	ck_assert_int_eq(pthread_create(&f->t, NULL, feed_main, f), 0);
	return p[0];
}

void feed_end(struct feeder *f, int rfd)
{
	close(rfd); /* a writer still blocked gets EPIPE */
	pthread_join(f->t, NULL);
}

/* ---- damage checks ------------------------------------------------------------ */

/*
 * A damaged snapshot at path: open or verify must fail with a reader errno,
 * and read() may succeed only with the right bytes. Returns the message of
 * the failure that rejected the file (static buffer).
 */
const char *check_damaged(const char *path, const char *what)
{
	static const int open_ok[] = { -EBADMSG, -ENOEXEC, -EPROTONOSUPPORT, -ENODATA };
	static const int verify_ok[] = { -EBADMSG, -ENODATA };
	static char msg[600];
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_reader_t *r;
	int rc = uffdsnap_reader_open(&r, path);

	if (rc) {
		ck_assert_msg(rc_in(rc, open_ok, 4), "%s: open: %d %s", what, rc, uffdsnap_last_error());
		snprintf(msg, sizeof(msg), "%s", uffdsnap_last_error());
		ck_assert_msg(*msg, "%s: open failed (%d) without saying why", what, rc);
		return msg;
	}
	ck_assert_int_eq(uffdsnap_reader_info(r, &info), 0);
	rc = uffdsnap_reader_verify(r);
	ck_assert_msg(rc_in(rc, verify_ok, 2), "%s: verify returned %d (%s)", what, rc, uffdsnap_reader_error(r));
	snprintf(msg, sizeof(msg), "%s", uffdsnap_reader_error(r));
	ck_assert_msg(*msg, "%s: verify failed (%d) without saying why", what, rc);
	for (unsigned id = 0; id < info.nregions && id < 2; id++) {
		uffdsnap_region_info_t ri = { .size = sizeof(ri) };
		uint8_t *buf;

		if (uffdsnap_reader_region(r, id, &ri) || ri.length != lens[id])
			continue;
		buf = aligned_alloc(PS, ri.length);
		rc = uffdsnap_reader_read(r, id, 0, buf, ri.length);
		if (rc == 0)
			ck_assert_msg(!memcmp(buf, expect[id], ri.length), "%s: read() of region %u returned wrong "
				      "data without an error", what, id);
		else
			ck_assert_msg(rc == -EBADMSG || rc == -ENODATA, "%s: read: %d %s", what, rc,
				      uffdsnap_reader_error(r));
		/* eager restore decompresses in place (reader.c usnap_reader_chunk_scatter) */
		rc = uffdsnap_restore_into(r, id, buf, ri.length, NULL, NULL);
		if (rc == 0)
			ck_assert_msg(!memcmp(buf, expect[id], ri.length), "%s: restore_into() of region %u wrote "
				      "wrong data without an error", what, id);
		else
			ck_assert_msg(rc == -EBADMSG || rc == -ENODATA, "%s: restore_into: %d %s", what, rc,
				      uffdsnap_last_error());
		free(buf);
	}
	uffdsnap_reader_free(r);
	return msg;
}

const struct rec *find_rec(uint32_t type)
{
	for (unsigned i = 0; i < nrecs; i++)
		if (recs[i].type == type)
			return &recs[i];
	ck_abort_msg("no record of type 0x%08x", type);
	return NULL;
}

/* ---- setup ------------------------------------------------------------------------------------ */

static int die(const char *what, int rc, const char *detail)
{
	fprintf(stderr, "%s: %s: %d %s (%s)\n", self ? self : "reader helper", what, rc, uffdsnap_strerror(rc), detail);
	return -1;
}

/* A mixed pool: random, zero-written, never-written (holes) and compressible
 * pages, so chunks have DATA and ZERO extents, zstd and raw payloads. */
static void fill_pool(uint8_t *m)
{
	for (size_t i = 0; i < POOL_PAGES; i++) {
		uint8_t *p = m + i * PS;
		switch (i % 6) {
		case 0:
		case 4:
			fill_random(p, PS, i);
			break;
		case 1:
			memset(p, 0, PS); /* populated, all zero */
			break;
		case 3:
			for (size_t k = 0; k < PS; k += 32)
				snprintf((char *)p + k, 32, "page %zu line %zu ........", i, k / 32);
			break;
		default:
			break; /* a hole */
		}
	}
}

static uint8_t *map_memfd(const char *name, size_t len, int *fd)
{
	uint8_t *m;

	*fd = memfd_create(name, MFD_CLOEXEC);
	if (*fd < 0 || ftruncate(*fd, (off_t)len))
		return NULL;
	m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
	return m == MAP_FAILED ? NULL : m;
}

/* The expected image: read with pread so holes are not populated. */
static uint8_t *image(int fd, size_t len)
{
	uint8_t *b = malloc(len);

	if (b && pread(fd, b, len, 0) != (ssize_t)len) {
		free(b);
		return NULL;
	}
	return b;
}

static int load_file(void)
{
	int fd = open(snap_path, O_RDONLY | O_CLOEXEC);
	struct stat st;

	if (fd < 0 || fstat(fd, &st) || !(file = malloc((size_t)st.st_size)) ||
	    pread(fd, file, (size_t)st.st_size, 0) != st.st_size)
		return die("reading the snapshot", -errno, snap_path);
	close(fd);
	file_len = (size_t)st.st_size;
	for (size_t off = USNAP_MAGIC_LEN; off + sizeof(struct usnap_rec_hdr) <= file_len && nrecs < 4096;) {
		struct usnap_rec_hdr h;
		memcpy(&h, file + off, sizeof(h));
		recs[nrecs++] = (struct rec){ .off = off, .type = h.type, .len = h.len };
		off += h.len;
	}
	if (nrecs < 4 || recs[nrecs - 1].type != USNAP_REC_END || recs[nrecs - 2].type != USNAP_REC_INDX)
		return die("walking the snapshot's records", -EBADMSG, "unexpected layout");
	return 0;
}

static int make_snapshot(uffdsnap_t *ctx)
{
	uint8_t *m[2];
	int fd[2], rc;
	uffdsnap_snap_t *s;

	for (int i = 0; i < 2; i++)
		if (!(m[i] = map_memfd(names[i], lens[i], &fd[i])))
			return die("memfd", -errno, names[i]);
	fill_pool(m[0]);
	fill_random(m[1], lens[1], 77);
	for (int i = 0; i < 2; i++) {
		if (!(expect[i] = image(fd[i], lens[i])))
			return die("copying a region", -errno, names[i]);
		if (!save(names[i], expect[i], lens[i]))
			return die("saving a region image", -errno, names[i]);
		if ((rc = uffdsnap_add_region(ctx, names[i], m[i], lens[i])) != i)
			return die("add_region", rc, uffdsnap_last_error());
	}
	if ((rc = uffdsnap_begin_file(ctx, snap_path, &s)))
		return die("begin", rc, uffdsnap_last_error());
	/* writes after the instant: fault chunks, out of page order */
	for (size_t p = 100; p < 110; p++)
		memset(m[0] + p * PS, 0xab, 100);
	m[1][PS * 3] ^= 1;
	rc = uffdsnap_wait(s);
	if (rc)
		return die("wait", rc, uffdsnap_snap_error(s));
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx); /* before the regions go away */
	for (int i = 0; i < 2; i++) {
		munmap(m[i], lens[i]);
		close(fd[i]);
	}
	return 0;
}

/* A live snapshot of a small region into out_fd, with a fault while it runs. */
static int stream_snapshot(int out_fd)
{
	const size_t len = 64 * PS;
	uffdsnap_sink_t *sink;
	uffdsnap_snap_t *s;
	uffdsnap_t *ctx;
	int fd, rc;
	uint8_t *m = map_memfd("live", len, &fd);

	if (!m)
		return die("memfd", -errno, "live");
	fill_random(m, len / 2, 5);
	if ((rc = uffdsnap_new(&ctx, NULL)) || (rc = uffdsnap_add_region(ctx, "live", m, len)) < 0 ||
	    (rc = uffdsnap_sink_fd(&sink, out_fd)) || (rc = uffdsnap_begin(ctx, sink, &s)))
		return die("starting a stream snapshot", rc, uffdsnap_last_error());
	memset(m, 0x77, PS); /* a fault during the snapshot */
	if ((rc = uffdsnap_wait(s)))
		return die("wait", rc, uffdsnap_snap_error(s));
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	return 0;
}

/* The helper process: `test-reader[-damage] --snapshot DIR` or `--stream` (to stdout). */
static int helper_main(const char *mode, const char *arg)
{
	uffdsnap_opts_t o;
	uffdsnap_t *ctx;
	int rc;

	if (!strcmp(mode, "--stream"))
		return stream_snapshot(STDOUT_FILENO) ? 1 : 0;
	snprintf(dir, sizeof(dir), "%s", arg);
	snprintf(snap_path, sizeof(snap_path), "%s/valid.snap", dir);
	uffdsnap_opts_init(&o);
	o.chunk_bytes = 16384; /* many small chunks: a real index, many records to damage */
	rc = uffdsnap_new(&ctx, &o);
	if (rc) {
		printf("SKIP: snapshot tests need userfaultfd (euid %u): uffdsnap_new: %s (%s)\n",
		       (unsigned)geteuid(), uffdsnap_strerror(rc), uffdsnap_last_error());
		return SKIP;
	}
	return make_snapshot(ctx) ? 1 : 0;
}

/*
 * The engine runs in a helper: this program, exec'd again. Valgrind does not
 * follow exec (and would deadlock a thread faulting on protected memory: it
 * runs one thread at a time), and a process that forks after a file snapshot
 * used libuv's thread pool crashes in the child's exit (uv_library_shutdown
 * joins pool threads the child does not have), while Check forks every test.
 */
pid_t helper(const char *mode, int out_fd)
{
	pid_t pid = fork();

	if (pid == 0) {
		if (out_fd >= 0 && dup2(out_fd, STDOUT_FILENO) < 0)
			_exit(127);
		execl(self, self, mode, dir, (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* Take the snapshot the tests read; returns 0, SKIP, or 1. */
static int snapshot_in_helper(void)
{
	pid_t pid = helper("--snapshot", -1);
	int st;

	snprintf(snap_path, sizeof(snap_path), "%s/valid.snap", dir);
	if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
		return die("the snapshot process", -ECHILD, "it did not exit normally");
	if (WEXITSTATUS(st))
		return WEXITSTATUS(st) == SKIP ? SKIP : 1;
	for (int i = 0; i < 2; i++) {
		char path[PATH_MAX + 32];
		int fd;

		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		expect[i] = malloc(lens[i]);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || pread(fd, expect[i], lens[i], 0) != (ssize_t)lens[i])
			return die("reading the expected image", -errno, path);
		close(fd);
	}
	return load_file();
}

/* Remove what the tests left in dir (one level). */
static void cleanup(void)
{
	static const char *const left[] = { "valid.snap", "pool", "meta", "flip", "cut", "hostile", "zstd", "garbage",
					    "failed", "extract-0", "extract-1" };
	char path[PATH_MAX + 32];

	for (size_t i = 0; i < sizeof(left) / sizeof(left[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, left[i]);
		unlink(path);
	}
	rmdir(dir);
}

/* A test case named name of the tests in cases (NULL-terminated), if any. */
static void add_cases(Suite *suite, const char *name, const TTest *const *cases)
{
	TCase *tc;

	if (!cases[0])
		return;
	tc = tcase_create(name);
	tcase_set_timeout(tc, 120);
	for (unsigned i = 0; cases[i]; i++)
		tcase_add_test(tc, cases[i]);
	suite_add_tcase(suite, tc);
}

/*
 * The main() of a reader test program: the helper process's part when
 * exec'd as one, else take the snapshot in a helper and run the suite.
 * Returns the exit status: 1 on a failure, SKIP without userfaultfd (after
 * the cases that need none ran).
 */
int reader_fixture_run(int argc, char **argv, const char *name, const TTest *const *plain, const char *snap_name,
		       const TTest *const *snap)
{
	Suite *suite;
	SRunner *sr;
	int rc, failed;

	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN); /* streams whose reader gave up get EPIPE */
	if (argc == 3)
		return helper_main(argv[1], argv[2]);
	/* argv[0], not /proc/self/exe: under valgrind that is valgrind */
	self = strchr(argv[0], '/') ? argv[0] : "/proc/self/exe";
	snprintf(dir, sizeof(dir), "/var/tmp/%s.XXXXXX", name);
	if (!mkdtemp(dir))
		return 1;
	rc = snapshot_in_helper();
	if (rc == 1) {
		cleanup();
		return 1;
	}
	suite = suite_create(name + strlen("test-"));
	add_cases(suite, "crc32c", plain);
	if (!rc) {
		printf("snapshot: %zu bytes, %u records\n", file_len, nrecs);
		add_cases(suite, snap_name, snap);
	}
	sr = srunner_create(suite);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	cleanup();
	return failed ? 1 : rc;
}
