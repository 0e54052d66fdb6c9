/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Error texts. uffdsnap_strerror() says what an errno means for this library
 * and what to do; uffdsnap_last_error() keeps the detail of the calling
 * thread's last failure (which region, which syscall), because an errno alone
 * cannot say "region 'pool' is a regular file on ext4". And the log hook,
 * for failures no caller is there to be told of.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "uffdsnap-private.h"

static __thread char last_error[512];

/*
 * Messages quote region names and other bytes from snapshot files, which may
 * hold anything but NUL: a hostile file must not reach a terminal through a
 * program that prints our messages. Bytes outside printable ASCII become
 * \xNN (the text is cut at a whole escape).
 */
void usnap_vformat(char *dst, size_t cap, const char *fmt, va_list ap)
{
	static const char hex[] = "0123456789abcdef";
	char raw[1024];
	size_t n = 0;

	vsnprintf(raw, sizeof(raw), fmt, ap);
	for (const char *s = raw; *s && n + 5 <= cap; s++) {
		unsigned char c = (unsigned char)*s;
		if (c >= 0x20 && c <= 0x7e) {
			dst[n++] = (char)c;
		} else {
			dst[n++] = '\\', dst[n++] = 'x', dst[n++] = hex[c >> 4], dst[n++] = hex[c & 15];
		}
	}
	if (cap)
		dst[n] = '\0';
}

void usnap_format(char *dst, size_t cap, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	usnap_vformat(dst, cap, fmt, ap);
	va_end(ap);
}

