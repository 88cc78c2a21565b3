/* test_model_grad.c — whole-model checks of the dense GPT (model.c + loss.c) on a tiny configuration
 * (V=32, T=8, L=2, NH=2, C=16, F=64, B=2):
 *  - finite differences: for every parameter tensor, SAMPLES entries p are checked against
 *    (loss(p+h) - loss(p-h)) / 2h, loss = mean cross-entropy; the error is measured relative to the largest
 *    analytic gradient of the tensor: max|num - ana| / max|ana| <= FD_TOL;
 *  - determinism: forward + backward twice gives bit-identical logits, loss and gradients;
 *  - initialisation: the same seed gives the same weights with 1 and with 2 threads, with the documented
 *    standard deviations;
 *  - a shorter call (T=5) gives the same logits as the first 5 positions of a T=8 call (causality and the
 *    packing of activations for T < max_T);
 *  - the FLOP count matches the formula written out by hand.
 * Exits 1 on any failure.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mome/common.h"
#include "mome/loss.h"
#include "mome/model.h"
#include "mome/rng.h"

#include "check.h"
#include "gpt_loss.h"

#define B 2
#define T 8
#define SAMPLES 5
#define FD_H 1e-2f
#define FD_TOL 2e-3

static int32_t inputs[B * T], targets[B * T];

/* Mean cross-entropy; with `backward`, also accumulates gradients into m->grads. */
static double loss_of(mome_gpt *m, int backward) {
    const double loss = gpt_mean_xent(m, inputs, targets, B, T, backward);
    if (backward) mome_gpt_backward(m, inputs, B, T);
    return loss;
}

/* The loss alone, for the finite differences. */
static double loss_fwd(void *m) { return loss_of(m, 0); }

