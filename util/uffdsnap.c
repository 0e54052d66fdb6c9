/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * uffdsnap: the command-line tool for snapshot files - info, verify, extract,
 * restore, diff, cat, and serve (a page server for lazy restore of other
 * processes). A thin layer over the public reader and restore API:
 * everything it knows about the format it learns from libuffdsnap.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <uffdsnap.h>

#define EXIT_USAGE 2

static const char usage_text[] =
	"Usage: uffdsnap info FILE\n"
	"       uffdsnap verify FILE|-\n"
	"       uffdsnap extract FILE REGION OUTFILE|-\n"
	"       uffdsnap restore FILE --region REGION --to PATH [--threads N]\n"
	"       uffdsnap diff A B\n"
	"       uffdsnap cat [-x] FILE REGION OFFSET LEN\n"
	"       uffdsnap serve FILE --socket PATH [--once] [--no-prefetch] [--max-clients N]\n"
	"                      [--request-timeout MS]\n"
	"       uffdsnap --help | --version\n";

static const char help_text[] =
	"\n"
	"Inspect, check, compare and restore libuffdsnap snapshot files.\n"
	"\n"
	"  info FILE          format, creation time, completeness, regions and sizes\n"
	"  verify FILE        read every record, check every checksum and that every\n"
	"                     page is recorded once; '-' reads the snapshot from stdin.\n"
	"                     Exit 0 only for a complete, intact snapshot.\n"
	"  extract FILE REGION OUTFILE\n"
	"                     write the raw bytes of REGION (a name or a numeric id),\n"
	"                     full length, to OUTFILE ('-' = stdout); holes stay holes\n"
	"                     in a regular file.\n"
	"  restore FILE --region REGION --to PATH\n"
	"                     materialise REGION into the file PATH (meant for tmpfs or\n"
	"                     /dev/shm), decompressing on N threads (default: all CPUs);\n"
	"                     zero pages stay holes; PATH appears only when complete.\n"
	"  diff A B           compare two snapshots region by region (matched by name):\n"
	"                     pages that differ, as counts and ranges of page numbers.\n"
	"                     Exit 0 if identical, 1 if different, 2 on trouble.\n"
	"  cat FILE REGION OFFSET LEN\n"
	"                     LEN bytes of REGION from OFFSET (decimal or 0x hex) to\n"
	"                     stdout; -x prints them as a hexdump (offsets in the region).\n"
	"  serve FILE --socket PATH\n"
	"                     page server: restore processes that connect to PATH with\n"
	"                     uffdsnap_lazy_connect() lazily from FILE (each client in\n"
	"                     its own thread); --once: exit after the first client;\n"
	"                     --no-prefetch: serve faults only until the client waits\n"
	"                     for the end (uffdsnap_lazy_client_wait) or hangs up;\n"
	"                     --max-clients N: serve at most N clients at once (default\n"
	"                     64) and refuse more, with an error to the client;\n"
	"                     --request-timeout MS: hang up on a client that has not sent\n"
	"                     its request MS milliseconds after it connected (default 5000).\n"
	"\n"
	"Exit status: 0 success, 1 failure (corrupt, incomplete, I/O), 2 usage error.\n";

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "uffdsnap: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n%s", usage_text);
	return EXIT_USAGE;
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

/* "what: what the errno means: the detail" for a failed call. The detail is
 * the library's message (escaped by the library: printable ASCII). The library's
 * texts explain its own errnos; an errno from a system call (ENOENT from
 * open(2)) is best explained by the C library. */
static int fail(const char *what, int err, const char *detail)
{
	const char *text;

	switch (-err) {
	case EBADMSG:
	case ENODATA:
	case ENOEXEC:
	case EPROTONOSUPPORT:
		text = uffdsnap_strerror(err);
		break;
	default:
		text = strerror(-err);
	}
	if (detail && *detail)
		fprintf(stderr, "uffdsnap: %s: %s: %s\n", what, text, detail);
	else
		fprintf(stderr, "uffdsnap: %s: %s\n", what, text);
	return EXIT_FAILURE;
}

