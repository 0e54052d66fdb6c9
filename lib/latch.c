/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The failure latch (latch.h): the first error of an object and its message.
 * The compare-and-swap on err decides the winner; the message is written
 * after it and published by msg_set, so a reader that sees the error before
 * the message gets the errno's text, not a half-written string.
 */
#include <errno.h>
#include <stdio.h>

#include "latch.h"
#include "uffdsnap-private.h"

int usnap_latch_vset(struct usnap_latch *l, int err, const char *fmt, va_list ap)
{
	int expect = 0;

	if (err >= 0)
		err = -EIO;
	if (!atomic_compare_exchange_strong(&l->err, &expect, err))
		return expect;
	usnap_vformat(l->msg, sizeof(l->msg), fmt, ap);
	atomic_store(&l->msg_set, true);
	return 0;
}

int usnap_latch_set(struct usnap_latch *l, int err, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = usnap_latch_vset(l, err, fmt, ap);
	va_end(ap);
	return r;
}

bool usnap_latch_close(struct usnap_latch *l)
{
	int expect = 0;

	return atomic_compare_exchange_strong(&l->err, &expect, USNAP_LATCH_CLOSED);
}

void usnap_latch_reopen(struct usnap_latch *l, int err, const char *msg)
{
	/* Closed: no other thread writes msg; readers see err >= 0 until the
	 * store below, so the message is complete before anyone reads it. */
	snprintf(l->msg, sizeof(l->msg), "%s", msg);
	atomic_store(&l->msg_set, true);
	atomic_store(&l->err, err < 0 ? err : -EIO);
}

const char *usnap_latch_msg(const struct usnap_latch *l)
{
	int err = usnap_latch_err(l);

	if (err >= 0)
		return "";
	return atomic_load(&((struct usnap_latch *)l)->msg_set) ? l->msg : uffdsnap_strerror(err);
}
