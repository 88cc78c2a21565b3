/* test_kd_methods.c — the MoE-teacher distillation methods of kd.method (distill.h; "Every Expert Matters", Kim et
 * al. 2025) on one process, with small teachers written as real checkpoints and loaded by mome_distill_init.
 *
 *  - kd.c: the loss against M target sets (mome_kd_*_forward_backward_multi) equals M calls of the single-set
 *    kernel on copies of the logits (CE weight on the first only, KD weight / M on each, gradients summed) for full
 *    and top-k targets, forward and reverse KL; M = 1 equals the single-set kernel bit for bit; grad_scale 0
 *    leaves the logits alone.
 *  - ka with lambda 0, M = 1 (n = E - 1 by default) gives the targets and loss of method topk with a teacher whose
 *    gate is TOPK with top_k = E - 1 (renormalised, dropless), bit for bit.
 *  - all equals ka with n = E (lambda 0.5: the whole set is drawn), within ALL_TOL relative.
 *  - ka, M = 3, lambda 0.5: the distiller's loss and gradient equal a direct computation (the teacher loaded
 *    separately, run in KA mode with the documented seed, counters mb * M + m and token base, each pass's loss by
 *    the single-set kernel, averaged); the passes draw differently, a repeated call draws the same.
 *  - sar: before any router step its targets equal method all's; finite differences (central, float64 loss) of
 *    the router loss wrt gate_w entries against mome_distill_router_loss's gradient, forward and reverse KL, with
 *    the KL alone (h = 5e-2) and with the load-balancing term (h = 1e-2; entries whose perturbation changes the
 *    top_k counts f_e are skipped: the term is piecewise constant in them); router
 *    steps change gate_w only and lower the router loss; the router state get/set resumes bit for bit; the saved
 *    router loads as a checkpoint holding the trained gate.
 *  - Errors: a dense teacher with method != topk (naming the checkpoint), ka or sar with placement cache, ka_n > E,
 *    a router step without sar.
 * Every check prints its measured value and tolerance; the program exits 1 if any check fails.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mome/checkpoint.h"
#include "mome/common.h"
#include "mome/config.h"
#include "mome/distill.h"
#include "mome/kd.h"
#include "mome/model.h"
#include "mome/rng.h"
#include "mome/train.h"

#include "check.h"
#include "teacher.h"

#define HASH "0123456789abcdef"
#define TV 32       /* vocabulary */
#define TMAX 16     /* teacher positions */
#define SEQ 8       /* T of the tests */
#define BL 3        /* sequences per micro-batch */
#define ALL_TOL 1e-5 /* all vs ka(n = E): relative to the largest logit (as test_moe_modes.c) */
#define MULTI_TOL 1e-6 /* multi-set kernel vs summed single-set calls: relative (same arithmetic, same order) */
#define FD_H 1e-2f    /* with the balance term: a larger step changes the top_k counts f_e of more entries */
#define FD_H_KL 5e-2f /* the KL alone is smooth in gate_w (ALL mode): a larger step, less float32 noise */
#define FD_TOL 3e-3  /* whole-model finite differences, float32 forward (as test_moe_modes.c GPT_FD_TOL) */
#define FD_ENTRIES 32

static mome_rng rng;
static char tmpdir[64];


static void expect(int ok, const char *what, const char *file, int line) {
    printf("%-64s %s\n", what, ok ? "ok" : "FAIL");
    if (!ok) {
        fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
        failures++;
    }
}
#define EXPECT(ok, what) expect(!!(ok), what, __FILE__, __LINE__)
#define BITWISE(what, a, b, bytes) expect(memcmp(a, b, bytes) == 0, what " (bit-identical)", __FILE__, __LINE__)

static void expect_error(int rc, int want, const char *needle, const char *what, const char *file, int line) {
    const char *msg = mome_error_message();
    const int ok = rc == want && strstr(msg, needle) != NULL;
    printf("%-64s %s\n    message: %s\n", what, ok ? "refused  ok" : "FAIL", msg);
    if (!ok) {
        fprintf(stderr, "%s:%d: %s: got status %d (want %d), message without \"%s\"\n", file, line, what, rc, want,
                needle);
        failures++;
    }
}
#define EXPECT_ERROR(rc, want, needle, what) expect_error(rc, want, needle, what, __FILE__, __LINE__)

static void fill_normal(float *p, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) p[i] = scale * mome_rng_normal(&rng);
}

/* ------------------------------------------------------------------------------------------------ kd.c */