/* "-" is stdin, read as a stream. */
static int open_snapshot(const char *path, uffdsnap_reader_t **r)
{
	return strcmp(path, "-") ? uffdsnap_reader_open(r, path) : uffdsnap_reader_open_fd(r, STDIN_FILENO);
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

static int cmd_info(const char *path)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	char e[ESC_LEN];
	uffdsnap_reader_t *r;
	int rc = open_snapshot(path, &r);

	if (rc)
		return fail(path, rc, uffdsnap_last_error());
	uffdsnap_reader_info(r, &info);
	printf("%-13s %s\n", "file:", path);
	printf("%-13s libuffdsnap snapshot, version %u\n", "format:", info.version);
	printf("%-13s %u\n", "page size:", info.page_size);
	print_time(info.created_ns);
	if (info.complete)
		printf("%-13s complete\n", "state:");
	else
		printf("%-13s %s: %s\n", "state:", info.status ? "FAILED" : "INCOMPLETE", esc(info.reason, e));
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
	print_size("file bytes:", info.bytes_file);
	if (info.complete && info.bytes_file)
		printf("%-13s %.2f:1 (raw bytes / file bytes)\n", "compression:",
		       (double)info.bytes_raw / (double)info.bytes_file);
	uffdsnap_reader_free(r);
	return EXIT_SUCCESS;
}

static int cmd_verify(const char *path)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
	uffdsnap_reader_t *r;
	const char *detail;
	int rc = open_snapshot(path, &r);

	detail = uffdsnap_last_error();
	if (!rc) {
		rc = uffdsnap_reader_verify(r);
		detail = uffdsnap_reader_error(r);
	}
	if (rc == -EBADMSG)
		fprintf(stderr, "CORRUPT: %s\n", detail);
	else if (rc == -ENODATA)
		fprintf(stderr, "INCOMPLETE: %s\n", detail);
	else if (rc)
		fail(path, rc, detail);
	else {
		uffdsnap_reader_info(r, &info);
		printf("OK: %u regions, %" PRIu64 " pages, %" PRIu64 " chunks\n", info.nregions,
		       info.pages_data + info.pages_zero, info.chunks);
	}
	uffdsnap_reader_free(r);
	return rc ? EXIT_FAILURE : EXIT_SUCCESS;
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
	fprintf(stderr, "uffdsnap: %s: no region '%s' (see 'uffdsnap info %s')\n", path, esc(arg, earg), path);
	return -ENOENT;
}

