/* kd.c — knowledge distillation (see kd.h): the fused KD + CE loss for full and top-k teacher targets, the
 * top-k builder, adaptive / fixed alpha with checkpointable state, and the combined / alternating weights.
 *
 * The fused loss works one row at a time. Each exponential of a row is computed once, with the vectorised
 * vm_expf of vmath.h, into a per-thread V-sized scratch: e1 = exp(z - max z) for the CE, eq = exp((z - max z) / T)
 * for the student at T, ep = exp((t - max t) / T) for a full teacher; the probabilities are these times the
 * reciprocal of their float64 sum (log-probabilities are formed from the logits, never as log of a probability).
 * The KL and CE are summed in float64 (in VM_LANES fixed lanes), then the row of logits is overwritten with the
 * gradient. Rows are split into a fixed number of chunks whose partial sums are added in order, so the sums are
 * the same for any thread count. Where the teacher targets come from (a teacher forward, a cache, MPI) and how
 * the losses are normalised and logged is left to the trainer.
 *
 * Gradients with respect to the logits z (s = z / T, q = softmax(s), loss term w_kd * T^2 * KL):
 *   forward, full:  T * (q_j - p_j)
 *   reverse, full:  T * q_j * (log q_j - log p_j - KL)
 *   forward, top-k: T * (Psum * q_j - P_j)               j in the top-k
 *                   T * (Psum * q_j - P_tail * q_j / Q_tail)  j elsewhere     (Psum = sum of teacher buckets)
 *   reverse, top-k: T * q_j * (g_b(j) - KL), g_b = log Q_b - log P_b for the bucket b(j) that holds j.
 * The top-k gradients are written for every j with the "elsewhere" (tail) formula in one vectorised pass, and
 * then the k top-k entries are overwritten with their own formula.
 */
#include "mome/kd.h"

#include <math.h>
#include <string.h>

#include "mome/common.h"
#include "vmath.h"

#define KD_CHUNKS 256

/* Tail masses (top-k loss: the student's, top-k builder: the teacher's) are summed directly over the non-top-k
 * ids from the exponentials relative to the row max. When that sum is at least e^KD_TAIL_DIRECT_MIN, the terms
 * that vm_expf flushes to 0 (each below 1.2e-38, at most V of them) change it by less than
 * V * 1.2e-38 / e^-40 = V * 3e-21 relative. A smaller tail is summed again relative to its own max. */
#define KD_TAIL_DIRECT_MIN -40.0f

/* The teacher of one row: full log-probs (lp, V) or top-k buckets (ids, lp (k), tail). */
typedef struct {
    const float *tlogits; /* (V) full teacher logits, or NULL */
    const int32_t *ids;   /* (k) top-k ids, or NULL */
    const float *tlp;     /* (k) top-k log-probs */
    float tail;
    int k;
} row_teacher;

typedef struct {
    mome_kd_direction dir;
    float T, w_ce, w_kd, grad_scale;
    int has_teacher;
} kd_opts;

/* Per-thread scratch of the fused loss and of the top-k builder: e1, eq, ep (V each, 64-byte aligned), fix (V: the
 * top-k entries of the gradient, kept aside while the tail pass overwrites the row; the builder's heap) and mask
 * (V, all zero between rows).
 * It is cached in thread-local storage and only reallocated when V grows: OpenMP keeps its worker threads
 * between parallel regions, so after the first step no call allocates. Each thread that ever ran the loss keeps
 * one buffer (4 * 4V + V bytes, 68 KiB at V = 4096) until it exits; a thread that exits before the process does
 * leaks it, which OpenMP pools do not do. */
typedef struct {
    float *e1, *eq, *ep, *fix;
    unsigned char *mask;
    float *orig, *pass; /* (V each) several target sets only: the row's logits, one pass's gradient; else NULL */
} kd_scratch;

static _Thread_local float *kd_tls_buf = NULL;
static _Thread_local unsigned char *kd_tls_mask = NULL;
static _Thread_local size_t kd_tls_cap = 0; /* floats per buffer (V rounded up to 16) */
/* The two extra rows of the multi-target loss (2 * 4V bytes more per thread), allocated on its first use. */
static _Thread_local float *kd_tls_multi = NULL;
static _Thread_local size_t kd_tls_multi_cap = 0;

