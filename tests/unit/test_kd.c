/* test_kd.c — checks of the distillation module (kd.h): the fused KD + CE loss, the top-k builder, the
 * adaptive alpha rule and the micro-batch weights.
 *
 *  - finite differences of the fused loss w.r.t. the student logits, for forward and reverse KL, full and top-k
 *    teacher targets, several temperatures and weights, with ignored rows (target -1). The loss is evaluated with
 *    grad_scale = 0 (float32 inputs, float64 sums), central differences with h = 1e-2, error measured relative to
 *    max |gradient|: a wrong sign, a missing term or a wrong index is an error of order 1;
 *  - top-k with k = V equals the full-logits loss and gradient (relative 1e-6);
 *  - the tail bucket against direct computations: the builder's tail against 1 - sum p (float64) and, for a
 *    peaked teacher where that cancels, against a long-double sum over the other ids; the top-k KL against a
 *    float64 / long-double evaluation of the k+1-bucket formula, including a peaked student (tail ~ 1e-12);
 *  - ignored rows: no CE, but KL counted; CE-only matches mome_xent_forward_backward; grad_scale = 0 leaves the
 *    logits bit-identical; sums and gradients are bit-identical for 1 and 2 threads;
 *  - the builder: descending order, ties to the lower id, tail 0 for k = V, NaN refused;
 *  - adaptive alpha against windows computed by hand (warm-up 0.5, clipping at 0 and 1, rising losses with
 *    w < 1, ring wrap-around), fixed mode, export/import continuing bit-identically, window size rule, weights.
 * Every check prints its measured error and tolerance; the program exits 1 if any check fails.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mome/common.h"
#include "mome/kd.h"
#include "mome/loss.h"
#include "mome/rng.h"

#include "check.h"

#define FD_H 1e-2f
#define FD_TOL 1e-3     /* finite differences, relative to max |grad| (float32 evaluation; measured ~1e-5) */
#define KV_TOL 1e-6     /* top-k with k = V vs full logits, relative */
#define DIRECT_TOL 1e-5 /* fused float32 loss vs float64 / long-double direct formula, relative */
#define XENT_TOL 1e-6   /* CE-only vs loss.c, relative */
#define ALPHA_TOL 1e-12 /* alpha vs the hand-computed value */

static mome_rng rng;

static void scalar(const char *what, double got, double ref, double tol, const char *file, int line) {
    char label[256];
    snprintf(label, sizeof label, "%s (%.10g vs %.10g)", what, got, ref);
    check_report(label, fabs(got - ref), fmax(fabs(ref), 1e-300), tol, file, line);
}
#define SCALAR(what, got, ref, tol) scalar(what, got, ref, tol, __FILE__, __LINE__)

static void expect_true(const char *what, int cond, const char *file, int line) {
    printf("%-64s %s\n", what, cond ? "ok" : "FAIL");
    if (!cond) {
        fprintf(stderr, "%s:%d: %s: condition is false\n", file, line, what);
        failures++;
    }
}
#define EXPECT(what, cond) expect_true(what, cond, __FILE__, __LINE__)

static float *rand_buf(size_t n, float scale) {
    float *p = mome_malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = scale * mome_rng_normal(&rng);
    return p;
}

static float *copy_buf(const float *src, size_t n) {
    float *p = mome_malloc(n * sizeof *p);
    memcpy(p, src, n * sizeof *p);
    return p;
}

/* ------------------------------------------------------------------------------------- a test problem */

typedef struct {
    size_t N;
    int V, k;
    float *z;       /* (N,V) student logits */
    float *t;       /* (N,V) teacher logits */
    int32_t *tg;    /* (N) targets, some -1 */
    int32_t *ids;   /* (N,k) */
    float *lp;      /* (N,k) */
    float *tail;    /* (N) */
    int topk;       /* which format the loss uses */
    mome_kd_direction dir;
    float T, w_ce, w_kd;
} problem;

