/* test_kernels.c — gradient checks for every kernel of kernels.h and loss.h, and the sgemm kernels against
 * their plain-loop references.
 *
 * Finite differences: each kernel's output is reduced to a scalar S = sum(out * R) with a fixed random R (in
 * float64), the backward kernel is fed dout = R, and selected inputs x are compared with the central difference
 * (S(x+h) - S(x-h)) / 2h. The kernels are float32, so the check is float32 with h = 1e-2 and the error is
 * measured relative to the gradient's scale: max|num - ana| / max|ana| <= FD_TOL. A wrong sign, a missing term
 * or a wrong index gives an error of order 1.
 * Also: the optimizer pieces (AdamW against its formula evaluated in float64, the schedule, the gradient norm),
 * which tests/scripts/torch_reference.sh checks again against torch.optim.AdamW.
 * Every check prints its measured error and tolerance; the program exits 1 if any check fails.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mome/common.h"
#include "mome/kernels.h"
#include "mome/loss.h"
#include "mome/optim.h"
#include "mome/rng.h"
#include "mome/tensor.h"

#include "check.h"

#define FD_H 1e-2f
#define FD_TOL 1e-3    /* finite-difference relative error (float32 evaluation; measured ~1e-5) */
#define REF_TOL 1e-5   /* sgemm kernel vs plain loop, relative to the largest reference value */
#define ACC_TOL 1e-6   /* second backward call doubles the gradient */
#define MAX_CHECKS 200 /* entries checked per tensor (all when the tensor is smaller) */

static mome_rng rng;

static float *rand_buf(size_t n, float scale) {
    float *p = mome_malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = scale * mome_rng_normal(&rng);
    return p;
}

static float *zeros(size_t n) { return mome_calloc(n, sizeof(float)); }

static double dot(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* Central differences of S = f(ctx) over entries of x against the analytic gradient ana (n entries). */
static void fd_check(const char *what, fd_scalar_fn f, void *ctx, float *x, const float *ana, size_t n,
                     const char *file, int line) {
    const fd_result r = fd_central(f, ctx, x, ana, n, FD_H, MAX_CHECKS, &rng, NULL);
    char label[128];
    snprintf(label, sizeof label, "fd %s (%zu of %zu)", what, r.checks, n);
    check_report(label, r.err, max_abs(ana, n), FD_TOL, file, line);
}
#define FD_CHECK(what, f, ctx, x, ana, n) fd_check(what, f, ctx, x, ana, n, __FILE__, __LINE__)

/* ------------------------------------------------------------------------------------------------ encoder */

typedef struct {
    int B, T, C, V;
    int32_t *inp;
    float *wte, *wpe, *out, *R;
} enc_ctx;

static double enc_loss(void *p) {
    enc_ctx *c = p;
    mome_encoder_forward(c->out, c->inp, c->wte, c->wpe, c->B, c->T, c->C);
    return dot(c->out, c->R, (size_t)c->B * c->T * c->C);
}

static void test_encoder(void) {
    enc_ctx c = {.B = 3, .T = 5, .C = 70, .V = 7}; /* V < B*T so tokens repeat; C > 64 spans two column blocks */
    const size_t BT = (size_t)c.B * c.T;
    c.inp = mome_malloc(BT * sizeof *c.inp);
    for (size_t i = 0; i < BT; i++) c.inp[i] = (int32_t)mome_rng_below(&rng, (uint64_t)c.V);
    c.wte = rand_buf((size_t)c.V * c.C, 1.0f);
    c.wpe = rand_buf((size_t)c.T * c.C, 1.0f);
    c.out = zeros(BT * c.C);
    c.R = rand_buf(BT * c.C, 1.0f);
    float *dwte = zeros((size_t)c.V * c.C), *dwpe = zeros((size_t)c.T * c.C);
    mome_encoder_backward(dwte, dwpe, c.R, c.inp, c.B, c.T, c.C);
    FD_CHECK("encoder dwte", enc_loss, &c, c.wte, dwte, (size_t)c.V * c.C);
    FD_CHECK("encoder dwpe", enc_loss, &c, c.wpe, dwpe, (size_t)c.T * c.C);
    mome_free(c.inp);
    mome_free(c.wte);
    mome_free(c.wpe);
    mome_free(c.out);
    mome_free(c.R);
    mome_free(dwte);
    mome_free(dwpe);
}

/* ---------------------------------------------------------------------------------------------- layernorm */

typedef struct {
    size_t N;
    int C;
    float *inp, *w, *b, *out, *mean, *rstd, *R;
} ln_ctx;

static double ln_loss(void *p) {
    ln_ctx *c = p;
    mome_layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->N, c->C);
    return dot(c->out, c->R, c->N * c->C);
}

