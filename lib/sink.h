/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Sinks and the I/O stage (sink.c): the records written in order, then the index and trailer. */
#ifndef UFFDSNAP_SINK_H
#define UFFDSNAP_SINK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "uffdsnap.h"

struct usnap_job;
struct usnap_index_ent;

enum usnap_sink_kind { USNAP_SINK_FILE, USNAP_SINK_FD, USNAP_SINK_CALLBACK };

struct uffdsnap_sink {
	enum usnap_sink_kind kind;
	int fd;                 /* FILE: the temp file; FD: the caller's fd */
	char *path;             /* FILE: final name */
	char *tmp_path;         /* FILE: temp name while writing */
	mode_t mode;
	uffdsnap_write_fn fn;
	void *user;
};

/* The I/O stage (sink.c). */
struct usnap_io {
	pthread_t thread;
	bool thread_started;
	/* under lock: the queue of finished records, filled by workers, and
	 * kicked, set by whoever has news for the I/O thread (cv) */
	pthread_mutex_t lock;
	pthread_cond_t cv;
	bool kicked;
	struct usnap_job *q_head, *q_tail;
	bool producers_done;
	/* owned by the I/O thread */
	uint8_t *head_rec;          /* HEAD record, written first */
	size_t head_len;
	bool head_written, trailer_written, synced;
	bool finished, sink_failed;
	uint8_t *trailer;           /* INDX + END */
	size_t trailer_len;
	uint64_t offset;            /* bytes written so far */
	struct usnap_index_ent *index;
	size_t nindex, index_cap;
	/* the write in flight: jobs and buffers */
	struct usnap_job *batch[64];
	unsigned nbatch;
	struct iovec bufs[64];
	unsigned nbufs, buf_first;
	uint64_t pages_data, pages_zero, bytes_raw;
};

int usnap_sink_open(struct uffdsnap_sink *sink);
void usnap_io_init(struct usnap_io *io);
void usnap_io_destroy(struct usnap_io *io);
int usnap_io_start(uffdsnap_snap_t *s);
void usnap_io_push(uffdsnap_snap_t *s, struct usnap_job *job);
void usnap_io_producers_done(uffdsnap_snap_t *s);
void usnap_io_kick(uffdsnap_snap_t *s);
void usnap_io_join(uffdsnap_snap_t *s);
void usnap_sink_close(struct uffdsnap_sink *sink);
int usnap_build_head(uffdsnap_snap_t *s);

#endif
