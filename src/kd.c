/* kd.c — knowledge distillation (see kd.h): the fused KD + CE loss for full and top-k teacher targets, the
 * top-k builder, adaptive / fixed alpha with checkpointable state, and the combined / alternating weights.
 *
 * The fused loss works one row at a time: the student log-probabilities at temperature T go to a per-thread
 * V-sized scratch, the KL and CE are summed in float64, then the row of logits is overwritten with the
 * gradient. Rows are split into a fixed number of chunks whose partial sums are added in order, so the sums
 * are the same for any thread count. Where the teacher targets come from (a teacher forward, a cache, MPI)
 * and how the losses are normalised and logged is left to the trainer.
 *
 * Gradients with respect to the logits z (s = z / T, q = softmax(s), loss term w_kd * T^2 * KL):
 *   forward, full:  T * (q_j - p_j)
 *   reverse, full:  T * q_j * (log q_j - log p_j - KL)
 *   forward, top-k: T * (Psum * q_j - P_j)               j in the top-k
 *                   T * (Psum * q_j - P_tail * q_j / Q_tail)  j elsewhere     (Psum = sum of teacher buckets)
 *   reverse, top-k: T * q_j * (g_b(j) - KL), g_b = log Q_b - log P_b for the bucket b(j) that holds j.
 */
#include "mome/kd.h"

#include <math.h>
#include <string.h>

#include "mome/common.h"

#define KD_CHUNKS 256

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

/* Loss and gradient of one row. row (V): logits in, gradient out (if grad_scale != 0). lq, lp (V): scratch;
 * mask (V): scratch of zeros, left zeroed. Adds the CE (if tg >= 0) and the KL to *ce, *kl. */