static void test_multi_kernel(void) {
    const size_t N = 20;
    const int V = 37, k = 5, M = 3;
    const float T = 2.0f, w_ce = 0.3f, w_kd = 0.7f, gs = 1.0f / 20.0f;
    const size_t NV = N * (size_t)V;
    float *z = mome_malloc(NV * sizeof *z), *t = mome_malloc((size_t)M * NV * sizeof *t);
    float *g = mome_malloc(NV * sizeof *g), *ref = mome_malloc(NV * sizeof *ref), *one = mome_malloc(NV * sizeof *one);
    int32_t *tg = mome_malloc(N * sizeof *tg), *ids = mome_malloc((size_t)M * N * k * sizeof *ids);
    float *lp = mome_malloc((size_t)M * N * k * sizeof *lp), *tail = mome_malloc((size_t)M * N * sizeof *tail);
    fill_normal(z, NV, 2.0f);
    fill_normal(t, (size_t)M * NV, 3.0f);
    for (size_t i = 0; i < N; i++) tg[i] = i % 4 == 3 ? -1 : (int32_t)mome_rng_below(&rng, (uint64_t)V);
    for (int m = 0; m < M; m++)
        EXPECT(mome_kd_topk_build(ids + (size_t)m * N * k, lp + (size_t)m * N * k, tail + (size_t)m * N,
                                  t + (size_t)m * NV, N, V, k, T) == MOME_OK,
               "top-k targets of each teacher pass");
    for (int fmt = 0; fmt < 2; fmt++)
        for (int dir = 0; dir < 2; dir++) {
            const mome_kd_direction kd = (mome_kd_direction)dir;
            /* direct: one single-set call per set on a copy, CE on the first only, w_kd / M each, summed */
            mome_kd_sums s, sm;
            double ce = 0.0, kl = 0.0;
            memset(ref, 0, NV * sizeof *ref);
            for (int m = 0; m < M; m++) {
                memcpy(one, z, NV * sizeof *one);
                const float wc = m == 0 ? w_ce : 0.0f, wk = w_kd / (float)M;
                if (fmt)
                    mome_kd_topk_forward_backward(one, &s, ids + (size_t)m * N * k, lp + (size_t)m * N * k,
                                                  tail + (size_t)m * N, tg, N, V, k, kd, T, wc, wk, gs);
                else
                    mome_kd_full_forward_backward(one, &s, t + (size_t)m * NV, tg, N, V, kd, T, wc, wk, gs);
                if (m == 0) ce = s.ce_sum;
                kl += s.kl_sum;
                /* the m > 0 calls still ran CE with weight 0: their gradient has no CE part */
                for (size_t i = 0; i < NV; i++) ref[i] += one[i];
            }
            kl /= M;
            memcpy(g, z, NV * sizeof *g);
            double loss;
            if (fmt)
                loss = mome_kd_topk_forward_backward_multi(g, &sm, ids, lp, tail, M, tg, N, V, k, kd, T, w_ce, w_kd, gs);
            else
                loss = mome_kd_full_forward_backward_multi(g, &sm, t, M, tg, N, V, kd, T, w_ce, w_kd, gs);
            char what[128];
            snprintf(what, sizeof what, "multi %s %s M=3: gradient vs summed single calls", fmt ? "top-k" : "full",
                     dir ? "reverse" : "forward");
            COMPARE(what, g, ref, NV, MULTI_TOL);
            snprintf(what, sizeof what, "multi %s %s M=3: kl_sum = mean of the passes", fmt ? "top-k" : "full",
                     dir ? "reverse" : "forward");
            REPORT(what, fabs(sm.kl_sum - kl), fabs(kl), 1e-12);
            snprintf(what, sizeof what, "multi %s %s M=3: ce counted once, loss = w_ce ce + w_kd T^2 kl",
                     fmt ? "top-k" : "full", dir ? "reverse" : "forward");
            const double want = (double)w_ce * ce + (double)w_kd * T * T * kl;
            REPORT(what, fabs(sm.ce_sum - ce) + fabs(loss - want), fabs(want), 1e-12);
            EXPECT(sm.n_kd == N && sm.n_valid == s.n_valid, "multi: n_kd = N, n_valid as the single call");
            /* M = 1: the single-set kernel, bit for bit */
            memcpy(one, z, NV * sizeof *one);
            memcpy(g, z, NV * sizeof *g);
            mome_kd_sums a, b;
            if (fmt) {
                mome_kd_topk_forward_backward(one, &a, ids, lp, tail, tg, N, V, k, kd, T, w_ce, w_kd, gs);
                mome_kd_topk_forward_backward_multi(g, &b, ids, lp, tail, 1, tg, N, V, k, kd, T, w_ce, w_kd, gs);
            } else {
                mome_kd_full_forward_backward(one, &a, t, tg, N, V, kd, T, w_ce, w_kd, gs);
                mome_kd_full_forward_backward_multi(g, &b, t, 1, tg, N, V, kd, T, w_ce, w_kd, gs);
            }
            BITWISE("multi M=1 == single-set kernel: gradient", g, one, NV * sizeof *g);
            EXPECT(a.loss == b.loss && a.kl_sum == b.kl_sum && a.ce_sum == b.ce_sum, "multi M=1 == single: sums");
            /* evaluation: grad_scale 0 leaves the logits untouched and gives the same sums */
            memcpy(g, z, NV * sizeof *g);
            mome_kd_sums e;
            if (fmt)
                mome_kd_topk_forward_backward_multi(g, &e, ids, lp, tail, M, tg, N, V, k, kd, T, w_ce, w_kd, 0.0f);
            else
                mome_kd_full_forward_backward_multi(g, &e, t, M, tg, N, V, kd, T, w_ce, w_kd, 0.0f);
            BITWISE("multi grad_scale 0: logits untouched", g, z, NV * sizeof *g);
            REPORT("multi grad_scale 0: same loss", fabs(e.loss - sm.loss), fabs(sm.loss), 1e-12);
        }
    mome_free(z);
    mome_free(t);
    mome_free(g);
    mome_free(ref);
    mome_free(one);
    mome_free(tg);
    mome_free(ids);
    mome_free(lp);
    mome_free(tail);
}

