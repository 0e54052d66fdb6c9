/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The fault handler thread of a snapshot (fault.c): its lifecycle. */
#ifndef UFFDSNAP_FAULT_H
#define UFFDSNAP_FAULT_H

#include <pthread.h>
#include <stdbool.h>

#include "uffdsnap.h"

struct usnap_handler {
	pthread_t thread;
	bool started;
	int efd;                    /* wakes it: a failure, `go`, or a buffer put back */
};

/* Before anything can fail: no descriptor yet. */
void usnap_handler_init(struct usnap_handler *h);
/* Its wake-up descriptor (at begin): 0 or -errno with the detail. */
int usnap_handler_open(struct usnap_handler *h);
/* Start the thread of snapshot s: 0 or -errno with the detail. */
int usnap_handler_start(uffdsnap_snap_t *s);
/* Wake it if it sleeps in poll(): it looks again at everything. */
void usnap_handler_wake(struct usnap_handler *h);
/* Join the thread: false if it never started. */
bool usnap_handler_join(struct usnap_handler *h);
void usnap_handler_destroy(struct usnap_handler *h);

#endif
