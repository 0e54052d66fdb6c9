/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The stress test (test-stress.c): the owners' updates and the oracle that
 * checks every word of every snapshot against them, on a verifier thread
 * (stress.h).
 */
#include "stress.h"

/* ---- the owners' updates -------------------------------------------------------------- */

static uint64_t modinv(uint64_t a, uint64_t m)
{
	int64_t t = 0, nt = 1, r = (int64_t)m, nr = (int64_t)a;

	while (nr) {
		int64_t q = r / nr, x;
		x = t - q * nt, t = nt, nt = x;
		x = r - q * nr, r = nr, nr = x;
	}
	ck_assert(r == 1);
	return (uint64_t)(t < 0 ? t + (int64_t)m : t);
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;
		a = b, b = t;
	}
	return a;
}

void owner_init(struct owner *o)
{
	uint64_t s = o->npages * 618 / 1000 | 1;

	while (gcd(s, o->npages) != 1)
		s++;
	o->stride = s % o->npages;
	o->inv = modinv(o->stride, o->npages);
}

void write_update(const struct owner *o, uint8_t *const base[NREG], uint64_t n)
{
	write_update_inl(o, base, n, t_page);
}

/* ---- the oracle ---------------------------------------------------------------------------- */

/*
 * Check owner o's pages in the image img[]: returns 0 and the highest update
 * N visible, or -1 with the first violation in err.
 */
ORACLE_UNINSTRUMENTED static int check_owner(unsigned oid, uint8_t *const img[NREG], uint64_t lo, uint64_t hi, uint64_t *Np, char *err,
		       size_t errlen)
{
	const struct owner *o = &T.own[oid];
	const unsigned W = (unsigned)(t_page / 8);
	uint64_t *maxv = malloc(o->npages * sizeof(*maxv)), *minv = malloc(o->npages * sizeof(*minv));
	uint32_t *kpre = malloc(o->npages * sizeof(*kpre));
	uint64_t N = 0;
	int ret = -1;

	if (!maxv || !minv || !kpre) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	/* 1: every word must be a word some update wrote to exactly this
	 * place, and a page must read as a prefix of one update over another */
	for (size_t j = 0; j < o->npages; j++) {
		unsigned reg = o->pages[j] >> 31;
		uint64_t p = o->pages[j] & 0x7fffffffu;
		const uint64_t *w = (const uint64_t *)(img[reg] + p * t_page);
		uint64_t hiv = w[0] >> 32, lov = hiv;
		unsigned k = W;

		for (unsigned i = 0; i < W; i++) {
			uint64_t v = w[i] >> 32;
			if (w[i] != word_of(reg, p, i, v) || (v && page_of_update(o, v) != j)) {
				snprintf(err, errlen, "owner %u: %s page %" PRIu64 " word %u is 0x%016" PRIx64
					 ": %s (expected a word of this page: 0x%016" PRIx64 " for its version %" PRIu64 ")",
					 oid, reg_name[reg], p, i, w[i],
					 w[i] != word_of(reg, p, i, v) ? "torn or foreign bytes" :
					 "a version that never wrote this page", word_of(reg, p, i, v), v);
				goto out;
			}
			if (v != hiv && k == W) {
				k = i, lov = v;
			} else if (v != (k == W ? hiv : lov)) {
				snprintf(err, errlen, "owner %u: %s page %" PRIu64 " is torn: word %u holds update %" PRIu64
					 " after words of %" PRIu64 " and %" PRIu64 " (a page update writes words in order)",
					 oid, reg_name[reg], p, i, v, hiv, lov);
				goto out;
			}
		}
		if (k < W && lov > hiv) {
			snprintf(err, errlen, "owner %u: %s page %" PRIu64 ": words 0..%u hold update %" PRIu64
				 " but later words the newer %" PRIu64, oid, reg_name[reg], p, k - 1, hiv, lov);
			goto out;
		}
		maxv[j] = hiv, minv[j] = lov, kpre[j] = k;
		if (hiv > N)
			N = hiv;
	}
	/* 2: one instant: every page holds the last update <= N */
	for (size_t j = 0; j < o->npages; j++) {
		unsigned reg = o->pages[j] >> 31;
		uint64_t p = o->pages[j] & 0x7fffffffu, want = last_update(o, j, N);
		bool ok;

		if (N && j == page_of_update(o, N)) /* the one page an update may be half done on */
			ok = maxv[j] == N && (kpre[j] == W || minv[j] == last_update(o, j, N - 1));
		else
			ok = maxv[j] == want && kpre[j] == W;
		if (!ok) {
			uint32_t e = o->pages[page_of_update(o, N ? N : 1)];
			snprintf(err, errlen, "owner %u: not one instant: the highest update visible is %" PRIu64
				 " (%s page %u), so %s page %" PRIu64 " must hold update %" PRIu64 ", but holds %" PRIu64
				 " (words 0..%u) and %" PRIu64 " (the rest); updates complete before begin %" PRIu64
				 ", after %" PRIu64, oid, N, reg_name[e >> 31], e & 0x7fffffffu, reg_name[reg], p, want,
				 maxv[j], kpre[j] - 1, minv[j], lo, hi);
			goto out;
		}
	}
	/* 3: and that instant lies inside begin */
	if (N < lo || N > hi + 1) {
		snprintf(err, errlen, "owner %u: the snapshot shows updates 1..%" PRIu64 ", but %" PRIu64
			 " were complete before begin was called and %" PRIu64 " when it returned: %s", oid, N, lo, hi,
			 N < lo ? "updates made before the instant are missing" : "updates made after it are visible");
		goto out;
	}
	*Np = N;
	ret = 0;
out:
	free(maxv);
	free(minv);
	free(kpre);
	return ret;
}

