/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test helpers, what a test changes in the system and must put back: a zram
 * swap device that a test creates for itself, and one /proc or /sys knob
 * (t_knob_set). Both are undone at exit, on SIGTERM/SIGINT/SIGHUP, or when
 * told (see helpers.h). Made by the process that will remove it (the Check parent):
 * a forked test child inherits the handlers but never removes it.
 *
 * A test killed outright (SIGKILL: meson's timeout after its grace period,
 * or a person) cannot remove it, and a 512 MiB swap device once stayed on a
 * machine that way (and 1,345 reserved huge pages). So each change has a
 * marker in /run: /run/libuffdsnap-zramN holding its owner's pid,
 * /run/libuffdsnap-knob.PID holding the knob's path and old value; the next
 * test that makes such a change first undoes those whose owner is gone.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/swap.h>
#include <unistd.h>

#include "helpers.h"

struct t_swap t_swap = { .id = -1 };

int t_write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), e = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, s, strlen(s)) < 0)
		e = -errno;
	close(fd);
	return e;
}

#define MARKER_DIR "/run"

/* The owner of a marker is gone: no such process, or a zombie (its parent
 * has not reaped it yet: it will never undo anything). */
static bool owner_gone(pid_t pid)
{
	char path[64], stat[256];
	ssize_t n;
	int fd;

	if (pid <= 0 || (kill(pid, 0) != 0 && errno == ESRCH))
		return true;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	n = fd < 0 ? -1 : read(fd, stat, sizeof(stat) - 1);
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return fd < 0 && errno == ENOENT;
	stat[n] = '\0';
	return strrchr(stat, ')') && strrchr(stat, ')')[1] == ' ' && strrchr(stat, ')')[2] == 'Z';
}

/* ---- zram swap ------------------------------------------------------------------------ */

#define MARKER_PREFIX "libuffdsnap-zram"

/* Remove zram device num (decimal): its swap (if on), its memory, the
 * device, its marker. Async-signal-safe: no stdio, no snprintf. */
static void zram_remove(const char *num, bool swap_on)
{
	static const char failed[] = "swapoff of the test's zram device failed\n";
	char dev[32] = "/dev/zram", path[64] = "/sys/block/zram", marker[64] = MARKER_DIR "/" MARKER_PREFIX;

	strcat(dev, num);
	if (swap_on && swapoff(dev) != 0 && errno != EINVAL && write(2, failed, sizeof(failed) - 1) < 0) {
		/* nothing more to say */
	}
	strcat(path, num);
	strcat(path, "/reset");
	t_write_str(path, "1");
	t_write_str("/sys/class/zram-control/hot_remove", num);
	strcat(marker, num);
	unlink(marker);
}