static kd_scratch kd_scratch_get(int V, int multi) {
    const size_t Vp = ((size_t)V + 15) & ~(size_t)15; /* keeps each buffer 64-byte aligned */
    if (Vp > kd_tls_cap) {
        mome_free(kd_tls_buf);
        mome_free(kd_tls_mask);
        kd_tls_buf = mome_malloc(4 * Vp * sizeof *kd_tls_buf);
        kd_tls_mask = mome_calloc(Vp, 1);
        kd_tls_cap = Vp;
    }
    const size_t c = kd_tls_cap;
    kd_scratch s = {.e1 = kd_tls_buf, .eq = kd_tls_buf + c, .ep = kd_tls_buf + 2 * c, .fix = kd_tls_buf + 3 * c,
                    .mask = kd_tls_mask};
    if (multi) {
        if (Vp > kd_tls_multi_cap) {
            mome_free(kd_tls_multi);
            kd_tls_multi = mome_malloc(2 * Vp * sizeof *kd_tls_multi);
            kd_tls_multi_cap = Vp;
        }
        s.orig = kd_tls_multi;
        s.pass = kd_tls_multi + kd_tls_multi_cap;
    }
    return s;
}

/* ---- row kernels: plain loops over the row that GCC vectorises (restrict: the buffers never overlap) */

/* on ? x : +0.0f as a bit mask. A plain select feeding a float64 conversion is folded into a select of two
 * conversions, which GCC does not if-convert under -ftrapping-math (see vm_exp_sum in vmath.h): the loop would
 * stay scalar. */
static inline float keep_if(int on, float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    b &= -(uint32_t)(on != 0);
    memcpy(&x, &b, sizeof x);
    return x;
}

/* sum over v of w_v * (la_v - lb_v) with w_v = w[v] * ws, la_v = (a[v] - ash) * invT - alse and
 * lb_v = (b[v] - bsh) * invT - blse (log-probabilities formed as in the scalar formula); terms with w_v = 0 are
 * skipped (0 * log 0). float64 in VM_LANES fixed lanes. */
static inline double kl_terms(const float *restrict w, float ws, const float *restrict a, float ash, float alse,
                              const float *restrict b, float bsh, float blse, float invT, int n) {
    double acc[VM_LANES] = {0};
    int i = 0;
    for (; i + VM_LANES <= n; i += VM_LANES)
        for (int j = 0; j < VM_LANES; j++) {
            const float wv = w[i + j] * ws;
            const float d = ((a[i + j] - ash) * invT - alse) - ((b[i + j] - bsh) * invT - blse);
            const int on = wv > 0.0f;
            acc[j] += (double)keep_if(on, wv) * (double)keep_if(on, d);
        }
    double s = 0.0;
    for (; i < n; i++) {
        const float wv = w[i] * ws;
        const float d = ((a[i] - ash) * invT - alse) - ((b[i] - bsh) * invT - blse);
        const int on = wv > 0.0f;
        s += (double)keep_if(on, wv) * (double)keep_if(on, d);
    }
    for (int j = 0; j < VM_LANES; j++) s += acc[j];
    return s;
}

/* Largest x[v] with mask[v] == 0 (-inf if none). */
static inline float masked_max(const float *restrict x, const unsigned char *restrict mask, int n) {
    float acc[VM_LANES];
    for (int j = 0; j < VM_LANES; j++) acc[j] = -INFINITY;
    int i = 0;
    for (; i + VM_LANES <= n; i += VM_LANES)
        for (int j = 0; j < VM_LANES; j++) acc[j] = !mask[i + j] && x[i + j] > acc[j] ? x[i + j] : acc[j];
    float m = -INFINITY;
    for (; i < n; i++) m = !mask[i] && x[i] > m ? x[i] : m;
    for (int j = 0; j < VM_LANES; j++) m = acc[j] > m ? acc[j] : m;
    return m;
}

/* Sum of x[v] with mask[v] == 0, float64 in VM_LANES fixed lanes (a direct sum: no 1 - sum cancellation). */
static inline double masked_sum(const float *restrict x, const unsigned char *restrict mask, int n) {
    double acc[VM_LANES] = {0};
    int i = 0;
    for (; i + VM_LANES <= n; i += VM_LANES)
        for (int j = 0; j < VM_LANES; j++) acc[j] += (double)keep_if(!mask[i + j], x[i + j]);
    double s = 0.0;
    for (; i < n; i++) s += (double)keep_if(!mask[i], x[i]);
    for (int j = 0; j < VM_LANES; j++) s += acc[j];
    return s;
}

/* g[v] = a * (cq * q[v] - cp * p[v]) (forward KL, full: cq = 1 / sum q; top-k tail: cq = Psum / sum q). */
static inline void grad_diff(float *restrict g, float a, const float *restrict q, float cq, const float *restrict p,
                             float cp, int n) {
    for (int v = 0; v < n; v++) g[v] = a * (q[v] * cq - p[v] * cp);
}

/* grad_diff and then grad_add_ce, in one pass: g[v] = a * (q[v] * cq - p[v] * cp) + ace * (e1[v] * i1). */
static inline void grad_diff_ce(float *restrict g, float a, const float *restrict q, float cq,
                                const float *restrict p, float cp, float ace, const float *restrict e1, float i1,
                                int n) {
    for (int v = 0; v < n; v++) {
        const float kd = a * (q[v] * cq - p[v] * cp);
        g[v] = kd + ace * (e1[v] * i1);
    }
}