static int cmd_extract(const char *path, const char *region, const char *outpath)
{
	bool to_stdout = !strcmp(outpath, "-");
	uffdsnap_reader_t *r;
	int fd, id, rc = open_snapshot(path, &r);

	if (rc)
		return fail(path, rc, uffdsnap_last_error());
	if ((id = find_region(r, path, region)) < 0) {
		uffdsnap_reader_free(r);
		return EXIT_FAILURE;
	}
	fd = to_stdout ? STDOUT_FILENO : open(outpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
	if (fd < 0) {
		fprintf(stderr, "uffdsnap: %s: %s\n", outpath, strerror(errno));
		uffdsnap_reader_free(r);
		return EXIT_FAILURE;
	}
	rc = uffdsnap_reader_extract_fd(r, (unsigned)id, fd);
	if (rc)
		fail(path, rc, uffdsnap_reader_error(r));
	if (!to_stdout && close(fd) && !rc) {
		fprintf(stderr, "uffdsnap: %s: %s\n", outpath, strerror(errno));
		rc = -EIO;
	}
	/* a partial region must not pass for an extracted one */
	if (rc && !to_stdout)
		unlink(outpath);
	uffdsnap_reader_free(r);
	return rc ? EXIT_FAILURE : EXIT_SUCCESS;
}

static int cmd_restore(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "region", required_argument, NULL, 'r' },
		{ "to", required_argument, NULL, 't' },
		{ "threads", required_argument, NULL, 'j' },
		{ 0 },
	};
	uffdsnap_restore_stats_t st = { .size = sizeof(st) };
	uffdsnap_restore_opts_t o;
	const char *region = NULL, *to = NULL;
	uffdsnap_reader_t *r;
	char *end;
	int c, id, rc;

	uffdsnap_restore_opts_init(&o);
	optind = 0; /* 0, not 1: glibc re-reads the ordering mode, main's '+' must not stick */
	while ((c = getopt_long(argc, argv, "r:t:j:", opts, NULL)) != -1) {
		switch (c) {
		case 'r':
			region = optarg;
			break;
		case 't':
			to = optarg;
			break;
		case 'j':
			o.threads = (int)strtol(optarg, &end, 10);
			if (*end || o.threads < 1)
				return usage_error("restore: --threads wants a positive number, not '%s'", optarg);
			break;
		default:
			return usage_error("restore: unknown option");
		}
	}
	if (argc - optind != 1 || !region || !to)
		return usage_error("restore needs FILE, --region REGION and --to PATH");
	if ((rc = uffdsnap_reader_open(&r, argv[optind])))
		return fail(argv[optind], rc, uffdsnap_last_error());
	if ((id = find_region(r, argv[optind], region)) < 0) {
		uffdsnap_reader_free(r);
		return EXIT_FAILURE;
	}
	rc = uffdsnap_restore_file(r, (unsigned)id, to, &o, &st);
	if (rc)
		fail(argv[optind], rc, uffdsnap_last_error());
	else
		printf("restored %s: %" PRIu64 " bytes (%" PRIu64 " data pages, %" PRIu64 " holes) in %.1f ms on "
		       "%u threads: %.2f GB/s\n", to, st.bytes_total, st.pages_data, st.pages_zero,
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

static void range_add(struct ranges *g, uint64_t page)
{
	g->pages++;
	if (g->open && page == g->last + 1) {
		g->last = page;
		return;
	}
	if (g->open && g->nranges <= DIFF_SHOW)
		printf(g->first == g->last ? "%s%" PRIu64 : "%s%" PRIu64 "-%" PRIu64, g->nranges > 1 ? ", " : " ",
		       g->first, g->last);
	g->nranges++;
	g->first = g->last = page;
	g->open = true;
}

static void range_end(struct ranges *g)
{
	if (g->open && g->nranges <= DIFF_SHOW)
		printf(g->first == g->last ? "%s%" PRIu64 : "%s%" PRIu64 "-%" PRIu64, g->nranges > 1 ? ", " : " ",
		       g->first, g->last);
	if (g->nranges > DIFF_SHOW)
		printf(" ... (%" PRIu64 " ranges)", g->nranges);
}

/* Compare region ia of a with region ib of b (same length). 1 if they differ, 0 if not, -1 on error. */
static int diff_region(uffdsnap_reader_t *a, unsigned ia, uffdsnap_reader_t *b, unsigned ib, const char *name,
		       uint64_t length, uint32_t page, uint8_t *ba, uint8_t *bb)
{
	struct ranges g = { 0 };
	char e[ESC_LEN];
	int rc;

	printf("region '%s':", esc(name, e));
	fflush(stdout);
	for (uint64_t off = 0; off < length; off += DIFF_PIECE) {
		size_t n = length - off < DIFF_PIECE ? (size_t)(length - off) : DIFF_PIECE;

		uffdsnap_reader_t *bad = (rc = uffdsnap_reader_read(a, ia, off, ba, n)) ? a
					 : (rc = uffdsnap_reader_read(b, ib, off, bb, n)) ? b : NULL;

		if (bad) {
			printf(" ?\n");
			fflush(stdout);
			fail(e, rc, uffdsnap_reader_error(bad));
			return -1;
		}
		for (size_t p = 0; p < n; p += page)
			if (memcmp(ba + p, bb + p, page))
				range_add(&g, (off + p) / page);
	}
	if (!g.pages) {
		printf(" identical (%" PRIu64 " pages)\n", length / page);
		return 0;
	}
	range_end(&g);
	printf("\n  %" PRIu64 " of %" PRIu64 " pages differ, in %" PRIu64 " ranges\n", g.pages, length / page,
	       g.nranges);
	return 1;
}

static int cmd_diff(const char *pa, const char *pb)
{
	uffdsnap_info_t ia = { .size = sizeof(ia) }, ib = { .size = sizeof(ib) };
	uffdsnap_reader_t *a = NULL, *b = NULL;
	uint8_t *ba = NULL, *bb = NULL;
	int rc, differ = 0, trouble = 0;

	if ((rc = uffdsnap_reader_open(&a, pa)) || (rc = uffdsnap_reader_open(&b, pb))) {
		fail(a ? pb : pa, rc, uffdsnap_last_error());
		uffdsnap_reader_free(a);
		return EXIT_USAGE;
	}
	uffdsnap_reader_info(a, &ia);
	uffdsnap_reader_info(b, &ib);
	ba = malloc(DIFF_PIECE);
	bb = malloc(DIFF_PIECE);
	if (!ba || !bb) {
		fprintf(stderr, "uffdsnap: out of memory\n");
		trouble = 1;
	} else if (ia.page_size != ib.page_size) {
		printf("page sizes differ: %u and %u\n", ia.page_size, ib.page_size);
		trouble = 1;
	}
	for (unsigned i = 0; i < ia.nregions && !trouble; i++) {
		uffdsnap_region_info_t ra = { .size = sizeof(ra) }, rb = { .size = sizeof(rb) };
		char e[ESC_LEN];
		int j;

		uffdsnap_reader_region(a, i, &ra);
		if ((j = uffdsnap_reader_find(b, ra.name)) < 0) {
			printf("region '%s': only in %s\n", esc(ra.name, e), pa);
			differ = 1;
			continue;
		}
		uffdsnap_reader_region(b, (unsigned)j, &rb);
		if (ra.length != rb.length) {
			printf("region '%s': %" PRIu64 " bytes in %s, %" PRIu64 " in %s\n", esc(ra.name, e), ra.length, pa,
			       rb.length, pb);
			differ = 1;
			continue;
		}
		rc = diff_region(a, i, b, (unsigned)j, ra.name, ra.length, ia.page_size, ba, bb);
		if (rc < 0)
			trouble = 1;
		else
			differ |= rc;
	}
	for (unsigned j = 0; j < ib.nregions && !trouble; j++) {
		uffdsnap_region_info_t rb = { .size = sizeof(rb) };
		char e[ESC_LEN];

		uffdsnap_reader_region(b, j, &rb);
		if (uffdsnap_reader_find(a, rb.name) < 0) {
			printf("region '%s': only in %s\n", esc(rb.name, e), pb);
			differ = 1;
		}
	}
	free(ba);
	free(bb);
	uffdsnap_reader_free(a);
	uffdsnap_reader_free(b);
	return trouble ? EXIT_USAGE : differ;
}

/* ---- cat ------------------------------------------------------------------------ */

static bool parse_u64(const char *s, uint64_t *v)
{
	char *end;

	errno = 0;
	*v = strtoull(s, &end, 0);
	return *s && *s != '-' && !*end && !errno;
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
	printf("%08" PRIx64 "\n", base + len);
}

static int cmd_cat(int argc, char **argv)
{
	uffdsnap_reader_t *r;
	uint64_t off, len;
	bool hex = false;
	uint8_t *buf;
	int c, id, rc;

	optind = 0;
	while ((c = getopt(argc, argv, "+x")) != -1) {
		if (c != 'x')
			return usage_error("cat: unknown option");
		hex = true;
	}
	if (argc - optind != 4)
		return usage_error("cat needs FILE REGION OFFSET LEN");
	argv += optind;
	if (!parse_u64(argv[2], &off) || !parse_u64(argv[3], &len) || len > (1ull << 30))
		return usage_error("cat: OFFSET and LEN must be numbers (LEN at most 1 GiB)");
	if ((rc = uffdsnap_reader_open(&r, argv[0])))
		return fail(argv[0], rc, uffdsnap_last_error());
	if ((id = find_region(r, argv[0], argv[1])) < 0) {
		uffdsnap_reader_free(r);
		return EXIT_FAILURE;
	}
	if (!(buf = malloc(len ? len : 1))) {
		uffdsnap_reader_free(r);
		return fail(argv[0], -ENOMEM, "");
	}
	rc = uffdsnap_reader_read(r, (unsigned)id, off, buf, len);
	if (rc)
		fail(argv[0], rc, uffdsnap_reader_error(r));
	else if (hex)
		hexdump(buf, len, off);
	else if (fwrite(buf, 1, len, stdout) != len)
		rc = fail("stdout", -errno, "");
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

static int cmd_serve(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "once", no_argument, NULL, '1' },
		{ "no-prefetch", no_argument, NULL, 'n' },
		{ "max-clients", required_argument, NULL, 'm' },
		{ "request-timeout", required_argument, NULL, 't' },
		{ 0 },
	};
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uffdsnap_lazy_opts_t lo;
	const char *path = NULL;
	uffdsnap_reader_t *r;
	bool once = false;
	struct stat st;
	uint64_t num;
	int c, ls, rc;

	uffdsnap_lazy_opts_init(&lo);
	optind = 0;
	while ((c = getopt_long(argc, argv, "s:", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			path = optarg;
			break;
		case '1':
			once = true;
			break;
		case 'n':
			lo.flags |= UFFDSNAP_LAZY_NO_PREFETCH;
			break;
		case 'm':
		case 't':
			if (!parse_u64(optarg, &num) || !num || num > UINT32_MAX)
				return usage_error("serve: --%s wants a positive number, not '%s'",
						   c == 'm' ? "max-clients" : "request-timeout", optarg);
			*(c == 'm' ? &lo.max_clients : &lo.request_ms) = (uint32_t)num;
			break;
		default:
			return usage_error("serve: unknown option");
		}
	}
	if (argc - optind != 1 || !path)
		return usage_error("serve needs FILE and --socket PATH");
	if (strlen(path) >= sizeof(sa.sun_path))
		return usage_error("serve: socket path too long");
	strcpy(sa.sun_path, path);
	if ((rc = uffdsnap_reader_open(&r, argv[optind])))
		return fail(argv[optind], rc, uffdsnap_last_error());
	/* a stale socket of an earlier server, never any other file */
	if (!lstat(path, &st) && S_ISSOCK(st.st_mode))
		unlink(path);
	if ((ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) ||
	    listen(ls, 16)) {
		fprintf(stderr, "uffdsnap: %s: %s\n", path, strerror(errno));
		uffdsnap_reader_free(r);
		return EXIT_FAILURE;
	}
	printf("serving %s on %s\n", argv[optind], path);
	fflush(stdout);
	for (unsigned long n = 1;; n++) {
		struct serve_conn *sc;
		pthread_t t;
		int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);

		if (fd < 0 && errno == EINTR)
			continue;
		if (fd < 0 || !(sc = malloc(sizeof(*sc)))) {
			fprintf(stderr, "uffdsnap: accept: %s\n", strerror(fd < 0 ? errno : ENOMEM));
			rc = -EIO;
			break;
		}
		*sc = (struct serve_conn){ .r = r, .opts = lo, .fd = fd, .n = n };
		if (once) {
			rc = (int)(intptr_t)serve_one(sc);
			break;
		}
		if ((rc = pthread_create(&t, NULL, serve_one, sc))) {
			fprintf(stderr, "uffdsnap: client %lu: %s\n", n, strerror(rc));
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

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	unsigned v = uffdsnap_version();
	const char *cmd;
	int c, nargs;

	/* '+': options end at the subcommand, so "extract x -- -" keeps its operands */
	while ((c = getopt_long(argc, argv, "+hV", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			printf("%s%s", usage_text, help_text);
			return EXIT_SUCCESS;
		case 'V':
			printf("uffdsnap %s (libuffdsnap %u.%u.%u)\n", PACKAGE_VERSION, v / 10000, v / 100 % 100,
			       v % 100);
			return EXIT_SUCCESS;
		default:
			fprintf(stderr, "%s", usage_text);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc)
		return usage_error("no command given");
	cmd = argv[optind];
	nargs = argc - optind - 1;
	argv += optind + 1;
	if (!strcmp(cmd, "info") && nargs == 1)
		return cmd_info(argv[0]);
	if (!strcmp(cmd, "verify") && nargs == 1)
		return cmd_verify(argv[0]);
	if (!strcmp(cmd, "extract") && nargs == 3)
		return cmd_extract(argv[0], argv[1], argv[2]);
	if (!strcmp(cmd, "restore"))
		return cmd_restore(nargs + 1, argv - 1);
	if (!strcmp(cmd, "diff") && nargs == 2)
		return cmd_diff(argv[0], argv[1]);
	if (!strcmp(cmd, "cat"))
		return cmd_cat(nargs + 1, argv - 1);
	if (!strcmp(cmd, "serve"))
		return cmd_serve(nargs + 1, argv - 1);
	if (strcmp(cmd, "info") && strcmp(cmd, "verify") && strcmp(cmd, "extract") && strcmp(cmd, "diff"))
		return usage_error("unknown command '%s'", cmd);
	return usage_error("wrong number of arguments for '%s'", cmd);
}