int main(void) {
    const mome_gpt_config cfg = {.vocab_size = 32, .seq_len = T, .n_layer = 2, .n_head = 2, .d_model = 16,
                                 .d_ff = 64};
    mome_gpt m;
    if (mome_gpt_init(&m, &cfg) || mome_gpt_reserve(&m, B, T)) {
        fprintf(stderr, "%s:%d: model init failed: %s\n", __FILE__, __LINE__, mome_error_message());
        return 1;
    }
    mome_rng rng;
    mome_rng_seed(&rng, 42);
    for (int i = 0; i < B * T; i++) {
        inputs[i] = (int32_t)mome_rng_below(&rng, (uint64_t)cfg.vocab_size);
        targets[i] = (int32_t)mome_rng_below(&rng, (uint64_t)cfg.vocab_size);
    }

    /* ---- initialisation: deterministic, thread-count independent, documented scales ---- */
    {
        float *p1 = mome_malloc(m.table.total * sizeof(float));
#ifdef _OPENMP
        const int nt = omp_get_max_threads();
        omp_set_num_threads(1);
#endif
        mome_gpt_init_weights(&m, 7);
        memcpy(p1, m.params, m.table.total * sizeof(float));
#ifdef _OPENMP
        omp_set_num_threads(nt > 1 ? nt : 2);
#endif
        mome_gpt_init_weights(&m, 7);
#ifdef _OPENMP
        omp_set_num_threads(nt);
#endif
        const int same = memcmp(p1, m.params, m.table.total * sizeof(float)) == 0;
        REPORT("init identical with 1 and 2 threads", same ? 0.0 : 1.0, 1.0, 0.0);
        mome_free(p1);
        const double want[MOME_GPT_NTENSORS] = {
            [MOME_GPT_WTE] = 0.02, [MOME_GPT_WPE] = 0.02, [MOME_GPT_QKVW] = 0.02, [MOME_GPT_FCW] = 0.02,
            [MOME_GPT_ATTPROJW] = 0.01, [MOME_GPT_FCPROJW] = 0.01, /* 0.02 / sqrt(2L), L = 2 */
        };
        for (int k = 0; k < m.table.n; k++) {
            const mome_tensor_info *ti = &m.table.t[k];
            const float *p = m.params + ti->offset;
            double s = 0.0, s2 = 0.0;
            for (size_t i = 0; i < ti->numel; i++) {
                s += p[i];
                s2 += (double)p[i] * p[i];
            }
            const double mean = s / ti->numel, sd = sqrt(fmax(s2 / ti->numel - mean * mean, 0.0));
            char label[96];
            if (want[k] > 0) {
                snprintf(label, sizeof label, "init std %s", ti->name);
                /* the sample std of n normal draws has relative spread 1/sqrt(2n): allow 4 of those */
                REPORT(label, fabs(sd - want[k]), want[k], 4.0 / sqrt(2.0 * (double)ti->numel));
            } else {
                const int is_w = k == MOME_GPT_LN1W || k == MOME_GPT_LN2W || k == MOME_GPT_LNFW;
                snprintf(label, sizeof label, "init %s == %d", ti->name, is_w);
                double err = 0.0;
                for (size_t i = 0; i < ti->numel; i++) err = fmax(err, fabs(p[i] - (is_w ? 1.0 : 0.0)));
                REPORT(label, err, 1.0, 0.0);
            }
        }
    }

    /* Larger, non-degenerate weights than the GPT-2 init so every gradient is well above float noise. */
    for (int k = 0; k < m.table.n; k++) {
        const mome_tensor_info *ti = &m.table.t[k];
        const int is_lnw = k == MOME_GPT_LN1W || k == MOME_GPT_LN2W || k == MOME_GPT_LNFW;
        const size_t fan_in = ti->ndim == 3 ? ti->shape[2] : (size_t)cfg.d_model;
        const float sd = ti->ndim == 3 ? 1.0f / sqrtf((float)fan_in) : (is_lnw ? 0.2f : 0.3f);
        for (size_t i = 0; i < ti->numel; i++)
            m.params[ti->offset + i] = (is_lnw ? 1.0f : 0.0f) + sd * mome_rng_normal(&rng);
    }

    /* ---- finite differences, SAMPLES entries of every tensor ---- */
    mome_gpt_zero_grad(&m);
    const double loss0 = loss_of(&m, 1);
    printf("tiny GPT loss %.6f (ln V = %.6f); fd h = %g, tolerance %g relative to max|grad| of the tensor\n",
           loss0, log((double)cfg.vocab_size), (double)FD_H, FD_TOL);
    float *grads1 = mome_malloc(m.table.total * sizeof(float));
    memcpy(grads1, m.grads, m.table.total * sizeof(float));
    for (int k = 0; k < m.table.n; k++) {
        const mome_tensor_info *ti = &m.table.t[k];
        const float *g = grads1 + ti->offset;
        const double scale = max_abs(g, ti->numel);
        const fd_result r = fd_central(loss_fwd, &m, m.params + ti->offset, g, ti->numel, FD_H, SAMPLES, &rng, NULL);
        char label[96];
        snprintf(label, sizeof label, "fd %s (%d samples)", ti->name, SAMPLES);
        REPORT(label, r.err, scale, FD_TOL);
        if (!(scale > 0.0)) {
            fprintf(stderr, "%s:%d: gradient of %s is identically zero\n", __FILE__, __LINE__, ti->name);
            failures++;
        }
    }

    /* ---- determinism: a second forward + backward is bit-identical ---- */
    {
        mome_gpt_zero_grad(&m);
        const double loss1 = loss_of(&m, 1);
        const int same_g = memcmp(grads1, m.grads, m.table.total * sizeof(float)) == 0;
        REPORT("second run: loss bit-identical", loss1 == loss0 ? 0.0 : fabs(loss1 - loss0) + 1e-300, 1.0, 0.0);
        REPORT("second run: gradients bit-identical", same_g ? 0.0 : 1.0, 1.0, 0.0);
        /* gradients accumulate: a second backward without zeroing doubles them */
        loss_of(&m, 1);
        double err = 0.0, scale = 0.0;
        for (size_t i = 0; i < m.table.total; i++) {
            err = fmax(err, fabs((double)m.grads[i] - 2.0 * grads1[i]));
            scale = fmax(scale, fabs(2.0 * grads1[i]));
        }
        REPORT("backward accumulates into grads", err, scale, 1e-6);
    }

    /* ---- a shorter sequence gives the first positions of the longer one ---- */
    {
        const int V = cfg.vocab_size, T2 = 5;
        mome_gpt_forward(&m, inputs, 1, T);
        float *full = mome_malloc((size_t)T * V * sizeof(float));
        memcpy(full, m.logits, (size_t)T * V * sizeof(float));
        mome_gpt_forward(&m, inputs, 1, T2);
        double err = 0.0, scale = 0.0;
        for (size_t i = 0; i < (size_t)T2 * V; i++) {
            err = fmax(err, fabs((double)m.logits[i] - full[i]));
            scale = fmax(scale, fabs((double)full[i]));
        }
        REPORT("T=5 logits == first 5 of T=8", err, scale, 1e-5);
        mome_free(full);
    }

    /* ---- FLOPs per token ---- */
    {
        const double L = 2, C = 16, F = 64, V = 32, Tt = 8;
        const double want = 2.0 * (L * (3 * C * C + C * C + 2 * C * F) + V * C) + 4.0 * L * C * (Tt + 1) / 2.0;
        REPORT("flops per token", fabs(mome_gpt_flops_per_token(&cfg, T) - want), want, 1e-12);
    }

    /* ---- config checks reject bad shapes ---- */
    {
        mome_gpt_config bad = cfg;
        bad.n_head = 3; /* 16 % 3 != 0 */
        const int rc = mome_gpt_config_check(&bad);
        REPORT("config check rejects C % NH != 0", rc == MOME_ECONFIG ? 0.0 : 1.0, 1.0, 0.0);
        printf("  (message: %s)\n", mome_error_message());
    }

    mome_free(grads1);
    mome_gpt_free(&m);
    return check_summary("test_model_grad");
}