static void problem_make(problem *p, size_t N, int V, int k, float T) {
    memset(p, 0, sizeof *p);
    p->N = N;
    p->V = V;
    p->k = k;
    p->T = T;
    p->z = rand_buf(N * V, 2.0f);
    p->t = rand_buf(N * V, 3.0f);
    p->tg = mome_malloc(N * sizeof *p->tg);
    for (size_t i = 0; i < N; i++) p->tg[i] = i % 3 == 1 ? -1 : (int32_t)mome_rng_below(&rng, (uint64_t)V);
    p->ids = mome_malloc(N * k * sizeof *p->ids);
    p->lp = mome_malloc(N * k * sizeof *p->lp);
    p->tail = mome_malloc(N * sizeof *p->tail);
    if (mome_kd_topk_build(p->ids, p->lp, p->tail, p->t, N, V, k, T) != MOME_OK) {
        fprintf(stderr, "%s:%d: mome_kd_topk_build: %s\n", __FILE__, __LINE__, mome_error_message());
        exit(1);
    }
}

static void problem_free(problem *p) {
    mome_free(p->z);
    mome_free(p->t);
    mome_free(p->tg);
    mome_free(p->ids);
    mome_free(p->lp);
    mome_free(p->tail);
}

/* Runs the fused loss on `logits` (overwritten by the gradient when gs != 0). */
static double run(const problem *p, float *logits, mome_kd_sums *s, float gs) {
    if (p->topk)
        return mome_kd_topk_forward_backward(logits, s, p->ids, p->lp, p->tail, p->tg, p->N, p->V, p->k, p->dir,
                                             p->T, p->w_ce, p->w_kd, gs);
    return mome_kd_full_forward_backward(logits, s, p->t, p->tg, p->N, p->V, p->dir, p->T, p->w_ce, p->w_kd, gs);
}

/* ------------------------------------------------------------------------------- finite differences */

/* The loss at the problem's student logits, without a gradient. */
static double loss_at(void *p) { return run(p, ((problem *)p)->z, NULL, 0.0f); }

static void test_fd(void) {
    const float temps[3] = {1.0f, 2.0f, 0.5f};
    const float wces[3] = {0.5f, 0.3f, 0.8f};
    for (int fmt = 0; fmt < 2; fmt++)
        for (int dir = 0; dir < 2; dir++)
            for (int c = 0; c < 5; c++) {
                problem p;
                const float T = temps[c % 3];
                problem_make(&p, 6, 13, 4, T);
                p.topk = fmt;
                p.dir = (mome_kd_direction)dir;
                p.w_ce = c < 3 ? wces[c] : c == 3 ? 1.0f : 0.0f; /* c = 3, 4: the alternating weights */
                p.w_kd = c < 3 ? 1.0f - wces[c] : c == 3 ? 0.0f : 1.0f;
                const size_t n = p.N * (size_t)p.V;
                float *g = copy_buf(p.z, n);
                run(&p, g, NULL, 1.0f);
                const fd_result r = fd_central(loss_at, &p, p.z, g, n, FD_H, n, &rng, NULL); /* every entry */
                char label[128];
                snprintf(label, sizeof label, "fd %s %s T=%.1f w_ce=%.1f w_kd=%.1f", fmt ? "top-k" : "full",
                         dir ? "reverse" : "forward", (double)T, (double)p.w_ce, (double)p.w_kd);
                REPORT(label, r.err, max_abs(g, n), FD_TOL);
                mome_free(g);
                problem_free(&p);
            }
}

/* ------------------------------------------------------------------------------------- k = V vs full */

static void test_k_equals_v(void) {
    const float temps[3] = {1.0f, 2.0f, 0.7f};
    for (int c = 0; c < 3; c++)
        for (int dir = 0; dir < 2; dir++) {
            problem p;
            problem_make(&p, 16, 50, 50, temps[c]);
            p.dir = (mome_kd_direction)dir;
            p.w_ce = 0.25f;
            p.w_kd = 0.75f;
            const size_t n = p.N * (size_t)p.V;
            float *gf = copy_buf(p.z, n), *gk = copy_buf(p.z, n);
            mome_kd_sums sf, sk;
            p.topk = 0;
            run(&p, gf, &sf, 1.0f);
            p.topk = 1;
            run(&p, gk, &sk, 1.0f);
            char label[128];
            snprintf(label, sizeof label, "k=V %s T=%.1f kl_sum", dir ? "reverse" : "forward", (double)p.T);
            SCALAR(label, sk.kl_sum, sf.kl_sum, KV_TOL);
            snprintf(label, sizeof label, "k=V %s T=%.1f loss", dir ? "reverse" : "forward", (double)p.T);
            SCALAR(label, sk.loss, sf.loss, KV_TOL);
            snprintf(label, sizeof label, "k=V %s T=%.1f gradient", dir ? "reverse" : "forward", (double)p.T);
            COMPARE(label, gk, gf, n, KV_TOL);
            double tmax = 0.0;
            for (size_t r = 0; r < p.N; r++) tmax = fmax(tmax, p.tail[r]);
            EXPECT("k=V builder tail is exactly 0", tmax == 0.0);
            mome_free(gf);
            mome_free(gk);
            problem_free(&p);
        }
}