static void kd_row(float *row, double *ce, double *kl, const row_teacher *te, int32_t tg, int V, const kd_opts *o,
                   float *lq, float *lp, unsigned char *mask, size_t r) {
    const float T = o->T, invT = 1.0f / o->T;
    float mx = row[0];
    for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;

    /* CE at temperature 1 */
    float lse1 = 0.0f;
    if (tg >= 0) {
        double s1 = 0.0;
        for (int v = 0; v < V; v++) s1 += expf(row[v] - mx);
        lse1 = mx + (float)log(s1);
        *ce += log(s1) - (double)(row[tg] - mx);
    }
    if (!o->has_teacher) {
        if (o->grad_scale != 0.0f && tg >= 0) {
            const float a = o->grad_scale * o->w_ce;
            for (int v = 0; v < V; v++) row[v] = a * expf(row[v] - lse1);
            row[tg] -= a;
        } else if (o->grad_scale != 0.0f) {
            for (int v = 0; v < V; v++) row[v] = 0.0f;
        }
        return;
    }

    /* student log-probs at temperature T */
    double sT = 0.0;
    for (int v = 0; v < V; v++) {
        lq[v] = (row[v] - mx) * invT;
        sT += expf(lq[v]);
    }
    const float lseT = (float)log(sT);
    for (int v = 0; v < V; v++) lq[v] -= lseT;

    double klr = 0.0;
    double psum = 1.0;        /* top-k forward: sum of the teacher's bucket probabilities */
    double ptail = 0.0;       /* top-k: teacher tail probability */
    float lQt = -INFINITY;    /* top-k: log of the student tail mass */
    float gtail = 0.0f;       /* top-k reverse: log Q_tail - log P_tail */
    const int topk = te->tlogits == NULL;
    if (!topk) {
        const float *t = te->tlogits;
        float tm = t[0];
        for (int v = 1; v < V; v++) tm = t[v] > tm ? t[v] : tm;
        double st = 0.0;
        for (int v = 0; v < V; v++) {
            lp[v] = (t[v] - tm) * invT;
            st += expf(lp[v]);
        }
        const float lset = (float)log(st);
        for (int v = 0; v < V; v++) lp[v] -= lset;
        if (o->dir == MOME_KD_FORWARD)
            for (int v = 0; v < V; v++) {
                const float p = expf(lp[v]);
                if (p > 0.0f) klr += (double)p * (double)(lp[v] - lq[v]);
            }
        else
            for (int v = 0; v < V; v++) klr += (double)expf(lq[v]) * (double)(lq[v] - lp[v]);
    } else {
        const int k = te->k;
        for (int i = 0; i < k; i++) {
            const int32_t id = te->ids[i];
            MOME_CHECK(id >= 0 && id < V, "kd: top-k id %d of row %zu outside [0, %d)", (int)id, r, V);
            MOME_CHECK(!mask[id], "kd: top-k id %d repeated in row %zu", (int)id, r);
            MOME_CHECK(isfinite(te->tlp[i]), "kd: non-finite top-k log-prob at row %zu, entry %d", r, i);
            mask[id] = 1;
            lp[id] = te->tlp[i];
        }
        const int has_tail = k < V;
        ptail = te->tail;
        MOME_CHECK(isfinite(ptail) && ptail >= 0.0, "kd: top-k tail %g of row %zu is not a probability", ptail,
                   r);
        if (has_tail) {
            /* log of the student's mass outside the top-k: log-sum-exp over those ids, no 1 - sum */
            float tmx = -INFINITY;
            for (int v = 0; v < V; v++)
                if (!mask[v] && lq[v] > tmx) tmx = lq[v];
            double st = 0.0;
            for (int v = 0; v < V; v++)
                if (!mask[v]) st += expf(lq[v] - tmx);
            lQt = tmx + (float)log(st);
        }
        if (o->dir == MOME_KD_FORWARD) {
            psum = 0.0;
            for (int i = 0; i < k; i++) {
                const int32_t id = te->ids[i];
                const double p = exp((double)te->tlp[i]);
                psum += p;
                klr += p * (double)(te->tlp[i] - lq[id]);
            }
            if (has_tail) {
                psum += ptail;
                if (ptail > 0.0) klr += ptail * (log(ptail) - (double)lQt);
            }
        } else {
            for (int i = 0; i < k; i++) {
                const int32_t id = te->ids[i];
                klr += exp((double)lq[id]) * (double)(lq[id] - te->tlp[i]);
            }
            if (has_tail) {
                gtail = (float)((double)lQt - log(fmax(ptail, MOME_KD_TAIL_FLOOR)));
                klr += exp((double)lQt) * (double)gtail;
            }
        }
    }
    *kl += klr;

    if (o->grad_scale != 0.0f) {
        const float a_ce = tg >= 0 ? o->grad_scale * o->w_ce : 0.0f;
        const float a_kd = o->grad_scale * o->w_kd * T;
        const float klf = (float)klr;
        for (int v = 0; v < V; v++) {
            const float q = expf(lq[v]);
            float gkd;
            if (!topk) {
                gkd = o->dir == MOME_KD_FORWARD ? q - expf(lp[v]) : q * (lq[v] - lp[v] - klf);
            } else if (o->dir == MOME_KD_FORWARD) {
                gkd = (float)psum * q - (mask[v] ? expf(lp[v]) : (float)ptail * expf(lq[v] - lQt));
            } else {
                gkd = q * ((mask[v] ? lq[v] - lp[v] : gtail) - klf);
            }
            float g = a_kd * gkd;
            if (a_ce != 0.0f) g += a_ce * expf(row[v] - lse1);
            row[v] = g;
        }
        if (tg >= 0) row[tg] -= a_ce;
    }
    if (topk)
        for (int i = 0; i < te->k; i++) mask[te->ids[i]] = 0;
}