/* out[v] = x[v]^2, and their sum in float64 lanes (as vm_exp_sum sums). */
static inline double square_sum(float *restrict out, const float *restrict x, int n) {
    for (int v = 0; v < n; v++) out[v] = x[v] * x[v];
    return vm_sum(out, n);
}

/* Reverse KL, full: g (the row) holds z in and a * q_v * (lq_v - lp_v - kl) out, q_v = eq[v] * iq. */
static inline void grad_rev_full(float *restrict g, float a, const float *restrict eq, float iq, float mx,
                                 float lseT, const float *restrict t, float tm, float lset, float invT, float kl,
                                 int n) {
    for (int v = 0; v < n; v++) {
        const float q = eq[v] * iq;
        const float lq = (g[v] - mx) * invT - lseT, lp = (t[v] - tm) * invT - lset;
        g[v] = a * (q * (lq - lp - kl));
    }
}

/* Reverse KL, top-k tail: g[v] = a * q_v * c with c = g_tail - KL. */
static inline void grad_scale_q(float *restrict g, float a, const float *restrict eq, float iq, float c, int n) {
    for (int v = 0; v < n; v++) g[v] = a * ((eq[v] * iq) * c);
}

/* g[v] = a * e1[v] * i1: a * softmax(z), the CE gradient without the one-hot */
static inline void grad_ce(float *restrict g, float a, const float *restrict e1, float i1, int n) {
    for (int v = 0; v < n; v++) g[v] = a * (e1[v] * i1);
}

/* g[v] += a * e1[v] * i1: the CE part, a * softmax(z) */
static inline void grad_add_ce(float *restrict g, float a, const float *restrict e1, float i1, int n) {
    for (int v = 0; v < n; v++) g[v] += a * (e1[v] * i1);
}

/* Loss and gradient of one row. row (V): logits in, gradient out (if grad_scale != 0). s: the thread's scratch
 * (mask all zero, left zeroed). Adds the CE (if tg >= 0) and the KL to *ce, *kl. */