/* ------------------------------------------------------------------------------------------- teachers */

/* Writes a teacher checkpoint into tmpdir/name (E = 0: dense). gate_scale multiplies the gate after the GPT-2
 * initialisation, so that routing is not uniform, and the experts' output projections by 8. Returns the directory in out. */
static void write_teacher(const char *name, int E, int top_k, float capacity, uint64_t seed, float gate_scale,
                          char *out, size_t cap) {
    snprintf(out, cap, "%s/%s", tmpdir, name);
    mome_gpt_config mc = {.vocab_size = TV, .seq_len = TMAX, .n_layer = 2, .n_head = 2, .d_model = 16, .d_ff = 24,
                          .n_experts = E, .top_k = E > 0 ? top_k : 0, .capacity_factor = capacity};
    const mome_config c = teacher_config(&mc);
    mome_gpt m;
    MOME_CHECK(mome_gpt_init(&m, &mc) == MOME_OK, "teacher init: %s", mome_error_message());
    mome_gpt_init_weights(&m, seed);
    /* a peaked gate, and experts whose outputs differ enough that the routing shows in the logits */
    const char *scaled[] = {"blocks/gate_w", "blocks/experts_proj_w"};
    const float by[] = {gate_scale, 8.0f};
    for (int s = 0; s < 2; s++) {
        const int gi = mome_tensor_table_find(&m.table, scaled[s]);
        if (gi >= 0)
            for (size_t i = 0; i < m.table.t[gi].numel; i++) m.params[m.table.t[gi].offset + i] *= by[s];
    }
    MOME_CHECK(teacher_save(out, &c, &m, HASH) == MOME_OK, "teacher save: %s", mome_error_message());
    mome_gpt_free(&m);
}

static mome_config student_cfg(const char *teacher, const char *method, int topk) {
    mome_config c;
    mome_config_defaults(&c);
    snprintf(c.teacher.checkpoint, sizeof c.teacher.checkpoint, "%s", teacher);
    snprintf(c.teacher.placement, sizeof c.teacher.placement, "each");
    snprintf(c.kd.method, sizeof c.kd.method, "%s", method);
    c.kd.teacher_topk = topk;
    c.kd.temperature = 2.0f;
    return c;
}

static int init_d(mome_distiller *d, const mome_config *c) {
    return mome_distill_init(d, c, HASH, TV, BL, SEQ, MPI_COMM_SELF);
}

/* Loss and gradient of the distiller's last targets for student logits z (copied). */
static double dloss(const mome_distiller *d, const float *z, const int32_t *tgt, float *g, mome_kd_sums *s) {
    memcpy(g, z, (size_t)BL * SEQ * TV * sizeof *g);
    return mome_distill_loss(d, g, s, tgt, 0.25f, 0.75f, 1.0f / (BL * SEQ));
}