static void test_layernorm(void) {
    ln_ctx c = {.N = 6, .C = 72};
    const size_t n = c.N * c.C;
    c.inp = rand_buf(n, 1.0f);
    for (size_t i = 0; i < n; i++) c.inp[i] += 0.5f; /* non-zero mean */
    c.w = rand_buf((size_t)c.C, 1.0f);
    c.b = rand_buf((size_t)c.C, 1.0f);
    c.out = zeros(n);
    c.mean = zeros(c.N);
    c.rstd = zeros(c.N);
    c.R = rand_buf(n, 1.0f);
    float *dinp = zeros(n), *dw = zeros((size_t)c.C), *db = zeros((size_t)c.C);
    ln_loss(&c);
    mome_layernorm_backward(dinp, dw, db, c.R, c.inp, c.w, c.mean, c.rstd, c.N, c.C);
    FD_CHECK("layernorm dinp", ln_loss, &c, c.inp, dinp, n);
    FD_CHECK("layernorm dw", ln_loss, &c, c.w, dw, (size_t)c.C);
    FD_CHECK("layernorm db", ln_loss, &c, c.b, db, (size_t)c.C);
    mome_free(c.inp);
    mome_free(c.w);
    mome_free(c.b);
    mome_free(c.out);
    mome_free(c.mean);
    mome_free(c.rstd);
    mome_free(c.R);
    mome_free(dinp);
    mome_free(dw);
    mome_free(db);
}

/* ------------------------------------------------------------------------------------------------- matmul */

typedef struct {
    size_t N;
    int IC, OC;
    float *inp, *w, *bias, *out, *R;
} mm_ctx;

static double mm_loss(void *p) {
    mm_ctx *c = p;
    mome_matmul_forward(c->out, c->inp, c->w, c->bias, c->N, c->IC, c->OC);
    return dot(c->out, c->R, c->N * c->OC);
}

