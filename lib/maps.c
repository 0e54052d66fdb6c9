/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * /proc/self/maps, the one place that says how this process maps memory:
 * MAP_SHARED or MAP_PRIVATE, which file, at which offset. Read with plain
 * system calls into a buffer on the caller's stack: the handler thread reads
 * it too, and may use neither stdio nor malloc (a thread inside fork() holds
 * their locks while the kernel waits for the handler, see usnap_sys_alloc).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "maps.h"

int usnap_maps_open(struct usnap_maps *m, pid_t pid)
{
	char path[32] = "/proc/self/maps";

	memset(m, 0, offsetof(struct usnap_maps, buf));
	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	m->fd = open(path, O_RDONLY | O_CLOEXEC);
	return m->fd < 0 ? -1 : 0;
}

void usnap_maps_close(struct usnap_maps *m)
{
	if (m->fd >= 0)
		close(m->fd);
	m->fd = -1;
}

bool usnap_parse_range(const char *line, uintptr_t *start, uintptr_t *end)
{
	char *p;

	*start = (uintptr_t)strtoull(line, &p, 16);
	if (*p != '-')
		return false;
	*end = (uintptr_t)strtoull(p + 1, NULL, 16);
	return true;
}

/* "start-end perms offset major:minor inode   path" */
static bool parse_line(const char *line, struct usnap_vma *v)
{
	unsigned long maj, min;
	size_t n;
	char *p;

	v->start = (uintptr_t)strtoull(line, &p, 16);
	if (*p++ != '-')
		return false;
	v->end = (uintptr_t)strtoull(p, &p, 16);
	if (*p++ != ' ')
		return false;
	n = strcspn(p, " ");
	if (n >= sizeof(v->perms))
		return false;
	memcpy(v->perms, p, n);
	v->perms[n] = '\0';
	v->off = strtoull(p + n, &p, 16);
	maj = strtoul(p, &p, 16);
	if (*p++ != ':')
		return false;
	min = strtoul(p, &p, 16);
	v->dev = makedev(maj, min);
	v->ino = strtoull(p, &p, 10);
	p += strspn(p, " ");
	n = strlen(p);
	if (n >= sizeof(v->path))
		n = sizeof(v->path) - 1;
	memcpy(v->path, p, n);
	v->path[n] = '\0';
	return true;
}

bool usnap_maps_next(struct usnap_maps *m, struct usnap_vma *v)
{
	if (m->fd < 0)
		return false;
	for (;;) {
		char *nl = memchr(m->buf + m->pos, '\n', m->len - m->pos);
		if (nl) {
			char *line = m->buf + m->pos;
			bool skipped = m->skip;
			*nl = '\0';
			m->pos = (size_t)(nl - m->buf) + 1;
			m->skip = false;
			if (!skipped && parse_line(line, v))
				return true;
			continue;
		}
		if (m->pos == 0 && m->len == sizeof(m->buf)) {
			/* a line longer than the buffer (a long path): what
			 * matters is at its start; the rest is skipped */
			bool skipped = m->skip;
			m->buf[sizeof(m->buf) - 1] = '\0';
			m->len = 0, m->skip = true;
			if (!skipped && parse_line(m->buf, v))
				return true;
			continue;
		}
		memmove(m->buf, m->buf + m->pos, m->len - m->pos);
		m->len -= m->pos, m->pos = 0;
		ssize_t n = read(m->fd, m->buf + m->len, sizeof(m->buf) - m->len);
		if (n <= 0)
			return false;
		m->len += (size_t)n;
	}
}

int usnap_cursor_open(struct usnap_maps_cursor *c)
{
	c->have_last = false;
	return usnap_maps_open(&c->mr, 0);
}

bool usnap_cursor_next(struct usnap_maps_cursor *c, uintptr_t addr, struct usnap_vma *v)
{
	if (c->have_last && c->last.end > addr) {
		*v = c->last;
		return true;
	}
	while (usnap_maps_next(&c->mr, v))
		if (v->end > addr) {
			c->last = *v;
			c->have_last = true;
			return true;
		}
	return false;
}

void usnap_cursor_close(struct usnap_maps_cursor *c)
{
	usnap_maps_close(&c->mr);
}