static void kd_row(float *row, double *ce, double *kl, const row_teacher *te, int32_t tg, int V, const kd_opts *o,
                   const kd_scratch *s, size_t r) {
    const float T = o->T, invT = 1.0f / o->T;
    const int grad = o->grad_scale != 0.0f;
    if (!o->has_teacher && tg < 0) {
        if (grad) memset(row, 0, (size_t)V * sizeof *row);
        return;
    }
    const float mx = vm_max(row, V);

    /* CE at temperature 1: e1 = exp(z - max). At T = 2, the usual temperature, e1 is the square of the student's
     * tempered eq = exp((z - max) / 2): one exponential per logit instead of two (over [-80, 0], within 2.8 ulp of
     * exp in float64; vm_expf itself is within 1) */
    double s1 = 1.0, sT = 0.0;
    const int square = tg >= 0 && o->has_teacher && invT == 0.5f;
    if (tg >= 0) {
        if (square) {
            sT = vm_exp_sum(s->eq, row, mx, invT, V);
            s1 = square_sum(s->e1, s->eq, V);
        } else {
            s1 = vm_exp_sum(s->e1, row, mx, 1.0f, V);
        }
        *ce += log(s1) - (double)(row[tg] - mx);
    }
    const float i1 = (float)(1.0 / s1);
    if (!o->has_teacher) {
        if (grad) {
            const float a = o->grad_scale * o->w_ce;
            grad_ce(row, a, s->e1, i1, V);
            row[tg] -= a;
        }
        return;
    }

    /* student at temperature T: eq = exp((z - max) / T), q = eq / sT, log q = (z - max) / T - log sT. At T = 1
     * this is e1 (same expression, same bits). */
    const float *eq = s->eq;
    if (tg >= 0 && invT == 1.0f) {
        eq = s->e1;
        sT = s1;
    } else if (!square) {
        sT = vm_exp_sum(s->eq, row, mx, invT, V);
    }
    const float lseT = (float)log(sT), iq = (float)(1.0 / sT);

    const float a_ce = tg >= 0 ? o->grad_scale * o->w_ce : 0.0f;
    const float a_kd = o->grad_scale * o->w_kd * T;
    double klr = 0.0;
    if (te->tlogits) {
        /* full teacher: ep = exp((t - tmax) / T), p = ep / st, log p = (t - tmax) / T - log st */
        const float *t = te->tlogits;
        const float tm = vm_max(t, V);
        const double st = vm_exp_sum(s->ep, t, tm, invT, V);
        const float lset = (float)log(st), ip = (float)(1.0 / st);
        if (o->dir == MOME_KD_FORWARD)
            klr = kl_terms(s->ep, ip, t, tm, lset, row, mx, lseT, invT, V);
        else
            klr = kl_terms(eq, iq, row, mx, lseT, t, tm, lset, invT, V);
        *kl += klr;
        if (grad) {
            if (o->dir == MOME_KD_FORWARD && a_ce != 0.0f) { /* with the CE part in the same pass */
                grad_diff_ce(row, a_kd, eq, iq, s->ep, ip, a_ce, s->e1, i1, V);
                row[tg] -= a_ce;
                return;
            }
            if (o->dir == MOME_KD_FORWARD)
                grad_diff(row, a_kd, eq, iq, s->ep, ip, V);
            else
                grad_rev_full(row, a_kd, eq, iq, mx, lseT, t, tm, lset, invT, (float)klr, V);
        }
    } else {
        unsigned char *mask = s->mask;
        const int k = te->k;
        for (int i = 0; i < k; i++) {
            const int32_t id = te->ids[i];
            MOME_CHECK(id >= 0 && id < V, "kd: top-k id %d of row %zu outside [0, %d)", (int)id, r, V);
            MOME_CHECK(!mask[id], "kd: top-k id %d repeated in row %zu", (int)id, r);
            MOME_CHECK(isfinite(te->tlp[i]), "kd: non-finite top-k log-prob at row %zu, entry %d", r, i);
            mask[id] = 1;
        }
        const int has_tail = k < V;
        const double ptail = te->tail;
        MOME_CHECK(isfinite(ptail) && ptail >= 0.0, "kd: top-k tail %g of row %zu is not a probability", ptail,
                   r);
        /* the student's mass outside the top-k, summed directly over those ids (no 1 - sum): stail = sum of et
         * over them, Q_tail = stail * exp(shift) / sT; et = eq (shift 0) unless that sum is too small (see
         * KD_TAIL_DIRECT_MIN), then et = exp((z - max of the tail) / T) in ep */
        const float *et = eq;
        double stail = 0.0, lQt = -INFINITY, Qt = 0.0;
        if (has_tail) {
            stail = masked_sum(eq, mask, V);
            if (stail >= exp((double)KD_TAIL_DIRECT_MIN)) {
                Qt = stail / sT;
                lQt = log(stail) - log(sT);
            } else {
                const float tmx = masked_max(row, mask, V);
                const float shift = (tmx - mx) * invT;
                (void)vm_exp_sum(s->ep, row, tmx, invT, V);
                et = s->ep;
                stail = masked_sum(s->ep, mask, V);
                lQt = (double)shift + log(stail) - log(sT);
                Qt = exp(lQt);
            }
        }
        double psum = 1.0;  /* forward: sum of the teacher's bucket probabilities */
        float gtail = 0.0f; /* reverse: log Q_tail - log P_tail */
        if (o->dir == MOME_KD_FORWARD) {
            psum = 0.0;
            for (int i = 0; i < k; i++) {
                const int32_t id = te->ids[i];
                const double p = exp((double)te->tlp[i]);
                const float lq = (row[id] - mx) * invT - lseT;
                psum += p;
                klr += p * (double)(te->tlp[i] - lq);
            }
            if (has_tail) {
                psum += ptail;
                if (ptail > 0.0) klr += ptail * (log(ptail) - lQt);
            }
        } else {
            for (int i = 0; i < k; i++) {
                const int32_t id = te->ids[i];
                const float lq = (row[id] - mx) * invT - lseT;
                klr += (double)eq[id] / sT * (double)(lq - te->tlp[i]);
            }
            if (has_tail) {
                gtail = (float)(lQt - log(fmax(ptail, MOME_KD_TAIL_FLOOR)));
                klr += Qt * (double)gtail;
            }
        }
        *kl += klr;
        if (grad) {
            const float klf = (float)klr, psumf = (float)psum;
            /* the top-k entries first (they need the logits), then the tail formula over the whole row */
            for (int i = 0; i < k; i++) {
                const int32_t id = te->ids[i];
                const float q = eq[id] * iq;
                if (o->dir == MOME_KD_FORWARD) {
                    s->fix[i] = a_kd * (psumf * q - expf(te->tlp[i]));
                } else {
                    const float lq = (row[id] - mx) * invT - lseT;
                    s->fix[i] = a_kd * (q * ((lq - te->tlp[i]) - klf));
                }
            }
            if (o->dir == MOME_KD_FORWARD) {
                /* tail: Psum * q_j - P_tail * q_j / Q_tail, q_j / Q_tail = et_j / stail */
                const float ct = has_tail ? (float)(ptail / stail) : 0.0f;
                grad_diff(row, a_kd, eq, psumf * iq, et, ct, V);
            } else {
                grad_scale_q(row, a_kd, eq, iq, gtail - klf, V);
            }
            for (int i = 0; i < k; i++) row[te->ids[i]] = s->fix[i];
        }
        for (int i = 0; i < k; i++) mask[te->ids[i]] = 0;
    }

    if (grad && a_ce != 0.0f) {
        grad_add_ce(row, a_ce, s->e1, i1, V);
        row[tg] -= a_ce;
    }
}