static void test_matmul(void) {
    mm_ctx c = {.N = 37, .IC = 29, .OC = 67};
    const size_t ni = c.N * c.IC, nw = (size_t)c.OC * c.IC, no = c.N * c.OC;
    c.inp = rand_buf(ni, 1.0f);
    c.w = rand_buf(nw, 1.0f);
    c.bias = rand_buf((size_t)c.OC, 1.0f);
    c.out = zeros(no);
    c.R = rand_buf(no, 1.0f);
    float *dinp = zeros(ni), *dw = zeros(nw), *db = zeros((size_t)c.OC);
    mome_matmul_backward(dinp, dw, db, c.R, c.inp, c.w, c.N, c.IC, c.OC);
    FD_CHECK("matmul dinp", mm_loss, &c, c.inp, dinp, ni);
    FD_CHECK("matmul dw", mm_loss, &c, c.w, dw, nw);
    FD_CHECK("matmul dbias", mm_loss, &c, c.bias, db, (size_t)c.OC);

    /* sgemm against the plain loops, with and without bias */
    float *ref = zeros(no), *rdinp = zeros(ni), *rdw = zeros(nw), *rdb = zeros((size_t)c.OC);
    mome_matmul_forward(c.out, c.inp, c.w, c.bias, c.N, c.IC, c.OC);
    mome_matmul_forward_ref(ref, c.inp, c.w, c.bias, c.N, c.IC, c.OC);
    COMPARE("matmul forward sgemm vs ref", c.out, ref, no, REF_TOL);
    mome_matmul_forward(c.out, c.inp, c.w, NULL, c.N, c.IC, c.OC);
    mome_matmul_forward_ref(ref, c.inp, c.w, NULL, c.N, c.IC, c.OC);
    COMPARE("matmul forward (no bias) sgemm vs ref", c.out, ref, no, REF_TOL);
    mome_matmul_backward_ref(rdinp, rdw, rdb, c.R, c.inp, c.w, c.N, c.IC, c.OC);
    COMPARE("matmul backward dinp sgemm vs ref", dinp, rdinp, ni, REF_TOL);
    COMPARE("matmul backward dw sgemm vs ref", dw, rdw, nw, REF_TOL);
    COMPARE("matmul backward dbias sgemm vs ref", db, rdb, (size_t)c.OC, REF_TOL);

    /* backward accumulates: a second call doubles the gradients */
    float *twice = mome_malloc(nw * sizeof *twice);
    for (size_t i = 0; i < nw; i++) twice[i] = 2.0f * dw[i];
    float *twice_b = mome_malloc((size_t)c.OC * sizeof *twice_b);
    for (int i = 0; i < c.OC; i++) twice_b[i] = 2.0f * db[i];
    mome_matmul_backward(NULL, dw, db, c.R, c.inp, c.w, c.N, c.IC, c.OC);
    COMPARE("matmul backward accumulates dw", dw, twice, nw, ACC_TOL);
    COMPARE("matmul backward accumulates dbias", db, twice_b, (size_t)c.OC, ACC_TOL);

    mome_free(twice);
    mome_free(twice_b);
    mome_free(ref);
    mome_free(rdinp);
    mome_free(rdw);
    mome_free(rdb);
    mome_free(c.inp);
    mome_free(c.w);
    mome_free(c.bias);
    mome_free(c.out);
    mome_free(c.R);
    mome_free(dinp);
    mome_free(dw);
    mome_free(db);
}

/* ---------------------------------------------------------------------------------------------- attention */

typedef struct {
    int B, T, C, NH;
    float *qkv, *out, *att, *R;
} att_ctx;

static double att_loss(void *p) {
    att_ctx *c = p;
    mome_attention_forward(c->out, c->att, c->qkv, c->B, c->T, c->C, c->NH);
    return dot(c->out, c->R, (size_t)c->B * c->T * c->C);
}

/* The product-based attention against the plain loops, forward and backward, on B2 sequences of T2 positions. */
static void attention_vs_ref(int B2, int T2, int C2, int NH2) {
    const size_t nq2 = (size_t)B2 * T2 * 3 * C2, no2 = (size_t)B2 * T2 * C2, na2 = (size_t)B2 * NH2 * T2 * T2;
    float *qkv2 = rand_buf(nq2, 1.5f), *dout2 = rand_buf(no2, 1.0f);
    float *o_s = zeros(no2), *o_r = zeros(no2), *a_s = zeros(na2), *a_r = zeros(na2);
    float *d_s = zeros(nq2), *d_r = zeros(nq2), *scr = zeros((size_t)4 * T2 * T2);
    mome_attention_forward(o_s, a_s, qkv2, B2, T2, C2, NH2);
    mome_attention_forward_ref(o_r, a_r, qkv2, B2, T2, C2, NH2);
    COMPARE("attention forward out sgemm vs ref", o_s, o_r, no2, REF_TOL);
    COMPARE("attention forward att sgemm vs ref", a_s, a_r, na2, REF_TOL);
    mome_attention_backward(d_s, scr, 4, dout2, qkv2, a_s, B2, T2, C2, NH2);
    mome_attention_backward_ref(d_r, dout2, qkv2, a_r, B2, T2, C2, NH2);
    COMPARE("attention backward dqkv sgemm vs ref", d_s, d_r, nq2, REF_TOL);
    /* again over stale values, on one thread (one scratch area): overwritten, with the same bits */
    float *first = mome_malloc(nq2 * sizeof *first);
    memcpy(first, d_s, nq2 * sizeof *first);
    for (size_t i = 0; i < nq2; i++) d_s[i] = 1e3f;
    mome_attention_backward(d_s, scr, 1, dout2, qkv2, a_s, B2, T2, C2, NH2);
    CHECK(memcmp(d_s, first, nq2 * sizeof *d_s) == 0);

    mome_free(first);
    mome_free(qkv2);
    mome_free(dout2);
    mome_free(o_s);
    mome_free(o_r);
    mome_free(a_s);
    mome_free(a_r);
    mome_free(d_s);
    mome_free(d_r);
    mome_free(scr);
}