/* --------------------------------------------------------------------------------- the tail bucket */

/* log softmax(x / T) in long double */
static void ld_log_softmax(long double *out, const float *x, int V, float T) {
    long double mx = x[0];
    for (int v = 1; v < V; v++) mx = fmaxl(mx, x[v]);
    long double s = 0.0L;
    for (int v = 0; v < V; v++) s += expl(((long double)x[v] - mx) / T);
    for (int v = 0; v < V; v++) out[v] = ((long double)x[v] - mx) / T - logl(s);
}

/* KL over k+1 buckets of one row, long double, from the student logits z and the teacher buckets. The student
 * tail is either 1 - sum of the top-k q (naive) or the sum of q over the other ids (direct). */
static long double ld_bucket_kl(const float *z, const int32_t *ids, const float *lp, float tail, int V, int k,
                                float T, mome_kd_direction dir, int naive) {
    long double *lq = malloc((size_t)V * sizeof *lq);
    ld_log_softmax(lq, z, V, T);
    char *in = calloc((size_t)V, 1);
    long double qk = 0.0L, qt = 0.0L, kl = 0.0L;
    for (int i = 0; i < k; i++) {
        in[ids[i]] = 1;
        qk += expl(lq[ids[i]]);
    }
    for (int v = 0; v < V; v++)
        if (!in[v]) qt += expl(lq[v]);
    if (naive) qt = 1.0L - qk;
    for (int i = 0; i < k; i++) {
        const long double P = expl((long double)lp[i]), lQ = lq[ids[i]];
        kl += dir == MOME_KD_FORWARD ? P * ((long double)lp[i] - lQ) : expl(lQ) * (lQ - (long double)lp[i]);
    }
    if (k < V) {
        if (dir == MOME_KD_FORWARD)
            kl += tail > 0 ? (long double)tail * (logl(tail) - logl(qt)) : 0.0L;
        else
            kl += qt * (logl(qt) - logl(fmaxl(tail, MOME_KD_TAIL_FLOOR)));
    }
    free(lq);
    free(in);
    return kl;
}

