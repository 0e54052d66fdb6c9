/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Files the library writes by name (lib/outfile.c): the snapshot file sink,
 * uffdsnap_restore_file() and uffdsnap_reader_extract_file().
 *  - out_refuses_*: a directory, symlink, FIFO, socket or device node (made
 *    by mknod in the test's own directory) at the target is refused with its
 *    errno before anything is created; the thing there is untouched.
 *  - out_bad_snapshot_keeps_file: an incomplete snapshot is refused before any
 *    output exists; a corrupt one fails mid-way; an existing output survives.
 *  - out_close_fails (fault injection): a close(2) that reports an error fails
 *    the snapshot / restore / extract, the temporary is unlinked and the
 *    previous file survives.
 *  - out_stale_temps: temporaries of dead writers are listed and removed,
 *    those of a live pid or a locked file are kept, others never looked at.
 *  - out_restore_hugetlbfs: restore_file into a file on hugetlbfs (no
 *    write(2) there) is byte-exact; a region of no whole huge pages is refused.
 *  - restore_sizes_checked: a restore's opts or stats with .size 0 is -EINVAL
 *    with a sentence, not ignored.
 *  - errors_documented: every errno the API documents has a real
 *    uffdsnap_strerror() text.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#ifdef USNAP_FAULT_INJECTION
#include "inject.h"
#endif

#define LEN (256 * KiB)

/* A regular file "keep" holding "precious" in dir; its path into buf. */
static void make_keep(const char *dir, char *buf)
{
	snprintf(buf, PATH_MAX + 16, "%s/keep", dir);
	t_write_file(buf, "precious", 8);
}

static void assert_keep(const char *path)
{
	size_t n;
	uint8_t *got = t_slurp(path, &n);

	ck_assert_msg(n == 8 && !memcmp(got, "precious", 8), "%s was changed (%zu bytes)", path, n);
	free(got);
}

/* Every output of the library into path must fail with err and leave dir
 * with `entries` entries. */
static void refuse_all(const struct t_snapfile *f, const char *path, int err, int entries)
{
	uffdsnap_reader_t *r;
	uffdsnap_snap_t *s = NULL;
	struct t_mem m;
	uffdsnap_t *ctx;
	int rc;

	ck_assert_int_eq(uffdsnap_reader_open(&r, f->path), 0);
	rc = uffdsnap_restore_file(r, 0, path, NULL, NULL);
	ck_assert_msg(rc == err, "restore_file into %s: %d (%s), want %d", path, rc, uffdsnap_last_error(), err);
	rc = uffdsnap_reader_extract_file(r, 0, path, 0);
	ck_assert_msg(rc == err, "extract_file into %s: %d (%s), want %d", path, rc, uffdsnap_last_error(), err);
	printf("  %s: %s\n", path, uffdsnap_last_error());
	uffdsnap_reader_free(r);

	t_memfd(&m, LEN);
	ctx = t_ctx_new(NULL);
	t_add(ctx, "r", m.addr, LEN);
	rc = uffdsnap_begin_file(ctx, path, &s);
	ck_assert_msg(rc == err, "begin_file into %s: %d (%s), want %d", path, rc, uffdsnap_last_error(), err);
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_mem_free(&m);
	ck_assert_int_eq(t_dir_entries(f->dir, true), entries);
}

START_TEST(out_refuses_dir_link_fifo_socket)
{
	struct t_snapfile f;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char p[PATH_MAX + 16], keep[PATH_MAX + 16];
	struct stat st;
	int s;

	t_watchdog(60, "out_refuses_dir_link_fifo_socket");
	t_snapfile_new(&f, "r", LEN, 1, 5, 7);
	make_keep(f.dir, keep);

	snprintf(p, sizeof(p), "%s/dir", f.dir);
	ck_assert(mkdir(p, 0700) == 0);
	refuse_all(&f, p, -EISDIR, 3);
	ck_assert(rmdir(p) == 0);

	snprintf(p, sizeof(p), "%s/link", f.dir);
	ck_assert(symlink(keep, p) == 0);
	refuse_all(&f, p, -ELOOP, 3);
	ck_assert(lstat(p, &st) == 0 && S_ISLNK(st.st_mode));
	assert_keep(keep);
	/* a dangling link is no better: the file it names might appear */
	ck_assert(unlink(p) == 0 && symlink("nowhere", p) == 0);
	refuse_all(&f, p, -ELOOP, 3);
	ck_assert(unlink(p) == 0);

	snprintf(p, sizeof(p), "%s/fifo", f.dir);
	ck_assert(mkfifo(p, 0600) == 0);
	refuse_all(&f, p, -EINVAL, 3);
	ck_assert(lstat(p, &st) == 0 && S_ISFIFO(st.st_mode));
	ck_assert(unlink(p) == 0);

	snprintf(p, sizeof(p), "%s/sock", f.dir);
	ck_assert(strlen(p) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, p, strlen(p) + 1);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert(s >= 0 && bind(s, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	refuse_all(&f, p, -EINVAL, 3);
	ck_assert(lstat(p, &st) == 0 && S_ISSOCK(st.st_mode));
	close(s);
	ck_assert(unlink(p) == 0);
	assert_keep(keep);
	t_snapfile_free(&f);
}
END_TEST

/* mknod needs CAP_MKNOD: the node is made in the test's own directory. */
START_TEST(out_refuses_device)
{
	struct t_snapfile f;
	char p[PATH_MAX + 16];
	struct stat st;

	if (geteuid()) {
		printf("out_refuses_device: not root, mknod is not possible: skipped\n");
		return;
	}
	t_watchdog(60, "out_refuses_device");
	t_snapfile_new(&f, "r", LEN, 2, 5, 7);
	snprintf(p, sizeof(p), "%s/null", f.dir);
	ck_assert(mknod(p, S_IFCHR | 0666, makedev(1, 3)) == 0); /* /dev/null's numbers */
	refuse_all(&f, p, -EINVAL, 2);
	ck_assert(lstat(p, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3));
	ck_assert(unlink(p) == 0);
	t_snapfile_free(&f);
}
END_TEST

START_TEST(out_bad_snapshot_keeps_file)
{
	struct t_snapfile f;
	char keep[PATH_MAX + 16], cut[PATH_MAX + 16], flip[PATH_MAX + 16];
	uffdsnap_reader_t *r;
	uint8_t *bytes;
	size_t n;

	t_watchdog(60, "out_bad_snapshot_keeps_file");
	t_snapfile_new(&f, "r", LEN, 3, 0, 0);
	make_keep(f.dir, keep);
	/* cut in half: opens (the header is there), known incomplete */
	bytes = t_slurp(f.path, &n);
	snprintf(cut, sizeof(cut), "%s/cut", f.dir);
	t_write_file(cut, bytes, n / 2);
	free(bytes);
	ck_assert_int_eq(uffdsnap_reader_open(&r, cut), 0);
	ck_assert_int_eq(uffdsnap_reader_extract_file(r, 0, keep, 0), -ENODATA);
	printf("  extract of a cut snapshot: %s\n", uffdsnap_last_error());
	ck_assert_int_eq(uffdsnap_restore_file(r, 0, keep, NULL, NULL), -ENODATA);
	uffdsnap_reader_free(r);
	assert_keep(keep);
	/* corrupt: found only while writing, the temporary goes */
	t_snapfile_flipped(&f, "flip", flip);
	ck_assert_int_eq(uffdsnap_reader_open(&r, flip), 0);
	ck_assert_int_eq(uffdsnap_reader_extract_file(r, 0, keep, 0), -EBADMSG);
	printf("  extract of a damaged snapshot: %s\n", uffdsnap_last_error());
	ck_assert_int_eq(uffdsnap_restore_file(r, 0, keep, NULL, NULL), -EBADMSG);
	uffdsnap_reader_free(r);
	assert_keep(keep);
	ck_assert_int_eq(t_dir_entries(f.dir, true), 4); /* snap keep cut flip */
	/* and a good one replaces it, with the mode asked for */
	ck_assert_int_eq(uffdsnap_reader_open(&r, f.path), 0);
	ck_assert_int_eq(uffdsnap_reader_extract_file(r, 0, keep, 0640), 0);
	uffdsnap_reader_free(r);
	bytes = t_slurp(keep, &n);
	ck_assert(n == LEN && !memcmp(bytes, f.want, LEN));
	free(bytes);
	t_snapfile_free(&f);
}
END_TEST

#ifdef USNAP_FAULT_INJECTION
START_TEST(out_close_fails)
{
	struct t_snapfile f;
	char keep[PATH_MAX + 16];
	uffdsnap_snap_t *s = NULL;
	uffdsnap_reader_t *r;
	struct t_mem m;
	uffdsnap_t *ctx;

	t_watchdog(60, "out_close_fails");
	t_snapfile_new(&f, "r", LEN, 4, 5, 7);
	make_keep(f.dir, keep);

	ck_assert_int_eq(uffdsnap_reader_open(&r, f.path), 0);
	usnap_inject_arm(USNAP_INJ_CLOSE, 1, EIO, USNAP_INJ_FAIL);
	ck_assert_int_eq(uffdsnap_restore_file(r, 0, keep, NULL, NULL), -EIO);
	ck_assert_msg(strstr(uffdsnap_last_error(), "closing"), "%s", uffdsnap_last_error());
	ck_assert_uint_eq(usnap_inject_fired(), 1);
	usnap_inject_arm(USNAP_INJ_CLOSE, 1, EDQUOT, USNAP_INJ_FAIL);
	ck_assert_int_eq(uffdsnap_reader_extract_file(r, 0, keep, 0), -EDQUOT);
	ck_assert_uint_eq(usnap_inject_fired(), 1);
	usnap_inject_disarm();
	uffdsnap_reader_free(r);
	assert_keep(keep);

	t_memfd(&m, LEN);
	t_fill_random(m.addr, LEN, 4);
	ctx = t_ctx_new(NULL);
	t_add(ctx, "r", m.addr, LEN);
	usnap_inject_arm(USNAP_INJ_CLOSE, 1, EIO, USNAP_INJ_FAIL);
	ck_assert_int_eq(uffdsnap_begin_file(ctx, keep, &s), 0);
	ck_assert_int_eq(uffdsnap_wait(s), -EIO);
	ck_assert_msg(strstr(uffdsnap_snap_error(s), "closing"), "%s", uffdsnap_snap_error(s));
	printf("  snapshot: %s\n", uffdsnap_snap_error(s));
	ck_assert_uint_eq(usnap_inject_fired(), 1);
	usnap_inject_disarm();
	uffdsnap_snap_free(s);
	uffdsnap_free(ctx);
	t_mem_free(&m);
	assert_keep(keep);
	ck_assert_int_eq(t_dir_entries(f.dir, true), 2); /* snap keep: no temporary left */
	t_snapfile_free(&f);
}
END_TEST
#endif

static long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;

	if (f && fscanf(f, "%ld", &v) != 1)
		v = -1;
	if (f)
		fclose(f);
	return v;
}

static bool write_long(const char *path, long v)
{
	FILE *f = fopen(path, "w");
	bool ok = f && fprintf(f, "%ld\n", v) > 0;

	return f && !fclose(f) && ok;
}

/* hugetlbfs has no write(2): restore_file maps the file instead. Reserves 4
 * huge pages and mounts a hugetlbfs of its own; both are undone before any
 * assertion can end the test. */
START_TEST(out_restore_hugetlbfs)
{
	static const char nr_path[] = "/proc/sys/vm/nr_hugepages";
	struct t_snapfile f, small;
	char mnt[] = "/var/tmp/usnap-hugetlbfs.XXXXXX", p[PATH_MAX + 64];
	int rc_big = 1, rc_small = 1, rc_memfd = 1, same = 0, same_memfd = 0, huge_memfd = 0;
	long old = read_long(nr_path);
	uffdsnap_reader_t *r;
	uint8_t *got = NULL;
	size_t n = 0;
	bool mounted;

	if (geteuid() || old < 0)
		return t_skip("out_restore_hugetlbfs", "not root: huge pages cannot be reserved");
	t_watchdog(60, "out_restore_hugetlbfs");
	t_snapfile_new(&f, "r", 4 * MiB, 6, 5, 7);
	t_snapfile_new(&small, "s", LEN, 7, 0, 0);
	if (!write_long(nr_path, old + 4) || read_long(nr_path) < old + 4) {
		write_long(nr_path, old);
		t_skip("out_restore_hugetlbfs", "could not reserve 4 huge pages");
		goto out;
	}
	ck_assert(mkdtemp(mnt));
	mounted = !mount("none", mnt, "hugetlbfs", 0, NULL);
	if (mounted) {
		snprintf(p, sizeof(p), "%s/big", mnt);
		ck_assert_int_eq(uffdsnap_reader_open(&r, f.path), 0);
		if (!(rc_big = uffdsnap_restore_file(r, 0, p, NULL, NULL)))
			got = t_slurp(p, &n);
		else
			printf("  restore to hugetlbfs: %s\n", uffdsnap_last_error());
		uffdsnap_reader_free(r);
		same = got && n == 4 * MiB && !memcmp(got, f.want, n);
		free(got);
		snprintf(p, sizeof(p), "%s/small", mnt);
		ck_assert_int_eq(uffdsnap_reader_open(&r, small.path), 0);
		rc_small = uffdsnap_restore_file(r, 0, p, NULL, NULL);
		printf("  a region of %lu KiB: %s\n", LEN / KiB, uffdsnap_last_error());
		uffdsnap_reader_free(r);
		umount2(mnt, MNT_DETACH);
	}
	/* and into a memfd of huge pages */
	{
		uffdsnap_restore_opts_t o;
		struct statfs sfs;
		void *a;
		int fd = -1;

		uffdsnap_restore_opts_init(&o);
		o.flags = UFFDSNAP_RESTORE_HUGETLB;
		ck_assert_int_eq(uffdsnap_reader_open(&r, f.path), 0);
		rc_memfd = uffdsnap_restore_memfd(r, 0, &fd, &o, NULL);
		if (rc_memfd)
			printf("  restore_memfd(HUGETLB): %s\n", uffdsnap_last_error());
		uffdsnap_reader_free(r);
		if (fd >= 0) {
			huge_memfd = !fstatfs(fd, &sfs) && sfs.f_type == 0x958458f6; /* HUGETLBFS_MAGIC */
			a = mmap(NULL, 4 * MiB, PROT_READ, MAP_SHARED, fd, 0);
			same_memfd = a != MAP_FAILED && !memcmp(a, f.want, 4 * MiB);
			if (a != MAP_FAILED)
				munmap(a, 4 * MiB);
			close(fd);
		}
	}
	rmdir(mnt);
	/* given back by difference: another program may have changed the pool meanwhile */
	old = read_long(nr_path) - 4;
	write_long(nr_path, old > 0 ? old : 0);
	ck_assert_msg(mounted, "mounting hugetlbfs on %s: %s", mnt, strerror(errno));
	ck_assert_int_eq(rc_big, 0);
	ck_assert_msg(same, "the file on hugetlbfs does not hold the region");
	ck_assert_int_eq(rc_small, -EINVAL);
	ck_assert_int_eq(rc_memfd, 0);
	ck_assert_msg(huge_memfd && same_memfd, "restore_memfd(HUGETLB): on hugetlbfs %d, byte-exact %d", huge_memfd,
		      same_memfd);
	printf("out_restore_hugetlbfs: 4 MiB restored into a file on hugetlbfs and into a memfd of huge pages, "
	       "byte-exact\n");
out:
	t_snapfile_free(&f);
	t_snapfile_free(&small);
}
END_TEST

/* Size-versioned structs of the restore calls: a .size of 0 is refused with
 * a sentence, as uffdsnap_new() refuses its options. */
START_TEST(restore_sizes_checked)
{
	uffdsnap_restore_stats_t st = { .size = 0 };
	uffdsnap_restore_opts_t o = { .size = 0, .threads = 1 };
	struct t_snapfile f;
	uffdsnap_reader_t *r;
	int fd = -1;

	t_watchdog(60, "restore_sizes_checked");
	t_snapfile_new(&f, "r", LEN, 8, 0, 0);
	ck_assert_int_eq(uffdsnap_reader_open(&r, f.path), 0);
	ck_assert_int_eq(uffdsnap_restore_memfd(r, 0, &fd, NULL, &st), -EINVAL);
	ck_assert_msg(strstr(uffdsnap_last_error(), "uffdsnap_restore_stats_t.size is 0"), "%s", uffdsnap_last_error());
	ck_assert_int_eq(fd, -1);
	ck_assert_int_eq(uffdsnap_restore_memfd(r, 0, &fd, &o, NULL), -EINVAL);
	ck_assert_msg(strstr(uffdsnap_last_error(), "uffdsnap_restore_opts_t.size is 0"), "%s", uffdsnap_last_error());
	uffdsnap_restore_opts_init(&o);
	o.threads = -1;
	ck_assert_int_eq(uffdsnap_restore_memfd(r, 0, &fd, &o, NULL), -EINVAL);
	o.threads = 1;
	st.size = sizeof(st);
	ck_assert_int_eq(uffdsnap_restore_memfd(r, 0, &fd, &o, &st), 0);
	ck_assert_uint_eq(st.threads, 1);
	ck_assert_uint_eq(st.bytes_total, LEN);
	close(fd);
	uffdsnap_reader_free(r);
	t_snapfile_free(&f);
}
END_TEST

/*
 * The one rule for structs that carry their size (docs/api.md), on the
 * reader's and lazy restore's out-structs too: 0 and larger than this
 * library's are refused with a sentence naming the type; a first-version
 * size is filled up to its .size and nothing past it.
 */
START_TEST(struct_sizes_one_rule)
{
	struct {
		uffdsnap_info_t i;
		uint64_t guard;
	} big;
	uffdsnap_region_info_t ri;
	uffdsnap_lazy_stats_t ls = { .size = 0 };
	uffdsnap_lazy_region_t lreg = { .name = "r", .len = LEN };
	struct t_snapfile f;
	struct t_mem m;
	uffdsnap_reader_t *r;
	uffdsnap_lazy_t *lz;

	t_watchdog(60, "struct_sizes_one_rule");
	t_snapfile_new(&f, "r", LEN, 9, 0, 0);
	ck_assert_int_eq(uffdsnap_reader_open(&r, f.path), 0);
	big.i.size = 0;
	ck_assert_int_eq(uffdsnap_reader_info(r, &big.i), -EINVAL);
	ck_assert_msg(strstr(uffdsnap_last_error(), "uffdsnap_info_t.size is 0"), "%s", uffdsnap_last_error());
	big.i.size = sizeof(big);
	ck_assert_int_eq(uffdsnap_reader_info(r, &big.i), -EINVAL);
	ck_assert_msg(strstr(uffdsnap_last_error(), "uffdsnap_info_t.size is"), "%s", uffdsnap_last_error());
	memset(&big, 0xff, sizeof(big));
	big.i.size = offsetof(uffdsnap_info_t, chunks_loaded); /* the first version */
	ck_assert_int_eq(uffdsnap_reader_info(r, &big.i), 0);
	ck_assert_int_eq(big.i.complete, 1);
	ck_assert_uint_eq(big.i.chunks_loaded, UINT64_MAX); /* past .size: untouched */
	ri.size = 0;
	ck_assert_int_eq(uffdsnap_reader_region(r, 0, &ri), -EINVAL);
	ck_assert_msg(strstr(uffdsnap_last_error(), "uffdsnap_region_info_t.size is 0"), "%s", uffdsnap_last_error());
	ri.size = sizeof(ri);
	ck_assert_int_eq(uffdsnap_reader_region(r, 7, &ri), -ENOENT);
	ck_assert_str_ne(uffdsnap_last_error(), "");
	t_memfd(&m, LEN);
	lreg.addr = m.addr;
	ck_assert_int_eq(uffdsnap_lazy_start(&lz, r, &lreg, 1, NULL), 0);
	ck_assert_int_eq(uffdsnap_lazy_wait(lz), 0);
	ck_assert_int_eq(uffdsnap_lazy_stats(lz, &ls), -EINVAL);
	ck_assert_msg(strstr(uffdsnap_last_error(), "uffdsnap_lazy_stats_t.size is 0"), "%s", uffdsnap_last_error());
	ls.size = sizeof(ls);
	ck_assert_int_eq(uffdsnap_lazy_stats(lz, &ls), 0);
	ck_assert_uint_eq(ls.pages_total, LEN / t_page);
	uffdsnap_lazy_free(lz);
	t_mem_free(&m);
	uffdsnap_reader_free(r);
	t_snapfile_free(&f);
}
END_TEST

struct seen {
	int n, stale;
	char names[8][PATH_MAX + 64];
};

static void on_temp(void *user, const char *tmp, long pid, int stale)
{
	struct seen *s = user;

	printf("  temp %s pid %ld %s\n", tmp, pid, stale ? "stale" : "in use");
	if (s->n < 8)
		snprintf(s->names[s->n], sizeof(s->names[0]), "%s", tmp);
	s->n++;
	s->stale += stale;
}

static bool exists(const char *dir, const char *name)
{
	char p[PATH_MAX + 64];

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return !access(p, F_OK);
}

START_TEST(out_stale_temps)
{
	struct t_snapfile f;
	char dead_tmp[64], locked_tmp[64], live_tmp[64], other_tmp[64], p[PATH_MAX + 64];
	struct seen seen = { 0 };
	uffdsnap_reader_t *r;
	pid_t dead;
	int lfd;

	t_watchdog(60, "out_stale_temps");
	t_snapfile_new(&f, "r", LEN, 5, 0, 0);
	/* a pid that ran and is gone (reaped) */
	dead = fork();
	ck_assert(dead >= 0);
	if (!dead)
		_exit(0);
	ck_assert(waitpid(dead, NULL, 0) == dead);
	snprintf(dead_tmp, sizeof(dead_tmp), "out.tmp.uffdsnap-%d-aaaaaa", (int)dead);
	snprintf(locked_tmp, sizeof(locked_tmp), "out.tmp.uffdsnap-%d-bbbbbb", (int)dead);
	snprintf(live_tmp, sizeof(live_tmp), "out.tmp.uffdsnap-%d-cccccc", (int)getppid());
	snprintf(other_tmp, sizeof(other_tmp), "outx.tmp.uffdsnap-%d-dddddd", (int)dead);
	const char *names[] = { dead_tmp, locked_tmp, live_tmp, other_tmp, "out.tmp.XXXXXX", "out.tmp.uffdsnap-1x-eeeeee" };
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", f.dir, names[i]);
		t_write_file(p, "x", 1);
	}
	/* a writer in another pid namespace: its pid means nothing here, its lock does */
	snprintf(p, sizeof(p), "%s/%s", f.dir, locked_tmp);
	lfd = open(p, O_RDONLY | O_CLOEXEC);
	ck_assert(lfd >= 0 && flock(lfd, LOCK_EX) == 0);

	snprintf(p, sizeof(p), "%s/out", f.dir);
	ck_assert_int_eq(uffdsnap_clean_temps(p, 0, on_temp, &seen), 1);
	ck_assert_int_eq(seen.n, 3);
	ck_assert_int_eq(seen.stale, 1);
	ck_assert(exists(f.dir, dead_tmp));
	/* the next output to the same path removes the stale one only */
	ck_assert_int_eq(uffdsnap_reader_open(&r, f.path), 0);
	ck_assert_int_eq(uffdsnap_reader_extract_file(r, 0, p, 0), 0);
	uffdsnap_reader_free(r);
	ck_assert(!exists(f.dir, dead_tmp));
	for (unsigned i = 1; i < sizeof(names) / sizeof(names[0]); i++)
		ck_assert_msg(exists(f.dir, names[i]), "%s was removed", names[i]);
	/* unlocked, the dead writer's second file goes too, through the explicit clean */
	close(lfd);
	seen = (struct seen){ 0 };
	ck_assert_int_eq(uffdsnap_clean_temps(p, 1, on_temp, &seen), 1);
	ck_assert(!exists(f.dir, locked_tmp) && exists(f.dir, live_tmp));
	ck_assert_int_eq(uffdsnap_clean_temps(p, 1, NULL, NULL), 0);
	for (unsigned i = 2; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", f.dir, names[i]);
		ck_assert(unlink(p) == 0);
	}
	t_snapfile_free(&f);
}
END_TEST

/* Every -EXXX named in the API's documentation has a text of its own. */
START_TEST(errors_documented)
{
	char files[128][NAME_MAX + 16] = { "docs/api.md", "include/uffdsnap.h", "docs/restore.md" };
	unsigned nfiles = 3;
	int missing = 0, checked = 0;
	char path[PATH_MAX + sizeof(files[0])];
	struct dirent *de;
	regmatch_t mt;
	regex_t re;
	DIR *d;

	/* the man pages too: "\-EBADF" in roff */
	snprintf(path, sizeof(path), "%s/docs/man", USNAP_SRCDIR);
	ck_assert((d = opendir(path)) != NULL);
	while ((de = readdir(d)) && nfiles < 128)
		if (strstr(de->d_name, ".3"))
			snprintf(files[nfiles++], sizeof(files[0]), "docs/man/%s", de->d_name);
	closedir(d);
	ck_assert(regcomp(&re, "-E[A-Z0-9]+", REG_EXTENDED) == 0);
	for (unsigned i = 0; i < nfiles; i++) {
		size_t n;
		char *text;

		snprintf(path, sizeof(path), "%s/%.*s", USNAP_SRCDIR, (int)sizeof(files[0]), files[i]);
		text = (char *)t_slurp(path, &n);
		text = realloc(text, n + 1);
		text[n] = '\0';
		for (const char *s = text; !regexec(&re, s, 1, &mt, 0); s += mt.rm_eo) {
			char name[32];
			int e, len = (int)(mt.rm_eo - mt.rm_so - 1);

			snprintf(name, sizeof(name), "%.*s", len, s + mt.rm_so + 1);
			for (e = 1; e < 200; e++)
				if (strerrorname_np(e) && !strcmp(strerrorname_np(e), name))
					break;
			ck_assert_msg(e < 200, "%s names %s, which is not an errno", files[i], name);
			checked++;
			if (!strcmp(uffdsnap_strerror(-e), "unknown error")) {
				printf("  %s: -%s has no text\n", files[i], name);
				missing++;
			}
		}
		free(text);
	}
	regfree(&re);
	printf("errors_documented: %d mentions checked\n", checked);
	ck_assert_int_gt(checked, 30);
	ck_assert_int_eq(missing, 0);
	ck_assert_str_eq(uffdsnap_strerror(-EHWPOISON), "unknown error"); /* the test can fail */
}
END_TEST

int main(void)
{
	Suite *s = suite_create("output");
	TCase *tc = tcase_create("output"), *huge = tcase_create("huge");

	t_test_require_uffd();
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, out_refuses_dir_link_fifo_socket);
	tcase_add_test(tc, out_refuses_device);
	tcase_add_test(tc, out_bad_snapshot_keeps_file);
#ifdef USNAP_FAULT_INJECTION
	tcase_add_test(tc, out_close_fails);
#endif
	tcase_add_test(tc, out_stale_temps);
	tcase_add_test(tc, restore_sizes_checked);
	tcase_add_test(tc, struct_sizes_one_rule);
	tcase_add_test(tc, errors_documented);
	tcase_set_timeout(huge, 120);
	tcase_set_tags(huge, "huge");
	tcase_add_test(huge, out_restore_hugetlbfs);
	suite_add_tcase(s, tc);
	suite_add_tcase(s, huge);
	return t_run_suite(s);
}
