/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test helpers, swap: a zram swap device that a test creates for itself and
 * always removes, at exit, on SIGTERM/SIGINT/SIGHUP, or when told (see
 * helpers.h). Made by the process that will remove it (the Check parent):
 * a forked test child inherits the handlers but never removes it.
 *
 * A test killed outright (SIGKILL: meson's timeout after its grace period,
 * or a person) cannot remove it, and a 512 MiB swap device once stayed on a
 * machine that way. So each device has a marker, /run/libuffdsnap-zramN
 * holding its owner's pid, and the next t_swap_up() removes the devices
 * whose owner is gone.
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
		if (n > 0 && (kill((pid_t)atoi(buf), 0) == 0 || errno != ESRCH))
			continue; /* its owner runs */
		printf("zram%s: left by test process %s, which is gone: removed\n", num, n > 0 ? buf : "?");
		zram_remove(num, true);
	}
	if (d)
		closedir(d);
}

static void swap_signal(int sig)
{
	t_swap_down();
	signal(sig, SIG_DFL);
	raise(sig);
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
	static bool handlers;
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
	if (!handlers) {
		struct sigaction sa = { 0 };

		sa.sa_handler = swap_signal;
		sigaction(SIGTERM, &sa, NULL);
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGHUP, &sa, NULL);
		atexit(t_swap_down);
		handlers = true;
	}
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