static void test_tail(void) {
    /* (1) moderate case: the builder's tail vs 1 - sum of the teacher's top-k probabilities in double, and the
     * fused top-k KL vs the k+1 bucket formula with the naive student tail 1 - sum q. */
    {
        problem p;
        problem_make(&p, 12, 40, 7, 1.5f);
        const int V = p.V, k = p.k;
        long double *lpt = malloc((size_t)V * sizeof *lpt);
        double err = 0.0, scale = 0.0;
        for (size_t r = 0; r < p.N; r++) {
            ld_log_softmax(lpt, p.t + r * V, V, p.T);
            double s = 0.0;
            for (int i = 0; i < k; i++) s += (double)expl(lpt[p.ids[r * k + i]]);
            err = fmax(err, fabs(p.tail[r] - (1.0 - s)));
            scale = fmax(scale, 1.0 - s);
        }
        REPORT("builder tail vs 1 - sum p (moderate)", err, scale, DIRECT_TOL);
        for (int dir = 0; dir < 2; dir++) {
            long double ref = 0.0L;
            for (size_t r = 0; r < p.N; r++)
                ref += ld_bucket_kl(p.z + r * V, p.ids + r * k, p.lp + r * k, p.tail[r], V, k, p.T,
                                    (mome_kd_direction)dir, 1);
            mome_kd_sums s;
            mome_kd_topk_forward_backward(p.z, &s, p.ids, p.lp, p.tail, p.tg, p.N, V, k, (mome_kd_direction)dir,
                                          p.T, 0.5f, 0.5f, 0.0f);
            SCALAR(dir ? "top-k reverse kl_sum vs naive 1 - sum q" : "top-k forward kl_sum vs naive 1 - sum q",
                   s.kl_sum, (double)ref, DIRECT_TOL);
        }
        free(lpt);
        problem_free(&p);
    }
    /* (2) peaked: the top-k hold all but ~1e-12 of the mass, in teacher and student; 1 - sum would cancel. */
    {
        const int V = 64, k = 5;
        const size_t N = 4;
        const float T = 1.0f;
        float *t = rand_buf(N * V, 0.5f), *z = rand_buf(N * V, 0.5f);
        for (size_t r = 0; r < N; r++)
            for (int i = 0; i < k; i++) {
                t[r * V + 3 * i + (int)r] += 30.0f;
                z[r * V + 3 * i + (int)r] += 28.0f + (float)r;
            }
        int32_t ids[4 * 5], tg[4] = {0, -1, 7, 3};
        float lp[4 * 5], tail[4];
        mome_kd_topk_build(ids, lp, tail, t, N, V, k, T);
        long double *lpt = malloc((size_t)V * sizeof *lpt);
        double err = 0.0, scale = 0.0;
        for (size_t r = 0; r < N; r++) {
            ld_log_softmax(lpt, t + r * V, V, T);
            long double s = 0.0L;
            for (int v = 0; v < V; v++) {
                int in = 0;
                for (int i = 0; i < k; i++) in |= ids[r * k + i] == v;
                if (!in) s += expl(lpt[v]);
            }
            err = fmax(err, fabs((double)((long double)tail[r] - s)));
            scale = fmax(scale, (double)s);
        }
        REPORT("builder tail vs long-double sum (peaked, ~1e-12)", err, scale, DIRECT_TOL);
        for (int dir = 0; dir < 2; dir++) {
            long double ref = 0.0L;
            for (size_t r = 0; r < N; r++)
                ref += ld_bucket_kl(z + r * V, ids + r * k, lp + r * k, tail[r], V, k, T, (mome_kd_direction)dir,
                                    0);
            mome_kd_sums s;
            mome_kd_topk_forward_backward(z, &s, ids, lp, tail, tg, N, V, k, (mome_kd_direction)dir, T, 0.5f,
                                          0.5f, 0.0f);
            SCALAR(dir ? "top-k reverse kl_sum, peaked student tail" : "top-k forward kl_sum, peaked student tail",
                   s.kl_sum, (double)ref, DIRECT_TOL);
        }
        free(lpt);
        mome_free(t);
        mome_free(z);
    }
}

/* ---------------------------------------------------------------- ignored rows, CE-only, determinism */

