/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A program that knows nothing of libuffdsnap (test-agent.c runs it under
 * the agent): it maps a file MAP_SHARED, says "R", and for each "W" on its
 * standard input flips a byte in every page and says "D"; for each "M" it
 * moves the mapping elsewhere with mremap and says "R" again.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	size_t len, ps = (size_t)sysconf(_SC_PAGESIZE);
	unsigned char *a;
	int fd, c;

	if (argc != 3 || (fd = open(argv[1], O_RDWR)) < 0)
		return 2;
	len = strtoul(argv[2], NULL, 0);
	a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (a == MAP_FAILED)
		return 3;
	printf("R\n");
	fflush(stdout);
	while ((c = getchar()) != EOF) {
		if (c == 'M') {
			/* a free place: reserved, then replaced by the move */
			void *to = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (to == MAP_FAILED || (a = mremap(a, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to)) == MAP_FAILED)
				return 4;
			printf("R\n");
			fflush(stdout);
		}
		if (c != 'W')
			continue;
		for (size_t i = 0; i < len / ps; i++)
			a[i * ps + 24] ^= 0x3c;
		printf("D\n");
		fflush(stdout);
	}
	return 0;
}