static void test_attention(void) {
    att_ctx c = {.B = 2, .T = 7, .C = 12, .NH = 3};
    const size_t nq = (size_t)c.B * c.T * 3 * c.C, no = (size_t)c.B * c.T * c.C;
    const size_t na = (size_t)c.B * c.NH * c.T * c.T;
    c.qkv = rand_buf(nq, 1.0f);
    c.out = zeros(no);
    c.att = zeros(na);
    c.R = rand_buf(no, 1.0f);
    const int n_scratch = 2;
    float *scratch = zeros((size_t)n_scratch * c.T * c.T);
    float *dqkv = zeros(nq);
    att_loss(&c);
    mome_attention_backward(dqkv, scratch, n_scratch, c.R, c.qkv, c.att, c.B, c.T, c.C, c.NH);
    FD_CHECK("attention dqkv", att_loss, &c, c.qkv, dqkv, nq);

    /* causality: the output at t must not depend on inputs after t */
    {
        float *out0 = mome_malloc(no * sizeof *out0);
        mome_attention_forward(out0, c.att, c.qkv, c.B, c.T, c.C, c.NH);
        const int t_last = c.T - 1;
        for (int b = 0; b < c.B; b++)
            for (int i = 0; i < 3 * c.C; i++) c.qkv[((size_t)b * c.T + t_last) * 3 * c.C + i] += 1.0f;
        mome_attention_forward(c.out, c.att, c.qkv, c.B, c.T, c.C, c.NH);
        double err = 0.0;
        for (int b = 0; b < c.B; b++)
            for (int t = 0; t < t_last; t++)
                for (int i = 0; i < c.C; i++) {
                    const size_t k = ((size_t)b * c.T + t) * c.C + i;
                    err = fmax(err, fabs((double)c.out[k] - out0[k]));
                }
        REPORT("attention causal (change at T-1, err at t<T-1)", err, 1.0, 0.0);
        for (int b = 0; b < c.B; b++)
            for (int i = 0; i < 3 * c.C; i++) c.qkv[((size_t)b * c.T + t_last) * 3 * c.C + i] -= 1.0f;
        mome_free(out0);
    }

    /* sizes that are not multiples of anything (products of 13 rows: cblas_sgemm), and a sequence long enough for
     * mome's own kernel, where the causal products skip work (77 rows, head size 64) */
    attention_vs_ref(2, 13, 24, 3);
    attention_vs_ref(1, 77, 128, 2);
    mome_free(scratch);
    mome_free(dqkv);
    mome_free(c.qkv);
    mome_free(c.out);
    mome_free(c.att);
    mome_free(c.R);
}

/* --------------------------------------------------------------------------------------- GELU and residual */

typedef struct {
    size_t n;
    float *inp, *inp2, *out, *R;
} ew_ctx;

static double gelu_loss(void *p) {
    ew_ctx *c = p;
    mome_gelu_forward(c->out, c->inp, c->n);
    return dot(c->out, c->R, c->n);
}

static double residual_loss(void *p) {
    ew_ctx *c = p;
    mome_residual_forward(c->out, c->inp, c->inp2, c->n);
    return dot(c->out, c->R, c->n);
}