static void test_ka_all(const int32_t *inp, const int32_t *tgt, const float *z) {
    const size_t rows = (size_t)BL * SEQ, RV = rows * TV;
    char a[MOME_CFG_STR], b[MOME_CFG_STR];
    /* the same weights (seed 11) written as a top-1 teacher and as a dropless top-3 teacher */
    write_teacher("top1", 4, 1, 1.25f, 11, 30.0f, a, sizeof a);
    write_teacher("top3", 4, 3, 0.0f, 11, 30.0f, b, sizeof b);
    float *g1 = mome_malloc(RV * sizeof *g1), *g2 = mome_malloc(RV * sizeof *g2);
    const uint64_t first = 6; /* micro-batch 2 of B = 3 */
    for (int topk = 0; topk <= 6; topk += 6) {
        mome_distiller dk, dt;
        mome_config ck = student_cfg(a, "ka", topk), ct = student_cfg(b, "topk", topk);
        ck.kd.ka_lambda = 0.0f;
        ck.kd.ka_passes = 1;
        EXPECT(init_d(&dk, &ck) == MOME_OK && init_d(&dt, &ct) == MOME_OK, "distillers ka / topk");
        EXPECT(dk.gate.kind == MOME_GATE_KA && dk.gate.ka_n == 3 && dk.passes == 1, "ka_n = 0 means E - 1 = 3");
        EXPECT(mome_distill_targets(&dk, inp, first) == MOME_OK && mome_distill_targets(&dt, inp, first) == MOME_OK,
               "targets ka / topk");
        if (topk == 0) {
            BITWISE("ka lambda 0 M=1 == top-3 teacher: full logits", dk.logits, dt.logits, RV * sizeof(float));
        } else {
            BITWISE("ka lambda 0 M=1 == top-3 teacher: top-6 ids", dk.tk_ids, dt.tk_ids, rows * 6 * sizeof(int32_t));
            BITWISE("ka lambda 0 M=1 == top-3 teacher: top-6 log-probs", dk.tk_logp, dt.tk_logp, rows * 6 * 4);
        }
        mome_kd_sums s1, s2;
        const double l1 = dloss(&dk, z, tgt, g1, &s1), l2 = dloss(&dt, z, tgt, g2, &s2);
        printf("    KD loss (%s): ka lambda 0 %.9g, top-3 teacher %.9g\n", topk ? "top-6" : "full", l1, l2);
        EXPECT(l1 == l2 && memcmp(g1, g2, RV * sizeof *g1) == 0, "ka lambda 0 M=1 == top-3 teacher: loss, gradient");
        mome_distill_free(&dk);
        mome_distill_free(&dt);
    }

    /* all == ka with n = E (lambda 0.5: drawing without replacement takes the whole set) */
    {
        mome_distiller dall, dka;
        mome_config call = student_cfg(a, "all", 0), cka = student_cfg(a, "ka", 0);
        cka.kd.ka_n = 4;
        cka.kd.ka_lambda = 0.5f;
        cka.kd.ka_passes = 1;
        EXPECT(init_d(&dall, &call) == MOME_OK && init_d(&dka, &cka) == MOME_OK, "distillers all / ka n=E");
        EXPECT(dall.gate.kind == MOME_GATE_ALL, "method all: gate mode ALL");
        EXPECT(mome_distill_targets(&dall, inp, first) == MOME_OK && mome_distill_targets(&dka, inp, first) == MOME_OK,
               "targets all / ka n=E");
        COMPARE("all == ka n=E lambda 0.5: teacher logits", dall.logits, dka.logits, RV, ALL_TOL);
        mome_kd_sums s1, s2;
        const double l1 = dloss(&dall, z, tgt, g1, &s1), l2 = dloss(&dka, z, tgt, g2, &s2);
        REPORT("all == ka n=E: KD loss", fabs(l1 - l2), fabs(l2), ALL_TOL);
        /* and all differs from the top-1 teacher as trained */
        mome_distiller dtop;
        mome_config ctop = student_cfg(a, "topk", 0);
        EXPECT(init_d(&dtop, &ctop) == MOME_OK && mome_distill_targets(&dtop, inp, first) == MOME_OK, "topk teacher");
        const double dd = max_diff(dall.logits, dtop.logits, RV);
        printf("    all vs the top-1 teacher as trained: max logit difference %.3e (must be > 1e-3)\n", dd);
        EXPECT(dd > 1e-3, "all routes differently from top-1");
        mome_distill_free(&dall);
        mome_distill_free(&dka);
        mome_distill_free(&dtop);
    }
    mome_free(g1);
    mome_free(g2);
}