static void test_rows(void) {
    problem p;
    problem_make(&p, 9, 21, 5, 2.0f);
    const size_t n = p.N * (size_t)p.V;
    const int V = p.V;
    for (int fmt = 0; fmt < 2; fmt++) {
        p.topk = fmt;
        p.dir = MOME_KD_FORWARD;
        p.w_ce = 0.4f;
        p.w_kd = 0.6f;
        mome_kd_sums all;
        run(&p, p.z, &all, 0.0f);
        /* per-row sums: each row alone */
        double ce = 0.0, kl = 0.0;
        size_t nv = 0;
        for (size_t r = 0; r < p.N; r++) {
            mome_kd_sums s1;
            if (fmt)
                mome_kd_topk_forward_backward(p.z + r * V, &s1, p.ids + r * p.k, p.lp + r * p.k, p.tail + r,
                                              p.tg + r, 1, V, p.k, p.dir, p.T, p.w_ce, p.w_kd, 0.0f);
            else
                mome_kd_full_forward_backward(p.z + r * V, &s1, p.t + r * V, p.tg + r, 1, V, p.dir, p.T, p.w_ce,
                                              p.w_kd, 0.0f);
            EXPECT(p.tg[r] < 0 ? "ignored row: no CE, KL counted" : "valid row: CE and KL counted",
                   p.tg[r] < 0 ? s1.ce_sum == 0.0 && s1.n_valid == 0 && s1.kl_sum > 0.0 && s1.n_kd == 1
                               : s1.ce_sum > 0.0 && s1.n_valid == 1 && s1.kl_sum > 0.0 && s1.n_kd == 1);
            ce += s1.ce_sum;
            kl += s1.kl_sum;
            nv += s1.n_valid;
        }
        EXPECT("n_valid counts targets >= 0 (6 of 9), n_kd = N", all.n_valid == 6 && nv == 6 && all.n_kd == p.N);
        SCALAR(fmt ? "top-k: ce_sum = sum over valid rows" : "full: ce_sum = sum over valid rows", all.ce_sum, ce,
               1e-12);
        SCALAR(fmt ? "top-k: kl_sum = sum over all rows" : "full: kl_sum = sum over all rows", all.kl_sum, kl,
               1e-12);
        SCALAR("loss = w_ce*ce + w_kd*T^2*kl", all.loss,
               (double)p.w_ce * all.ce_sum + (double)p.w_kd * p.T * p.T * all.kl_sum, 1e-12);
        /* gradient of an ignored row = the KD part only: row sum 0 (softmax gradients sum to 0) and equal to the
         * gradient with w_ce = 0 */
        float *g1 = copy_buf(p.z, n), *g2 = copy_buf(p.z, n);
        run(&p, g1, NULL, 0.5f);
        const float wce = p.w_ce;
        p.w_ce = 0.0f;
        run(&p, g2, NULL, 0.5f);
        p.w_ce = wce;
        COMPARE(fmt ? "top-k: ignored row 1 gradient = KD-only gradient" : "full: ignored row 1 gradient = KD-only",
                g1 + 1 * V, g2 + 1 * V, (size_t)V, 1e-7);
        mome_free(g1);
        mome_free(g2);
    }
    /* CE only (teacher NULL, w_kd = 0) equals loss.c */
    {
        float *g1 = copy_buf(p.z, n), *g2 = copy_buf(p.z, n);
        mome_kd_sums s;
        mome_kd_full_forward_backward(g1, &s, NULL, p.tg, p.N, V, MOME_KD_FORWARD, 3.0f, 1.0f, 0.0f, 0.25f);
        size_t nv = 0;
        const double xl = mome_xent_forward_backward(g2, p.tg, p.N, V, 0.25f, &nv);
        SCALAR("CE-only ce_sum vs mome_xent_forward_backward", s.ce_sum, xl, XENT_TOL);
        EXPECT("CE-only: n_valid as xent, n_kd = 0, kl_sum = 0", s.n_valid == nv && s.n_kd == 0 && s.kl_sum == 0.0);
        COMPARE("CE-only gradient vs mome_xent_forward_backward", g1, g2, n, XENT_TOL);
        mome_free(g1);
        mome_free(g2);
    }
    /* grad_scale = 0 leaves the logits bit-identical */
    {
        float *g = copy_buf(p.z, n);
        p.topk = 1;
        p.dir = MOME_KD_REVERSE;
        run(&p, g, NULL, 0.0f);
        p.topk = 0;
        run(&p, g, NULL, 0.0f);
        EXPECT("grad_scale = 0 leaves the logits untouched", memcmp(g, p.z, n * sizeof *g) == 0);
        mome_free(g);
    }
    problem_free(&p);
#ifdef _OPENMP
    /* the same bits for 1 and 2 threads */
    problem q;
    problem_make(&q, 700, 37, 6, 1.3f);
    const size_t nq = q.N * (size_t)q.V;
    for (int fmt = 0; fmt < 2; fmt++) {
        q.topk = fmt;
        q.dir = fmt ? MOME_KD_REVERSE : MOME_KD_FORWARD;
        q.w_ce = 0.5f;
        q.w_kd = 0.5f;
        float *g1 = copy_buf(q.z, nq), *g2 = copy_buf(q.z, nq);
        mome_kd_sums s1, s2;
        const int nt = omp_get_max_threads();
        omp_set_num_threads(1);
        run(&q, g1, &s1, 1.0f / 700);
        omp_set_num_threads(2);
        run(&q, g2, &s2, 1.0f / 700);
        omp_set_num_threads(nt);
        EXPECT(fmt ? "top-k reverse: 1 and 2 threads give the same bits" : "full forward: 1 and 2 threads, same bits",
               s1.ce_sum == s2.ce_sum && s1.kl_sum == s2.kl_sum && memcmp(g1, g2, nq * sizeof *g1) == 0);
        mome_free(g1);
        mome_free(g2);
    }
    problem_free(&q);
#endif
}