static void test_elementwise(void) {
    ew_ctx c = {.n = 300};
    c.inp = rand_buf(c.n, 2.0f);
    c.inp2 = rand_buf(c.n, 1.0f);
    c.out = zeros(c.n);
    c.R = rand_buf(c.n, 1.0f);
    float *d1 = zeros(c.n), *d2 = zeros(c.n);
    mome_gelu_backward(d1, c.inp, c.R, c.n);
    FD_CHECK("gelu dinp", gelu_loss, &c, c.inp, d1, c.n);
    /* spot values of PyTorch's F.gelu(x, approximate='tanh') */
    const float xs[3] = {-1.0f, 0.5f, 3.0f};
    const double want[3] = {-0.15880800939172324, 0.34571400982514394, 2.996362607918227};
    float got[3];
    mome_gelu_forward(got, xs, 3);
    double err = 0.0;
    for (int i = 0; i < 3; i++) err = fmax(err, fabs(got[i] - want[i]));
    REPORT("gelu forward vs tanh-GELU values", err, 1.0, 1e-6);

    memset(d1, 0, c.n * sizeof *d1);
    mome_residual_backward(d1, d2, c.R, c.n);
    FD_CHECK("residual da", residual_loss, &c, c.inp, d1, c.n);
    FD_CHECK("residual db", residual_loss, &c, c.inp2, d2, c.n);
    mome_free(c.inp);
    mome_free(c.inp2);
    mome_free(c.out);
    mome_free(c.R);
    mome_free(d1);
    mome_free(d2);
}

/* ------------------------------------------------------------------------------------------ cross-entropy */

typedef struct {
    size_t N;
    int V;
    float *logits, *tmp;
    int32_t *targets;
} xent_ctx;

static double xent_loss(void *p) {
    xent_ctx *c = p;
    size_t nv;
    return mome_xent_forward_backward(c->logits, c->targets, c->N, c->V, 0.0f, &nv);
}

static void test_xent(void) {
    xent_ctx c = {.N = 9, .V = 33};
    const size_t n = c.N * (size_t)c.V;
    c.logits = rand_buf(n, 2.0f);
    c.targets = mome_malloc(c.N * sizeof *c.targets);
    for (size_t i = 0; i < c.N; i++) c.targets[i] = (int32_t)mome_rng_below(&rng, (uint64_t)c.V);
    c.targets[4] = -1; /* ignored row */
    float *grad = mome_malloc(n * sizeof *grad);
    memcpy(grad, c.logits, n * sizeof *grad);
    size_t nv = 0;
    const float scale = 0.5f;
    const double loss = mome_xent_forward_backward(grad, c.targets, c.N, c.V, scale, &nv);
    const double loss0 = xent_loss(&c);
    REPORT("xent loss equal with and without gradient", fabs(loss - loss0), fabs(loss0), 1e-12);
    REPORT("xent n_valid (1 ignored row of 9)", fabs((double)nv - 8.0), 1.0, 0.0);
    for (size_t i = 0; i < n; i++) grad[i] /= scale;
    FD_CHECK("xent dlogits", xent_loss, &c, c.logits, grad, n);
    REPORT("xent ignored row has zero gradient", max_abs(grad + 4 * (size_t)c.V, (size_t)c.V), 1.0, 0.0);

    /* loss of one row against a float64 log-sum-exp */
    {
        const float *row = c.logits;
        double mx = -INFINITY, s = 0.0;
        for (int v = 0; v < c.V; v++) mx = fmax(mx, row[v]);
        for (int v = 0; v < c.V; v++) s += exp(row[v] - mx);
        const double want = log(s) + mx - row[c.targets[0]];
        const double got = mome_xent_forward_backward(c.logits, c.targets, 1, c.V, 0.0f, &nv);
        REPORT("xent row 0 vs float64 log-sum-exp", fabs(got - want), fabs(want), 1e-6);
    }

    /* stability: a shift of 1e4 leaves the loss unchanged and finite */
    {
        float *shifted = mome_malloc(n * sizeof *shifted);
        for (size_t i = 0; i < n; i++) shifted[i] = c.logits[i] + 1e4f;
        const double l2 = mome_xent_forward_backward(shifted, c.targets, c.N, c.V, 1.0f, &nv);
        /* the shift rounds logits to float spacing ~1e-3 at 1e4; allow for that */
        REPORT("xent stable under +1e4 shift", fabs(l2 - loss0), fabs(loss0), 5e-3);
        REPORT("xent gradient finite under +1e4 shift", isfinite(max_abs(shifted, n)) ? 0.0 : 1.0, 1.0, 0.0);
        mome_free(shifted);
    }
    mome_free(grad);
    mome_free(c.logits);
    mome_free(c.targets);
}

/* ------------------------------------------------------------------------------------------------ optimizer */

