/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * uffdsnap: the command-line tool for snapshot files - info, verify, extract,
 * restore, diff, cat, serve (a page server for lazy restore of other
 * processes), merge (a chain of deltas into one full snapshot) and clean
 * (temporaries killed writers left). verify, extract, restore, diff and serve
 * read a delta with its chain, named by repeatable --parent options. A thin layer over
 * the public reader and restore API: everything it knows about the format it
 * learns from libuffdsnap. Its manual is docs/man/uffdsnap.1.
 *
 * Exit status, for every command: 0 success, 1 failure (a snapshot that is
 * corrupt, incomplete or missing, I/O), 2 usage (a wrong option or argument);
 * diff adds 3: both snapshots read fine and they differ.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <uffdsnap.h>

#define EXIT_USAGE 2
#define EXIT_DIFFERENT 3

/* ---- commands, usage and help ------------------------------------------------- */

struct cmd {
	const char *name;
	const char *summary;          /* one line for 'uffdsnap --help' */
	const char *synopsis;         /* after "uffdsnap " */
	const char *help;             /* what --help adds to the synopsis */
	int min, max;                 /* operands */
	const char *shortopts;        /* beyond -h and -q */
	const struct option *longopts;/* beyond --help and --quiet; NULL-terminated */
	int (*opt)(int c, const char *arg);  /* one of those options: 0 or EXIT_USAGE */
	int (*run)(char **args);      /* the operands */
};

static const struct cmd *cur;     /* the command running, for its messages */
static bool quiet;

static void print_usage(FILE *f, const struct cmd *c)
{
	fprintf(f, "Usage: uffdsnap %s\n", c->synopsis);
}

/* "uffdsnap CMD: what is wrong", then the command's usage: EXIT_USAGE. */
__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "uffdsnap%s%s: ", cur ? " " : "", cur ? cur->name : "");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (cur) {
		print_usage(stderr, cur);
		fprintf(stderr, "Try 'uffdsnap %s --help'.\n", cur->name);
	} else {
		fprintf(stderr, "Try 'uffdsnap --help'.\n");
	}
	return EXIT_USAGE;
}

/* "uffdsnap CMD: what" for a failure that is not the user's syntax: EXIT_FAILURE. */
__attribute__((format(printf, 1, 2))) static int failure(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "uffdsnap %s: ", cur->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return EXIT_FAILURE;
}

/*
 * Text from a snapshot file - region names - may hold any byte but NUL, so a
 * hostile file could send terminal control sequences through us. Every such
 * string is printed through esc(): bytes outside printable ASCII become \xNN
 * and a backslash becomes \\, which keeps the text unambiguous. (The library's
 * own messages arrive escaped already: printable ASCII only.) ESC_LEN fits the
 * escaped form of the longest name (255 bytes) and of the library's messages
 * (under 512 bytes); anything longer is cut at a whole escape.
 */
#define ESC_LEN (4 * 512 + 1)

static const char *esc(const char *s, char out[ESC_LEN])
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;

	/* room for the longest escape (4 bytes) and the NUL */
	for (; *s && n + 4 < ESC_LEN; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '\\') {
			out[n++] = '\\';
			out[n++] = '\\';
		} else if (c < 0x20 || c > 0x7e) {
			out[n++] = '\\';
			out[n++] = 'x';
			out[n++] = hex[c >> 4];
			out[n++] = hex[c & 15];
		} else {
			out[n++] = (char)c;
		}
	}
	out[n] = '\0';
	return out;
}

/*
 * "uffdsnap CMD: what: what the errno means: the detail" for a failed call.
 * The detail is the library's message (escaped by the library: printable
 * ASCII). The library's texts explain its own errnos; an errno from a system
 * call is best explained by the C library, and when the detail already says
 * it (it usually ends with strerror) it is said once.
 */
static int fail(const char *what, int err, const char *detail)
{
	const char *text;

	switch (-err) {
	case EBADMSG:
	case ENODATA:
	case ENOEXEC:
	case EPROTONOSUPPORT:
	case ESTALE:
	case ENOLINK:
		text = uffdsnap_strerror(err);
		break;
	default:
		text = strerror(-err);
	}
	if (detail && *detail && strstr(detail, text))
		return failure("%s: %s", what, detail);
	if (detail && *detail)
		return failure("%s: %s: %s", what, text, detail);
	return failure("%s: %s", what, text);
}

/* ---- progress ---------------------------------------------------------------------- */

/*
 * Long operations (verify, restore, extract, diff of gigabytes) say how far
 * they are on stderr when it is a terminal and -q was not given: done/total,
 * rate, ETA, redrawn twice a second from the first second on. Inside a
 * library call the tool cannot see its position, but the call reads the
 * snapshot with read/pread: the process's rchar (/proc/self/io) counts those
 * bytes, against the file's size as the total.
 */