/* The teacher of row r in target set m: te_full (M,N,V) or (ids, tlp (M,N,k), tail (M,N)). */
static row_teacher row_teacher_at(const float *te_full, const int32_t *ids, const float *tlp, const float *tail,
                                  size_t N, int V, int k, int m, size_t r) {
    row_teacher te = {0};
    const size_t i = (size_t)m * N + r;
    if (te_full) {
        te.tlogits = te_full + i * (size_t)V;
    } else {
        te.ids = ids + i * (size_t)k;
        te.tlp = tlp + i * (size_t)k;
        te.tail = tail[i];
        te.k = k;
    }
    return te;
}

/* Row r against M >= 2 target sets: the CE once (with set 0), the KL of every set added to *kl (the caller divides
 * the sum by M), and the gradient of w_ce * CE + (w_kd / M) * T^2 * sum_m KL_m: o->w_kd is already w_kd / M. Each
 * set's gradient is computed by kd_row on a copy of the logits (s->pass) and added to the row in set order. */
static void kd_row_multi(float *row, double *ce, double *kl, const float *te_full, const int32_t *ids,
                         const float *tlp, const float *tail, int32_t tg, size_t N, int V, int k, int M,
                         const kd_opts *o, const kd_scratch *s, size_t r) {
    const int grad = o->grad_scale != 0.0f;
    if (grad) memcpy(s->orig, row, (size_t)V * sizeof *row);
    row_teacher te = row_teacher_at(te_full, ids, tlp, tail, N, V, k, 0, r);
    kd_row(row, ce, kl, &te, tg, V, o, s, r);
    for (int m = 1; m < M; m++) {
        te = row_teacher_at(te_full, ids, tlp, tail, N, V, k, m, r);
        double no_ce = 0.0;
        if (!grad) {
            kd_row(row, &no_ce, kl, &te, -1, V, o, s, r); /* grad_scale 0: the row is left as it is */
            continue;
        }
        memcpy(s->pass, s->orig, (size_t)V * sizeof *row);
        kd_row(s->pass, &no_ce, kl, &te, -1, V, o, s, r);
        for (int v = 0; v < V; v++) row[v] += s->pass[v];
    }
}

/* The shared driver: M target sets, te_full (M,N,V) or (ids, tlp (M,N,k), tail (M,N)). */
static double kd_run(float *logits, mome_kd_sums *out, const float *te_full, const int32_t *ids, const float *tlp,
                     const float *tail, const int32_t *targets, size_t N, int V, int k, int M, const kd_opts *o) {
    // logits is (N,V), targets is (N)
    MOME_CHECK(V > 0, "kd: bad vocabulary size %d", V);
    MOME_CHECK(o->T > 0.0f && isfinite(o->T), "kd: temperature %g must be > 0", (double)o->T);
    MOME_CHECK(o->dir == MOME_KD_FORWARD || o->dir == MOME_KD_REVERSE, "kd: bad direction %d", (int)o->dir);
    for (size_t i = 0; i < N; i++) {
        const int32_t tg = targets[i];
        MOME_CHECK(tg >= -1 && tg < V, "kd: target %d of row %zu outside [-1, %d)", (int)tg, i, V);
    }
    MOME_CHECK(M >= 1, "kd: %d target sets, need >= 1", M);
    const int multi = o->has_teacher && M > 1;
    /* per-set gradient weight: the loss is w_kd * T^2 * (the mean over the sets of the KL) */
    kd_opts om = *o;
    if (multi) om.w_kd = o->w_kd / (float)M;
    double part_ce[KD_CHUNKS] = {0}, part_kl[KD_CHUNKS] = {0};
    size_t part_valid[KD_CHUNKS] = {0};
    const size_t chunk = (N + KD_CHUNKS - 1) / KD_CHUNKS;
#pragma omp parallel
    {
        const kd_scratch scr = kd_scratch_get(V, multi);
#pragma omp for schedule(static)
        for (int ch = 0; ch < KD_CHUNKS; ch++) {
            const size_t r0 = (size_t)ch * chunk;
            const size_t r1 = r0 + chunk < N ? r0 + chunk : N;
            double ce = 0.0, kl = 0.0;
            size_t valid = 0;
            for (size_t r = r0; r < r1; r++) {
                if (multi) {
                    kd_row_multi(logits + r * (size_t)V, &ce, &kl, te_full, ids, tlp, tail, targets[r], N, V, k, M,
                                 &om, &scr, r);
                } else {
                    row_teacher te = {0};
                    if (o->has_teacher) te = row_teacher_at(te_full, ids, tlp, tail, N, V, k, 0, r);
                    kd_row(logits + r * (size_t)V, &ce, &kl, &te, targets[r], V, o, &scr, r);
                }
                valid += targets[r] >= 0;
            }
            part_ce[ch] = ce;
            part_kl[ch] = kl;
            part_valid[ch] = valid;
        }
    }
    mome_kd_sums s = {0};
    for (int ch = 0; ch < KD_CHUNKS; ch++) {
        s.ce_sum += part_ce[ch];
        s.kl_sum += part_kl[ch];
        s.n_valid += part_valid[ch];
    }
    if (multi) s.kl_sum /= (double)M;
    s.n_kd = o->has_teacher ? N : 0;
    s.loss = (double)o->w_ce * s.ce_sum + (double)o->w_kd * (double)o->T * (double)o->T * s.kl_sum;
    if (out) *out = s;
    return s.loss;
}

