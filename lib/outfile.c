/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Files the library writes by name: a snapshot's file sink, a restore into a
 * file, an extract into a file (uffdsnap_reader_extract_file), and the
 * clean-up of temporaries writers left behind (uffdsnap_clean_temps).
 *
 * The rule, the same for all of them (docs/api.md "Output files"):
 *  - the target is a regular file or does not exist. A directory, device,
 *    FIFO or socket is refused before anything is created: renaming over
 *    /dev/null would replace the device node with our file. A symbolic link
 *    is refused too, never followed: renaming over it would replace the link
 *    while its user meant the file it points to, and writing through it would
 *    bypass the temporary file. The caller names the real file.
 *  - the bytes go to "<path>.tmp.uffdsnap-<pid>-XXXXXX" in the same directory
 *    (same file system: rename is atomic), created with O_EXCL, and are
 *    renamed over the target only once complete and closed without error.
 *    Until then the previous file at path is untouched.
 *  - the writer holds an flock on its temporary file while it is open, and
 *    its pid is in the name. A temporary is stale when no process of that pid
 *    runs here and nobody holds its lock (the lock also covers a writer in
 *    another pid namespace); a new output to the same path removes stale ones.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "inject.h"
#include "outfile.h"
#include "reader-private.h"
#include "uffdsnap-private.h"

static const char *kind_of(mode_t m)
{
	return S_ISCHR(m) ? "a character device" : S_ISBLK(m) ? "a block device" : S_ISFIFO(m) ? "a FIFO"
	       : S_ISSOCK(m) ? "a socket" : "not a regular file";
}

int usnap_out_check(const char *path, char *msg, size_t cap)
{
	struct stat st;

	if (lstat(path, &st)) {
		if (errno == ENOENT)
			return 0;
		usnap_format(msg, cap, "%s: %s", path, strerror(errno));
		return -errno;
	}
	if (S_ISREG(st.st_mode))
		return 0;
	if (S_ISDIR(st.st_mode)) {
		usnap_format(msg, cap, "%s is a directory: name a file in it", path);
		return -EISDIR;
	}
	if (S_ISLNK(st.st_mode)) {
		usnap_format(msg, cap, "%s is a symbolic link: it is neither followed nor replaced; name the file it "
			     "points to", path);
		return -ELOOP;
	}
	usnap_format(msg, cap, "%s is %s: output is written only to regular files, never over a device, FIFO or "
		     "socket", path, kind_of(st.st_mode));
	return -EINVAL;
}

/* The directory of path and its last component, split in place in buf. */
static void split(const char *path, char *buf, size_t cap, const char **dir, const char **base)
{
	char *slash;

	snprintf(buf, cap, "%s", path);
	slash = strrchr(buf, '/');
	if (!slash) {
		*dir = ".";
		*base = buf;
	} else {
		*slash = '\0';
		*dir = slash == buf ? "/" : buf;
		*base = slash + 1;
	}
}

/* The writer's pid if name is "<base>.tmp.uffdsnap-<pid>-XXXXXX", else 0. */
static long tmp_pid(const char *name, const char *base)
{
	size_t n = strlen(base), m = strlen(USNAP_TMP_MARK);
	const char *p = name + n + m;
	char *end;
	long pid;

	if (strncmp(name, base, n) || strncmp(name + n, USNAP_TMP_MARK, m))
		return 0;
	errno = 0;
	pid = strtol(p, &end, 10);
	if (errno || end == p || pid <= 0 || *end != '-' || strlen(end + 1) != 6)
		return 0;
	return pid;
}

/*
 * 1 if the temporary dir/name is stale (its writer is gone), 0 if in use.
 * With remove, a stale one is unlinked while its lock is held, so a writer
 * that is somehow still there cannot be half way through a commit.
 */
static int tmp_stale(int dfd, const char *name, long pid, bool remove)
{
	int fd, stale = 0;
	struct stat st;

	if (pid == getpid() || !kill((pid_t)pid, 0) || errno == EPERM)
		return 0;
	fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return 0;
	if (!fstat(fd, &st) && S_ISREG(st.st_mode) && !flock(fd, LOCK_EX | LOCK_NB)) {
		stale = 1;
		if (remove && unlinkat(dfd, name, 0))
			stale = 0;
	}
	close(fd);
	return stale;
}

/* Walk the temporaries of path; see uffdsnap_clean_temps(). */
static int walk_temps(const char *path, bool remove, uffdsnap_temp_fn fn, void *user)
{
	char buf[PATH_MAX], full[PATH_MAX + NAME_MAX + 2];
	const char *dir, *base;
	struct dirent *e;
	int found = 0;
	DIR *d;

	split(path, buf, sizeof(buf), &dir, &base);
	if (!*base)
		return usnap_err(-EINVAL, "%s names a directory, not a file", path);
	if (!(d = opendir(dir)))
		return usnap_err(-errno, "opening the directory %s: %s", dir, strerror(errno));
	while ((e = readdir(d))) {
		long pid = tmp_pid(e->d_name, base);
		int stale;

		if (!pid)
			continue;
		stale = tmp_stale(dirfd(d), e->d_name, pid, remove);
		found += stale;
		if (fn) {
			/* named as the caller named path: "x.tmp..." for "x", not "./x.tmp..." */
			snprintf(full, sizeof(full), "%s%s%s", base == buf ? "" : dir, base == buf ? "" : "/", e->d_name);
			fn(user, full, pid, stale);
		}
	}
	closedir(d);
	return found;
}

