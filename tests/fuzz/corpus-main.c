/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The fuzz corpus as a regression test (`meson test` runs it as fuzz-corpus):
 * every file of the directories (or files) given runs once through
 * LLVMFuzzerTestOneInput() of fuzz-reader.c, built here without libFuzzer,
 * so it runs under gcc and its sanitizers too. A watchdog turns a hang into
 * a failure that names the file.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char current[4096];

static void on_alarm(int sig)
{
	(void)sig;
	fprintf(stderr, "WATCHDOG: %s took more than 20 s\n", current);
	abort();
}

static int run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	long n;

	if (!f || fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	buf = malloc(n ? (size_t)n : 1);
	if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
		fprintf(stderr, "%s: read failed\n", path);
		return -1;
	}
	fclose(f);
	snprintf(current, sizeof(current), "%s", path);
	alarm(20);
	LLVMFuzzerTestOneInput(buf, (size_t)n);
	alarm(0);
	free(buf);
	return 0;
}

static int cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
	unsigned long files = 0;

	signal(SIGALRM, on_alarm);
	signal(SIGPIPE, SIG_IGN);
	for (int i = 1; i < argc; i++) {
		struct stat st;
		char **names = NULL;
		size_t nn = 0;
		DIR *d;
		struct dirent *e;

		if (stat(argv[i], &st)) {
			fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
			return 1;
		}
		if (!S_ISDIR(st.st_mode)) {
			if (run_file(argv[i]))
				return 1;
			files++;
			continue;
		}
		if (!(d = opendir(argv[i])))
			return 1;
		while ((e = readdir(d))) {
			char p[8192];
			if (e->d_name[0] == '.')
				continue;
			snprintf(p, sizeof(p), "%s/%s", argv[i], e->d_name);
			names = realloc(names, (nn + 1) * sizeof(*names));
			names[nn++] = strdup(p);
		}
		closedir(d);
		qsort(names, nn, sizeof(*names), cmp);
		for (size_t k = 0; k < nn; k++) {
			if (run_file(names[k]))
				return 1;
			files++;
			free(names[k]);
		}
		free(names);
	}
	printf("fuzz-corpus: %lu inputs ran through every reader without a finding\n", files);
	if (!files) {
		fprintf(stderr, "fuzz-corpus: no inputs: the corpus is missing\n");
		return 1;
	}
	return 0;
}
