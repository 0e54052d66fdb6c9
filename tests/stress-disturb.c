/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The stress test (test-stress.c): the zram swap device, /proc counters, and
 * the disturbers that run beside the snapshots (stress.h).
 */
#include "stress.h"

/*
 * /proc files read with pread() on descriptors opened once, before any
 * snapshot: opening them in the pager thread while begin creates the
 * library's descriptors reuses descriptor numbers, which TSan takes for a race.
 */
static int vmstat_fd = -1, status_fd = -1;

void proc_open(void)
{
	vmstat_fd = open("/proc/vmstat", O_RDONLY | O_CLOEXEC);
	status_fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
}

/* The number after "key" and `sep` on a line of the file, or 0. */
static uint64_t proc_field(int fd, const char *key, char sep)
{
	char buf[16384], *line, *save;
	size_t kl = strlen(key);
	ssize_t n = fd >= 0 ? pread(fd, buf, sizeof(buf) - 1, 0) : -1;

	if (n <= 0)
		return 0;
	buf[n] = '\0';
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		if (!strncmp(line, key, kl) && line[kl] == sep)
			return strtoull(line + kl + 1, NULL, 10);
	return 0;
}

uint64_t vmstat(const char *key)
{
	return proc_field(vmstat_fd, key, ' ');
}

/* A field of /proc/self/status in kB (or the plain number for Threads). */
uint64_t status_field(const char *key)
{
	return proc_field(status_fd, key, ':');
}

unsigned count_fds(void)
{
	return (unsigned)t_dir_entries("/proc/self/fd", false);
}

/* ---- the disturbers --------------------------------------------------------------------- */

void *writer_main(void *arg)
{
	unsigned w = (unsigned)(uintptr_t)arg;
	const struct owner *o = &T.own[w];
	uint8_t *base[NREG];

	for (uint64_t n = atomic_load(o->done) + 1; !atomic_load_explicit(&T.stop, memory_order_relaxed); n++) {
		pthread_rwlock_rdlock(&T.maplock);
		base[0] = T.base[0], base[1] = T.base[1];
		write_update(o, base, n);
		pthread_rwlock_unlock(&T.maplock);
		atomic_store_explicit(o->done, n, memory_order_release);
		switch (w) { /* 0, 1 flat out; 2 moderate; 3 slow: its pages stay holes for long */
		case 2:
			if (n % 16 == 0)
				nap_us(100);
			break;
		case 3:
			nap_us(4000);
			break;
		default:
			if (n % 256 == 0)
				sched_yield();
		}
	}
	return NULL;
}

static uint64_t rnd(uint64_t *s)
{
	return t_splitmix64(s);
}

void *zapper_main(void *arg)
{
	uint64_t seed = (uint64_t)(uintptr_t)arg;
	const size_t np = SHM_LEN / t_page;

	while (!atomic_load(&T.stop)) {
		size_t n = 1 + rnd(&seed) % 16, p = rnd(&seed) % (np - n);
		pthread_rwlock_rdlock(&T.maplock);
		if (madvise(T.base[R_SHM] + p * t_page, n * t_page, MADV_DONTNEED))
			sfail("zapper: MADV_DONTNEED: %s", strerror(errno));
		pthread_rwlock_unlock(&T.maplock);
		atomic_fetch_add(&T.zaps, n);
		atomic_fetch_add(&T.zap_calls, 1);
		nap_us((unsigned)(rnd(&seed) % 400));
	}
	return NULL;
}

void *pager_main(void *arg)
{
	uint64_t seed = (uint64_t)(uintptr_t)arg;

	while (!atomic_load(&T.stop)) {
		unsigned r = (unsigned)(rnd(&seed) % 2);
		size_t np = reg_len[r] / t_page, n = 64 + rnd(&seed) % 512, p = rnd(&seed) % (np - n);
		uint64_t kb;

		pthread_rwlock_rdlock(&T.maplock);
		/* twice: the first call may leave pages in per-CPU LRU batches */
		for (int i = 0; i < 2; i++)
			if (madvise(T.base[r] + p * t_page, n * t_page, MADV_PAGEOUT))
				sfail("pager-out: MADV_PAGEOUT %s: %s", reg_name[r], strerror(errno));
		pthread_rwlock_unlock(&T.maplock);
		atomic_fetch_add(&T.pageouts, 1);
		kb = status_field("VmSwap");
		if (kb > atomic_load(&T.swap_max_kb))
			atomic_store(&T.swap_max_kb, kb);
		nap_us(5000 + (unsigned)(rnd(&seed) % 20000));
	}
	return NULL;
}

/*
 * The child. We are a threaded process, so only async-signal-safe code, and
 * none of it instrumented by a sanitizer: the child of a fork() must not enter
 * a sanitizer runtime whose locks another thread may have held (raw system
 * calls for the same reason).
 */
#define CHILD_CODE __attribute__((noinline, no_sanitize("address", "thread", "undefined")))

INL uint64_t child_rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	return mix64(z);
}