static void test_optim(void) {
    mome_tensor_table tab = {0};
    const size_t s1[2] = {5, 7}, s2[1] = {9};
    mome_tensor_table_add(&tab, "w", 2, s1, 1);
    mome_tensor_table_add(&tab, "b", 1, s2, 0);
    const mome_adamw_config cfg = {.lr = 1e-2f, .min_lr = 1e-3f, .warmup_steps = 3, .total_steps = 13,
                                   .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                                   .grad_clip = 1.0f};
    mome_adamw opt;
    if (mome_adamw_init(&opt, &cfg, tab.total)) {
        fprintf(stderr, "%s:%d: adamw init: %s\n", __FILE__, __LINE__, mome_error_message());
        failures++;
        return;
    }
    float *p = rand_buf(tab.total, 1.0f);
    double *pd = mome_malloc(tab.total * sizeof *pd), *md = mome_calloc(tab.total, sizeof *md);
    double *vd = mome_calloc(tab.total, sizeof *vd);
    for (size_t i = 0; i < tab.total; i++) pd[i] = p[i];
    const float gscale = 0.7f;
    for (long step = 0; step < 3; step++) {
        float *g = rand_buf(tab.total, 1.0f);
        const double lr = mome_lr_at(&cfg, step);
        mome_adamw_update(&opt, &tab, p, g, (float)lr, gscale);
        const double bc1 = 1.0 - pow(0.9, step + 1.0), bc2 = 1.0 - pow(0.95, step + 1.0);
        for (int k = 0; k < tab.n; k++)
            for (size_t i = tab.t[k].offset; i < tab.t[k].offset + tab.t[k].numel; i++) {
                const double gi = (double)g[i] * gscale;
                if (tab.t[k].decay) pd[i] *= 1.0 - lr * 0.1;
                md[i] = 0.9 * md[i] + 0.1 * gi;
                vd[i] = 0.95 * vd[i] + 0.05 * gi * gi;
                pd[i] -= lr / bc1 * md[i] / (sqrt(vd[i]) / sqrt(bc2) + 1e-8);
            }
        mome_free(g);
    }
    double err = 0.0, scale = 0.0;
    for (int k = 0; k < tab.n; k++)
        for (size_t i = tab.t[k].offset; i < tab.t[k].offset + tab.t[k].numel; i++) {
            err = fmax(err, fabs(p[i] - pd[i]));
            scale = fmax(scale, fabs(pd[i]));
        }
    REPORT("adamw 3 steps vs float64 formula", err, scale, 1e-6);
    REPORT("adamw step counter", fabs((double)opt.step - 3.0), 1.0, 0.0);

    /* schedule: warmup lr/3, 2lr/3, lr; cosine midpoint; min_lr at and after total_steps */
    const double want[6][2] = {{0, 1e-2 / 3}, {1, 2e-2 / 3}, {2, 1e-2}, {3, 1e-2}, {8, 5.5e-3}, {13, 1e-3}};
    double lerr = 0.0;
    for (int i = 0; i < 6; i++) lerr = fmax(lerr, fabs(mome_lr_at(&cfg, (long)want[i][0]) - want[i][1]));
    lerr = fmax(lerr, fabs(mome_lr_at(&cfg, 100) - 1e-3));
    REPORT("lr schedule (warmup, cosine, floor)", lerr, 1e-2, 1e-6);

    /* global norm in float64 */
    const size_t n = 100003;
    float *g = rand_buf(n, 1.0f);
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    REPORT("grad norm vs float64", fabs(mome_grad_norm(g, n) - sqrt(s)), sqrt(s), 1e-12);
    mome_free(g);
    mome_free(p);
    mome_free(pd);
    mome_free(md);
    mome_free(vd);
    mome_adamw_free(&opt);
}

int main(void) {
    mome_rng_seed(&rng, 1234);
    printf("finite differences: h = %g, tolerance on max|num - ana| / max|ana| = %g\n", (double)FD_H, FD_TOL);
    test_encoder();
    test_layernorm();
    test_matmul();
    test_attention();
    test_elementwise();
    test_xent();
    test_optim();
    return check_summary("test_kernels");
}