static struct {
	const char *what;
	uint64_t total;                 /* 0: unknown (a stream) */
	_Atomic uint64_t done;          /* when counted by the tool */
	bool by_io;                     /* else: done is rchar - rchar0 */
	uint64_t rchar0, t0;
	pthread_t thread;
	bool running;
	pthread_mutex_t lock;
	pthread_cond_t cv;
	bool stop;
	bool drawn;
} prog = { .lock = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t rchar(void)
{
	char line[128];
	uint64_t v = 0;
	FILE *f = fopen("/proc/self/io", "re");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "rchar: %" SCNu64, &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

static void human(char *buf, size_t cap, double v)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	unsigned u = 0;

	while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0]))
		v /= 1024, u++;
	snprintf(buf, cap, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

static void progress_draw(void)
{
	uint64_t done = prog.by_io ? rchar() - prog.rchar0 : atomic_load(&prog.done);
	double secs = (double)(now_ns() - prog.t0) / 1e9, rate = secs > 0 ? (double)done / secs : 0;
	char d[32], t[32], r[32];

	if (prog.total && done > prog.total)
		done = prog.total;
	human(d, sizeof(d), (double)done);
	human(t, sizeof(t), (double)prog.total);
	human(r, sizeof(r), rate);
	if (prog.total && rate > 0)
		fprintf(stderr, "\r%s: %s of %s (%.0f%%), %s/s, ETA %.0f s   ", prog.what, d, t,
			100.0 * (double)done / (double)prog.total, r, (double)(prog.total - done) / rate);
	else
		fprintf(stderr, "\r%s: %s, %s/s   ", prog.what, d, r);
	prog.drawn = true;
}

static void *progress_main(void *arg)
{
	struct timespec ts;

	(void)arg;
	pthread_mutex_lock(&prog.lock);
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 1;
	while (!prog.stop) {
		if (pthread_cond_timedwait(&prog.cv, &prog.lock, &ts) == ETIMEDOUT && !prog.stop) {
			progress_draw();
			ts.tv_nsec += 500000000;
			if (ts.tv_nsec >= 1000000000)
				ts.tv_sec++, ts.tv_nsec -= 1000000000;
		}
	}
	pthread_mutex_unlock(&prog.lock);
	return NULL;
}

/* Start showing progress of `what`: total bytes (0 unknown), counted by the
 * tool (progress_add) or, with by_io, by the bytes the process reads. */
static void progress_start(const char *what, uint64_t total, bool by_io)
{
	if (quiet || !isatty(STDERR_FILENO))
		return;
	prog.what = what;
	prog.total = total;
	prog.by_io = by_io;
	prog.rchar0 = by_io ? rchar() : 0;
	atomic_store(&prog.done, 0);
	prog.t0 = now_ns();
	prog.stop = prog.drawn = false;
	prog.running = !pthread_create(&prog.thread, NULL, progress_main, NULL);
}

static void progress_add(uint64_t n)
{
	atomic_fetch_add(&prog.done, n);
}

/* Print text on stdout, clearing the progress line first (both may be one terminal). */
static void progress_print(const char *text)
{
	pthread_mutex_lock(&prog.lock);
	if (prog.drawn) {
		fprintf(stderr, "\r%*s\r", 79, "");
		prog.drawn = false;
	}
	fputs(text, stdout);
	fflush(stdout);
	pthread_mutex_unlock(&prog.lock);
}

/* Stop and clear the line, so that what follows starts clean. */
static void progress_end(void)
{
	if (!prog.running)
		return;
	pthread_mutex_lock(&prog.lock);
	prog.stop = true;
	pthread_cond_signal(&prog.cv);
	pthread_mutex_unlock(&prog.lock);
	pthread_join(prog.thread, NULL);
	prog.running = false;
	if (prog.drawn)
		fprintf(stderr, "\r%*s\r", 79, "");
}

/* ---- inputs ------------------------------------------------------------------------ */

#define MAX_PARENTS 4096
static const char *parents[MAX_PARENTS + 1];  /* --parent, base first (+1: diff's A for B) */
static unsigned nparents;

static int parent_opt(const char *arg)
{
	if (nparents == MAX_PARENTS)
		return usage_error("at most %d --parent files", MAX_PARENTS);
	parents[nparents++] = arg;
	return 0;
}

static bool same_id(const char *path, const uint8_t id[16])
{
	uffdsnap_info_t in = { .size = sizeof(in) };
	uffdsnap_reader_t *r;
	bool same;

	if (uffdsnap_reader_open(&r, path))
		return false;
	same = !uffdsnap_reader_info(r, &in) && !memcmp(in.snap_id, id, 16);
	uffdsnap_reader_free(r);
	return same;
}

/*
 * *r, open on the delta `path`, is reopened with its chain: the --parent
 * files up to the one that is its parent (all of them if none is: the
 * library then says which link is wrong), then path. -1, or an exit status.
 */
static int open_chain_of(const char *path, uffdsnap_reader_t **r)
{
	uffdsnap_info_t in = { .size = sizeof(in) };
	const char **chain;
	unsigned n = nparents;
	int rc;

	uffdsnap_reader_info(*r, &in);
	if (!in.delta || !nparents)
		return -1;
	for (unsigned i = 0; i < nparents; i++)
		if (same_id(parents[i], in.parent_id)) {
			n = i + 1;
			break;
		}
	if (!(chain = malloc((n + 1) * sizeof(*chain))))
		return failure("out of memory");
	memcpy(chain, parents, n * sizeof(*chain));
	chain[n] = path;
	uffdsnap_reader_free(*r);
	rc = uffdsnap_reader_open_chain(r, chain, n + 1);
	free(chain);
	return rc ? fail(path, rc, uffdsnap_last_error()) : -1;
}

/*
 * Open the snapshot `path` for the current command; "-" is standard input.
 * A pipe or socket is read as a stream, which only info and verify can do
 * (stream_ok): the others say so plainly. Says what is wrong and returns an
 * exit status, or -1 with *r open and *stream set.
 */
static int open_input(const char *path, bool stream_ok, uffdsnap_reader_t **r, bool *stream, uint64_t *size)
{
	bool std = !strcmp(path, "-");
	const char *name = std ? "standard input" : path;
	struct stat st;
	int rc;

	if (std ? fstat(STDIN_FILENO, &st) : stat(path, &st))
		return failure("%s: %s", name, strerror(errno));
	if (S_ISDIR(st.st_mode))
		return failure("%s is a directory, not a snapshot file", name);
	*stream = S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode);
	*size = S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0;
	if (*stream && !stream_ok) {
		const char *why = "%s is a pipe: '%s' needs a snapshot file it can seek in; save the stream to a "
				  "file first (info and verify read streams)";
		return std ? usage_error(why, name, cur->name) : failure(why, name, cur->name);
	}
	if (*stream && nparents)
		return usage_error("%s is a pipe: a chain (--parent) is read from files", name);
	rc = std ? uffdsnap_reader_open_fd(r, STDIN_FILENO) : uffdsnap_reader_open(r, path);
	if (!rc)
		return open_chain_of(path, r);
	/* an empty file (or /dev/null) is not a snapshot cut short: it is no snapshot at all */
	if ((rc == -ENODATA || rc == -ENOEXEC) && (S_ISCHR(st.st_mode) || (S_ISREG(st.st_mode) && st.st_size < 16)))
		return failure("%s: not a snapshot: it is %s", name,
			       S_ISREG(st.st_mode) && st.st_size ? "a few bytes long" : "empty");
	if (rc == -ENOEXEC)
		return failure("%s: not a snapshot: %s", name, uffdsnap_last_error());
	return fail(name, rc, uffdsnap_last_error());
}

/* REGION is a name first; a number is an id only when no region has that name.
 * Says so when there is no such region. */
static int find_region(uffdsnap_reader_t *r, const char *path, const char *arg)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	char earg[ESC_LEN];
	unsigned long id;
	char *end;
	int rc = uffdsnap_reader_find(r, arg);

	if (rc >= 0)
		return rc;
	uffdsnap_reader_info(r, &info);
	errno = 0;
	id = strtoul(arg, &end, 10);
	if (*arg >= '0' && *arg <= '9' && !*end && !errno && id < info.nregions)
		return (int)id;
	failure("%s: no region '%s' (see 'uffdsnap info %s')", path, esc(arg, earg), path);
	return -ENOENT;
}

/* A snapshot that is known to be incomplete or failed says so: exit status, or -1 if complete. */
static int need_complete(uffdsnap_reader_t *r, const char *path)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	char e[ESC_LEN];

	uffdsnap_reader_info(r, &info);
	if (info.complete)
		return -1;
	return failure("%s: %s: %s", path, info.status ? "the snapshot failed while it was written"
						       : "the snapshot is incomplete", esc(info.reason, e));
}

static void print_size(const char *label, uint64_t bytes)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
	double v = (double)bytes;
	unsigned u = 0;

	while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0]))
		v /= 1024, u++;
	if (u)
		printf("%-13s %" PRIu64 " (%.1f %s)\n", label, bytes, v, units[u]);
	else
		printf("%-13s %" PRIu64 "\n", label, bytes);
}

static void print_time(uint64_t ns)
{
	time_t t = (time_t)(ns / 1000000000u);
	struct tm tm;
	char buf[64];

	if (gmtime_r(&t, &tm) && strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm))
		printf("%-13s %s.%09" PRIu64 " UTC\n", "created:", buf, ns % 1000000000u);
	else
		printf("%-13s %" PRIu64 " ns\n", "created:", ns);
}

/* ---- info, verify ------------------------------------------------------------------- */

static void print_id(const uint8_t id[16])
{
	for (int i = 0; i < 16; i++)
		printf("%02x", id[i]);
	putchar('\n');
}