CHILD_CODE static void child_body(uint8_t *const base[NREG], uint64_t seed, size_t pagesz)
{
	const struct owner *o = &T.own[CHILD];
	uint64_t n0 = atomic_load_explicit(T.child_done, memory_order_acquire);
	struct timespec nap = { 0, 150000 };

	for (uint64_t k = 1; T.fork_shm && k <= CHILD_UPDATES; k++) {
		write_update_inl(o, base, n0 + k, pagesz);
		atomic_store_explicit(T.child_done, n0 + k, memory_order_release);
		if (k % 8 == 0)
			syscall(SYS_nanosleep, &nap, NULL);
	}
	/* Our copy of the heap: garbage that must never reach the parent's snapshots. */
	for (int i = 0; i < 8; i++) {
		size_t p = child_rnd(&seed) % (PRIV_LEN / pagesz);
		_Atomic uint64_t *w = (_Atomic uint64_t *)(base[R_PRIV] + p * pagesz + (child_rnd(&seed) % (pagesz / 8)) * 8);
		atomic_store_explicit(w, 0xbadc0ffee0ddf00dull, memory_order_relaxed);
	}
	syscall(SYS_exit_group, 0);
}

void *forker_main(void *arg)
{
	uint64_t seed = (uint64_t)(uintptr_t)arg;

	while (!atomic_load(&T.stop)) {
		uint8_t *base[NREG];
		uint64_t t0;
		int status = 0;
		pid_t pid, w;

		pthread_mutex_lock(&T.child_mu);
		while (T.forks_since_begin >= T.fork_cap && !atomic_load(&T.stop))
			pthread_cond_wait(&T.child_cv, &T.child_mu);
		if (atomic_load(&T.stop)) {
			pthread_mutex_unlock(&T.child_mu);
			break;
		}
		pthread_rwlock_rdlock(&T.maplock); /* the child must see the regions where they are */
		base[0] = T.base[0], base[1] = T.base[1];
		/* glibc's fork(): it holds the malloc and stdio locks while the
		 * kernel waits for the handler to read the FORK event */
		pid = fork();
		if (pid == 0)
			child_body(base, seed, t_page);
		pthread_rwlock_unlock(&T.maplock);
		rnd(&seed);
		if (pid < 0) {
			sfail("fork: %s", strerror(errno));
			pthread_mutex_unlock(&T.child_mu);
			break;
		}
		T.forks_since_begin++;
		atomic_fetch_add(&T.forks, 1);
		/* A child blocked on a fault nobody resolves is a hang. */
		t0 = t_now_ns();
		while ((w = waitpid(pid, &status, WNOHANG)) == 0 && t_now_ns() - t0 < 30000000000ull)
			nap_us(200);
		if (w == 0) {
			atomic_fetch_add(&T.child_hangs, 1);
			sfail("forked child %d did not exit within 30 s (blocked on a fault?)", (int)pid);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
		} else if (w != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			sfail("forked child %d: waitpid %d, status 0x%x", (int)pid, (int)w, status);
		}
		pthread_mutex_unlock(&T.child_mu);
		nap_us(1000 + (unsigned)(rnd(&seed) % 4000));
	}
	return NULL;
}

void *mremapper_main(void *arg)
{
	unsigned turn = 0;

	(void)arg;
	for (;;) {
		unsigned want;

		pthread_mutex_lock(&T.win_mu);
		while (!(T.win_open && !T.win_done) && !atomic_load(&T.stop))
			pthread_cond_wait(&T.win_cv, &T.win_mu);
		want = T.win_moves;
		pthread_mutex_unlock(&T.win_mu);
		if (atomic_load(&T.stop))
			break;
		for (unsigned i = 0; i < want && !atomic_load(&T.stop); i++, turn++) {
			unsigned r = turn % 3 != 2 ? R_PRIV : R_SHM;
			/* a fresh range: moving back to an old address could hit
			 * whatever another thread mapped there meanwhile */
			uint8_t *dst = mmap(NULL, reg_len[r], PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), *to;

			if (dst == MAP_FAILED) {
				sfail("mremapper: mmap: %s", strerror(errno));
				break;
			}
			pthread_rwlock_wrlock(&T.maplock);
			to = mremap(T.base[r], reg_len[r], reg_len[r], MREMAP_MAYMOVE | MREMAP_FIXED, dst);
			if (to == MAP_FAILED) {
				sfail("mremapper: mremap %s: %s", reg_name[r], strerror(errno));
				munmap(dst, reg_len[r]);
			} else {
				T.base[r] = to;
				if (r == R_SHM)
					T.shm.addr = to;
			}
			pthread_rwlock_unlock(&T.maplock);
			atomic_fetch_add(&T.moves, 1);
			pthread_mutex_lock(&T.win_mu);
			T.win_moves--; /* main counts what is left */
			pthread_mutex_unlock(&T.win_mu);
			nap_us(2000);
		}
		pthread_mutex_lock(&T.win_mu);
		T.win_done = true;
		pthread_cond_broadcast(&T.win_cv);
		pthread_mutex_unlock(&T.win_mu);
	}
	return NULL;
}