USNAP_EXPORT int uffdsnap_clean_temps(const char *path, int remove, uffdsnap_temp_fn fn, void *user)
{
	usnap_clear_err();
	if (!path || !*path)
		return usnap_err(-EINVAL, "uffdsnap_clean_temps: path must not be NULL or empty");
	return walk_temps(path, remove, fn, user);
}

int usnap_out_create(const char *path, mode_t mode, char **tmp)
{
	char msg[512];
	size_t n = strlen(path) + sizeof(USNAP_TMP_MARK) + 32;
	int fd, rc;

	*tmp = NULL;
	if ((rc = usnap_out_check(path, msg, sizeof(msg))))
		return usnap_err(rc, "%s", msg);
	walk_temps(path, true, NULL, NULL); /* best effort: a directory we cannot list still takes a new file */
	usnap_clear_err();
	if (!(*tmp = malloc(n)))
		return usnap_err(-ENOMEM, "allocating a path");
	snprintf(*tmp, n, "%s" USNAP_TMP_MARK "%ld-XXXXXX", path, (long)getpid());
	fd = mkostemp(*tmp, O_CLOEXEC); /* O_EXCL, mode 0600 */
	if (fd < 0) {
		rc = -errno;
		usnap_err(rc, "creating a temporary file next to %s: %s", path, strerror(-rc));
		goto fail;
	}
	/* an flock lives as long as the open file: it marks the writer alive */
	(void)flock(fd, LOCK_EX | LOCK_NB);
	if (mode != 0600 && fchmod(fd, mode)) {
		rc = -errno;
		usnap_err(rc, "setting mode 0%o on %s: %s", (unsigned)mode, *tmp, strerror(-rc));
		close(fd);
		unlink(*tmp);
		goto fail;
	}
	return fd;
fail:
	free(*tmp);
	*tmp = NULL;
	return rc;
}

/* An fd of the directory of path (to fsync a rename), or -errno. */
static int open_dir_of(const char *path)
{
	char buf[PATH_MAX];
	const char *dir, *base;
	int fd;

	split(path, buf, sizeof(buf), &dir, &base);
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return fd >= 0 ? fd : -errno;
}

int usnap_out_commit(int fd, const char *tmp, const char *path, bool sync_dir, char *msg, size_t cap)
{
	int dfd = -1, rc = 0, e;

	/* Opened before the rename: a rename that cannot be made durable as
	 * asked is a failure, reported before the old file is gone. */
	if (sync_dir && (dfd = open_dir_of(path)) < 0) {
		rc = dfd;
		usnap_format(msg, cap, "opening the directory of %s to fsync it: %s", path, strerror(-rc));
	}
	/* Closed before the rename: close(2) can report a write that failed
	 * late (NFS, quota), and a file that failed must never take the name. */
	e = close(fd) ? errno : usnap_inject_close(); /* tests only: inject.h */
	if (e && !rc) {
		rc = -e;
		usnap_format(msg, cap, "closing %s: %s", tmp, strerror(e));
	}
	if (!rc)
		rc = usnap_out_check(path, msg, cap);
	if (!rc && rename(tmp, path)) {
		rc = -errno;
		usnap_format(msg, cap, "renaming %s to %s: %s", tmp, path, strerror(errno));
	}
	if (rc)
		unlink(tmp);
	else if (dfd >= 0 && fsync(dfd)) {
		rc = -errno;
		usnap_format(msg, cap, "fsync of the directory of %s: %s (the file is in place but may not survive a "
			     "crash)", path, strerror(errno));
	}
	if (dfd >= 0)
		close(dfd);
	return rc;
}

USNAP_EXPORT int uffdsnap_reader_extract_file(uffdsnap_reader_t *r, unsigned id, const char *path, mode_t mode)
{
	uffdsnap_region_info_t ri = { .size = sizeof(ri) };
	char msg[512], *tmp;
	int fd, rc;

	usnap_clear_err();
	if (!r || !path || !*path)
		return usnap_err(-EINVAL, "uffdsnap_reader_extract_file: reader and path must not be NULL or empty");
	if (mode & ~(mode_t)07777)
		return usnap_err(-EINVAL, "uffdsnap_reader_extract_file: mode 0%o is not a permission mode",
				 (unsigned)mode);
	if (uffdsnap_reader_region(r, id, &ri))
		return usnap_err(-ENOENT, "the snapshot has no region %u", id);
	/* a snapshot known incomplete, or a stream, is refused before any file is made */
	if ((rc = usnap_reader_ready(r, id)))
		return usnap_err(rc, "%s", uffdsnap_reader_error(r));
	if ((fd = usnap_out_create(path, mode ? mode : 0600, &tmp)) < 0)
		return fd;
	if ((rc = uffdsnap_reader_extract_fd(r, id, fd))) {
		usnap_err(rc, "region '%s': %s", ri.name, uffdsnap_reader_error(r));
		close(fd);
		unlink(tmp);
	} else if ((rc = usnap_out_commit(fd, tmp, path, false, msg, sizeof(msg)))) {
		usnap_err(rc, "%s", msg);
	}
	free(tmp);
	return rc;
}
