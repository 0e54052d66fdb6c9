/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * migrate-vm: a toy VM moved to another host while it runs.
 *
 * "Guest RAM" is a memfd; "vCPU" threads keep checksummed 64-byte records in
 * it (each record: vCPU, sequence number, payload, FNV-1a checksum), writing
 * without pause. The source migrates the RAM with uffdsnap_migrate_send();
 * its switchover callback pauses the vCPUs between two records, as a VMM
 * pauses its vCPUs. The target receives it with uffdsnap_migrate_recv(),
 * checks every record, resumes the vCPUs on the received memory for a
 * moment and checks every record again.
 *
 *   migrate-vm --listen PORT                              target
 *   migrate-vm --to HOST:PORT [--mem MIB] [--postcopy]    source
 *   migrate-vm --local [--mem MIB] [--postcopy]           both, over a socketpair
 *
 * --postcopy: the target resumes after the first round and its vCPUs fetch
 * the pages written since as they touch them (the target needs Linux 6.6+).
 *
 * The source prints the migration as it goes (round, MB/s on the wire, data
 * per round) and the downtime. Needs root (or /dev/userfaultfd) and Linux 6.7+.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <uffdsnap.h>

#define REC 64
#define VCPUS 2

struct vm {
	uint8_t *ram;
	size_t len;
	pthread_t tid[VCPUS];
	_Atomic bool pause, stop;
	_Atomic unsigned parked;
	_Atomic uint64_t stores;
};

static uint64_t fnv(const uint8_t *p, size_t n)
{
	uint64_t h = 1469598103934665603ull;

	while (n--)
		h = (h ^ *p++) * 1099511628211ull;
	return h;
}

struct vcpu_arg {
	struct vm *vm;
	unsigned v;
};

/* vCPU v owns the records i with i % VCPUS == v and rewrites them at random. */
static void *vcpu_main(void *arg)
{
	struct vcpu_arg *a = arg;
	struct vm *vm = a->vm;
	size_t nrec = vm->len / REC;
	uint64_t x = a->v * 7919 + 1;

	while (!vm->stop) {
		if (vm->pause) {
			vm->parked++;
			while (vm->pause && !vm->stop)
				usleep(100);
			vm->parked--;
			continue;
		}
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		size_t i = (size_t)(x >> 20) % (nrec / VCPUS) * VCPUS + a->v;
		uint8_t *r = vm->ram + i * REC;
		uint64_t seq, h;
		memcpy(&seq, r + 8, 8);
		seq++;
		memcpy(r, &(uint64_t){ a->v }, 8);
		memcpy(r + 8, &seq, 8);
		for (unsigned k = 0; k < 40; k++)
			r[16 + k] = (uint8_t)(seq * 31 + k);
		h = fnv(r, 56);
		memcpy(r + 56, &h, 8);
		vm->stores++;
	}
	free(a);
	return NULL;
}

static void vm_start(struct vm *vm)
{
	vm->stop = vm->pause = false;
	for (unsigned v = 0; v < VCPUS; v++) {
		struct vcpu_arg *a = malloc(sizeof(*a));
		a->vm = vm, a->v = v;
		pthread_create(&vm->tid[v], NULL, vcpu_main, a);
	}
}

static void vm_stop(struct vm *vm)
{
	vm->stop = true;
	for (unsigned v = 0; v < VCPUS; v++)
		pthread_join(vm->tid[v], NULL);
}

/* The switchover: pause every vCPU between two records. */
static int pause_vcpus(void *user)
{
	struct vm *vm = user;

	vm->pause = true;
	while (vm->parked < VCPUS)
		usleep(50);
	return 0;
}