/* ---------------------------------------------------------------------------------------- builder */

static void test_builder(void) {
    /* row 0: ties; row 1: all equal; row 2: distinct */
    const float t[3 * 6] = {1, 3, 3, 2, 3, 0, 5, 5, 5, 5, 5, 5, 0.5f, -1, 4, 2, 9, 1};
    int32_t ids[3 * 3];
    float lp[3 * 3], tail[3];
    mome_kd_topk_build(ids, lp, tail, t, 3, 6, 3, 1.0f);
    EXPECT("builder ties go to the lower id: 1 2 4", ids[0] == 1 && ids[1] == 2 && ids[2] == 4);
    EXPECT("builder all equal: 0 1 2", ids[3] == 0 && ids[4] == 1 && ids[5] == 2);
    EXPECT("builder descending: 4 2 3", ids[6] == 4 && ids[7] == 2 && ids[8] == 3);
    /* row 1 at any temperature: each of 6 equal ids has p = 1/6, tail 1/2 */
    mome_kd_topk_build(ids, lp, tail, t, 3, 6, 3, 2.5f);
    SCALAR("builder uniform row: log p = -log 6", lp[4], -log(6.0), 1e-6);
    SCALAR("builder uniform row: tail = 1/2", tail[1], 0.5, 1e-6);
    /* row 2 at T = 2: log p against the formula */
    double s = 0.0;
    for (int v = 0; v < 6; v++) s += exp(t[12 + v] / 2.0);
    mome_kd_topk_build(ids, lp, tail, t, 3, 6, 3, 2.0f);
    SCALAR("builder log p at T = 2", lp[6], 9.0 / 2.0 - log(s), 1e-6);
    SCALAR("builder tail at T = 2", tail[2], (exp(0.25) + exp(-0.5) + exp(0.5)) / s, 1e-6);
    float bad[6] = {0, 1, NAN, 2, 3, 4};
    const int rc = mome_kd_topk_build(ids, lp, tail, bad, 1, 6, 2, 1.0f);
    EXPECT("builder refuses NaN with MOME_ENONFINITE", rc == MOME_ENONFINITE);
    printf("    message: %s\n", mome_error_message());
}

/* ------------------------------------------------------------------------------------------ alpha */

/* w = 1 - clip((newest - oldest) / mean, 0, 1), written out again for the test */
static double hand_w(const double *win, int K) {
    double s = 0.0;
    for (int i = 0; i < K; i++) s += win[i];
    double d = (win[K - 1] - win[0]) / (s / K);
    return 1.0 - (d < 0 ? 0 : d > 1 ? 1 : d);
}

