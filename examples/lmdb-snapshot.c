/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * lmdb-snapshot: hot snapshots of a live LMDB database, beside LMDB's own hot
 * backup (mdb_copy), under the same writer.
 *
 * The environment lives on tmpfs (/dev/shm by default) and is opened with
 * MDB_WRITEMAP, so LMDB maps data.mdb MAP_SHARED and writable at its full map
 * size: that mapping is shmem, and it is the region. A writer thread commits
 * transactions continuously while the library snapshots the map; the region
 * is then extracted to a data.mdb of its own, which LMDB (and mdb_stat,
 * mdb_dump) opens as the database of one committed transaction.
 *
 * Why any instant of the map is a committed database (LMDB 0.9 mdb.c): a write
 * transaction never writes a page that the newest meta page's tree uses (it
 * copies on write into pages freed by older transactions, and only those
 * nobody can still read), and it commits by writing the other of the two meta
 * pages, txnid last. On opening, LMDB takes the meta page with the larger
 * txnid. A snapshot holds the writer's stores in program order up to one
 * instant (docs/consistency.md), so it sees either the old txnid with the old
 * tree intact or the new txnid after all of the transaction's pages. This is
 * what a crash of the writing *process* leaves too; MDB_NOSYNC only drops
 * flushes to disk, which tmpfs does not have.
 *
 * Every transaction is a function of its number (the key space, the keys it
 * writes or deletes, each value's bytes), and each one also stores its number
 * under "~txn". So a database is checked by reading "~txn" = n, replaying
 * transactions 1..n in memory (only which transaction last wrote each key) and
 * comparing every key and value: `--verify` does that with the LMDB API, and
 * `--replay N` builds the reference database of transaction N for mdb_dump.
 *
 *   lmdb-snapshot [--dir DIR] [--mib N] [--map-mib N] [--out FILE]
 *                 [--extract DIR] [--copy LIST] [--seconds S] [--grow-test]
 *                 [--snap-threads N] [--zstd-level N] [--adapt] [--populate]
 *   lmdb-snapshot --verify DIR          check a database (prints its txn)
 *   lmdb-snapshot --replay N --dir DIR [--mib N] [--map-mib N]
 *
 * LMDB grows its map by unmapping it and mapping the file again
 * (mdb_env_set_mapsize()). A snapshot running meanwhile fails with -EBUSY
 * (the library notices the new mapping of the region's file at the end), and
 * a context made before the growth refuses to begin: `--grow-test` shows both
 * and that a context made again for the new mapping snapshots exactly.
 *
 * Needs root (userfaultfd for kernel-mode faults) and liblmdb.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uffdsnap.h>

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define MIB (1024.0 * 1024.0)
#define LOAD_BATCH 2000u        /* keys per loading transaction */
#define AVG_ENTRY 700u          /* bytes an entry costs on average, page overhead included */
#define MAX_VALUE 12016u

static const char *argv0 = "lmdb-snapshot";

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", argv0);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void die_mdb(const char *what, int rc)
{
	die("%s: %s", what, mdb_strerror(rc));
}

static void die_usnap(const char *what, int err)
{
	die("%s: %s\n  detail: %s", what, uffdsnap_strerror(err), uffdsnap_last_error());
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- the workload: every transaction a function of its number ------------------- */

struct shape {
	uint32_t keys;  /* key space k000000000 .. */
	uint32_t nload; /* transactions 1..nload load the keys in order */
};

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static struct shape shape_for(double mib)
{
	struct shape s;

	s.keys = (uint32_t)(mib * MIB / AVG_ENTRY);
	if (s.keys < 1000)
		s.keys = 1000;
	s.nload = (s.keys + LOAD_BATCH - 1) / LOAD_BATCH;
	return s;
}

/* value of key k as transaction t writes it: a header, then bytes from (k, t) */
static size_t value_of(uint32_t k, uint64_t t, unsigned char *buf)
{
	uint64_t h = mix(((uint64_t)k << 32) ^ t), x = h;
	size_t len = 16 + h % 1009;

	if ((h >> 20) % 64 == 0) /* one in 64: larger than a page (overflow pages) */
		len = 3000 + (h >> 26) % 9000;
	memcpy(buf, &k, 4);
	memcpy(buf + 4, &t, 8);
	memcpy(buf + 12, &(uint32_t){ (uint32_t)len }, 4);
	for (size_t i = 16; i < len; i += 8) {
		x = mix(x);
		memcpy(buf + i, &x, len - i < 8 ? len - i : 8);
	}
	return len;
}

static void key_of(uint32_t k, char key[16])
{
	snprintf(key, 16, "k%09" PRIu32, k);
}

/*
 * Operations of transaction t, in order: op(k, put) for each. Loading
 * transactions put their batch; the others put or delete 8..23 random keys.
 */
typedef void op_fn(void *user, uint32_t k, bool put);
static void txn_ops(const struct shape *s, uint64_t t, op_fn *op, void *user)
{
	if (t <= s->nload) {
		for (uint64_t k = (t - 1) * LOAD_BATCH; k < t * LOAD_BATCH && k < s->keys; k++)
			op(user, (uint32_t)k, true);
		return;
	}
	uint64_t x = mix(t ^ 0x5eedull);
	unsigned n = 8 + x % 16;

	for (unsigned i = 0; i < n; i++) {
		x = mix(x);
		op(user, (uint32_t)(x % s->keys), (x >> 40) % 8 != 0);
	}
}

/* ---- one LMDB environment --------------------------------------------------------- */

struct db {
	MDB_env *env;
	MDB_dbi dbi;
	struct shape shape;
	size_t mapsize;
};

static void db_open(struct db *d, const char *dir, size_t mapsize, unsigned flags)
{
	int rc;

	if ((rc = mdb_env_create(&d->env)))
		die_mdb("mdb_env_create", rc);
	if (mapsize && (rc = mdb_env_set_mapsize(d->env, mapsize)))
		die_mdb("mdb_env_set_mapsize", rc);
	if ((rc = mdb_env_open(d->env, dir, flags, 0644)))
		die("mdb_env_open %s: %s", dir, mdb_strerror(rc));
	d->mapsize = mapsize;
}

struct txn_ctx {
	MDB_txn *txn;
	MDB_dbi dbi;
	unsigned char *buf;
	uint64_t t;
	int rc;
};

static void apply_op(void *user, uint32_t k, bool put)
{
	struct txn_ctx *c = user;
	char key[16];
	MDB_val kv = { .mv_data = key }, vv = { .mv_data = c->buf };
	int rc;

	if (c->rc)
		return;
	key_of(k, key);
	kv.mv_size = strlen(key);
	if (put) {
		vv.mv_size = value_of(k, c->t, c->buf);
		rc = mdb_put(c->txn, c->dbi, &kv, &vv, 0);
	} else {
		rc = mdb_del(c->txn, c->dbi, &kv, NULL);
		if (rc == MDB_NOTFOUND)
			rc = 0;
	}
	c->rc = rc;
}

/* Commit transaction t (0, or MDB_MAP_FULL with nothing committed). */
static int db_txn(struct db *d, uint64_t t, unsigned char *buf)
{
	struct txn_ctx c = { .dbi = d->dbi, .buf = buf, .t = t };
	MDB_val kv = { 4, "~txn" }, vv = { 8, &t };
	int rc;

	if ((rc = mdb_txn_begin(d->env, NULL, 0, &c.txn)))
		die_mdb("mdb_txn_begin", rc);
	if (t == 1) {
		MDB_val pk = { 7, "~params" }, pv = { sizeof(d->shape), &d->shape };

		if ((rc = mdb_dbi_open(c.txn, NULL, 0, &d->dbi)))
			die_mdb("mdb_dbi_open", rc);
		c.dbi = d->dbi;
		if ((rc = mdb_put(c.txn, d->dbi, &pk, &pv, 0)))
			die_mdb("mdb_put ~params", rc);
	}
	txn_ops(&d->shape, t, apply_op, &c);
	if (!c.rc)
		c.rc = mdb_put(c.txn, d->dbi, &kv, &vv, 0);
	if (c.rc) {
		mdb_txn_abort(c.txn);
		if (c.rc == MDB_MAP_FULL)
			return c.rc;
		die_mdb("a write transaction", c.rc);
	}
	if ((rc = mdb_txn_commit(c.txn)))
		return rc == MDB_MAP_FULL ? rc : (die_mdb("mdb_txn_commit", rc), rc);
	return 0;
}

/* ---- checking a database against the replay ---------------------------------------- */

struct last_ctx {
	uint32_t *last; /* transaction that last put the key, 0 if absent */
	uint64_t t;
};

static void replay_op(void *user, uint32_t k, bool put)
{
	struct last_ctx *c = user;

	c->last[k] = put ? (uint32_t)c->t : 0;
}

/*
 * Check the database in dir (data.mdb there) is exactly transaction n's, where
 * n is its own "~txn". Prints n; returns it.
 */
static uint64_t verify(const char *dir)
{
	struct db d = { 0 };
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	struct last_ctx lc;
	uint64_t n, keys = 0, expect = 0;
	unsigned char *buf = malloc(MAX_VALUE);
	int rc;

	db_open(&d, dir, 0, MDB_RDONLY);
	if ((rc = mdb_txn_begin(d.env, NULL, MDB_RDONLY, &txn)) || (rc = mdb_dbi_open(txn, NULL, 0, &d.dbi)))
		die_mdb("opening the database to verify", rc);
	k = (MDB_val){ 7, "~params" };
	if ((rc = mdb_get(txn, d.dbi, &k, &v)) || v.mv_size != sizeof(d.shape))
		die("%s: no ~params (%s)", dir, mdb_strerror(rc));
	memcpy(&d.shape, v.mv_data, sizeof(d.shape));
	k = (MDB_val){ 4, "~txn" };
	if ((rc = mdb_get(txn, d.dbi, &k, &v)) || v.mv_size != 8)
		die("%s: no ~txn (%s)", dir, mdb_strerror(rc));
	memcpy(&n, v.mv_data, 8);
	lc.last = calloc(d.shape.keys, sizeof(*lc.last));
	if (!lc.last || !buf)
		die("out of memory");
	for (lc.t = 1; lc.t <= n; lc.t++)
		txn_ops(&d.shape, lc.t, replay_op, &lc);
	for (uint32_t i = 0; i < d.shape.keys; i++)
		expect += lc.last[i] != 0;
	if ((rc = mdb_cursor_open(txn, d.dbi, &cur)))
		die_mdb("mdb_cursor_open", rc);
	while (!(rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))) {
		char key[16];
		uint32_t i;

		if (k.mv_size && ((char *)k.mv_data)[0] == '~')
			continue;
		if (k.mv_size != 10 || sscanf(k.mv_data, "k%9" SCNu32, &i) != 1 || i >= d.shape.keys)
			die("%s: unexpected key '%.*s'", dir, (int)k.mv_size, (char *)k.mv_data);
		key_of(i, key);
		if (memcmp(key, k.mv_data, 10))
			die("%s: malformed key '%.*s'", dir, (int)k.mv_size, (char *)k.mv_data);
		if (!lc.last[i])
			die("%s: key %s is present, transaction %" PRIu64 " has it deleted or never written", dir, key, n);
		size_t len = value_of(i, lc.last[i], buf);
		if (v.mv_size != len || memcmp(v.mv_data, buf, len)) {
			uint64_t wrote = 0;

			if (v.mv_size >= 12)
				memcpy(&wrote, (char *)v.mv_data + 4, 8);
			die("%s: key %s holds the value of transaction %" PRIu64 ", transaction %" PRIu64
			    " has the value of transaction %" PRIu32, dir, key, wrote, n, lc.last[i]);
		}
		keys++;
	}
	if (rc != MDB_NOTFOUND)
		die_mdb("mdb_cursor_get", rc);
	if (keys != expect)
		die("%s: %" PRIu64 " keys, transaction %" PRIu64 " has %" PRIu64, dir, keys, n, expect);
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	mdb_env_close(d.env);
	free(lc.last);
	free(buf);
	printf("verified: %s is the database of transaction %" PRIu64 " exactly (%" PRIu64 " keys)\n", dir, n,
	       keys);
	return n;
}

/* ---- the live database and its writer ---------------------------------------------- */

struct live {
	struct db db;
	const char *dir;
	pthread_t writer;
	pthread_mutex_t map_lock;  /* held by the writer around a map growth, by main around begin */
	atomic_uint_fast64_t committed; /* last transaction committed */
	atomic_bool stop;
	atomic_bool pause, paused;
	atomic_int grow;           /* main asks for a growth: the writer grows the map at its next transaction */
	atomic_uint map_gen;       /* growths done */
	double grow_factor;
	uffdsnap_opts_t opts;
	bool populate;             /* MADV_POPULATE_WRITE the used map after a snapshot (--populate) */
};

static void *writer_main(void *arg)
{
	struct live *L = arg;
	unsigned char *buf = malloc(MAX_VALUE);
	uint64_t t = atomic_load(&L->committed);

	if (!buf)
		die("out of memory");
	while (!atomic_load(&L->stop)) {
		if (atomic_load(&L->grow)) {
			size_t size = (size_t)(L->db.mapsize * L->grow_factor) & ~(size_t)0xfffff;
			int rc;

			/* no transaction of this process may be open: LMDB unmaps and maps again */
			pthread_mutex_lock(&L->map_lock);
			if ((rc = mdb_env_set_mapsize(L->db.env, size)))
				die_mdb("mdb_env_set_mapsize", rc);
			L->db.mapsize = size;
			atomic_fetch_add(&L->map_gen, 1);
			pthread_mutex_unlock(&L->map_lock);
			atomic_store(&L->grow, 0);
		}
		if (atomic_load(&L->pause)) {
			atomic_store(&L->paused, true);
			usleep(200);
			continue;
		}
		atomic_store(&L->paused, false);
		if (db_txn(&L->db, t + 1, buf) == MDB_MAP_FULL)
			die("the map (%.0f MiB) is full: give --map-mib more room", L->db.mapsize / MIB);
		atomic_store(&L->committed, ++t);
	}
	free(buf);
	return NULL;
}

/* The mapping of dir/data.mdb in this process (LMDB keeps its address to
 * itself): only --populate needs it; the region is registered by descriptor. */
static void *find_map(const char *dir, size_t *len)
{
	char path[4096], line[4096 + 256];
	struct stat st;
	FILE *f;
	void *found = NULL;

	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	if (stat(path, &st))
		die("%s: %s", path, strerror(errno));
	if (!(f = fopen("/proc/self/maps", "r")))
		die("/proc/self/maps: %s", strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b, ino;
		char perms[8];

		if (sscanf(line, "%lx-%lx %7s %*x %*x:%*x %lu", &a, &b, perms, &ino) == 4 &&
		    ino == st.st_ino && perms[1] == 'w') {
			if (found)
				die("%s is mapped writable twice", path);
			found = (void *)a;
			*len = b - a;
		}
	}
	fclose(f);
	if (!found)
		die("no writable mapping of %s (was the environment opened with MDB_WRITEMAP?)", path);
	return found;
}

/* The region is LMDB's map, found by the library from the file's descriptor. */
static uffdsnap_t *make_ctx(struct live *L)
{
	uffdsnap_t *ctx;
	int err, fd;

	if ((err = mdb_env_get_fd(L->db.env, &fd)))
		die_mdb("mdb_env_get_fd", err);
	if ((err = uffdsnap_new(&ctx, &L->opts)))
		die_usnap("uffdsnap_new", err);
	if ((err = uffdsnap_add_region_fd(ctx, "lmdb", fd, 0, 0)) < 0)
		die_usnap("uffdsnap_add_region_fd (the LMDB map; was the environment opened with MDB_WRITEMAP?)",
			  err);
	return ctx;
}

/*
 * Print the writer's commits/s in each `step` from *t until `end`; *c and *t
 * come back as the count and the time of the last sample.
 */
static void print_rates(struct live *L, double end, double step, uint64_t *c, double *t)
{
	for (double next = *t + step; next <= end + 1e-3; next += step) {
		double left = next - now_s();
		uint64_t prev = *c;

		if (left > 0)
			usleep((useconds_t)(left * 1e6));
		*c = atomic_load(&L->committed);
		printf(" %.0f", (*c - prev) / (now_s() - *t));
		*t = now_s();
	}
	printf("\n");
}

/* commits per second over the next `s` seconds (printed per tenth) */
static double rate_for(struct live *L, double s)
{
	uint64_t c0 = atomic_load(&L->committed), c = c0;
	double t0 = now_s(), t = t0;

	printf("writer alone: txn/s per %.2f s:", s / 10);
	print_rates(L, t0 + s, s / 10, &c, &t);
	return (c - c0) / (t - t0);
}

static long long file_bytes(const char *path, long long *allocated)
{
	struct stat st;

	if (stat(path, &st))
		return *allocated = -1, -1;
	*allocated = (long long)st.st_blocks * 512;
	return st.st_size;
}

struct result {
	const char *method;
	double t0, secs, rate; /* start, duration, writer's commits/s during */
	double window_rate;    /* writer's commits/s over the window from t0 (aftermath included) */
	double base;           /* writer alone: mean of the windows before and after */
	uint64_t c0, c1;       /* committed before the start, and by its end (+1) */
	long long out_bytes;
};

/* Wait for the end of the window of `w` seconds that began with the operation. */
static void finish_window(struct live *L, struct result *r, double w)
{
	uint64_t c = atomic_load(&L->committed);
	double t = now_s();

	if (!w)
		return;
	/* the writer's rate during the operation, then in each tenth of the window left */
	printf("%s: writer txn/s from its start (%.2f s) then per %.2f s: %.0f", r->method, t - r->t0, w / 10,
	       (c - r->c0) / (t - r->t0));
	print_rates(L, r->t0 + w, w / 10, &c, &t);
	r->window_rate = (c - r->c0) / (t - r->t0);
}

/* Snapshot the live map into `out`; the committed range [c0, c1] brackets the instant. */
static struct result snapshot(struct live *L, uffdsnap_t *ctx, const char *out)
{
	uffdsnap_stats_t st = { .size = sizeof(st) };
	uffdsnap_snap_t *snap;
	struct result r = { .method = "uffdsnap" };
	long long alloc;
	int err;

	pthread_mutex_lock(&L->map_lock);
	r.c0 = atomic_load(&L->committed);
	r.t0 = now_s();
	err = uffdsnap_begin_file(ctx, out, &snap);
	r.c1 = atomic_load(&L->committed) + 1; /* a meta page written before the instant, counter not yet */
	pthread_mutex_unlock(&L->map_lock);
	if (err)
		die_usnap("uffdsnap_begin_file", err);
	err = uffdsnap_wait(snap);
	if (L->populate && !err) {
		/*
		 * Un-protected shmem keeps read-only page table entries: each page
		 * the writer stores to next would fault once more. Make the used part
		 * of the map writable in one call (not the free tail: it would
		 * allocate those holes).
		 */
		MDB_envinfo ei;
		MDB_stat ms;
		size_t len;
		char *map = find_map(L->dir, &len);

		mdb_env_info(L->db.env, &ei);
		mdb_env_stat(L->db.env, &ms);
		if ((ei.me_last_pgno + 1) * (size_t)ms.ms_psize < len)
			len = (ei.me_last_pgno + 1) * (size_t)ms.ms_psize;
		if (madvise(map, len, MADV_POPULATE_WRITE))
			fprintf(stderr, "%s: MADV_POPULATE_WRITE: %s\n", argv0, strerror(errno));
	}
	r.secs = now_s() - r.t0;
	r.rate = (atomic_load(&L->committed) - r.c0) / r.secs;
	uffdsnap_snap_stats(snap, &st);
	if (err)
		die("snapshot failed: %s\n  detail: %s", uffdsnap_strerror(err), uffdsnap_snap_error(snap));
	printf("snapshot: %.3f s (begin %.2f ms, protected for %.3f s), %" PRIu64 " write faults (longest wait for "
	       "buffer space %.1f ms), %" PRIu64 " pages copied for writers, %" PRIu64 " by the sweep, %" PRIu64
	       " holes; %.1f MiB written; writer %.0f txn/s during\n",
	       r.secs, st.begin_ns / 1e6, st.window_ns / 1e9, st.faults, st.fault_wait_max_ns / 1e6, st.pages_fault,
	       st.pages_sweep, st.pages_hole, st.bytes_out / MIB, r.rate);
	uffdsnap_snap_free(snap);
	r.out_bytes = file_bytes(out, &alloc);
	return r;
}

static void extract(const char *snapfile, const char *dir)
{
	char path[4096];
	uffdsnap_reader_t *r;
	int err, id;

	if (mkdir(dir, 0755) && errno != EEXIST)
		die("%s: %s", dir, strerror(errno));
	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	if ((err = uffdsnap_reader_open(&r, snapfile)))
		die_usnap("uffdsnap_reader_open", err);
	if ((id = uffdsnap_reader_find(r, "lmdb")) < 0 || (err = uffdsnap_reader_extract_file(r, (unsigned)id, path, 0644)))
		die("extracting %s to %s: %s", snapfile, path, uffdsnap_reader_error(r));
	uffdsnap_reader_free(r);
	snprintf(path, sizeof(path), "%s/lock.mdb", dir);
	unlink(path); /* a fresh lock file, as after a crash */
}

static void check_bracket(const char *what, uint64_t n, uint64_t c0, uint64_t c1)
{
	if (n < c0 || n > c1)
		die("%s is transaction %" PRIu64 ", outside [%" PRIu64 ", %" PRIu64 "] committed around it", what, n, c0, c1);
	printf("%s: transaction %" PRIu64 " (committed before: %" PRIu64 ", by the end of the call: %" PRIu64 ")\n",
	       what, n, c0, c1);
}

/* Run mdb_copy [flags] on the live environment; time it and the writer's rate. */
static struct result run_mdb_copy(struct live *L, const char *flag, const char *outdir)
{
	struct result r = { .method = *flag ? "mdb_copy -c" : "mdb_copy" };
	char cmd[8192], data[4200];
	long long alloc;
	pid_t pid;
	int status;

	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", outdir, outdir);
	if (system(cmd))
		die("cannot make %s", outdir);
	r.c0 = atomic_load(&L->committed);
	r.t0 = now_s();
	pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		if (*flag)
			execlp("mdb_copy", "mdb_copy", flag, L->dir, outdir, (char *)NULL);
		else
			execlp("mdb_copy", "mdb_copy", L->dir, outdir, (char *)NULL);
		fprintf(stderr, "mdb_copy: %s\n", strerror(errno));
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
		die("mdb_copy %s failed (status %d)", flag, status);
	r.secs = now_s() - r.t0;
	r.c1 = atomic_load(&L->committed) + 1;
	r.rate = (r.c1 - 1 - r.c0) / r.secs;
	snprintf(data, sizeof(data), "%s/data.mdb", outdir);
	r.out_bytes = file_bytes(data, &alloc);
	printf("%s: %.3f s, writer %.0f txn/s during, output %.1f MiB\n", r.method, r.secs, r.rate,
	       r.out_bytes / MIB);
	return r; /* checked once the writer has stopped (verify() takes a CPU) */
}

/* ---- map growth: during a snapshot, and between ------------------------------------- */

struct gate {
	FILE *f;
	atomic_bool open;
};

/* a sink that holds its first write until the gate opens, so the snapshot is still running */
static int gated_write(void *user, const void *buf, size_t len)
{
	struct gate *g = user;

	for (int i = 0; i < 20000 && !atomic_load(&g->open); i++)
		usleep(500);
	return fwrite(buf, 1, len, g->f) == len ? 0 : -EIO;
}

static void grow_and_wait(struct live *L)
{
	unsigned gen = atomic_load(&L->map_gen);

	atomic_store(&L->grow, 1);
	for (int i = 0; i < 20000 && atomic_load(&L->map_gen) == gen; i++)
		usleep(500);
	if (atomic_load(&L->map_gen) == gen)
		die("the writer did not grow the map within 10 s");
}

static uffdsnap_t *grow_test(struct live *L, uffdsnap_t *ctx, const char *scratch)
{
	struct gate g = { .f = fopen(scratch, "w") };
	uffdsnap_sink_t *sink;
	uffdsnap_snap_t *snap;
	uint64_t c;
	int err;

	if (!g.f)
		die("%s: %s", scratch, strerror(errno));
	/*
	 * 1. the map grows while a snapshot runs: the snapshot must fail, not lie.
	 * The writer grows the map before its next transaction, so it never waits
	 * on a fault (for the buffers the held sink keeps full) before growing.
	 */
	if ((err = uffdsnap_sink_callback(&sink, gated_write, &g)))
		die_usnap("uffdsnap_sink_callback", err);
	atomic_store(&L->pause, true);
	while (!atomic_load(&L->paused))
		usleep(200);
	if ((err = uffdsnap_begin(ctx, sink, &snap)))
		die_usnap("uffdsnap_begin", err);
	grow_and_wait(L);
	atomic_store(&L->pause, false);
	c = atomic_load(&L->committed);
	while (atomic_load(&L->committed) < c + 20)
		usleep(1000); /* writes through the new mapping, which nothing protects */
	atomic_store(&g.open, true);
	err = uffdsnap_wait(snap);
	printf("grow-test: map grown to %.0f MiB during a snapshot: %s%s%s\n", L->db.mapsize / MIB,
	       err ? uffdsnap_strerror(err) : "completed", err ? "\n  detail: " : "", err ? uffdsnap_snap_error(snap) : "");
	if (err != -EBUSY)
		die("grow-test: a snapshot during a map growth must fail with -EBUSY, got %d", err);
	uffdsnap_snap_free(snap);
	fclose(g.f);
	unlink(scratch);

	/* 2. a context made before a growth refuses to begin */
	pthread_mutex_lock(&L->map_lock);
	err = uffdsnap_begin_file(ctx, scratch, &snap);
	pthread_mutex_unlock(&L->map_lock);
	printf("grow-test: begin on the context made before the growth: %s\n  detail: %s\n",
	       err ? uffdsnap_strerror(err) : "began", uffdsnap_last_error());
	if (!err)
		die("grow-test: begin on a context whose region was unmapped must fail");
	uffdsnap_free(ctx);

	/* 3. a context for the new mapping: the caller snapshots with it */
	return make_ctx(L);
}

/* ---- main ------------------------------------------------------------------------------ */

static void usage(int code)
{
	fprintf(code ? stderr : stdout,
		"usage: %s [--dir DIR] [--mib N] [--map-mib N] [--out FILE] [--extract DIR]\n"
		"          [--copy none|mdb_copy|mdb_copy-c|all] [--seconds S] [--grow-test]\n"
		"          [--snap-threads N] [--zstd-level N] [--adapt] [--populate]\n"
		"       %s --verify DIR\n"
		"       %s --replay N --dir DIR [--mib N] [--map-mib N]\n"
		"Snapshot a live LMDB environment (MDB_WRITEMAP, on tmpfs) while a writer\n"
		"commits, extract it, check it is one committed transaction exactly, and\n"
		"compare with mdb_copy on the same database under the same writer.\n"
		"  --dir DIR       the live environment (default /dev/shm/lmdb-snapshot; made anew)\n"
		"  --mib N         data to load before the writer starts (default 64)\n"
		"  --map-mib N     LMDB map size (default 4 x --mib + 64)\n"
		"  --out FILE      the snapshot (default DIR.usnap)\n"
		"  --extract DIR   where the snapshot's data.mdb goes (default DIR-snap)\n"
		"  --copy LIST     mdb_copy runs after the snapshot: none, mdb_copy, mdb_copy-c\n"
		"                  or all (default all); outputs in DIR-copy, DIR-copy-c\n"
		"  --seconds S     each method is measured over S s from its start, between\n"
		"                  S s windows of the writer alone (default 3; 0: no windows)\n"
		"  --grow-test     grow the map during a snapshot (it must fail -EBUSY) and\n"
		"                  between snapshots, then snapshot the grown map exactly\n"
		"  --snap-threads N, --zstd-level N, --adapt: the snapshot's compression\n"
		"                  workers (default: one per CPU), zstd level (default 1),\n"
		"                  UFFDSNAP_OPT_ADAPT (raw chunks while writers wait)\n"
		"  --populate      MADV_POPULATE_WRITE the used map after each snapshot, so that\n"
		"                  the writer does not re-fault every page it stores to\n"
		"  --verify DIR    check DIR/data.mdb is one transaction's database exactly\n"
		"  --replay N      build transaction N's database in --dir (for mdb_dump)\n",
		argv0, argv0, argv0);
	exit(code);
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "dir", required_argument, NULL, 'd' },     { "mib", required_argument, NULL, 'm' },
		{ "map-mib", required_argument, NULL, 'M' }, { "out", required_argument, NULL, 'o' },
		{ "extract", required_argument, NULL, 'x' }, { "copy", required_argument, NULL, 'c' },
		{ "seconds", required_argument, NULL, 's' }, { "grow-test", no_argument, NULL, 'g' },
		{ "verify", required_argument, NULL, 'V' },  { "replay", required_argument, NULL, 'R' },
		{ "snap-threads", required_argument, NULL, 't' }, { "zstd-level", required_argument, NULL, 'z' },
		{ "adapt", no_argument, NULL, 'a' }, { "populate", no_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },          { NULL, 0, NULL, 0 },
	};
	const char *dir = "/dev/shm/lmdb-snapshot", *copy = "all";
	char out[4096] = "", xdir[4096] = "", cdir[4096], cmd[8400];
	double mib = 64, map_mib = 0, seconds = 3;
	uint64_t replay = 0;
	bool grow = false;
	struct statfs sfs;
	struct live L = { .map_lock = PTHREAD_MUTEX_INITIALIZER, .grow_factor = 1.5 };
	unsigned char *buf;
	uffdsnap_t *ctx;
	struct result r;
	int o;

	uffdsnap_opts_init(&L.opts);
	while ((o = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
		switch (o) {
		case 'd': dir = optarg; break;
		case 'm': mib = atof(optarg); break;
		case 'M': map_mib = atof(optarg); break;
		case 'o': snprintf(out, sizeof(out), "%s", optarg); break;
		case 'x': snprintf(xdir, sizeof(xdir), "%s", optarg); break;
		case 'c': copy = optarg; break;
		case 's': seconds = atof(optarg); break;
		case 'g': grow = true; break;
		case 'V': verify(optarg); return 0;
		case 'R': replay = strtoull(optarg, NULL, 10); break;
		case 't': L.opts.compress_threads = atoi(optarg); break;
		case 'z': L.opts.zstd_level = atoi(optarg); break;
		case 'a': L.opts.flags |= UFFDSNAP_OPT_ADAPT; break;
		case 'P': L.populate = true; break;
		case 'h': usage(0); break;
		default: usage(2);
		}
	}
	if (optind != argc || mib <= 0 || seconds < 0 || (strcmp(copy, "none") && strcmp(copy, "mdb_copy") &&
							  strcmp(copy, "mdb_copy-c") && strcmp(copy, "all")))
		usage(2);
	if (!map_mib)
		map_mib = 4 * mib + 64;
	if (!*out)
		snprintf(out, sizeof(out), "%s.usnap", dir);
	if (!*xdir)
		snprintf(xdir, sizeof(xdir), "%s-snap", dir);

	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", dir, dir);
	if (system(cmd))
		die("cannot make %s", dir);
	if (statfs(dir, &sfs))
		die("%s: %s", dir, strerror(errno));
	if (sfs.f_type != TMPFS_MAGIC && !replay)
		die("%s is not on tmpfs: LMDB's map of a file on disk is page cache, not shmem, and userfaultfd "
		    "cannot write-protect it (use /dev/shm)", dir);
	L.dir = dir;
	L.db.shape = shape_for(mib);
	db_open(&L.db, dir, (size_t)(map_mib * MIB) & ~(size_t)0xfffff, MDB_WRITEMAP | MDB_NOSYNC);
	if (!(buf = malloc(MAX_VALUE)))
		die("out of memory");
	if (replay) {
		for (uint64_t t = 1; t <= replay; t++)
			if (db_txn(&L.db, t, buf))
				die("the map is full at transaction %" PRIu64, t);
		mdb_env_close(L.db.env);
		free(buf);
		printf("replayed transactions 1..%" PRIu64 " into %s\n", replay, dir);
		return 0;
	}

	double t0 = now_s();
	for (uint64_t t = 1; t <= L.db.shape.nload; t++)
		if (db_txn(&L.db, t, buf) == MDB_MAP_FULL)
			die("the map is full while loading: give --map-mib more room");
	free(buf);
	atomic_store(&L.committed, L.db.shape.nload);
	{
		MDB_envinfo ei;
		MDB_stat ms;

		mdb_env_info(L.db.env, &ei);
		mdb_env_stat(L.db.env, &ms);
		printf("loaded %" PRIu32 " keys in %u transactions, %.2f s: %.1f MiB used of a %.0f MiB map\n",
		       L.db.shape.keys, L.db.shape.nload, now_s() - t0, (ei.me_last_pgno + 1) * (double)ms.ms_psize / MIB,
		       L.db.mapsize / MIB);
	}

	ctx = make_ctx(&L);
	if (pthread_create(&L.writer, NULL, writer_main, &L))
		die("pthread_create failed");
	/*
	 * Each method in a window of --seconds from its start (what the writer
	 * lost includes the aftermath: re-faulting pages left read-only, pages
	 * allocated anew while a reader held old ones), between windows of the
	 * writer alone.
	 */
	static const char *const copy_flag[2] = { "", "-c" }, *const copy_name[2] = { "mdb_copy", "mdb_copy-c" };
	struct result res[3];
	char copydir[2][4200];
	int nres = 0;
	double base = seconds ? rate_for(&L, seconds) : 0, next;

	if (seconds)
		printf("writer alone: %.0f txn/s\n", base);
	while (atomic_load(&L.committed) < L.db.shape.nload + 50)
		usleep(1000); /* the writer is under way: the snapshot overlaps its transactions */
	r = res[nres++] = snapshot(&L, ctx, out);
	for (int i = 0; i < 2; i++) {
		if (strcmp(copy, copy_name[i]) && strcmp(copy, "all"))
			continue;
		finish_window(&L, &res[nres - 1], seconds);
		next = seconds ? rate_for(&L, seconds) : 0;
		res[nres - 1].base = (base + next) / 2, base = next;
		snprintf(copydir[nres - 1], sizeof(copydir[0]), "%s-copy%s", dir, copy_flag[i]);
		res[nres] = run_mdb_copy(&L, copy_flag[i], copydir[nres - 1]);
		nres++;
	}
	finish_window(&L, &res[nres - 1], seconds);
	next = seconds ? rate_for(&L, seconds) : 0;
	res[nres - 1].base = (base + next) / 2;
	if (seconds) {
		printf("\n| method | duration (s) | writer txn/s during | writer txn/s over %.0f s from the start "
		       "| writer alone, windows around | over the window / alone | output (MiB) |\n"
		       "|---|---|---|---|---|---|---|\n", seconds);
		for (int i = 0; i < nres; i++)
			printf("| %s | %.2f | %.0f | %.0f | %.0f | %.2f | %.1f |\n", res[i].method, res[i].secs,
			       res[i].rate, res[i].window_rate, res[i].base, res[i].window_rate / res[i].base,
			       res[i].out_bytes / MIB);
		for (int i = 0; i < nres; i++)
			printf("RESULT method=%s secs=%.4f rate=%.1f window_rate=%.1f base=%.1f out_bytes=%lld\n",
			       res[i].method, res[i].secs, res[i].rate, res[i].window_rate, res[i].base,
			       res[i].out_bytes);
		printf("\n");
	}

	if (grow) {
		char scratch[4200];

		snprintf(scratch, sizeof(scratch), "%s.grow-scratch", out);
		ctx = grow_test(&L, ctx, scratch);
	}

	/* the snapshot with the writer stopped is not needed: extract and check the live one */
	if (grow) {
		struct result g = snapshot(&L, ctx, out);

		r = g;
	}
	atomic_store(&L.stop, true);
	pthread_join(L.writer, NULL);
	uffdsnap_free(ctx);
	mdb_env_close(L.db.env);

	for (int i = 1; i < nres; i++)
		check_bracket(res[i].method, verify(copydir[i - 1]), res[i].c0, res[i].c1);
	extract(out, xdir);
	{
		long long alloc, size;

		snprintf(cdir, sizeof(cdir), "%s/data.mdb", xdir);
		size = file_bytes(cdir, &alloc);
		printf("extracted: %s, %.1f MiB (%.1f MiB allocated: holes stay holes)\n", cdir, size / MIB, alloc / MIB);
	}
	check_bracket("snapshot", verify(xdir), r.c0, r.c1);
	return 0;
}