int usnap_err(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	usnap_vformat(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
	return err;
}

void usnap_clear_err(void)
{
	last_error[0] = '\0';
}

USNAP_EXPORT const char *uffdsnap_last_error(void)
{
	return last_error;
}

/* fn and user change together: a line never goes to one hook's fn with the
 * other's user pointer */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static uffdsnap_log_fn log_fn;
static void *log_user;

USNAP_EXPORT void uffdsnap_set_log_fn(uffdsnap_log_fn fn, void *user)
{
	pthread_mutex_lock(&log_lock);
	log_fn = fn;
	log_user = user;
	pthread_mutex_unlock(&log_lock);
}

USNAP_EXPORT void uffdsnap_log_stderr(void *user, const char *line)
{
	struct iovec v[] = { { (void *)line, strlen(line) }, { "\n", 1 } };
	ssize_t w;

	(void)user;
	/* writev(2), not stdio: a program thread may hold stderr's lock while
	 * it waits for a page that only the logging thread can serve */
	w = writev(STDERR_FILENO, v, 2);
	(void)w;
}

void usnap_log(const char *fmt, ...)
{
	uffdsnap_log_fn fn;
	char line[768];
	va_list ap;
	void *user;

	pthread_mutex_lock(&log_lock);
	fn = log_fn;
	user = log_user;
	pthread_mutex_unlock(&log_lock);
	if (!fn)
		return;
	va_start(ap, fmt);
	usnap_vformat(line, sizeof(line), fmt, ap);
	va_end(ap);
	fn(user, line);
}

USNAP_EXPORT unsigned uffdsnap_version(void)
{
	return UFFDSNAP_VERSION_NUMBER;
}

USNAP_EXPORT const char *uffdsnap_strerror(int err)
{
	/* unsigned: -INT_MIN would overflow */
	switch (err < 0 ? 0u - (unsigned)err : (unsigned)err) {
	case 0:
		return "success";
	case EPERM:
		return "userfaultfd is not permitted: run as root, grant access to /dev/userfaultfd, "
		       "or set vm.unprivileged_userfaultfd=1 (or allow UFFDSNAP_OPT_ALLOW_USER_MODE_ONLY)";
	case ENOSYS:
		return "this kernel has no userfaultfd (CONFIG_USERFAULTFD is off)";
	case EOPNOTSUPP:
		return "the kernel lacks a userfaultfd feature libuffdsnap needs "
		       "(write-protect of shmem needs Linux 5.19+ with CONFIG_PTE_MARKER_UFFD_WP; migration needs "
		       "UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN, Linux 6.7+)";
	case EINVAL:
		return "invalid argument: check page alignment, lengths, NULL pointers and the .size of option structs "
		       "(for an output path: it is a device, FIFO or socket, not a regular file)";
	case EEXIST:
		return "a region with this name is already registered";
	case EBUSY:
		return "busy: the range overlaps a registered region, or a snapshot or a migration is already running";
	case EFAULT:
		return "the address range is not (entirely) mapped";
	case EMEDIUMTYPE:
		return "unsupported memory: a region must be MAP_SHARED shmem (memfd, tmpfs, /dev/shm, "
		       "MAP_SHARED|MAP_ANONYMOUS) mapped contiguously from one file, or private memory "
		       "(MAP_PRIVATE|MAP_ANONYMOUS, MAP_PRIVATE of a shmem file)";
	case ENAMETOOLONG:
		return "region name too long (at most 255 bytes)";
	case ENOENT:
		return "not found: no such file or directory, no such region, or no regions registered";
	case ENOMEM:
		return "out of memory";
	case ENOSPC:
		return "no space left on the snapshot's device";
	case EDQUOT:
		return "disk quota exceeded on the snapshot's device";
	case EPIPE:
		return "the sink's reader or the migration's peer went away (broken pipe or closed socket)";
	case EIO:
		return "I/O error writing or reading the snapshot";
	case ECANCELED:
		return "the snapshot or migration was cancelled (uffdsnap_cancel, or its context or handle was freed)";
	case ESTALE:
		return "memory changed behind the snapshot's back (a page was removed by hole punch, "
		       "truncate, MADV_REMOVE, or MADV_DONTNEED on private memory, before it was "
		       "copied): the snapshot would not be exact";
	case EBADMSG:
		return "the snapshot file is corrupt, or the migration stream (a checksum or a structure check failed)";
	case ENODATA:
		return "the snapshot is incomplete: truncated, or the snapshot failed while it was written";
	case ENOLINK:
		return "no parent: a delta needs the snapshot before it. Taking one: no snapshot of this context "
		       "completed since it was created, since its last snapshot failed or was cancelled, or since a "
		       "region was added (or the context lacks UFFDSNAP_OPT_DELTA): take a full snapshot. Reading "
		       "one: open it with its chain, the full snapshot and each delta in order (a file missing, out "
		       "of order or of another chain breaks the chain)";
	case ENOEXEC:
		return "not a libuffdsnap snapshot file";
	case EPROTONOSUPPORT:
		return "snapshot format or migration protocol version not supported by this library";
	case EACCES:
		return "permission denied opening the snapshot file or its directory";
	case ESPIPE:
		return "not possible on a stream (pipe or socket): a stream can only be verified; save it to a file "
		       "for random access";
	case EAGAIN:
		return "resource temporarily unavailable: try again";
	case EBADF:
		return "not an open file descriptor (or not open for the access needed)";
	case EISDIR:
		return "the output path is a directory: name a file";
	case ELOOP:
		return "the output path is a symbolic link: it is neither followed nor replaced, name the file it "
		       "points to";
	case ENOTDIR:
		return "a component of the path is not a directory";
	case EROFS:
		return "the file system is read-only";
	case EMFILE:
		return "too many open files in this process (RLIMIT_NOFILE)";
	case ENFILE:
		return "too many open files in the system";
	case ETIMEDOUT:
		return "timed out: the peer did not answer in time";
	case ECONNREFUSED:
		return "connection refused: no server is listening on the socket";
	case ECONNRESET:
		return "the peer closed the connection";
	case ENOTSOCK:
		return "not a connected stream socket (TCP or Unix): a migration needs one";
	case EPROTO:
		return "protocol error: the peer sent something this library does not understand";
	case EFBIG:
		return "the file would exceed the file size limit";
	case EADDRINUSE:
		return "another process listens on that socket";
	case EALREADY:
		return "already done: this context listens already";
	case EUSERS:
		return "too many processes have joined this context";
	default:
		return "unknown error";
	}
}

int usnap_check_size(const char *fn, const char *type, size_t size, size_t min, size_t ours)
{
	if (size >= min && size <= ours)
		return 0;
	return usnap_err(-EINVAL, "%s: %s.size is %zu: set it to sizeof(%s) (%zu here)%s", fn, type, size, type, ours,
			 size > ours ? ", or use the library your program was built against" : "");
}