/* Every record written is whole: its checksum matches. Returns the number written. */
static long check(const struct vm *vm)
{
	long written = 0;

	for (size_t i = 0; i < vm->len / REC; i++) {
		const uint8_t *r = vm->ram + i * REC;
		uint64_t seq, h;
		memcpy(&seq, r + 8, 8);
		if (!seq)
			continue;
		memcpy(&h, r + 56, 8);
		if (h != fnv(r, 56)) {
			fprintf(stderr, "record %zu (seq %llu) is torn\n", i, (unsigned long long)seq);
			return -1;
		}
		written++;
	}
	return written;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int source(int sock, size_t len, bool postcopy)
{
	struct vm vm = { .len = len };
	uffdsnap_migrate_opts_t o;
	uffdsnap_migrate_stats_t st = { .size = sizeof(st) };
	uffdsnap_migrate_t *m;
	uffdsnap_t *ctx;
	int fd = memfd_create("guest-ram", MFD_CLOEXEC), r;

	if (fd < 0 || ftruncate(fd, (off_t)len) ||
	    (vm.ram = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
		perror("guest RAM");
		return 1;
	}
	if ((r = uffdsnap_new(&ctx, NULL)) || (r = uffdsnap_add_region(ctx, "guest-ram", vm.ram, len)) < 0) {
		fprintf(stderr, "uffdsnap: %s (%s)\n", uffdsnap_strerror(r), uffdsnap_last_error());
		return 1;
	}
	vm_start(&vm);
	usleep(200000);
	uffdsnap_migrate_opts_init(&o);
	o.switchover = pause_vcpus;
	o.user = &vm;
	o.max_downtime_us = 30000;
	o.flags = postcopy ? UFFDSNAP_MIGRATE_POSTCOPY : 0;
	if ((r = uffdsnap_migrate_send(ctx, sock, &o, &m))) {
		fprintf(stderr, "migrate: %s (%s)\n", uffdsnap_strerror(r), uffdsnap_last_error());
		vm_stop(&vm);
		return 1;
	}
	double t0 = now_s(), last_t = t0;
	uint64_t last_wire = 0, last_stores = vm.stores;
	unsigned shown = 0;
	do {
		usleep(100000);
		uffdsnap_migrate_stats(m, &st);
		double t = now_s();
		printf("  %6.2f s: round %u, %.1f MB/s on the wire, %.0f k stores/s\n", t - t0, st.rounds + 1,
		       (st.bytes_wire - last_wire) / (t - last_t) / 1e6, (vm.stores - last_stores) / (t - last_t) / 1e3);
		for (; shown < st.rounds; shown++)
			printf("  round %u: %.1f MB of pages\n", shown + 1, st.round_bytes[shown] / 1e6);
		last_t = t, last_wire = st.bytes_wire, last_stores = vm.stores;
	} while (st.state == UFFDSNAP_MIGRATE_RUNNING);
	r = uffdsnap_migrate_wait(m);
	uffdsnap_migrate_stats(m, &st);
	for (; shown < st.rounds; shown++)
		printf("  round %u: %.1f MB of pages\n", shown + 1, st.round_bytes[shown] / 1e6);
	if (r)
		fprintf(stderr, "migration failed: %s (%s); the VM resumes here\n", uffdsnap_strerror(r),
			uffdsnap_last_error());
	else
		printf("migrated %zu MiB: %u rounds, %.1f MB on the wire, downtime %.2f ms, total %.0f ms\n",
		       len >> 20, st.rounds, st.bytes_wire / 1e6, st.downtime_ns / 1e6, st.total_ns / 1e6);
	if (r)
		vm.pause = false; /* a failed migration: the VM runs on here */
	vm_stop(&vm);
	uffdsnap_migrate_free(m);
	uffdsnap_free(ctx);
	munmap(vm.ram, len);
	close(fd);
	return r ? 1 : 0;
}

static int target(int sock)
{
	uffdsnap_incoming_region_t reg = { .size = sizeof(reg) };
	uffdsnap_incoming_t *in;
	struct vm vm;
	long n;
	int r;

	if ((r = uffdsnap_migrate_recv(sock, NULL, &in)) || (r = uffdsnap_incoming_wait(in)) ||
	    (r = uffdsnap_incoming_region(in, 0, &reg))) {
		fprintf(stderr, "receive: %s (%s)\n", uffdsnap_strerror(r), uffdsnap_last_error());
		return 1;
	}
	memset(&vm, 0, sizeof(vm));
	vm.ram = reg.addr, vm.len = reg.len;
	if ((n = check(&vm)) < 0)
		return 1;
	printf("target: '%s' %zu MiB received, %ld records written, all intact; resuming the vCPUs\n", reg.name,
	       reg.len >> 20, n);
	vm_start(&vm);
	usleep(300000);
	vm_stop(&vm);
	/* post-copy: the rest of the pages arrive meanwhile */
	if ((r = uffdsnap_incoming_complete(in))) {
		fprintf(stderr, "receive: %s (%s)\n", uffdsnap_strerror(r), uffdsnap_last_error());
		return 1;
	}
	if ((n = check(&vm)) < 0)
		return 1;
	printf("target: after %.1f M more stores, %ld records, all intact\n", vm.stores / 1e6, n);
	uffdsnap_incoming_free(in);
	return 0;
}

struct local_arg {
	int sock;
	int rc;
};

static void *local_target(void *arg)
{
	struct local_arg *a = arg;

	a->rc = target(a->sock);
	return NULL;
}

int main(int argc, char **argv)
{
	size_t mib = 256;
	const char *to = NULL, *listen_port = NULL;
	bool local = false, postcopy = false;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--mem") && i + 1 < argc)
			mib = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--to") && i + 1 < argc)
			to = argv[++i];
		else if (!strcmp(argv[i], "--listen") && i + 1 < argc)
			listen_port = argv[++i];
		else if (!strcmp(argv[i], "--local"))
			local = true;
		else if (!strcmp(argv[i], "--postcopy"))
			postcopy = true;
		else {
			fprintf(stderr, "usage: %s --listen PORT | --to HOST:PORT [--mem MIB] [--postcopy] | --local "
				"[--mem MIB] [--postcopy]\n", argv[0]);
			return 2;
		}
	}
	if (local) {
		int sv[2];
		pthread_t t;
		struct local_arg a;
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
			return perror("socketpair"), 1;
		a.sock = sv[1];
		pthread_create(&t, NULL, local_target, &a);
		int rc = source(sv[0], mib << 20, postcopy);
		pthread_join(t, NULL);
		return rc || a.rc;
	}
	if (listen_port) {
		struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)atoi(listen_port)) };
		int l = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, c;
		setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) || listen(l, 1) ||
		    (c = accept4(l, NULL, NULL, SOCK_CLOEXEC)) < 0)
			return perror("listen"), 1;
		close(l);
		int rc = target(c);
		close(c);
		return rc;
	}
	if (to) {
		char host[256];
		const char *colon = strrchr(to, ':');
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
		int s;
		if (!colon || (size_t)(colon - to) >= sizeof(host))
			return fprintf(stderr, "--to HOST:PORT\n"), 2;
		memcpy(host, to, (size_t)(colon - to));
		host[colon - to] = '\0';
		if (getaddrinfo(host, colon + 1, &hints, &ai))
			return fprintf(stderr, "cannot resolve %s\n", to), 1;
		s = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s < 0 || connect(s, ai->ai_addr, ai->ai_addrlen))
			return perror("connect"), 1;
		freeaddrinfo(ai);
		int rc = source(s, mib << 20, postcopy);
		close(s);
		return rc;
	}
	fprintf(stderr, "usage: %s --listen PORT | --to HOST:PORT [--mem MIB] | --local [--mem MIB]\n", argv[0]);
	return 2;
}