double mome_kd_full_forward_backward(float *logits, mome_kd_sums *out, const float *teacher_logits,
                                     const int32_t *targets, size_t N, int V, mome_kd_direction dir, float T,
                                     float w_ce, float w_kd, float grad_scale) {
    MOME_CHECK(teacher_logits != NULL || w_kd == 0.0f, "kd: no teacher logits but w_kd = %g", (double)w_kd);
    const kd_opts o = {.dir = dir, .T = T, .w_ce = w_ce, .w_kd = w_kd, .grad_scale = grad_scale,
                       .has_teacher = teacher_logits != NULL};
    return kd_run(logits, out, teacher_logits, NULL, NULL, NULL, targets, N, V, 0, 1, &o);
}

double mome_kd_full_forward_backward_multi(float *logits, mome_kd_sums *out, const float *teacher_logits, int M,
                                           const int32_t *targets, size_t N, int V, mome_kd_direction dir, float T,
                                           float w_ce, float w_kd, float grad_scale) {
    MOME_CHECK(teacher_logits != NULL || w_kd == 0.0f, "kd: no teacher logits but w_kd = %g", (double)w_kd);
    const kd_opts o = {.dir = dir, .T = T, .w_ce = w_ce, .w_kd = w_kd, .grad_scale = grad_scale,
                       .has_teacher = teacher_logits != NULL};
    return kd_run(logits, out, teacher_logits, NULL, NULL, NULL, targets, N, V, 0, M, &o);
}

double mome_kd_topk_forward_backward(float *logits, mome_kd_sums *out, const int32_t *topk_ids,
                                     const float *topk_logp, const float *topk_tail, const int32_t *targets,
                                     size_t N, int V, int k, mome_kd_direction dir, float T, float w_ce,
                                     float w_kd, float grad_scale) {
    const int have = topk_ids != NULL && topk_logp != NULL && topk_tail != NULL;
    MOME_CHECK(have || w_kd == 0.0f, "kd: no top-k teacher targets but w_kd = %g", (double)w_kd);
    MOME_CHECK(!have || (k >= 1 && k <= V), "kd: top-k size %d outside [1, %d]", k, V);
    const kd_opts o = {.dir = dir, .T = T, .w_ce = w_ce, .w_kd = w_kd, .grad_scale = grad_scale,
                       .has_teacher = have};
    return kd_run(logits, out, NULL, topk_ids, topk_logp, topk_tail, targets, N, V, k, 1, &o);
}

double mome_kd_topk_forward_backward_multi(float *logits, mome_kd_sums *out, const int32_t *topk_ids,
                                           const float *topk_logp, const float *topk_tail, int M,
                                           const int32_t *targets, size_t N, int V, int k, mome_kd_direction dir,
                                           float T, float w_ce, float w_kd, float grad_scale) {
    const int have = topk_ids != NULL && topk_logp != NULL && topk_tail != NULL;
    MOME_CHECK(have || w_kd == 0.0f, "kd: no top-k teacher targets but w_kd = %g", (double)w_kd);
    MOME_CHECK(!have || (k >= 1 && k <= V), "kd: top-k size %d outside [1, %d]", k, V);
    const kd_opts o = {.dir = dir, .T = T, .w_ce = w_ce, .w_kd = w_kd, .grad_scale = grad_scale,
                       .has_teacher = have};
    return kd_run(logits, out, NULL, topk_ids, topk_logp, topk_tail, targets, N, V, k, M, &o);
}

/* ---------------------------------------------------------------------------------------- top-k builder */

