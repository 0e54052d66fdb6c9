/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Output files written by name (outfile.c): snapshot file sinks, restore
 * into a file, extract into a file. One rule for all of them, so that no
 * path of the library can destroy what a user has at that name.
 */
#ifndef USNAP_OUTFILE_H
#define USNAP_OUTFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* What comes after "<path>" in a temporary name: "<path>.tmp.uffdsnap-<pid>-XXXXXX". */
#define USNAP_TMP_MARK ".tmp.uffdsnap-"

/*
 * 0 if `path` may be replaced: it does not exist or is a regular file.
 * Otherwise -EISDIR (a directory), -ELOOP (a symbolic link: never followed,
 * never replaced), -EINVAL (a device, FIFO or socket), or the lstat(2) error,
 * with a sentence in msg.
 */
int usnap_out_check(const char *path, char *msg, size_t cap);

/*
 * Check `path`, remove the stale temporaries earlier writers of it left, and
 * create a new temporary file next to it (O_EXCL, `mode`, locked while open).
 * The fd, with the temporary name in *tmp (malloc'd); or -errno with the
 * detail in uffdsnap_last_error().
 */
int usnap_out_create(const char *path, mode_t mode, char **tmp);

/*
 * Finish an output: close fd (checked: a delayed write error shows there),
 * check `path` again, rename tmp over it, and with sync_dir fsync the
 * directory. fd is closed in every case; on failure tmp is unlinked, the
 * previous file at path is untouched, and msg says why. 0 or -errno.
 */
int usnap_out_commit(int fd, const char *tmp, const char *path, bool sync_dir, char *msg, size_t cap);

#endif