/* ka with M = 3 against a direct computation with a separately loaded teacher. */
static void test_ka_average(const int32_t *inp, const int32_t *tgt, const float *z) {
    const size_t rows = (size_t)BL * SEQ, RV = rows * TV;
    const int M = 3, K = 6;
    char a[MOME_CFG_STR], ck[1024];
    snprintf(a, sizeof a, "%s/top1", tmpdir);
    const uint64_t first = 9; /* micro-batch 3 */
    float *g = mome_malloc(RV * sizeof *g), *ref = mome_malloc(RV * sizeof *ref), *one = mome_malloc(RV * sizeof *one);
    float *tl = mome_malloc((size_t)M * RV * sizeof *tl);
    int32_t *ids = mome_malloc((size_t)M * rows * K * sizeof *ids);
    float *lp = mome_malloc((size_t)M * rows * K * sizeof *lp), *tail = mome_malloc((size_t)M * rows * sizeof *tail);
    MOME_CHECK(mome_ckpt_latest(a, ck, sizeof ck) == MOME_OK, "%s", mome_error_message());
    mome_config scratch;
    mome_gpt t;
    MOME_CHECK(mome_load_model(ck, &scratch, &t) == MOME_OK, "%s", mome_error_message());
    MOME_CHECK(mome_gpt_reserve(&t, BL, SEQ) == MOME_OK, "%s", mome_error_message());
    for (int topk = 0; topk <= K; topk += K) {
        for (int dir = 0; dir < 2; dir++) {
            mome_distiller d;
            mome_config c = student_cfg(a, "ka", topk);
            c.kd.ka_passes = M;
            c.kd.ka_lambda = 0.5f;
            if (dir) snprintf(c.kd.direction, sizeof c.kd.direction, "reverse");
            EXPECT(init_d(&d, &c) == MOME_OK, "distiller ka M=3");
            EXPECT(mome_distill_targets(&d, inp, first) == MOME_OK, "targets ka M=3");
            /* the documented draws: seed = stream(train.seed, 0x4b4100, 0), counter mb * M + m, token base 0 */
            mome_rng r;
            mome_rng_stream(&r, c.train.seed, 0x4b4100ULL, 0);
            const uint64_t seed = mome_rng_u64(&r), mb = first / BL;
            for (int m = 0; m < M; m++) {
                mome_moe_gate_mode gm = {.kind = MOME_GATE_KA, .ka_n = 3, .ka_lambda = 0.5f, .seed = seed,
                                         .counter = mb * (uint64_t)M + (uint64_t)m};
                MOME_CHECK(mome_gpt_set_gate_mode(&t, &gm) == MOME_OK, "%s", mome_error_message());
                mome_gpt_forward(&t, inp, BL, SEQ);
                memcpy(tl + (size_t)m * RV, t.logits, RV * sizeof *tl);
                if (topk)
                    MOME_CHECK(mome_kd_topk_build(ids + (size_t)m * rows * K, lp + (size_t)m * rows * K,
                                                  tail + (size_t)m * rows, t.logits, rows, TV, K, 2.0f) == MOME_OK,
                               "build");
            }
            if (topk == 0 && dir == 0) {
                BITWISE("ka M=3: the distiller's pass targets == direct KA forwards", d.logits, tl,
                        (size_t)M * RV * sizeof(float));
                const double d01 = max_diff(tl, tl + RV, RV), d12 = max_diff(tl + RV, tl + 2 * RV, RV);
                printf("    passes differ: max logit difference pass 0/1 %.3e, 1/2 %.3e\n", d01, d12);
                EXPECT(d01 > 1e-4 && d12 > 1e-4, "ka lambda 0.5: the three passes draw differently");
                mome_distiller again;
                EXPECT(init_d(&again, &c) == MOME_OK && mome_distill_targets(&again, inp, first) == MOME_OK,
                       "a second distiller");
                BITWISE("ka: the same micro-batch draws the same", again.logits, d.logits, (size_t)M * RV * 4);
                EXPECT(mome_distill_targets(&again, inp, first + BL) == MOME_OK, "next micro-batch");
                EXPECT(max_diff(again.logits, d.logits, RV) > 1e-4, "ka: the next micro-batch draws differently");
                mome_distill_free(&again);
            }
            /* direct: the mean of the single-set losses */
            const mome_kd_direction kdir = dir ? MOME_KD_REVERSE : MOME_KD_FORWARD;
            const float w_ce = 0.25f, w_kd = 0.75f, gs = 1.0f / (float)rows;
            double kl = 0.0, ce = 0.0;
            memset(ref, 0, RV * sizeof *ref);
            for (int m = 0; m < M; m++) {
                mome_kd_sums s;
                memcpy(one, z, RV * sizeof *one);
                const float wc = m == 0 ? w_ce : 0.0f, wk = w_kd / (float)M;
                if (topk)
                    mome_kd_topk_forward_backward(one, &s, ids + (size_t)m * rows * K, lp + (size_t)m * rows * K,
                                                  tail + (size_t)m * rows, tgt, rows, TV, K, kdir, 2.0f, wc, wk, gs);
                else
                    mome_kd_full_forward_backward(one, &s, tl + (size_t)m * RV, tgt, rows, TV, kdir, 2.0f, wc, wk, gs);
                kl += s.kl_sum / M;
                if (m == 0) ce = s.ce_sum;
                for (size_t i = 0; i < RV; i++) ref[i] += one[i];
            }
            const double want = (double)w_ce * ce + (double)w_kd * 4.0 * kl;
            mome_kd_sums s;
            const double got = dloss(&d, z, tgt, g, &s);
            char what[128];
            snprintf(what, sizeof what, "ka M=3 %s %s: loss vs the mean over direct passes", topk ? "top-6" : "full",
                     dir ? "reverse" : "forward");
            REPORT(what, fabs(got - want), fabs(want), 1e-9);
            snprintf(what, sizeof what, "ka M=3 %s %s: gradient vs direct", topk ? "top-6" : "full",
                     dir ? "reverse" : "forward");
            COMPARE(what, g, ref, RV, MULTI_TOL);
            mome_distill_free(&d);
        }
    }
    mome_gpt_free(&t);
    mome_free(g);
    mome_free(ref);
    mome_free(one);
    mome_free(tl);
    mome_free(ids);
    mome_free(lp);
    mome_free(tail);
}

