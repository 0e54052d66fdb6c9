/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The failure latch: "the first error wins" for an object several threads
 * can fail (a snapshot, a restore, a lazy restore). The first failure sets
 * the -errno and its message; later ones are dropped, so the error a caller
 * gets is the cause and not one of its consequences. Readable from any thread
 * at any time: the message is published after it is complete, and until then
 * the errno's text stands in for it, never half a message.
 *
 * An owner that succeeds closes the latch (no failure may come after that);
 * the one step that can still fail after closing (committing a file) reopens
 * it with its own error.
 */
#ifndef UFFDSNAP_LATCH_H
#define UFFDSNAP_LATCH_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>

/* The value of a closed latch: a success later failures lose to. */
#define USNAP_LATCH_CLOSED 1

struct usnap_latch {
	_Atomic int err;        /* 0, the first -errno, or USNAP_LATCH_CLOSED */
	_Atomic bool msg_set;   /* msg is complete */
	char msg[512];
};

/* Latch err (>= 0 becomes -EIO) and its message. 0 if this call's error is the
 * latch's now, else what the latch held already: an error or CLOSED. */
int usnap_latch_set(struct usnap_latch *l, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int usnap_latch_vset(struct usnap_latch *l, int err, const char *fmt, va_list ap);
/* Close a latch no failure reached: true if it is closed now. */
bool usnap_latch_close(struct usnap_latch *l);
/* For the closer only, after usnap_latch_close: fail after all, with msg. */
void usnap_latch_reopen(struct usnap_latch *l, int err, const char *msg);

/* The error latched (< 0), 0 or USNAP_LATCH_CLOSED. */
static inline int usnap_latch_err(const struct usnap_latch *l)
{
	return atomic_load(&((struct usnap_latch *)l)->err);
}

/* "" without an error; the message once published, the errno's text before. */
const char *usnap_latch_msg(const struct usnap_latch *l);

#endif