/* a ranks before b: higher value, ties to the lower id */
static int ranks_before(float va, int32_t ia, float vb, int32_t ib) { return va > vb || (va == vb && ia < ib); }

/* Min-heap on rank (root = the worst of the kept entries). */
static void heap_down(float *hv, int32_t *hi, int n, int i) {
    for (;;) {
        int w = i;
        const int l = 2 * i + 1, rr = l + 1;
        if (l < n && ranks_before(hv[w], hi[w], hv[l], hi[l])) w = l;
        if (rr < n && ranks_before(hv[w], hi[w], hv[rr], hi[rr])) w = rr;
        if (w == i) return;
        const float tv = hv[i];
        const int32_t ti = hi[i];
        hv[i] = hv[w];
        hi[i] = hi[w];
        hv[w] = tv;
        hi[w] = ti;
        i = w;
    }
}

/* 1 when x[0..n) are all finite: x - x is 0 for a finite x and NaN for +-inf or NaN (float lanes, vectorised). */
static inline int all_finite(const float *x, int n) {
    float acc[VM_LANES] = {0};
    int i = 0;
    for (; i + VM_LANES <= n; i += VM_LANES)
        for (int j = 0; j < VM_LANES; j++) acc[j] += x[i + j] - x[i + j];
    float s = 0.0f;
    for (; i < n; i++) s += x[i] - x[i];
    for (int j = 0; j < VM_LANES; j++) s += acc[j];
    return s == 0.0f;
}

int mome_kd_topk_build(int32_t *topk_ids, float *topk_logp, float *topk_tail, const float *teacher_logits,
                       size_t N, int V, int k, float T) {
    // teacher_logits is (N,V); topk_ids, topk_logp are (N,k); topk_tail is (N)
    MOME_CHECK(V > 0 && k >= 1 && k <= V, "kd: top-k size %d outside [1, %d]", k, V);
    MOME_CHECK(T > 0.0f && isfinite(T), "kd: temperature %g must be > 0", (double)T);
    const float invT = 1.0f / T;
    /* the first row with a non-finite logit (N if none): each row is checked where it is read anyway; rows after
     * it are still processed (the outputs are unspecified when an error is returned) */
    long long bad = (long long)N;
#pragma omp parallel reduction(min : bad)
    {
        /* the loss's per-thread scratch: hv (k <= V) in fix, exp((t - max) / T) in e1 */
        const kd_scratch scr = kd_scratch_get(V, 0);
        float *hv = scr.fix, *e = scr.e1;
        unsigned char *mask = scr.mask;
#pragma omp for schedule(static)
        for (long long rl = 0; rl < (long long)N; rl++) {
            const size_t r = (size_t)rl;
            const float *t = teacher_logits + r * (size_t)V;
            if (!all_finite(t, V)) {
                bad = rl < bad ? rl : bad;
                continue;
            }
            int32_t *hi = topk_ids + r * (size_t)k;
            float *lpo = topk_logp + r * (size_t)k;
            /* selection: keep the k best in a min-heap */
            for (int v = 0; v < k; v++) {
                hv[v] = t[v];
                hi[v] = v;
            }
            for (int i = k / 2 - 1; i >= 0; i--) heap_down(hv, hi, k, i);
            for (int v = k; v < V; v++)
                if (ranks_before(t[v], v, hv[0], hi[0])) {
                    hv[0] = t[v];
                    hi[0] = v;
                    heap_down(hv, hi, k, 0);
                }
            /* heap sort: repeatedly move the worst to the end -> best first */
            for (int n = k - 1; n > 0; n--) {
                const float tv = hv[0];
                const int32_t ti = hi[0];
                hv[0] = hv[n];
                hi[0] = hi[n];
                hv[n] = tv;
                hi[n] = ti;
                heap_down(hv, hi, n, 0);
            }
            /* log-probs at temperature T; the tail summed over the other ids (see KD_TAIL_DIRECT_MIN) */
            const float mx = hv[0];
            for (int i = 0; i < k; i++) mask[hi[i]] = 1;
            const double sall = vm_exp_sum(e, t, mx, invT, V);
            double stail = k < V ? masked_sum(e, mask, V) : 0.0;
            if (k < V && stail < exp((double)KD_TAIL_DIRECT_MIN)) {
                const float tmx = masked_max(t, mask, V);
                (void)vm_exp_sum(e, t, tmx, invT, V);
                stail = masked_sum(e, mask, V) * exp((double)((tmx - mx) * invT));
            }
            const double lse = log(sall);
            for (int i = 0; i < k; i++) {
                lpo[i] = (hv[i] - mx) * invT - (float)lse;
                mask[hi[i]] = 0;
            }
            topk_tail[r] = (float)(stail / sall);
        }
    }
    if (bad < (long long)N) {
        const size_t r = (size_t)bad;
        const float *t = teacher_logits + r * (size_t)V;
        int v = 0;
        while (v < V - 1 && isfinite(t[v])) v++;
        return mome_error_set(MOME_ENONFINITE, "kd top-k: teacher logit [%zu, %d] is %g", r, v, (double)t[v]);
    }
    return MOME_OK;
}