/* ------------------------------------------------------------------------------------------------ sar */

static double router_loss(mome_distiller *d, const int32_t *inp, const float *z) {
    double L = NAN;
    MOME_CHECK(mome_distill_router_loss(d, inp, z, 0, &L, NULL) == MOME_OK, "%s", mome_error_message());
    return L;
}

static void test_sar(const int32_t *inp, const float *z) {
    const size_t rows = (size_t)BL * SEQ, RV = rows * TV;
    char a[MOME_CFG_STR];
    write_teacher("top2", 4, 2, 1.25f, 23, 30.0f, a, sizeof a);
    /* before any router step, sar's targets are method all's */
    {
        mome_distiller ds, da;
        mome_config cs = student_cfg(a, "sar", 0), ca = student_cfg(a, "all", 0);
        EXPECT(init_d(&ds, &cs) == MOME_OK && init_d(&da, &ca) == MOME_OK, "distillers sar / all");
        EXPECT(ds.gate_n == 2 * 4 * 16 && !ds.teacher.inference, "sar: a training-mode teacher, gate (2, 4, 16)");
        EXPECT(mome_distill_targets(&ds, inp, 0) == MOME_OK && mome_distill_targets(&da, inp, 0) == MOME_OK,
               "targets sar / all");
        BITWISE("sar before any router step == all: targets", ds.logits, da.logits, RV * sizeof(float));
        mome_distill_free(&ds);
        mome_distill_free(&da);
    }
    /* finite differences of the router loss wrt gate_w */
    for (int run = 0; run < 4; run++) {
        const int dir = run & 1;
        mome_distiller d;
        mome_config c = student_cfg(a, "sar", 0);
        c.kd.sar_aux_coef = run < 2 ? 0.0f : 0.5f; /* the KL alone, then a balance term large enough to show */
        if (dir) snprintf(c.kd.direction, sizeof c.kd.direction, "reverse");
        EXPECT(init_d(&d, &c) == MOME_OK, "distiller sar");
        const size_t n = d.gate_n;
        const int L = 2, E = 4;
        float *grad = mome_malloc(n * sizeof *grad);
        double L0 = NAN;
        EXPECT(mome_distill_router_loss(&d, inp, z, 0, &L0, grad) == MOME_OK, "router loss and gradient");
        printf("    router loss (%s KL) %.6f = KL part %.6f + %.2f * balance %.6f (balance of the top-2 counts)\n",
               dir ? "reverse" : "forward", L0, d.sar_kl, (double)c.kd.sar_aux_coef, d.sar_aux);
        double *f0 = mome_malloc((size_t)L * E * sizeof *f0), *f1 = mome_malloc((size_t)L * E * sizeof *f1);
        memcpy(f0, d.sar_load, (size_t)L * E * sizeof *f0);
        float *p = d.teacher.params + d.gate_off;
        double err = 0.0, scale = max_abs(grad, n);
        int checked = 0, skipped = 0;
        for (int i = 0; i < FD_ENTRIES; i++) {
            const size_t j = (size_t)mome_rng_below(&rng, n);
            const float h = c.kd.sar_aux_coef > 0.0f ? FD_H : FD_H_KL;
            const float p0 = p[j], pp = p0 + h, pm = p0 - h;
            p[j] = pp;
            const double lp = router_loss(&d, inp, z);
            memcpy(f1, d.sar_load, (size_t)L * E * sizeof *f1);
            p[j] = pm;
            const double lm = router_loss(&d, inp, z);
            const int flip = memcmp(f1, d.sar_load, (size_t)L * E * sizeof *f1) != 0 ||
                             memcmp(f0, d.sar_load, (size_t)L * E * sizeof *f1) != 0;
            p[j] = p0;
            if (flip && c.kd.sar_aux_coef > 0.0f) { /* f_e is piecewise constant: no derivative across a change */
                skipped++;
                continue;
            }
            const double fd = (lp - lm) / ((double)pp - (double)pm);
            err = fmax(err, fabs(fd - (double)grad[j]));
            checked++;
        }
        char what[128];
        snprintf(what, sizeof what, "sar %s KL, aux %.1f: router gradient vs finite differences (%d/%d entries)",
                 dir ? "reverse" : "forward", (double)c.kd.sar_aux_coef, checked, checked + skipped);
        REPORT(what, err, scale, FD_TOL);
        EXPECT(checked >= FD_ENTRIES / 2, "sar finite differences: at most half the entries skipped for f_e changes");
        /* the balance term's share: the gradient with and without it differs */
        if (run < 2) {
            mome_free(grad);
            mome_free(f0);
            mome_free(f1);
            mome_distill_free(&d);
            continue;
        }
        mome_distiller d0;
        mome_config c0 = c;
        c0.kd.sar_aux_coef = 0.0f;
        float *g0 = mome_malloc(n * sizeof *g0);
        EXPECT(init_d(&d0, &c0) == MOME_OK && mome_distill_router_loss(&d0, inp, z, 0, NULL, g0) == MOME_OK,
               "router gradient without the balance term");
        const double dg = max_diff(grad, g0, n);
        printf("    balance term: gradient difference %.3e (coefficient 0.5 vs 0; must be > 1e-6 of %.3e)\n", dg,
               scale);
        EXPECT(dg > 1e-6 * scale, "the load-balancing term contributes to the router gradient");
        mome_free(g0);
        mome_distill_free(&d0);
        mome_free(grad);
        mome_free(f0);
        mome_free(f1);
        mome_distill_free(&d);
    }
    /* router steps: only gate_w moves, the loss falls, state get/set resumes bit for bit, save and load */
    {
        mome_distiller d;
        mome_config c = student_cfg(a, "sar", 0);
        c.kd.sar_lr = 1e-2f;
        EXPECT(init_d(&d, &c) == MOME_OK, "distiller sar, lr 1e-2");
        const size_t P = d.teacher.table.total, n = d.gate_n;
        float *before = mome_malloc(P * sizeof *before);
        memcpy(before, d.teacher.params, P * sizeof *before);
        double l0 = NAN, l;
        EXPECT(mome_distill_router_step(&d, inp, z, 0, &l0) == MOME_OK, "router step 1");
        size_t moved_other = 0, moved_gate = 0;
        for (size_t i = 0; i < P; i++) {
            const int gate = i >= d.gate_off && i < d.gate_off + n;
            const int moved = memcmp(&before[i], &d.teacher.params[i], sizeof(float)) != 0;
            moved_gate += gate && moved;
            moved_other += !gate && moved;
        }
        printf("    router step: %zu of %zu gate_w entries moved, %zu other parameters moved\n", moved_gate, n,
               moved_other);
        EXPECT(moved_other == 0 && moved_gate > n / 2, "router step updates gate_w only");
        float *gs = mome_malloc(n * sizeof *gs), *ms = mome_malloc(n * sizeof *ms), *vs = mome_malloc(n * sizeof *vs);
        int64_t step = -1;
        for (int s = 2; s <= 3; s++) EXPECT(mome_distill_router_step(&d, inp, z, 0, &l) == MOME_OK, "router step");
        EXPECT(mome_distill_router_state_get(&d, gs, ms, vs, &step) == MOME_OK && step == 3, "router state after 3");
        double l4 = NAN, l5 = NAN, l4r = NAN, l5r = NAN;
        EXPECT(mome_distill_router_step(&d, inp, z, 0, &l4) == MOME_OK, "step 4");
        EXPECT(mome_distill_router_step(&d, inp, z, 0, &l5) == MOME_OK, "step 5");
        float *after5 = mome_malloc(n * sizeof *after5);
        memcpy(after5, d.teacher.params + d.gate_off, n * sizeof *after5);
        for (int s = 0; s < 20; s++) EXPECT(mome_distill_router_step(&d, inp, z, 0, &l) == MOME_OK, "more steps");
        const double l25 = router_loss(&d, inp, z);
        printf("    router loss over 25 steps at lr 1e-2: %.6f -> %.6f\n", l0, l25);
        EXPECT(l25 < l0, "router steps lower the router loss");
        /* save the trained router and load it back as a checkpoint */
        char sv[MOME_CFG_STR], ck[1024];
        snprintf(sv, sizeof sv, "%s/router", tmpdir);
        EXPECT(mome_distill_save_router(&d, sv) == MOME_OK, "save router");
        EXPECT(mome_ckpt_latest(sv, ck, sizeof ck) == MOME_OK && strstr(ck, "step_00000025.h5"), "router file");
        mome_config scratch;
        mome_gpt back;
        if (mome_load_model(ck, &scratch, &back) == MOME_OK) {
            BITWISE("saved router: every tensor as trained", back.params, d.teacher.params, P * sizeof(float));
            EXPECT(scratch.moe.aux_coef == 0.01f && scratch.moe.top_k == 2, "saved router: the teacher's config");
            mome_gpt_free(&back);
        } else {
            EXPECT(0, "saved router loads");
        }
        /* restore the state of step 3 and redo steps 4, 5 */
        EXPECT(mome_distill_router_state_set(&d, gs, ms, vs, step) == MOME_OK, "router state set");
        EXPECT(mome_distill_router_step(&d, inp, z, 0, &l4r) == MOME_OK, "step 4 again");
        EXPECT(mome_distill_router_step(&d, inp, z, 0, &l5r) == MOME_OK, "step 5 again");
        printf("    resumed router: step 4 loss %.9g / %.9g, step 5 %.9g / %.9g\n", l4, l4r, l5, l5r);
        EXPECT(l4 == l4r && l5 == l5r, "router state resume: identical losses");
        BITWISE("router state resume: gate after step 5", d.teacher.params + d.gate_off, after5, n * sizeof(float));
        mome_free(gs);
        mome_free(ms);
        mome_free(vs);
        mome_free(after5);
        mome_free(before);
        mome_distill_free(&d);
    }
}