void t_swap_down(void)
{
	char num[16], rev[16];
	int n = 0, k = 0, v = t_swap.id;

	if (v < 0 || getpid() != t_swap.owner)
		return;
	t_swap.id = -1;
	do {
		rev[k++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (k)
		num[n++] = rev[--k];
	num[n] = '\0';
	zram_remove(num, t_swap.on);
	t_swap.on = false;
}

/* Devices of earlier runs whose owner died without removing them. */
static void reap_stale(void)
{
	DIR *d = opendir(MARKER_DIR);
	struct dirent *e;

	while (d && (e = readdir(d))) {
		const char *num = e->d_name + strlen(MARKER_PREFIX);
		char path[PATH_MAX], buf[32] = "";
		ssize_t n;
		int fd;

		if (strncmp(e->d_name, MARKER_PREFIX, strlen(MARKER_PREFIX)) || !*num)
			continue;
		snprintf(path, sizeof(path), "%s/%s", MARKER_DIR, e->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
		if (fd >= 0)
			close(fd);
		if (n > 0 && !owner_gone((pid_t)atoi(buf)))
			continue; /* its owner runs */
		printf("zram%s: left by test process %s, which is gone: removed\n", num, n > 0 ? buf : "?");
		zram_remove(num, true);
	}
	if (d)
		closedir(d);
}

/* ---- one knob ------------------------------------------------------------------------- */

#define KNOB_PREFIX "libuffdsnap-knob."

static struct {
	pid_t owner;            /* 0: nothing to put back */
	char path[128], old[128], marker[64];
} knob;

/* Async-signal-safe. */
void t_knob_restore(void)
{
	if (!knob.owner || getpid() != knob.owner)
		return;
	knob.owner = 0;
	t_write_str(knob.path, knob.old);
	unlink(knob.marker);
}

/* Knobs of earlier runs whose owner died without putting them back. */
void t_knob_reap(void)
{
	DIR *d = opendir(MARKER_DIR);
	struct dirent *e;

	while (d && (e = readdir(d))) {
		char path[PATH_MAX], buf[256] = "", *nl;
		pid_t pid = (pid_t)atoi(e->d_name + strlen(KNOB_PREFIX));
		ssize_t n;
		int fd;

		if (strncmp(e->d_name, KNOB_PREFIX, strlen(KNOB_PREFIX)) || !owner_gone(pid))
			continue;
		snprintf(path, sizeof(path), "%s/%s", MARKER_DIR, e->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
		if (fd >= 0)
			close(fd);
		if (n > 0 && (nl = strchr(buf, '\n'))) { /* "path\nold" */
			*nl = '\0';
			printf("%s: left changed by test process %d, which is gone: put back to %s\n", buf, (int)pid,
			       nl + 1);
			t_write_str(buf, nl + 1);
		}
		unlink(path);
	}
	if (d)
		closedir(d);
}

static void undo_all(void)
{
	t_swap_down();
	t_knob_restore();
}

static void undo_signal(int sig)
{
	undo_all();
	signal(sig, SIG_DFL);
	raise(sig);
}

static void undo_install(void)
{
	static bool done;
	struct sigaction sa = { 0 };

	if (done)
		return;
	sa.sa_handler = undo_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	atexit(undo_all);
	done = true;
}

int t_knob_set(const char *path, const char *value)
{
	char buf[sizeof(knob.path) + sizeof(knob.old) + 2];
	ssize_t n;
	int fd, e;

	if (knob.owner)
		return -EBUSY;
	t_knob_reap();
	fd = open(path, O_RDONLY | O_CLOEXEC);
	n = fd < 0 ? -1 : read(fd, knob.old, sizeof(knob.old) - 1);
	e = errno;
	if (fd >= 0)
		close(fd);
	if (n <= 0 || n == (ssize_t)sizeof(knob.old) - 1)
		return n < 0 ? -e : n ? -E2BIG : -EIO; /* E2BIG: could not be put back whole */
	knob.old[n] = '\0';
	knob.old[strcspn(knob.old, "\n")] = '\0';
	if (strchr(knob.old, '[') && strchr(knob.old, ']')) { /* "always [never] deny": the word selected */
		char *b = strchr(knob.old, '[') + 1;
		size_t len = strcspn(b, "]");

		memmove(knob.old, b, len);
		knob.old[len] = '\0';
	}
	snprintf(knob.path, sizeof(knob.path), "%s", path);
	snprintf(knob.marker, sizeof(knob.marker), "%s/%s%d", MARKER_DIR, KNOB_PREFIX, (int)getpid());
	snprintf(buf, sizeof(buf), "%s\n%s", knob.path, knob.old);
	fd = open(knob.marker, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, buf, strlen(buf)) < 0)
		printf("note: marker %s: %s (a kill -9 would leave %s changed)\n", knob.marker, strerror(errno), path);
	if (fd >= 0)
		close(fd);
	undo_install();
	knob.owner = getpid();
	return t_write_str(path, value);
}

/* The header mkswap would write: version 1, the last page, the magic. */
static int write_header(const char *dev, size_t bytes)
{
	uint8_t *hdr = calloc(1, 4096);
	int fd = open(dev, O_WRONLY | O_CLOEXEC), e;

	((uint32_t *)(hdr + 1024))[0] = 1;
	((uint32_t *)(hdr + 1024))[1] = (uint32_t)(bytes / 4096 - 1);
	memcpy(hdr + 4096 - 10, "SWAPSPACE2", 10);
	e = fd < 0 ? errno : pwrite(fd, hdr, 4096, 0) != 4096 ? errno : fsync(fd) ? errno : 0;
	if (fd >= 0)
		close(fd);
	free(hdr);
	return e;
}

bool t_swap_up(unsigned mib)
{
	char p[128], buf[32];
	ssize_t n;
	int fd, e;

	t_swap.on = false;
	if (geteuid() != 0) {
		snprintf(t_swap.why, sizeof(t_swap.why), "not root (euid %u): cannot create a zram swap device",
			 geteuid());
		return false;
	}
	fd = open("/sys/class/zram-control/hot_add", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(t_swap.why, sizeof(t_swap.why), "/sys/class/zram-control/hot_add: %s (no zram)",
			 strerror(errno));
		return false;
	}
	reap_stale();
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0) {
		snprintf(t_swap.why, sizeof(t_swap.why), "zram hot_add: %s", n < 0 ? strerror(errno) : "no id");
		return false;
	}
	buf[n] = '\0';
	undo_install();
	t_swap.id = atoi(buf);
	t_swap.owner = getpid();
	snprintf(p, sizeof(p), "%s/%s%d", MARKER_DIR, MARKER_PREFIX, t_swap.id);
	snprintf(buf, sizeof(buf), "%d", (int)getpid());
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, buf, strlen(buf)) < 0)
		printf("note: marker %s: %s (a kill -9 would leave the device)\n", p, strerror(errno));
	if (fd >= 0)
		close(fd);
	snprintf(t_swap.dev, sizeof(t_swap.dev), "/dev/zram%d", t_swap.id);
	snprintf(p, sizeof(p), "/sys/block/zram%d/disksize", t_swap.id);
	snprintf(buf, sizeof(buf), "%uM", mib);
	if ((e = -t_write_str(p, buf)) || (e = write_header(t_swap.dev, (size_t)mib * MiB)) ||
	    (swapon(t_swap.dev, 0) && (e = errno))) {
		snprintf(t_swap.why, sizeof(t_swap.why), "zram swap %s: %s", t_swap.dev, strerror(e));
		t_swap_down();
		return false;
	}
	t_swap.on = true;
	return true;
}