/* ------------------------------------------------------------------------------------------------- alpha */

size_t mome_kd_alpha_window(uint64_t total_steps) {
    const uint64_t k = total_steps / 100;
    return k > 20 ? (size_t)k : 20;
}

int mome_kd_alpha_init(mome_kd_alpha *a, mome_kd_alpha_mode mode, double alpha_fixed, size_t window) {
    memset(a, 0, sizeof *a);
    if (mode != MOME_KD_ALPHA_FIXED && mode != MOME_KD_ALPHA_ADAPTIVE)
        return mome_error_set(MOME_EINVAL, "kd alpha: unknown mode %d (expected fixed 0 or adaptive 1)",
                              (int)mode);
    if (!(alpha_fixed >= 0.0 && alpha_fixed <= 1.0))
        return mome_error_set(MOME_EINVAL, "kd alpha: alpha %g outside [0, 1]", alpha_fixed);
    if (window < 2) return mome_error_set(MOME_EINVAL, "kd alpha: window %zu, expected >= 2", window);
    a->mode = mode;
    a->alpha_fixed = alpha_fixed;
    a->window = window;
    a->ce = mome_calloc(window, sizeof *a->ce);
    a->kd = mome_calloc(window, sizeof *a->kd);
    return MOME_OK;
}

void mome_kd_alpha_free(mome_kd_alpha *a) {
    if (!a) return;
    mome_free(a->ce);
    mome_free(a->kd);
    a->ce = a->kd = NULL;
}

void mome_kd_alpha_push(mome_kd_alpha *a, double ce, double kd) {
    a->ce[a->head] = ce;
    a->kd[a->head] = kd;
    a->head = (a->head + 1) % a->window;
    a->count++;
}

/* w = 1 - clip(d, 0, 1) of one full ring (oldest at index head), summed oldest first. */
static double loss_weight(const double *ring, size_t K, size_t head) {
    double sum = 0.0;
    for (size_t i = 0; i < K; i++) sum += ring[(head + i) % K];
    const double mean = sum / (double)K;
    const double oldest = ring[head], newest = ring[(head + K - 1) % K];
    double d = mean > 0.0 ? (newest - oldest) / mean : 0.0;
    if (!isfinite(d)) d = 0.0;
    d = d < 0.0 ? 0.0 : d > 1.0 ? 1.0 : d;
    return 1.0 - d;
}

double mome_kd_alpha_get(const mome_kd_alpha *a) {
    if (a->mode == MOME_KD_ALPHA_FIXED) return a->alpha_fixed;
    if (a->count < a->window) return 0.5;
    const double wce = loss_weight(a->ce, a->window, a->head);
    const double wkd = loss_weight(a->kd, a->window, a->head);
    return wce + wkd > 0.0 ? wce / (wce + wkd) : 0.5;
}

void mome_kd_alpha_export(const mome_kd_alpha *a, double *ce, double *kd, uint64_t *count) {
    const size_t K = a->window;
    const size_t n = a->count < K ? (size_t)a->count : K;
    const size_t first = (a->head + K - n) % K;
    for (size_t i = 0; i < K; i++) {
        ce[i] = i < n ? a->ce[(first + i) % K] : 0.0;
        kd[i] = i < n ? a->kd[(first + i) % K] : 0.0;
    }
    *count = a->count;
}

int mome_kd_alpha_import(mome_kd_alpha *a, const double *ce, const double *kd, size_t window, uint64_t count) {
    if (window != a->window)
        return mome_error_set(MOME_EMISMATCH, "kd alpha: saved window %zu, configured window %zu", window,
                              a->window);
    const size_t K = a->window;
    const size_t n = count < K ? (size_t)count : K;
    for (size_t i = 0; i < K; i++) {
        a->ce[i] = i < n ? ce[i] : 0.0;
        a->kd[i] = i < n ? kd[i] : 0.0;
    }
    a->head = n % K;
    a->count = count;
    return MOME_OK;
}

void mome_kd_weights(mome_kd_schedule schedule, double alpha, uint64_t micro_batch, float *w_ce, float *w_kd) {
    if (schedule == MOME_KD_ALTERNATING) {
        const int kd_only = (int)(micro_batch & 1u);
        *w_ce = kd_only ? 0.0f : 1.0f;
        *w_kd = kd_only ? 1.0f : 0.0f;
    } else {
        *w_ce = (float)alpha;
        *w_kd = (float)(1.0 - alpha);
    }
}