/* The static zap-phase pages: update 1, always. */
ORACLE_UNINSTRUMENTED static int check_static(uint8_t *const img[NREG], char *err, size_t errlen)
{
	const size_t np = PRIV_LEN / t_page;

	for (size_t p = np - ZPAGES; p < np; p++) {
		const uint64_t *w = (const uint64_t *)(img[R_PRIV] + p * t_page);
		for (unsigned i = 0; i < t_page / 8; i++) {
			if (w[i] != word_of(R_PRIV, p, i, 1)) {
				snprintf(err, errlen, "static heap page %zu word %u is 0x%016" PRIx64 ", expected 0x%016"
					 PRIx64, p, i, w[i], word_of(R_PRIV, p, i, 1));
				return -1;
			}
		}
	}
	return 0;
}

static void verify_job(const struct snapjob *j)
{
	uffdsnap_reader_t *r = NULL;
	uffdsnap_info_t info = { .size = sizeof(info) };
	uint64_t N[NOWNERS] = { 0 };
	char err[1024] = "";
	int e, id;

	e = uffdsnap_reader_open(&r, j->path);
	if (!e && T_SANITIZED)
		uffdsnap_reader_threads(r, 0); /* as t_reader() */
	if (e) {
		sfail("snapshot %u: reader_open %s: %d %s (%s)", j->idx, j->path, e, uffdsnap_strerror(e),
		     uffdsnap_last_error());
		return;
	}
	e = uffdsnap_reader_verify(r);
	if (!e)
		e = uffdsnap_reader_info(r, &info);
	if (e || !info.complete || info.status || info.nregions != NREG) {
		sfail("snapshot %u: %s: verify %d (%s), complete %d, status %d, %u regions", j->idx, j->path, e,
		     uffdsnap_reader_error(r), info.complete, info.status, info.nregions);
		goto out;
	}
	for (unsigned g = 0; g < NREG; g++) {
		uffdsnap_region_info_t ri = { .size = sizeof(ri) };
		id = uffdsnap_reader_find(r, reg_name[g]);
		if (id < 0 || uffdsnap_reader_region(r, (unsigned)id, &ri) || ri.length != reg_len[g]) {
			sfail("snapshot %u: region '%s' missing or of the wrong length", j->idx, reg_name[g]);
			goto out;
		}
		e = uffdsnap_reader_read(r, (unsigned)id, 0, T.vbuf[g], reg_len[g]);
		if (e) {
			sfail("snapshot %u: reader_read '%s': %d (%s)", j->idx, reg_name[g], e, uffdsnap_reader_error(r));
			goto out;
		}
	}
	for (unsigned o = 0; o < NOWNERS; o++) {
		if (check_owner(o, T.vbuf, j->lo[o], j->hi[o], &N[o], err, sizeof(err))) {
			sfail("snapshot %u (%s, at %.2f s, %u moves, %" PRIu64 " forks followed): %s; file kept: %s", j->idx,
			     j->sink, j->at_s, j->moves, j->st.forks, err, j->path);
			uffdsnap_reader_free(r);
			return; /* keep the file */
		}
	}
	if (check_static(T.vbuf, err, sizeof(err))) {
		sfail("snapshot %u: %s; file kept: %s", j->idx, err, j->path);
		uffdsnap_reader_free(r);
		return;
	}
	atomic_fetch_add(&T.verified, 1);
	atomic_fetch_add(&T.pages_checked, (SHM_LEN + PRIV_LEN) / t_page);
	printf("snap %3u @%6.2fs %-4s pause %6.2f ms, %5.0f ms; pages fault %5" PRIu64 " sweep %5" PRIu64 " hole %5"
	       PRIu64 "; faults %5" PRIu64 "; forks %2" PRIu64 " remaps %" PRIu64 " unmaps %" PRIu64
	       "; updates w0..3,c %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 ": exact\n", j->idx,
	       j->at_s, j->sink, j->st.begin_ns / 1e6, j->st.elapsed_ns / 1e6, j->st.pages_fault, j->st.pages_sweep,
	       j->st.pages_hole, j->st.faults, j->st.forks, j->st.remaps, j->st.unmaps, N[0], N[1], N[2], N[3],
	       N[4]);
out:
	uffdsnap_reader_free(r);
	unlink(j->path);
}