static void test_alpha(void) {
    EXPECT("window: total 1000 -> 20", mome_kd_alpha_window(1000) == 20);
    EXPECT("window: total 5000 -> 50", mome_kd_alpha_window(5000) == 50);
    EXPECT("window: total 0 -> 20", mome_kd_alpha_window(0) == 20);
    EXPECT("window: total 2099 -> 20", mome_kd_alpha_window(2099) == 20);
    EXPECT("window: total 2100 -> 21", mome_kd_alpha_window(2100) == 21);

    enum { K = 20 };
    mome_kd_alpha a;
    /* case 1: CE rises 1.00, 1.01, ..., 1.19; KD falls 2.0, 1.9, ..., 0.1.
     *   CE: d = (1.19 - 1.00) / mean(1.095) = 0.19 / 1.095 = 0.173516; w_CE = 0.826484
     *   KD: d < 0 -> w_KD = 1;  alpha = 0.826484 / 1.826484 = 0.452500 */
    if (mome_kd_alpha_init(&a, MOME_KD_ALPHA_ADAPTIVE, 0.5, K) != MOME_OK) {
        fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, mome_error_message());
        exit(1);
    }
    double ce[40], kd[40];
    int warm_ok = 1;
    for (int i = 0; i < K; i++) {
        ce[i] = 1.0 + 0.01 * i;
        kd[i] = 2.0 - 0.1 * i;
        if (mome_kd_alpha_get(&a) != 0.5) warm_ok = 0;
        mome_kd_alpha_push(&a, ce[i], kd[i]);
    }
    EXPECT("adaptive: alpha = 0.5 until K values exist", warm_ok);
    const double wce1 = 1.0 - 0.19 / 1.095;
    SCALAR("adaptive case 1 (CE rising, KD falling) by hand", mome_kd_alpha_get(&a), wce1 / (wce1 + 1.0),
           ALPHA_TOL);
    SCALAR("adaptive case 1, literal 0.4525", mome_kd_alpha_get(&a), 0.45250, 1e-5);
    /* case 2: push 5 more, the window wraps: CE = 1.05..1.19 then 1.5 x5 -> window ce[5..24] */
    for (int i = K; i < K + 5; i++) {
        ce[i] = 1.5;
        kd[i] = 1.5 + 0.1 * (i - K + 1); /* KD rises 1.6 .. 2.0, above its oldest value kd[5] = 1.5 */
        mome_kd_alpha_push(&a, ce[i], kd[i]);
    }
    const double w2c = hand_w(ce + 5, K), w2k = hand_w(kd + 5, K);
    EXPECT("case 2 hand weights are both in (0, 1)", w2c > 0 && w2c < 1 && w2k > 0 && w2k < 1);
    SCALAR("adaptive case 2 (wrap-around, both rising) by hand", mome_kd_alpha_get(&a), w2c / (w2c + w2k),
           ALPHA_TOL);
    /* by hand: CE window 1.05..1.19, 1.5 x5: d = 0.45 / 1.215 -> w = 0.629630; KD window 1.5..0.1, 1.6..2.0:
     * d = 0.5 / 1.05 -> w = 0.523810; alpha = 0.545872 */
    SCALAR("adaptive case 2, literal 0.545872", mome_kd_alpha_get(&a), 0.545872, 1e-5);
    /* case 3: KD jumps x10 within the window: d > 1 -> w_KD = 0 -> alpha = 1 (CE flat: w_CE = 1) */
    for (int i = 0; i < K; i++) mome_kd_alpha_push(&a, 2.0, i < K - 1 ? 0.1 : 5.0);
    SCALAR("adaptive case 3 (KD clipped at 1 -> alpha 1)", mome_kd_alpha_get(&a), 1.0, ALPHA_TOL);
    /* case 4: CE jumps too: both w = 0 -> 0.5 */
    for (int i = 0; i < K; i++) mome_kd_alpha_push(&a, i < K - 1 ? 0.1 : 9.0, i < K - 1 ? 0.1 : 5.0);
    SCALAR("adaptive case 4 (both clipped -> 0.5)", mome_kd_alpha_get(&a), 0.5, ALPHA_TOL);
    /* case 5: CE falls (clipped at 0 -> w_CE = 1), KD rises by 0.25 of its mean: w_KD = 0.75 -> 1/1.75 */
    for (int i = 0; i < K; i++) mome_kd_alpha_push(&a, 3.0 - 0.1 * i, i == 0 ? 0.9 : i < K - 1 ? 1.0 : 1.15);
    {
        const double mean_kd = (0.9 + 18 * 1.0 + 1.15) / K; /* = 1.0025 */
        const double wk = 1.0 - (1.15 - 0.9) / mean_kd;
        SCALAR("adaptive case 5 (CE falling, KD rising) by hand", mome_kd_alpha_get(&a), 1.0 / (1.0 + wk),
               ALPHA_TOL);
    }

    /* export / import round trip: a restored state continues bit-identically */
    double xc[K], xk[K];
    uint64_t cnt = 0;
    mome_kd_alpha_export(&a, xc, xk, &cnt);
    mome_kd_alpha b;
    mome_kd_alpha_init(&b, MOME_KD_ALPHA_ADAPTIVE, 0.5, K);
    const int rc = mome_kd_alpha_import(&b, xc, xk, K, cnt);
    EXPECT("import accepts the exported state", rc == MOME_OK && b.count == a.count);
    int same = mome_kd_alpha_get(&a) == mome_kd_alpha_get(&b);
    for (int i = 0; i < 57; i++) {
        const double c = 1.0 + 0.3 * mome_rng_uniform(&rng), d = 0.5 + 0.2 * mome_rng_uniform(&rng);
        mome_kd_alpha_push(&a, c, d);
        mome_kd_alpha_push(&b, c, d);
        same &= mome_kd_alpha_get(&a) == mome_kd_alpha_get(&b);
    }
    EXPECT("restored state continues bit-identically (57 pushes)", same);
    /* a partial window (count < K) round trip keeps the warm-up */
    mome_kd_alpha c1, c2;
    mome_kd_alpha_init(&c1, MOME_KD_ALPHA_ADAPTIVE, 0.5, K);
    mome_kd_alpha_init(&c2, MOME_KD_ALPHA_ADAPTIVE, 0.5, K);
    for (int i = 0; i < 7; i++) mome_kd_alpha_push(&c1, 1.0 + i, 1.0);
    mome_kd_alpha_export(&c1, xc, xk, &cnt);
    mome_kd_alpha_import(&c2, xc, xk, K, cnt);
    same = 1;
    for (int i = 0; i < 30; i++) {
        mome_kd_alpha_push(&c1, 2.0 + 0.1 * i, 1.0 + 0.05 * i);
        mome_kd_alpha_push(&c2, 2.0 + 0.1 * i, 1.0 + 0.05 * i);
        same &= mome_kd_alpha_get(&c1) == mome_kd_alpha_get(&c2);
        if (i < 12) same &= mome_kd_alpha_get(&c2) == 0.5;
    }
    EXPECT("partial-window round trip: warm-up kept, then identical", same);
    mome_kd_alpha w;
    mome_kd_alpha_init(&w, MOME_KD_ALPHA_ADAPTIVE, 0.5, 30);
    EXPECT("import refuses another window size", mome_kd_alpha_import(&w, xc, xk, K, cnt) == MOME_EMISMATCH);
    printf("    message: %s\n", mome_error_message());
    mome_kd_alpha_free(&w);
    mome_kd_alpha_free(&c1);
    mome_kd_alpha_free(&c2);
    mome_kd_alpha_free(&b);
    mome_kd_alpha_free(&a);

    /* fixed mode */
    mome_kd_alpha f;
    mome_kd_alpha_init(&f, MOME_KD_ALPHA_FIXED, 0.3, K);
    int fixed_ok = 1;
    for (int i = 0; i < 50; i++) {
        mome_kd_alpha_push(&f, 1.0 + i, 1.0);
        fixed_ok &= mome_kd_alpha_get(&f) == 0.3;
    }
    EXPECT("fixed mode: alpha constant 0.3 while losses move", fixed_ok && f.count == 50);
    mome_kd_alpha_free(&f);
    EXPECT("init refuses alpha 1.5", mome_kd_alpha_init(&f, MOME_KD_ALPHA_FIXED, 1.5, K) == MOME_EINVAL);
    mome_kd_alpha_free(&f);
    mome_kd_alpha_free(NULL);

    /* weights per micro-batch */
    float wc, wk;
    mome_kd_weights(MOME_KD_COMBINED, 0.3, 7, &wc, &wk);
    EXPECT("combined: (alpha, 1 - alpha)", wc == 0.3f && wk == 0.7f);
    mome_kd_weights(MOME_KD_ALTERNATING, 0.3, 0, &wc, &wk);
    EXPECT("alternating, micro-batch 0: CE only (1, 0)", wc == 1.0f && wk == 0.0f);
    mome_kd_weights(MOME_KD_ALTERNATING, 0.3, 5, &wc, &wk);
    EXPECT("alternating, micro-batch 5: KD only (0, 1)", wc == 0.0f && wk == 1.0f);
}

int main(void) {
    mome_rng_seed(&rng, 4242);
    printf("bytes per row: full V=50257 -> %zu, top-k k=64 -> %zu\n", MOME_KD_FULL_BYTES_PER_ROW(50257),
           MOME_KD_TOPK_BYTES_PER_ROW(64));
    test_fd();
    test_k_equals_v();
    test_tail();
    test_rows();
    test_builder();
    test_alpha();
    return check_summary("test_kd");
}
