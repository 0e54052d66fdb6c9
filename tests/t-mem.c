/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test helpers, memory: regions of every kind (memfd, tmpfs, hugetlbfs,
 * anonymous), fill patterns and their checks, what /proc/self/pagemap says (see helpers.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <unistd.h>

#include "helpers.h"

/* ---- memory regions -------------------------------------------------------- */

const char *usnap_mem_kind_name(enum usnap_mem_kind k)
{
	switch (k) {
	case USNAP_MEM_MEMFD: return "memfd";
	case USNAP_MEM_DEVSHM: return "/dev/shm file";
	case USNAP_MEM_TMPFS: return "tmpfs file";
	case USNAP_MEM_ANON_SHARED: return "MAP_SHARED|MAP_ANONYMOUS";
	case USNAP_MEM_DISKFILE: return "regular file on /var/tmp";
	case USNAP_MEM_ANON_PRIVATE: return "MAP_PRIVATE|MAP_ANONYMOUS";
	}
	return "?";
}

static int open_file_in(struct usnap_mem *m, const char *dir)
{
	int fd;

	snprintf(m->path, sizeof(m->path), "%s/usnap-test-XXXXXX", dir);
	fd = mkostemp(m->path, O_CLOEXEC);
	ck_assert_msg(fd >= 0, "mkostemp %s: %s", m->path, strerror(errno));
	return fd;
}

void usnap_mem_new(struct usnap_mem *m, enum usnap_mem_kind kind, size_t len)
{
	int prot = PROT_READ | PROT_WRITE;

	memset(m, 0, sizeof(*m));
	m->kind = kind;
	m->len = len;
	m->fd = -1;
	switch (kind) {
	case USNAP_MEM_MEMFD:
		m->fd = memfd_create("usnap-test", MFD_CLOEXEC);
		ck_assert_msg(m->fd >= 0, "memfd_create: %s", strerror(errno));
		break;
	case USNAP_MEM_DEVSHM:
		m->fd = open_file_in(m, "/dev/shm");
		break;
	case USNAP_MEM_TMPFS:
		usnap_tmpfs_mount(m->mnt, len + 4 * MiB);
		m->fd = open_file_in(m, m->mnt);
		break;
	case USNAP_MEM_DISKFILE:
		m->fd = open_file_in(m, "/var/tmp");
		break;
	case USNAP_MEM_ANON_SHARED:
		m->addr = mmap(NULL, len, prot, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		break;
	case USNAP_MEM_ANON_PRIVATE:
		m->addr = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		break;
	}
	if (m->fd >= 0) {
		ck_assert_msg(ftruncate(m->fd, (off_t)len) == 0, "ftruncate %zu: %s", len, strerror(errno));
		m->addr = mmap(NULL, len, prot, MAP_SHARED, m->fd, 0);
	}
	ck_assert_msg(m->addr != MAP_FAILED, "mmap %zu bytes (%s): %s", len, usnap_mem_kind_name(kind),
		      strerror(errno));
}

uint8_t *usnap_memfd(struct usnap_mem *m, size_t len)
{
	usnap_mem_new(m, USNAP_MEM_MEMFD, len);
	return m->addr;
}

void usnap_mem_free(struct usnap_mem *m)
{
	if (m->addr && m->addr != MAP_FAILED)
		munmap(m->addr, m->len);
	if (m->fd >= 0)
		close(m->fd);
	if (m->path[0])
		unlink(m->path);
	if (m->mnt[0])
		usnap_tmpfs_umount(m->mnt);
	memset(m, 0, sizeof(*m));
	m->fd = -1;
}

/* ---- patterns --------------------------------------------------------------- */

uint64_t usnap_splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void usnap_fill_page(void *page, uint64_t seed, uint64_t pageno)
{
	uint64_t st = seed * 0x100000001b3ull ^ (pageno + 1) * 0x9e3779b97f4a7c15ull;
	uint64_t *p = page, x = usnap_splitmix64(&st);

	/* xorshift64 stream seeded per page: cheap and never all-zero */
	if (!x)
		x = 1;
	for (size_t i = 0; i < usnap_page / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = x;
	}
}

void usnap_fill_random(void *addr, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len / usnap_page; i++)
		usnap_fill_page((uint8_t *)addr + i * usnap_page, seed, i);
}

size_t usnap_fill_mixed(void *addr, size_t len, uint64_t seed, unsigned hole_every, unsigned zero_every)
{
	size_t holes = 0;

	for (size_t i = 0; i < len / usnap_page; i++) {
		uint8_t *p = (uint8_t *)addr + i * usnap_page;
		if (hole_every && i % hole_every == 1 % hole_every) {
			holes++;
			continue;
		}
		if (zero_every && i % zero_every == 2 % zero_every)
			memset(p, 0, usnap_page);
		else
			usnap_fill_page(p, seed, i);
	}
	return holes;
}

uint8_t *usnap_buf_alloc(size_t len)
{
	void *p = mmap(NULL, len ? len : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_msg(p != MAP_FAILED, "mmap %zu: %s", len, strerror(errno));
	return p;
}

void usnap_buf_free(void *buf, size_t len)
{
	if (buf)
		munmap(buf, len ? len : 1);
}

uint8_t *usnap_copy(const void *addr, size_t len)
{
	uint8_t *p = usnap_buf_alloc(len);

	memcpy(p, addr, len);
	return p;
}

uint8_t *usnap_mem_copy(const struct usnap_mem *m)
{
	uint8_t *p;

	if (m->fd < 0)
		return usnap_copy(m->addr, m->len);
	p = usnap_buf_alloc(m->len);
	for (size_t off = 0; off < m->len;) {
		ssize_t r = pread(m->fd, p + off, m->len - off, (off_t)off);
		ck_assert_msg(r > 0, "pread region file: %s", strerror(errno));
		off += (size_t)r;
	}
	return p;
}

long usnap_mem_holes(const struct usnap_mem *m)
{
	off_t pos = 0, end = (off_t)m->len;
	long data = 0;

	if (m->fd < 0)
		return -1;
	while (pos < end) {
		off_t d = lseek(m->fd, pos, SEEK_DATA), h;
		if (d < 0 || d >= end)
			break;
		h = lseek(m->fd, d, SEEK_HOLE);
		if (h > end)
			h = end;
		data += (long)((h - d) / (off_t)usnap_page);
		pos = h;
	}
	return (long)(m->len / usnap_page) - data;
}

/* ---- pagemap ---------------------------------------------------------------- */

static long pagemap_count(const void *addr, size_t len, uint64_t bit)
{
	uintptr_t a = (uintptr_t)addr & ~(uintptr_t)(usnap_page - 1);
	size_t n = (len + ((uintptr_t)addr - a) + usnap_page - 1) / usnap_page;
	uint64_t buf[4096];
	long count = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	ck_assert_msg(fd >= 0, "open /proc/self/pagemap: %s", strerror(errno));
	for (size_t done = 0; done < n;) {
		size_t k = n - done < 4096 ? n - done : 4096;
		off_t off = (off_t)((a / usnap_page + done) * 8);
		ssize_t r = pread(fd, buf, k * 8, off);
		ck_assert_msg(r == (ssize_t)(k * 8), "pread pagemap: %zd %s", r, strerror(errno));
		for (size_t i = 0; i < k; i++)
			count += !!(buf[i] & bit);
		done += k;
	}
	close(fd);
	return count;
}

long usnap_pagemap_protected(const void *addr, size_t len)
{
	return pagemap_count(addr, len, USNAP_PM_WP);
}

long usnap_pagemap_present(const void *addr, size_t len)
{
	return pagemap_count(addr, len, USNAP_PM_PRESENT);
}

uint64_t usnap_pagemap_entry(const void *addr)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	ck_assert_msg(fd >= 0, "open /proc/self/pagemap: %s", strerror(errno));
	ck_assert(pread(fd, &e, 8, (off_t)((uintptr_t)addr / usnap_page * 8)) == 8);
	close(fd);
	return e;
}