/*
 * The oracle must reject what it is there to catch: build images of every
 * owner in the verification buffers by replaying updates, check that they
 * pass, then break them in the ways a wrong snapshot would and check that
 * each is caught.
 */
void oracle_selftest(void)
{
	uint64_t N[NOWNERS], got;
	char err[1024];
	struct owner *o = &T.own[0];
	const unsigned W = (unsigned)(t_page / 8);
	uint64_t *w, save[512];
	size_t j;

	for (unsigned g = 0; g < NREG; g++)
		memset(T.vbuf[g], 0, reg_len[g]);
	for (unsigned i = 0; i < NOWNERS; i++) {
		N[i] = 2 * T.own[i].npages + 37 + i;
		for (uint64_t n = 1; n <= N[i]; n++)
			write_update(&T.own[i], T.vbuf, n);
		ck_assert_msg(check_owner(i, T.vbuf, N[i], N[i], &got, err, sizeof(err)) == 0 && got == N[i],
			      "oracle self-test: a replayed image fails: %s", err);
	}
	for (size_t p = PRIV_LEN / t_page - ZPAGES; p < PRIV_LEN / t_page; p++)
		for (unsigned i = 0; i < W; i++)
			((uint64_t *)(T.vbuf[R_PRIV] + p * t_page))[i] = word_of(R_PRIV, p, i, 1);
	ck_assert_msg(check_static(T.vbuf, err, sizeof(err)) == 0, "oracle self-test: static pages: %s", err);

	/* owner 0 half way through update N+1: words 0..99 new, the rest older */
	{
		uint32_t e = o->pages[page_of_update(o, N[0] + 1)];
		w = (uint64_t *)(T.vbuf[e >> 31] + (e & 0x7fffffffu) * t_page);
		for (unsigned i = 0; i < 100; i++)
			w[i] = word_of(e >> 31, e & 0x7fffffffu, i, N[0] + 1);
	}
	ck_assert_msg(check_owner(0, T.vbuf, N[0], N[0], &got, err, sizeof(err)) == 0 && got == N[0] + 1,
		      "oracle self-test: an update in progress at the instant is rejected: %s", err);
#define EXPECT_CAUGHT(what, lo, hi)                                                                          \
	do {                                                                                                 \
		err[0] = '\0';                                                                              \
		ck_assert_msg(check_owner(0, T.vbuf, lo, hi, &got, err, sizeof(err)) != 0,                   \
			      "oracle self-test: not caught: %s", what);                                     \
		printf("oracle self-test: %s: caught (%.90s...)\n", what, err);                            \
	} while (0)
	EXPECT_CAUGHT("instant before begin (bounds)", N[0] + 2, N[0] + 2);
	EXPECT_CAUGHT("instant after begin returned (bounds)", N[0] - 1, N[0] - 1);

	/* a page that is not the one being written: j(N) - 1 in update order */
	j = page_of_update(o, N[0] - 1);
	{
		uint32_t e = o->pages[j];
		unsigned reg = e >> 31;
		uint64_t p = e & 0x7fffffffu, v = last_update(o, j, N[0]);
		w = (uint64_t *)(T.vbuf[reg] + p * t_page);
		memcpy(save, w, W * 8);
		w[17] ^= 1ull << 3;
		EXPECT_CAUGHT("one flipped bit", N[0], N[0]);
		memcpy(w, save, W * 8);
		for (unsigned i = 0; i < W; i++) /* the whole page one update older */
			w[i] = word_of(reg, p, i, v - o->npages);
		EXPECT_CAUGHT("a page older than the instant", N[0], N[0]);
		for (unsigned i = 0; i < W / 2; i++) /* torn: first half new, second half old */
			w[i] = word_of(reg, p, i, v);
		EXPECT_CAUGHT("a torn page away from the writer", N[0], N[0]);
		for (unsigned i = 0; i < W; i++) /* second half new, first half old */
			w[i] = word_of(reg, p, i, i < W / 2 ? v - o->npages : v);
		EXPECT_CAUGHT("a page written backwards", N[0], N[0]);
		memcpy(w, save, W * 8);
		w[5] = 0;
		EXPECT_CAUGHT("a zeroed word", N[0], N[0]);
		memcpy(w, save, W * 8);
		{
			uint32_t e2 = o->pages[(j + 1) % o->npages];
			memcpy(w, T.vbuf[e2 >> 31] + (e2 & 0x7fffffffu) * t_page, W * 8);
		}
		EXPECT_CAUGHT("another page's contents", N[0], N[0]);
		memcpy(w, save, W * 8);
	}
	ck_assert_msg(check_owner(0, T.vbuf, N[0], N[0], &got, err, sizeof(err)) == 0,
		      "oracle self-test: restoring did not restore: %s", err);
#undef EXPECT_CAUGHT
}