static int cmd_info(char **args)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	const char *path = args[0];
	char e[ESC_LEN];
	uffdsnap_reader_t *r;
	uint64_t size;
	bool stream, ok;
	int rc = open_input(path, true, &r, &stream, &size), vrc = 0;

	if (rc >= 0)
		return rc;
	/* a stream is read to its end, which checks it: only then are its counters known */
	if (stream) {
		progress_start("reading", 0, true);
		vrc = uffdsnap_reader_verify(r);
		progress_end();
	}
	uffdsnap_reader_info(r, &info);
	ok = info.complete && !vrc;
	printf("%-13s %s\n", "file:", strcmp(path, "-") ? path : "(standard input)");
	printf("%-13s libuffdsnap snapshot, version %u%s\n", "format:", info.version,
	       info.delta ? " (a delta: read it with its chain, --parent)" : "");
	printf("%-13s ", "id:");
	print_id(info.snap_id);
	if (info.delta) {
		printf("%-13s ", "parent:");
		print_id(info.parent_id);
		printf("%-13s %u\n", "depth:", info.depth);
	}
	printf("%-13s %u\n", "page size:", info.page_size);
	print_time(info.created_ns);
	if (vrc)
		printf("%-13s %s: %s\n", "state:", vrc == -EBADMSG ? "CORRUPT" : "INCOMPLETE",
		       esc(uffdsnap_reader_error(r), e));
	else if (!info.complete)
		printf("%-13s %s: %s\n", "state:", info.status ? "FAILED" : "INCOMPLETE", esc(info.reason, e));
	else if (stream)
		printf("%-13s complete, verified (every record read and checked)\n", "state:");
	else
		printf("%-13s complete (not verified: 'uffdsnap verify' reads and checks every record)\n", "state:");
	printf("%-13s %u\n", "regions:", info.nregions);
	for (unsigned i = 0; i < info.nregions; i++) {
		uffdsnap_region_info_t reg = { .size = sizeof(reg) };
		uffdsnap_reader_region(r, i, &reg);
		printf("  %4u  %-32s %" PRIu64 " bytes\n", i, esc(reg.name, e), reg.length);
	}
	if (info.complete || info.status) {
		printf("%-13s %" PRIu64 "\n", "chunks:", info.chunks);
		printf("%-13s %" PRIu64 "\n", "data pages:", info.pages_data);
		printf("%-13s %" PRIu64 "\n", "zero pages:", info.pages_zero);
		print_size("raw bytes:", info.bytes_raw);
	}
	print_size(stream ? "bytes read:" : "file bytes:", info.bytes_file);
	if (info.complete && info.bytes_file)
		printf("%-13s %.2f:1 (raw bytes / file bytes)\n", "compression:",
		       (double)info.bytes_raw / (double)info.bytes_file);
	uffdsnap_reader_free(r);
	return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}

static int cmd_verify(char **args)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_reader_t *r;
	uint64_t size;
	bool stream;
	int rc = open_input(args[0], true, &r, &stream, &size);

	if (rc >= 0)
		return rc;
	progress_start("verifying", size, true);
	rc = uffdsnap_reader_verify(r);
	progress_end();
	if (rc == -EBADMSG)
		fprintf(stderr, "CORRUPT: %s\n", uffdsnap_reader_error(r));
	else if (rc == -ENODATA)
		fprintf(stderr, "INCOMPLETE: %s\n", uffdsnap_reader_error(r));
	else if (rc)
		fail(args[0], rc, uffdsnap_reader_error(r));
	else {
		uffdsnap_reader_info(r, &info);
		printf("OK: %u regions, %" PRIu64 " pages, %" PRIu64 " chunks", info.nregions,
		       info.pages_data + info.pages_zero, info.chunks);
		printf(info.files > 1 ? " (the last of a chain of %u files, all verified)\n" : "\n", info.files);
	}
	uffdsnap_reader_free(r);
	return rc ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* ---- extract, restore ---------------------------------------------------------------- */

/* Why writing to `out` failed: the library's sentence names the file when
 * the output is refused (a directory, link, device) or could not be made. */
static int out_fail(const char *in, const char *out, int rc, const char *detail)
{
	if (rc == -EBADMSG || rc == -ENODATA || rc == -ENOLINK)
		return fail(in, rc, detail);
	if ((rc == -EISDIR || rc == -ELOOP || rc == -EINVAL) && *detail)
		return failure("%s", detail);
	return fail(out, rc, detail);
}

/* The snapshot's region for extract, restore and cat, from a complete snapshot
 * file: the region id, or an exit status (negated) with the reader freed. */
static int open_region(const char *path, const char *region, uffdsnap_reader_t **r, uint64_t *size)
{
	bool stream;
	int rc = open_input(path, false, r, &stream, size), id;

	if (rc >= 0)
		return -rc;
	if ((id = find_region(*r, path, region)) < 0 || (rc = need_complete(*r, path)) >= 0) {
		uffdsnap_reader_free(*r);
		return id < 0 ? -EXIT_FAILURE : -rc;
	}
	return id;
}

static int cmd_extract(char **args)
{
	const char *path = args[0], *outpath = args[2];
	uffdsnap_reader_t *r;
	uint64_t size;
	int id, rc;
	mode_t m;

	if (!strcmp(outpath, "-") && isatty(STDOUT_FILENO))
		return usage_error("standard output is a terminal: redirect it, or name an OUTFILE");
	if ((id = open_region(path, args[1], &r, &size)) < 0)
		return -id;
	progress_start("extracting", size, true);
	if (!strcmp(outpath, "-")) {
		if ((rc = uffdsnap_reader_extract_fd(r, (unsigned)id, STDOUT_FILENO)))
			fail(path, rc, uffdsnap_reader_error(r));
	} else {
		m = umask(0);
		umask(m);
		if ((rc = uffdsnap_reader_extract_file(r, (unsigned)id, outpath, 0666 & ~m)))
			out_fail(path, outpath, rc, uffdsnap_last_error());
	}
	progress_end();
	uffdsnap_reader_free(r);
	return rc ? EXIT_FAILURE : EXIT_SUCCESS;
}

static struct {
	const char *region, *to;
	int threads;
} ro;

static int restore_opt(int c, const char *arg)
{
	char *end;

	if (c == 'P')
		return parent_opt(arg);
	if (c == 'r')
		ro.region = arg;
	else if (c == 't')
		ro.to = arg;
	else {
		errno = 0;
		long n = strtol(arg, &end, 10);
		if (*end || !*arg || errno || n < 1 || n > 1024)
			return usage_error("--threads wants a number from 1 to 1024, not '%s'", arg);
		ro.threads = (int)n;
	}
	return 0;
}

