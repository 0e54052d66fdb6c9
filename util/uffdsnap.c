/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * uffdsnap: the command-line tool for snapshot files - info, verify, extract.
 * A thin layer over the public reader API: everything it knows about the
 * format it learns from libuffdsnap.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uffdsnap.h>

#define EXIT_USAGE 2

static const char usage_text[] =
	"Usage: uffdsnap info FILE\n"
	"       uffdsnap verify FILE|-\n"
	"       uffdsnap extract FILE REGION OUTFILE|-\n"
	"       uffdsnap --help | --version\n";

static const char help_text[] =
	"\n"
	"Inspect and check libuffdsnap snapshot files.\n"
	"\n"
	"  info FILE          format, creation time, completeness, regions and sizes\n"
	"  verify FILE        read every record, check every checksum and that every\n"
	"                     page is recorded once; '-' reads the snapshot from stdin.\n"
	"                     Exit 0 only for a complete, intact snapshot.\n"
	"  extract FILE REGION OUTFILE\n"
	"                     write the raw bytes of REGION (a name or a numeric id),\n"
	"                     full length, to OUTFILE ('-' = stdout); holes stay holes\n"
	"                     in a regular file.\n"
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

/* "what: what the errno means: the detail" for a failed call. The library's
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
		printf("%-13s %s: %s\n", "state:", info.status ? "FAILED" : "INCOMPLETE", info.reason);
	printf("%-13s %u\n", "regions:", info.nregions);
	for (unsigned i = 0; i < info.nregions; i++) {
		uffdsnap_region_info_t reg = { .size = sizeof(reg) };
		uffdsnap_reader_region(r, i, &reg);
		printf("  %4u  %-32s %" PRIu64 " bytes\n", i, reg.name, reg.length);
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

/* REGION is a name first; a number is an id only when no region has that name. */
static int find_region(uffdsnap_reader_t *r, const char *arg)
{
	uffdsnap_info_t info = { .size = sizeof(info) };
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
	return -ENOENT;
}

static int cmd_extract(const char *path, const char *region, const char *outpath)
{
	bool to_stdout = !strcmp(outpath, "-");
	uffdsnap_reader_t *r;
	int fd, id, rc = open_snapshot(path, &r);

	if (rc)
		return fail(path, rc, uffdsnap_last_error());
	if ((id = find_region(r, region)) < 0) {
		fprintf(stderr, "uffdsnap: %s: no region '%s' (see 'uffdsnap info %s')\n", path, region, path);
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
	if (strcmp(cmd, "info") && strcmp(cmd, "verify") && strcmp(cmd, "extract"))
		return usage_error("unknown command '%s'", cmd);
	return usage_error("wrong number of arguments for '%s'", cmd);
}