/* The shared driver: te_full (N,V) or (ids, tlp (N,k), tail (N)). */
static double kd_run(float *logits, mome_kd_sums *out, const float *te_full, const int32_t *ids, const float *tlp,
                     const float *tail, const int32_t *targets, size_t N, int V, int k, const kd_opts *o) {
    // logits is (N,V), targets is (N)
    MOME_CHECK(V > 0, "kd: bad vocabulary size %d", V);
    MOME_CHECK(o->T > 0.0f && isfinite(o->T), "kd: temperature %g must be > 0", (double)o->T);
    MOME_CHECK(o->dir == MOME_KD_FORWARD || o->dir == MOME_KD_REVERSE, "kd: bad direction %d", (int)o->dir);
    for (size_t i = 0; i < N; i++) {
        const int32_t tg = targets[i];
        MOME_CHECK(tg >= -1 && tg < V, "kd: target %d of row %zu outside [-1, %d)", (int)tg, i, V);
    }
    double part_ce[KD_CHUNKS] = {0}, part_kl[KD_CHUNKS] = {0};
    size_t part_valid[KD_CHUNKS] = {0};
    const size_t chunk = (N + KD_CHUNKS - 1) / KD_CHUNKS;
#pragma omp parallel
    {
        float *lq = NULL, *lp = NULL;
        unsigned char *mask = NULL;
        if (o->has_teacher) {
            lq = mome_malloc(2 * (size_t)V * sizeof *lq);
            lp = lq + V;
            mask = mome_calloc((size_t)V, 1);
        }
#pragma omp for schedule(static)
        for (int ch = 0; ch < KD_CHUNKS; ch++) {
            const size_t r0 = (size_t)ch * chunk;
            const size_t r1 = r0 + chunk < N ? r0 + chunk : N;
            double ce = 0.0, kl = 0.0;
            size_t valid = 0;
            for (size_t r = r0; r < r1; r++) {
                row_teacher te = {0};
                if (o->has_teacher) {
                    if (te_full) {
                        te.tlogits = te_full + r * (size_t)V;
                    } else {
                        te.ids = ids + r * (size_t)k;
                        te.tlp = tlp + r * (size_t)k;
                        te.tail = tail[r];
                        te.k = k;
                    }
                }
                kd_row(logits + r * (size_t)V, &ce, &kl, &te, targets[r], V, o, lq, lp, mask, r);
                valid += targets[r] >= 0;
            }
            part_ce[ch] = ce;
            part_kl[ch] = kl;
            part_valid[ch] = valid;
        }
        mome_free(lq);
        mome_free(mask);
    }
    mome_kd_sums s = {0};
    for (int ch = 0; ch < KD_CHUNKS; ch++) {
        s.ce_sum += part_ce[ch];
        s.kl_sum += part_kl[ch];
        s.n_valid += part_valid[ch];
    }
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
    return kd_run(logits, out, teacher_logits, NULL, NULL, NULL, targets, N, V, 0, &o);
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
    return kd_run(logits, out, NULL, topk_ids, topk_logp, topk_tail, targets, N, V, k, &o);
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

int mome_kd_topk_build(int32_t *topk_ids, float *topk_logp, float *topk_tail, const float *teacher_logits,
                       size_t N, int V, int k, float T) {
    // teacher_logits is (N,V); topk_ids, topk_logp are (N,k); topk_tail is (N)
    MOME_CHECK(V > 0 && k >= 1 && k <= V, "kd: top-k size %d outside [1, %d]", k, V);
    MOME_CHECK(T > 0.0f && isfinite(T), "kd: temperature %g must be > 0", (double)T);
    for (size_t r = 0; r < N; r++) {
        const float *t = teacher_logits + r * (size_t)V;
        for (int v = 0; v < V; v++)
            if (!isfinite(t[v]))
                return mome_error_set(MOME_ENONFINITE, "kd top-k: teacher logit [%zu, %d] is %g", r, v,
                                      (double)t[v]);
    }
    const float invT = 1.0f / T;
#pragma omp parallel
    {
        float *hv = mome_malloc((size_t)k * sizeof *hv);
        unsigned char *mask = mome_calloc((size_t)V, 1);
#pragma omp for schedule(static)
        for (long long rl = 0; rl < (long long)N; rl++) {
            const size_t r = (size_t)rl;
            const float *t = teacher_logits + r * (size_t)V;
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
            /* log-probs at temperature T; the tail summed over the other ids */
            const float mx = hv[0];
            double sall = 0.0, stail = 0.0;
            for (int i = 0; i < k; i++) mask[hi[i]] = 1;
            for (int v = 0; v < V; v++) {
                const double e = expf((t[v] - mx) * invT);
                sall += e;
                if (!mask[v]) stail += e;
            }
            const double lse = log(sall);
            for (int i = 0; i < k; i++) {
                lpo[i] = (hv[i] - mx) * invT - (float)lse;
                mask[hi[i]] = 0;
            }
            topk_tail[r] = (float)(stail / sall);
        }
        mome_free(hv);
        mome_free(mask);
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