static int cmd_restore(char **args)
{
	uffdsnap_restore_stats_t st = { .size = sizeof(st) };
	uffdsnap_restore_opts_t o;
	uffdsnap_reader_t *r;
	uint64_t size;
	int id, rc;

	if (!ro.region || !ro.to)
		return usage_error("%s is required", ro.region ? "--to PATH" : "--region REGION");
	uffdsnap_restore_opts_init(&o);
	o.threads = ro.threads;
	if ((id = open_region(args[0], ro.region, &r, &size)) < 0)
		return -id;
	progress_start("restoring", size, true);
	rc = uffdsnap_restore_file(r, (unsigned)id, ro.to, &o, &st);
	progress_end();
	if (rc)
		out_fail(args[0], ro.to, rc, uffdsnap_last_error());
	else
		printf("restored %s: %" PRIu64 " bytes (%" PRIu64 " data pages, %" PRIu64 " holes) in %.1f ms on "
		       "%u threads: %.2f GB/s\n", ro.to, st.bytes_total, st.pages_data, st.pages_zero,
		       st.elapsed_ns / 1e6, st.threads, (double)st.bytes_total / (double)st.elapsed_ns);
	uffdsnap_reader_free(r);
	return rc ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* ---- diff ---------------------------------------------------------------------- */

#define DIFF_PIECE (4u << 20)
#define DIFF_SHOW 16            /* ranges printed per region */

struct ranges {
	uint64_t pages, nranges;
	uint64_t first, last;       /* the open range */
	bool open;
};

static void range_add(FILE *out, struct ranges *g, uint64_t page)
{
	g->pages++;
	if (g->open && page == g->last + 1) {
		g->last = page;
		return;
	}
	if (g->open && g->nranges <= DIFF_SHOW)
		fprintf(out, g->first == g->last ? "%s%" PRIu64 : "%s%" PRIu64 "-%" PRIu64, g->nranges > 1 ? ", " : " ",
			g->first, g->last);
	g->nranges++;
	g->first = g->last = page;
	g->open = true;
}

static void range_end(FILE *out, struct ranges *g)
{
	if (g->open && g->nranges <= DIFF_SHOW)
		fprintf(out, g->first == g->last ? "%s%" PRIu64 : "%s%" PRIu64 "-%" PRIu64, g->nranges > 1 ? ", " : " ",
			g->first, g->last);
	if (g->nranges > DIFF_SHOW)
		fprintf(out, " ... (%" PRIu64 " ranges)", g->nranges);
}

/* Compare region ia of a with region ib of b (same length). 1 if they differ, 0 if not, -1 on error. */
struct side {
	const char *path;
	uffdsnap_reader_t *r;
	uffdsnap_info_t info;
	uint8_t *buf;
};

static int diff_region(struct side *a, unsigned ia, struct side *b, unsigned ib, const char *name, uint64_t length)
{
	struct ranges g = { 0 };
	uint32_t page = a->info.page_size;
	char e[ESC_LEN], *text = NULL;
	size_t tlen = 0;
	int rc = 0;
	/* the region's line is written whole once compared, never into the progress line */
	FILE *out = open_memstream(&text, &tlen);

	if (!out) {
		failure("out of memory");
		return -1;
	}
	fprintf(out, "region '%s':", esc(name, e));
	for (uint64_t off = 0; off < length && !rc; off += DIFF_PIECE) {
		size_t n = length - off < DIFF_PIECE ? (size_t)(length - off) : DIFF_PIECE;
		struct side *bad = (rc = uffdsnap_reader_read(a->r, ia, off, a->buf, n)) ? a
				   : (rc = uffdsnap_reader_read(b->r, ib, off, b->buf, n)) ? b : NULL;

		if (bad) {
			fprintf(out, " ?\n");
			fclose(out);
			progress_print(text);
			free(text);
			/* the file that is bad, then (in the library's detail) the region */
			fail(bad->path, rc, uffdsnap_reader_error(bad->r));
			return -1;
		}
		for (size_t p = 0; p < n; p += page)
			if (memcmp(a->buf + p, b->buf + p, page))
				range_add(out, &g, (off + p) / page);
		progress_add(n);
	}
	if (!g.pages) {
		fprintf(out, " identical (%" PRIu64 " pages)\n", length / page);
	} else {
		range_end(out, &g);
		fprintf(out, "\n  %" PRIu64 " of %" PRIu64 " pages differ, in %" PRIu64 " ranges\n", g.pages,
			length / page, g.nranges);
	}
	fclose(out);
	progress_print(text);
	free(text);
	return g.pages != 0;
}

/* Open one side of a diff: 0, or an exit status. */
static int diff_open(struct side *s)
{
	uint64_t size;
	bool stream;
	int rc = open_input(s->path, false, &s->r, &stream, &size);

	if (rc >= 0)
		return rc;
	s->info = (uffdsnap_info_t){ .size = sizeof(s->info) };
	uffdsnap_reader_info(s->r, &s->info);
	if ((rc = need_complete(s->r, s->path)) >= 0)
		return rc;
	if (!(s->buf = malloc(DIFF_PIECE)))
		return failure("out of memory");
	return 0;
}

static int cmd_diff(char **args)
{
	struct side a = { .path = args[0] }, b = { .path = args[1] };
	int rc, differ = 0, trouble;
	uint64_t total = 0;

	if (!(trouble = diff_open(&a))) {
		/* B may be a delta of A: its chain goes on through A */
		parents[nparents++] = a.path;
		trouble = diff_open(&b);
		nparents--;
	}
	if (!trouble && a.info.page_size != b.info.page_size) {
		printf("page sizes differ: %u and %u\n", a.info.page_size, b.info.page_size);
		differ = 1;
	}
	for (unsigned i = 0; !trouble && !differ && i < a.info.nregions; i++) {
		uffdsnap_region_info_t ra = { .size = sizeof(ra) };
		uffdsnap_reader_region(a.r, i, &ra);
		total += ra.length;
	}
	progress_start("comparing", total, false);
	for (unsigned i = 0; !trouble && i < a.info.nregions && a.info.page_size == b.info.page_size; i++) {
		uffdsnap_region_info_t ra = { .size = sizeof(ra) }, rb = { .size = sizeof(rb) };
		char e[ESC_LEN];
		int j;

		uffdsnap_reader_region(a.r, i, &ra);
		if ((j = uffdsnap_reader_find(b.r, ra.name)) < 0) {
			printf("region '%s': only in %s\n", esc(ra.name, e), a.path);
			differ = 1;
			continue;
		}
		uffdsnap_reader_region(b.r, (unsigned)j, &rb);
		if (ra.length != rb.length) {
			printf("region '%s': %" PRIu64 " bytes in %s, %" PRIu64 " in %s\n", esc(ra.name, e), ra.length,
			       a.path, rb.length, b.path);
			differ = 1;
			continue;
		}
		rc = diff_region(&a, i, &b, (unsigned)j, ra.name, ra.length);
		if (rc < 0)
			trouble = EXIT_FAILURE;
		else
			differ |= rc;
	}
	progress_end();
	for (unsigned j = 0; !trouble && j < b.info.nregions; j++) {
		uffdsnap_region_info_t rb = { .size = sizeof(rb) };
		char e[ESC_LEN];

		uffdsnap_reader_region(b.r, j, &rb);
		if (uffdsnap_reader_find(a.r, rb.name) < 0) {
			printf("region '%s': only in %s\n", esc(rb.name, e), b.path);
			differ = 1;
		}
	}
	free(a.buf);
	free(b.buf);
	uffdsnap_reader_free(a.r);
	uffdsnap_reader_free(b.r);
	return trouble ? trouble : differ ? EXIT_DIFFERENT : EXIT_SUCCESS;
}

/* hexdump -C layout, offsets within the region */
static void hexdump(const uint8_t *p, size_t len, uint64_t base)
{
	for (size_t i = 0; i < len; i += 16) {
		size_t n = len - i < 16 ? len - i : 16;

		printf("%08" PRIx64 " ", base + i);
		for (size_t k = 0; k < 16; k++) {
			if (k == 8)
				putchar(' ');
			if (k < n)
				printf(" %02x", p[i + k]);
			else
				printf("   ");
		}
		printf("  |");
		for (size_t k = 0; k < n; k++)
			putchar(p[i + k] >= 0x20 && p[i + k] < 0x7f ? p[i + k] : '.');
		printf("|\n");
	}
}

/* ---- cat ------------------------------------------------------------------------ */

/* A byte count or offset: decimal or 0x hex, optionally with K, M or G (binary units). */
static bool parse_size(const char *s, uint64_t *v)
{
	static const char units[] = "KMG";
	const char *u;
	char *end;

	errno = 0;
	*v = strtoull(s, &end, 0);
	if (!*s || *s == '-' || errno || end == s)
		return false;
	if (!*end)
		return true;
	if (!(u = strchr(units, *end)) || (end[1] && strcmp(end + 1, "iB")))
		return false;
	for (long k = u - units + 1; k > 0; k--) {
		if (*v > UINT64_MAX / 1024)
			return false;
		*v *= 1024;
	}
	return true;
}

static bool cat_hex;

static int cat_opt(int c, const char *arg)
{
	(void)c, (void)arg;
	cat_hex = true;
	return 0;
}

/*
 * cat reads and writes CAT_PIECE bytes at a time (a multiple of a hexdump
 * line), so its memory does not grow with LEN; the reader's chunk cache keeps
 * a chunk that spans two pieces from being decompressed twice.
 */
#define CAT_PIECE (1u << 20)

static int cmd_cat(char **args)
{
	uffdsnap_region_info_t ri = { .size = sizeof(ri) };
	uffdsnap_reader_t *r;
	uint64_t off, len, size;
	char e[ESC_LEN];
	uint8_t *buf;
	int id, rc = 0;

	if (!parse_size(args[2], &off))
		return usage_error("OFFSET '%s' is not a number (decimal, 0x hex, or with K, M, G)", args[2]);
	if (!parse_size(args[3], &len))
		return usage_error("LEN '%s' is not a number (decimal, 0x hex, or with K, M, G)", args[3]);
	if (len > (1ull << 30))
		return usage_error("LEN %s is more than 1 GiB: 'uffdsnap extract' writes whole regions", args[3]);
	if ((id = open_region(args[0], args[1], &r, &size)) < 0)
		return -id;
	uffdsnap_reader_region(r, (unsigned)id, &ri);
	if (off > ri.length || len > ri.length - off) {
		rc = usage_error("OFFSET %s + LEN %s goes past the end of region '%s', which is %" PRIu64 " bytes",
				 args[2], args[3], esc(ri.name, e), ri.length);
		uffdsnap_reader_free(r);
		return rc;
	}
	if (!(buf = malloc(CAT_PIECE))) {
		uffdsnap_reader_free(r);
		return failure("out of memory for %u bytes", CAT_PIECE);
	}
	/* what was written before a failure stays written, as with cat(1); the status says it failed */
	for (uint64_t done = 0; done < len && !rc; done += CAT_PIECE) {
		size_t n = len - done < CAT_PIECE ? (size_t)(len - done) : CAT_PIECE;

		rc = uffdsnap_reader_read(r, (unsigned)id, off + done, buf, n);
		if (rc)
			fail(args[0], rc, uffdsnap_reader_error(r));
		else if (cat_hex)
			hexdump(buf, n, off + done);
		else if (fwrite(buf, 1, n, stdout) != n)
			rc = fail("standard output", -errno, "");
	}
	if (!rc && cat_hex)
		printf("%08" PRIx64 "\n", off + len);
	if (!rc && fflush(stdout))
		rc = fail("standard output", -errno, "");
	free(buf);
	uffdsnap_reader_free(r);
	return rc ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* ---- serve ---------------------------------------------------------------------------- */

struct serve_conn {
	uffdsnap_reader_t *r;
	uffdsnap_lazy_opts_t opts;
	int fd;
	unsigned long n;
};

static void *serve_one(void *arg)
{
	struct serve_conn *c = arg;
	int rc = uffdsnap_serve_conn(c->r, c->fd, &c->opts);
	char what[32];

	snprintf(what, sizeof(what), "client %lu", c->n);
	if (rc)
		fail(what, rc, uffdsnap_last_error());
	else
		printf("client %lu: restored\n", c->n);
	fflush(stdout);
	close(c->fd);
	free(c);
	return (void *)(intptr_t)rc;
}

static struct {
	const char *socket;
	bool once;
	uffdsnap_lazy_opts_t lo;
} so;

static int serve_opt(int c, const char *arg)
{
	uint64_t num;

	switch (c) {
	case 'P':
		return parent_opt(arg);
	case 's':
		so.socket = arg;
		break;
	case '1':
		so.once = true;
		break;
	case 'n':
		so.lo.flags |= UFFDSNAP_LAZY_NO_PREFETCH;
		break;
	default: /* 'm', 't' */
		if (!parse_size(arg, &num) || !num || num > UINT32_MAX)
			return usage_error("--%s wants a positive number, not '%s'",
					   c == 'm' ? "max-clients" : "request-timeout", arg);
		*(c == 'm' ? &so.lo.max_clients : &so.lo.request_ms) = (uint32_t)num;
	}
	return 0;
}

/*
 * Make path free for our socket: nothing there, or the socket of a server
 * that is gone (connect is refused). A server that answers is left alone, and
 * so is anything that is not a socket. 0, or an exit status.
 */
static int claim_socket(const char *path, const struct sockaddr_un *sa)
{
	struct stat st;
	int s, e;

	if (lstat(path, &st))
		return errno == ENOENT ? 0 : failure("%s: %s", path, strerror(errno));
	if (!S_ISSOCK(st.st_mode))
		return failure("%s exists and is not a socket: it is not replaced; choose another --socket path", path);
	if ((s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return failure("socket: %s", strerror(errno));
	e = connect(s, (const struct sockaddr *)sa, sizeof(*sa)) ? errno : 0;
	close(s);
	if (!e)
		return failure("%s: another server is listening on it: it is not replaced (stop that server, or "
			       "choose another --socket path)", path);
	if (e != ECONNREFUSED)
		return failure("%s: cannot tell whether a server listens on it: %s", path, strerror(e));
	if (unlink(path) && errno != ENOENT)
		return failure("removing the stale socket %s: %s", path, strerror(errno));
	return 0;
}

static int cmd_serve(char **args)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	const char *path = so.socket;
	uffdsnap_reader_t *r;
	uint64_t size;
	bool stream;
	int ls, rc;

	if (!path)
		return usage_error("--socket PATH is required");
	if (strlen(path) >= sizeof(sa.sun_path))
		return usage_error("--socket path is too long (at most %zu bytes)", sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if ((rc = open_input(args[0], false, &r, &stream, &size)) >= 0)
		return rc;
	/* a snapshot known incomplete would fail every client: say so now */
	if ((rc = need_complete(r, args[0])) >= 0 || (rc = claim_socket(path, &sa))) {
		uffdsnap_reader_free(r);
		return rc;
	}
	if ((ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) ||
	    listen(ls, 16)) {
		rc = failure("%s: %s", path, strerror(errno));
		uffdsnap_reader_free(r);
		return rc;
	}
	printf("serving %s on %s\n", args[0], path);
	fflush(stdout);
	for (unsigned long n = 1;; n++) {
		struct serve_conn *sc;
		pthread_t t;
		int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);

		if (fd < 0 && errno == EINTR)
			continue;
		if (fd < 0 || !(sc = malloc(sizeof(*sc)))) {
			failure("accept: %s", strerror(fd < 0 ? errno : ENOMEM));
			rc = -EIO;
			break;
		}
		*sc = (struct serve_conn){ .r = r, .opts = so.lo, .fd = fd, .n = n };
		if (so.once) {
			rc = (int)(intptr_t)serve_one(sc);
			break;
		}
		if ((rc = pthread_create(&t, NULL, serve_one, sc))) {
			failure("client %lu: %s", n, strerror(rc));
			close(fd);
			free(sc);
			continue;
		}
		pthread_detach(t);
	}
	close(ls);
	unlink(path);
	uffdsnap_reader_free(r);
	return rc ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* ---- merge ------------------------------------------------------------------------------ */

static int cmd_merge(char **args)
{
	const char *out = args[0];
	unsigned n = 0;
	uffdsnap_info_t in = { .size = sizeof(in) };
	uffdsnap_reader_t *r;
	struct stat so_, si;
	uint64_t total = 0;
	mode_t m;
	int rc;

	while (args[n + 1])
		n++;
	/* the output is renamed over its path: an input there would be gone */
	for (unsigned i = 1; i <= n && !stat(out, &so_); i++)
		if (!strcmp(out, args[i]) || (!stat(args[i], &si) && si.st_dev == so_.st_dev && si.st_ino == so_.st_ino))
			return usage_error("OUT %s is the input %s: merge into a new file", out, args[i]);
	for (unsigned i = 1; i <= n; i++)
		total += !stat(args[i], &si) ? (uint64_t)si.st_size : 0;
	if ((rc = uffdsnap_reader_open_chain(&r, (const char *const *)args + 1, n)))
		return fail(n == 1 ? args[1] : "chain", rc, uffdsnap_last_error());
	m = umask(0);
	umask(m);
	progress_start("merging", total, true);
	rc = uffdsnap_reader_merge_file(r, out, 0666 & ~m);
	progress_end();
	if (rc) {
		out_fail(n == 1 ? args[1] : "chain", out, rc, uffdsnap_last_error());
	} else {
		uffdsnap_reader_info(r, &in);
		printf("merged %u file%s into %s: %u regions, the image at the last file's instant\n", n,
		       n > 1 ? "s" : "", out, in.nregions);
	}
	uffdsnap_reader_free(r);
	return rc ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* ---- clean ------------------------------------------------------------------------------ */

static bool dry_run;

static int clean_opt(int c, const char *arg)
{
	(void)c, (void)arg;
	dry_run = true;
	return 0;
}

static void clean_one(void *user, const char *tmp, long pid, int stale)
{
	char e[ESC_LEN];

	(*(unsigned *)user)++;
	if (stale)
		printf("%s  %s (its writer, pid %ld, is gone)\n", dry_run ? "stale  " : "removed", esc(tmp, e), pid);
	else
		printf("in use   %s (pid %ld is writing it)\n", esc(tmp, e), pid);
}

static int cmd_clean(char **args)
{
	unsigned seen = 0;
	int rc = uffdsnap_clean_temps(args[0], !dry_run, clean_one, &seen);

	if (rc < 0)
		return fail(args[0], rc, uffdsnap_last_error());
	if (!seen)
		printf("no temporary files of %s\n", args[0]);
	return EXIT_SUCCESS;
}

/* ---- coordinator and snap ------------------------------------------------------------------ */

/*
 * A coordinator for operators: it maps the regions' files, accepts
 * participants on --socket (uffdsnap_listen(3); unmodified programs join
 * through libuffdsnap-agent.so) and takes a snapshot whenever 'uffdsnap snap'
 * asks on the control socket next to it, SOCKET.ctl: one line "snap PATH",
 * answered by one line "ok ..." or "error ...".
 */
#define MAX_COORD_REGIONS 64

static struct {
	const char *name[MAX_COORD_REGIONS], *file[MAX_COORD_REGIONS];
	unsigned n;
} co;

static int coord_opt(int c, const char *arg)
{
	const char *eq = strchr(arg, '=');

	if (c == 's') {
		so.socket = arg;
		return 0;
	}
	if (!eq || eq == arg || !eq[1])
		return usage_error("--region wants NAME=FILE, not '%s'", arg);
	if (co.n == MAX_COORD_REGIONS)
		return usage_error("at most %d regions", MAX_COORD_REGIONS);
	co.name[co.n] = strndup(arg, (size_t)(eq - arg));
	co.file[co.n++] = eq + 1;
	return 0;
}

static int ctl_address(const char *sock, struct sockaddr_un *sa)
{
	*sa = (struct sockaddr_un){ .sun_family = AF_UNIX };
	if (snprintf(sa->sun_path, sizeof(sa->sun_path), "%s.ctl", sock) >= (int)sizeof(sa->sun_path))
		return usage_error("--socket path is too long (at most %zu bytes)", sizeof(sa->sun_path) - 5);
	return 0;
}

/* One request of the control socket: read "snap PATH", take it, answer. */
static void coord_request(uffdsnap_t *ctx, int fd)
{
	char line[PATH_MAX + 16], reply[1024], e[ESC_LEN];
	uffdsnap_snap_t *snap = NULL;
	uffdsnap_stats_t st = { .size = sizeof(st) };
	struct timeval tv = { 5, 0 };
	ssize_t n;
	int rc;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	n = read(fd, line, sizeof(line) - 1);
	line[n > 0 ? n : 0] = '\0';
	line[strcspn(line, "\n")] = '\0';
	if (strncmp(line, "snap /", 6)) {
		snprintf(reply, sizeof(reply), "error: the request is not 'snap ABSOLUTE-PATH'\n");
	} else if ((rc = uffdsnap_begin_file(ctx, line + 5, &snap)) || (rc = uffdsnap_wait(snap))) {
		snprintf(reply, sizeof(reply), "error %s: %s\n", esc(line + 5, e),
			 snap ? uffdsnap_snap_error(snap) : uffdsnap_last_error());
	} else {
		uffdsnap_snap_stats(snap, &st);
		snprintf(reply, sizeof(reply), "ok %s: participants %d, pages %llu (%llu copied for writers), "
			 "pause %.3f ms, %.1f ms\n", esc(line + 5, e), uffdsnap_participant_count(ctx),
			 (unsigned long long)st.pages_total, (unsigned long long)st.pages_fault, st.begin_ns / 1e6,
			 st.elapsed_ns / 1e6);
	}
	uffdsnap_snap_free(snap);
	fputs(reply, stdout);
	fflush(stdout);
	if (write(fd, reply, strlen(reply)) < 0) {
		/* the asker is gone: it was told on stdout */
	}
	close(fd);
}

static int cmd_coordinator(char **args)
{
	struct sockaddr_un sa;
	uffdsnap_t *ctx;
	int ls = -1, rc;

	(void)args;
	if (!so.socket || !co.n)
		return usage_error("--socket PATH and at least one --region NAME=FILE are required");
	if ((rc = ctl_address(so.socket, &sa)))
		return rc;
	if ((rc = uffdsnap_new(&ctx, NULL)))
		return fail("uffdsnap_new", rc, uffdsnap_last_error());
	for (unsigned i = 0; i < co.n && !rc; i++) {
		int fd = open(co.file[i], O_RDWR | O_CLOEXEC);
		struct stat st;
		void *a = MAP_FAILED;

		if (fd >= 0 && !fstat(fd, &st) && st.st_size > 0)
			a = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (a == MAP_FAILED)
			rc = failure("%s: %s", co.file[i], fd < 0 || errno ? strerror(errno) : "an empty file");
		else if ((rc = uffdsnap_add_region(ctx, co.name[i], a, (size_t)st.st_size)) < 0)
			rc = fail(co.file[i], rc, uffdsnap_last_error());
		else
			rc = 0;
		if (fd >= 0)
			close(fd);
	}
	if (!rc && (rc = uffdsnap_listen(ctx, so.socket)))
		rc = fail(so.socket, rc, uffdsnap_last_error());
	if (!rc && !(rc = claim_socket(sa.sun_path, &sa)) &&
	    ((ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	     bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || chmod(sa.sun_path, 0600) || listen(ls, 4)))
		rc = failure("%s: %s", sa.sun_path, strerror(errno));
	if (!rc) {
		printf("coordinating %u region(s): participants join at %s, 'uffdsnap snap --socket %s OUT' "
		       "takes a snapshot\n", co.n, so.socket, so.socket);
		fflush(stdout);
		for (;;) {
			int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
			if (fd >= 0)
				coord_request(ctx, fd);
			else if (errno != EINTR)
				break;
		}
		rc = failure("accept: %s", strerror(errno));
	}
	if (ls >= 0) {
		close(ls);
		unlink(sa.sun_path);
	}
	uffdsnap_free(ctx);
	return rc;
}

static int cmd_snap(char **args)
{
	char path[PATH_MAX + 8], cwd[PATH_MAX], reply[1024] = "";
	struct sockaddr_un sa;
	ssize_t n;
	int fd, rc;

	if (!so.socket)
		return usage_error("--socket PATH is required");
	if ((rc = ctl_address(so.socket, &sa)))
		return rc;
	if (args[0][0] != '/' && !getcwd(cwd, sizeof(cwd)))
		return failure("getcwd: %s", strerror(errno));
	if (snprintf(path, sizeof(path), "snap %s%s%s\n", args[0][0] == '/' ? "" : cwd, args[0][0] == '/' ? "" : "/",
		     args[0]) >= (int)sizeof(path))
		return usage_error("the output path is too long");
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
		return failure("%s: no coordinator answers there: %s", sa.sun_path, strerror(errno));
	if (write(fd, path, strlen(path)) != (ssize_t)strlen(path) || (n = read(fd, reply, sizeof(reply) - 1)) <= 0) {
		close(fd);
		return failure("%s: the coordinator did not answer", sa.sun_path);
	}
	close(fd);
	reply[n] = '\0';
	fputs(reply, strncmp(reply, "ok ", 3) ? stderr : stdout);
	return strncmp(reply, "ok ", 3) ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* ---- the command table and main ---------------------------------------------------------- */

static const struct option chain_longopts[] = {
	{ "parent", required_argument, NULL, 'P' },
	{ 0 },
};

static int chain_opt(int c, const char *arg)
{
	(void)c;
	return parent_opt(arg);
}

static const struct option restore_longopts[] = {
	{ "parent", required_argument, NULL, 'P' },
	{ "region", required_argument, NULL, 'r' },
	{ "to", required_argument, NULL, 't' },
	{ "threads", required_argument, NULL, 'j' },
	{ 0 },
};

static const struct option serve_longopts[] = {
	{ "parent", required_argument, NULL, 'P' },
	{ "socket", required_argument, NULL, 's' },
	{ "once", no_argument, NULL, '1' },
	{ "no-prefetch", no_argument, NULL, 'n' },
	{ "max-clients", required_argument, NULL, 'm' },
	{ "request-timeout", required_argument, NULL, 't' },
	{ 0 },
};

static const struct option clean_longopts[] = {
	{ "dry-run", no_argument, NULL, 'n' },
	{ 0 },
};

static const struct option coord_longopts[] = {
	{ "socket", required_argument, NULL, 's' },
	{ "region", required_argument, NULL, 'r' },
	{ 0 },
};

static const struct option snap_longopts[] = {
	{ "socket", required_argument, NULL, 's' },
	{ 0 },
};

static const struct cmd cmds[] = {
	{ "info", "format, time, state, regions and sizes of a snapshot",
	  "info [-q] FILE|-",
	  "Format, creation time, state, regions and sizes of a snapshot. A file is not\n"
	  "read through (say 'verify' for that); '-' reads a stream from standard input\n"
	  "to its end, which checks it. Exit 0 for a complete snapshot, 1 for an\n"
	  "incomplete, failed or corrupt one.\n",
	  1, 1, NULL, NULL, NULL, cmd_info },
	{ "verify", "check every record, checksum and page of a snapshot",
	  "verify [-q] [--parent FILE]... FILE|-",
	  "Read every record, check every checksum and that every page is recorded\n"
	  "exactly once. '-' reads the snapshot from standard input (a pipe works).\n"
	  "Exit 0 only for a complete, intact snapshot. With --parent, every file of\n"
	  "the chain is verified, and its links.\n"
	  "  --parent FILE   FILE is a delta: read it with its chain, the full snapshot\n"
	  "                  first, then each delta up to FILE's parent (repeat the option,\n"
	  "                  in that order)\n",
	  1, 1, "", chain_longopts, chain_opt, cmd_verify },
	{ "extract", "write a region's raw bytes to a file or standard output",
	  "extract [-q] [--parent FILE]... FILE REGION OUTFILE|-",
	  "Write the raw bytes of REGION (a name, or a numeric id) full length to\n"
	  "OUTFILE, or to standard output for '-'. OUTFILE must be a regular file or\n"
	  "not exist: a directory, symbolic link, device, FIFO or socket is refused. It\n"
	  "is written under a temporary name next to it and renamed only once complete,\n"
	  "so an existing OUTFILE survives any failure. Holes stay holes. FILE must be a\n"
	  "file (not a pipe) and a complete snapshot.\n"
	  "  --parent FILE   FILE is a delta: read it with its chain, the full snapshot\n"
	  "                  first, then each delta up to FILE's parent (repeat the option,\n"
	  "                  in that order)\n",
	  3, 3, "", chain_longopts, chain_opt, cmd_extract },
	{ "restore", "materialise a region into a file (tmpfs, /dev/shm)",
	  "restore [-q] [--parent FILE]... FILE --region REGION --to PATH [--threads N]",
	  "Materialise REGION into the file PATH (meant for tmpfs or /dev/shm),\n"
	  "decompressing on N threads (default: all CPUs). Zero pages stay holes. PATH\n"
	  "follows the rules of extract's OUTFILE and appears only when complete.\n"
	  "See docs/restore.md for restoring into a running process.\n"
	  "  --parent FILE   FILE is a delta: read it with its chain, the full snapshot\n"
	  "                  first, then each delta up to FILE's parent (repeat the option,\n"
	  "                  in that order)\n",
	  1, 1, "r:t:j:", restore_longopts, restore_opt, cmd_restore },
	{ "diff", "pages that differ between two snapshots",
	  "diff [-q] [--parent FILE]... A B",
	  "Compare two snapshot files region by region (matched by name): the pages\n"
	  "that differ, as counts and ranges of page numbers.\n"
	  "Exit 0 if identical, 3 if they differ, 1 if a snapshot cannot be read\n"
	  "(missing, incomplete, corrupt: the message names the file).\n"
	  "A delta is read with its chain: the --parent files up to its parent, and for\n"
	  "B, A too (so 'diff --parent BASE D1 D2' shows what D2 changed).\n"
	  "  --parent FILE   FILE is a delta: read it with its chain, the full snapshot\n"
	  "                  first, then each delta up to FILE's parent (repeat the option,\n"
	  "                  in that order)\n",
	  2, 2, "", chain_longopts, chain_opt, cmd_diff },
	{ "cat", "bytes of a region, raw or as a hexdump",
	  "cat [-x] FILE REGION OFFSET LEN",
	  "LEN bytes of REGION from OFFSET to standard output; -x prints them as a\n"
	  "hexdump (offsets within the region). OFFSET and LEN are decimal or 0x hex,\n"
	  "optionally with K, M or G (KiB, MiB, GiB); LEN is at most 1 GiB.\n",
	  4, 4, "x", NULL, cat_opt, cmd_cat },
	{ "serve", "page server for lazy restore of other processes",
	  "serve [--parent FILE]... FILE --socket PATH [--once] [--no-prefetch]\n"
		   "                      [--max-clients N] [--request-timeout MS]",
	  "Page server: processes that connect to PATH (uffdsnap_lazy_connect(3)) are\n"
	  "restored lazily from FILE, each client in its own thread. A socket at PATH\n"
	  "whose server still answers is never replaced; a stale one is.\n"
	  "  --once              exit after the first client\n"
	  "  --no-prefetch       serve faults only, until the client waits for the end\n"
	  "                      or hangs up\n"
	  "  --max-clients N     at most N clients at once (default 64); more are refused\n"
	  "  --request-timeout MS  hang up on a client that sent no request within MS\n"
	  "                      milliseconds of connecting (default 5000)\n"
	  "  --parent FILE   FILE is a delta: read it with its chain, the full snapshot\n"
	  "                  first, then each delta up to FILE's parent (repeat the option,\n"
	  "                  in that order)\n",
	  1, 1, "s:", serve_longopts, serve_opt, cmd_serve },
	{ "merge", "write a chain of deltas as one full snapshot",
	  "merge [-q] OUT BASE [DELTA]...",
	  "Write the image of the chain BASE DELTA... (a full snapshot, then each delta\n"
	  "after its parent) to OUT as one full snapshot, with the id and instant of the\n"
	  "last file, so deltas taken after it apply to OUT: a compaction step for\n"
	  "incremental backups (merge, then delete the files merged). Each chunk the\n"
	  "image needs is checked as it is read ('verify --parent' checks every file).\n"
	  "OUT follows the rules of extract's OUTFILE, is synced and appears only when\n"
	  "complete, and may not be one of the inputs.\n",
	  2, INT_MAX, NULL, NULL, NULL, cmd_merge },
	{ "clean", "list and remove temporaries killed writers left",
	  "clean [-n] PATH",
	  "List the temporary files (PATH.tmp.uffdsnap-PID-XXXXXX) that snapshots,\n"
	  "restores or extracts to PATH left when they were killed, and remove those\n"
	  "whose writer is gone; -n (--dry-run) only lists them. Files still being\n"
	  "written are never touched. A new snapshot to PATH removes stale ones too.\n",
	  1, 1, "n", clean_longopts, clean_opt, cmd_clean },
	{ "coordinator", "snapshot the shared memory of other processes",
	  "coordinator --socket PATH --region NAME=FILE [--region NAME=FILE]...",
	  "Map each FILE (on tmpfs, /dev/shm or hugetlbfs) as region NAME, accept\n"
	  "participants on PATH and take a snapshot each time 'uffdsnap snap' asks, on\n"
	  "PATH.ctl. Processes join with uffdsnap_join(3), or unmodified ones by\n"
	  "running with LD_PRELOAD=libuffdsnap-agent.so UFFDSNAP_COORDINATOR=PATH.\n"
	  "Runs until killed; prints one line for each snapshot.\n",
	  0, 0, "s:r:", coord_longopts, coord_opt, cmd_coordinator },
	{ "snap", "ask a coordinator for a snapshot",
	  "snap --socket PATH OUT",
	  "Ask the coordinator listening on PATH to write a snapshot of its regions, and\n"
	  "of every participant's writes to them, to OUT; print its answer. Exit 0 when\n"
	  "the snapshot is complete.\n",
	  1, 1, "s:", snap_longopts, coord_opt, cmd_snap },
};

#define NCMDS (sizeof(cmds) / sizeof(cmds[0]))

static void print_all_usage(FILE *f)
{
	for (unsigned i = 0; i < NCMDS; i++)
		fprintf(f, "%s uffdsnap %s\n", i ? "      " : "Usage:", cmds[i].synopsis);
	fprintf(f, "       uffdsnap --help | --version\n");
}

static int run_cmd(const struct cmd *c, int argc, char **argv)
{
	struct option lo[12] = { { "help", no_argument, NULL, 'h' }, { "quiet", no_argument, NULL, 'q' } };
	char shortopts[16];
	int ch, n = 2, rc, idx;

	for (const struct option *o = c->longopts; o && o->name; o++)
		lo[n++] = *o;
	/* ':' first: the tool says what is wrong, getopt stays silent */
	snprintf(shortopts, sizeof(shortopts), ":hq%s", c->shortopts ? c->shortopts : "");
	cur = c;
	optind = 0; /* 0, not 1: glibc re-reads the ordering mode, main's '+' must not stick */
	while ((idx = -1, ch = getopt_long(argc, argv, shortopts, lo, &idx)) != -1) {
		if (ch == 'h') {
			print_usage(stdout, c);
			printf("\n%s\nExit status: 0 success, 1 failure, 2 usage error%s. See uffdsnap(1).\n", c->help,
			       c->run == cmd_diff ? ", 3 different" : "");
			return EXIT_SUCCESS;
		}
		if (ch == 'q')
			quiet = true;
		else if (ch == '?')
			return optopt ? usage_error("unknown option '-%c'", optopt)
				      : usage_error("unknown option '%s'", argv[optind - 1]);
		else if (ch == ':')
			return usage_error("option '%s' needs a value", argv[optind - 1]);
		else if (optarg && !*optarg)
			return idx >= 0 ? usage_error("option '--%s' has an empty value", lo[idx].name)
					: usage_error("option '-%c' has an empty value", ch);
		else if ((rc = c->opt(ch, optarg)))
			return rc;
	}
	n = argc - optind;
	if (n < c->min)
		return usage_error(n ? "missing arguments" : "missing argument");
	if (n > c->max)
		return usage_error("unexpected argument '%s'", argv[optind + c->max]);
	for (int i = optind; i < argc; i++)
		if (!*argv[i])
			return usage_error("argument %d is empty", i - optind + 1);
	return c->run(argv + optind);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "quiet", no_argument, NULL, 'q' },
		{ 0 },
	};
	unsigned v = uffdsnap_version();
	int c;

	uffdsnap_set_log_fn(uffdsnap_log_stderr, NULL); /* a lazy restore's failure, before its SIGBUS */
	uffdsnap_lazy_opts_init(&so.lo);
	/* '+': options end at the command, whose own options follow it */
	while ((c = getopt_long(argc, argv, "+:hVq", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			print_all_usage(stdout);
			printf("\nInspect, check, compare, restore and serve libuffdsnap snapshot files.\n\n");
			for (unsigned i = 0; i < NCMDS; i++)
				printf("  %-8s %s\n", cmds[i].name, cmds[i].summary);
			printf("\n'uffdsnap COMMAND --help' says more; -q silences the progress shown on a terminal.\n"
			       "Exit status: 0 success, 1 failure (corrupt, incomplete, I/O), 2 usage error;\n"
			       "diff: 3 when the snapshots differ. See uffdsnap(1).\n");
			return EXIT_SUCCESS;
		case 'V':
			printf("uffdsnap %s (libuffdsnap %u.%u.%u)\n", PACKAGE_VERSION, v / 10000, v / 100 % 100,
			       v % 100);
			return EXIT_SUCCESS;
		case 'q':
			quiet = true;
			break;
		default:
			fprintf(stderr, "uffdsnap: unknown option '%s'\n", argv[optind - 1]);
			print_all_usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "uffdsnap: no command given\n");
		print_all_usage(stderr);
		return EXIT_USAGE;
	}
	for (unsigned i = 0; i < NCMDS; i++)
		if (!strcmp(argv[optind], cmds[i].name))
			return run_cmd(&cmds[i], argc - optind, argv + optind);
	fprintf(stderr, "uffdsnap: unknown command '%s'\n", argv[optind]);
	print_all_usage(stderr);
	return EXIT_USAGE;
}