/* -------------------------------------------------------------------------------------------- errors */

static void test_errors(const int32_t *inp, const float *z) {
    char dense[MOME_CFG_STR], moe[MOME_CFG_STR];
    write_teacher("dense", 0, 0, 0.0f, 5, 1.0f, dense, sizeof dense);
    snprintf(moe, sizeof moe, "%s/top1", tmpdir);
    const char *methods[] = {"all", "ka", "sar"};
    for (int i = 0; i < 3; i++) {
        mome_distiller d;
        mome_config c = student_cfg(dense, methods[i], 0);
        char what[96];
        snprintf(what, sizeof what, "method %s with a dense teacher", methods[i]);
        EXPECT_ERROR(init_d(&d, &c), MOME_ECONFIG, "is dense", what);
        EXPECT(strstr(mome_error_message(), "dense/step_00000001.h5") != NULL, "  ... naming the teacher checkpoint");
        mome_distill_free(&d);
    }
    {
        mome_distiller d;
        mome_config c = student_cfg(dense, "topk", 0);
        EXPECT(init_d(&d, &c) == MOME_OK, "method topk with a dense teacher is fine");
        EXPECT_ERROR(mome_distill_router_step(&d, inp, z, 0, NULL), MOME_EINVAL, "not sar", "router step, method topk");
        mome_distill_free(&d);
    }
    for (int i = 1; i < 3; i++) {
        mome_distiller d;
        mome_config c = student_cfg(moe, methods[i], 4);
        snprintf(c.teacher.placement, sizeof c.teacher.placement, "cache");
        char what[96];
        snprintf(what, sizeof what, "method %s with placement cache", methods[i]);
        EXPECT_ERROR(init_d(&d, &c), MOME_ECONFIG, "placement = cache", what);
        mome_distill_free(&d);
    }
    {
        mome_distiller d;
        mome_config c = student_cfg(moe, "ka", 0);
        c.kd.ka_n = 5;
        EXPECT_ERROR(init_d(&d, &c), MOME_ECONFIG, "ka_n = 5 exceeds the 4 experts", "ka_n larger than E");
        mome_distill_free(&d);
    }
    {
        mome_config c;
        mome_config_defaults(&c);
        EXPECT(mome_config_override(&c, "kd.method=best") == MOME_OK, "kd.method=best parses (a string)");
        EXPECT_ERROR(mome_config_validate(&c), MOME_ECONFIG, "topk|all|ka|sar", "kd.method=best fails validation");
        EXPECT_ERROR(mome_config_override(&c, "kd.ka_passes=65"), MOME_ECONFIG, "ka_passes", "kd.ka_passes=65");
        EXPECT_ERROR(mome_config_override(&c, "kd.ka_lambda=1.5"), MOME_ECONFIG, "ka_lambda", "kd.ka_lambda=1.5");
    }
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    mome_rng_seed(&rng, 2025);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_kd_methods.XXXXXX");
    MOME_CHECK(mkdtemp(tmpdir) != NULL, "mkdtemp failed");
    const size_t rows = (size_t)BL * SEQ;
    int32_t inp[BL * SEQ], tgt[BL * SEQ];
    for (size_t i = 0; i < rows; i++) {
        inp[i] = (int32_t)mome_rng_below(&rng, TV);
        tgt[i] = i % 5 == 4 ? -1 : (int32_t)mome_rng_below(&rng, TV);
    }
    float *z = mome_malloc(rows * TV * sizeof *z);
    fill_normal(z, rows * TV, 2.0f);

    test_multi_kernel();
    test_ka_all(inp, tgt, z);
    test_ka_average(inp, tgt, z);
    test_sar(inp, z);
    test_errors(inp, z);

    mome_free(z);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    printf("%s: %d failure(s)\n", failures ? "FAIL" : "ok", failures);
    MPI_Finalize();
    return failures ? 1 : 0;
}