void *verifier_main(void *arg)
{
	(void)arg;
	for (;;) {
		struct snapjob j;

		pthread_mutex_lock(&T.q_mu);
		while (!T.q_len && !T.q_closed)
			pthread_cond_wait(&T.q_cv, &T.q_mu);
		if (!T.q_len) {
			pthread_mutex_unlock(&T.q_mu);
			break;
		}
		j = T.q[T.q_head];
		pthread_mutex_unlock(&T.q_mu);
		if (atomic_load(&T.failed))
			unlink(j.path);
		else
			verify_job(&j);
		pthread_mutex_lock(&T.q_mu);
		T.q_head = (T.q_head + 1) % QCAP;
		T.q_len--;
		pthread_cond_broadcast(&T.q_cv);
		pthread_mutex_unlock(&T.q_mu);
	}
	return NULL;
}

/*
 * Under TSan the verifier works in step with main: a descriptor number that
 * one thread closed and another reused, with no lock between, is a race to
 * TSan, and the verifier's files would interleave with begin's.
 */
#define VERIFY_IN_STEP TSAN

void verified_all(void)
{
	pthread_mutex_lock(&T.q_mu);
	while (T.q_len)
		pthread_cond_wait(&T.q_cv, &T.q_mu);
	pthread_mutex_unlock(&T.q_mu);
}

void enqueue(const struct snapjob *j)
{
	pthread_mutex_lock(&T.q_mu);
	while (T.q_len == QCAP)
		pthread_cond_wait(&T.q_cv, &T.q_mu);
	T.q[(T.q_head + T.q_len) % QCAP] = *j;
	T.q_len++;
	pthread_cond_broadcast(&T.q_cv);
	while (VERIFY_IN_STEP && T.q_len)
		pthread_cond_wait(&T.q_cv, &T.q_mu);
	pthread_mutex_unlock(&T.q_mu);
}
