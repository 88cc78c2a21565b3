/* loss.c — fused softmax cross-entropy over the vocabulary (see loss.h): one pass per row computes the loss
 * and overwrites the logits with the scaled gradient, so no (B,T,V) probability buffer exists.
 *
 * Numerically stable (the row max is subtracted before exp; sums in float64). exp(z - max) is computed once per
 * element with the vectorised vm_expf (vmath.h) into a per-thread V-sized scratch, summed in VM_LANES fixed
 * float64 lanes, and the gradient is that times 1 / sum. The total is summed in fixed chunks of rows whose
 * partial sums are added in order, so it is the same for any thread count.
 * KD losses belong to the distillation module.
 */
#include "mome/loss.h"

#include <math.h>
#include <string.h>

#include "mome/common.h"
#include "vmath.h"

#define XENT_CHUNKS 256

/* Per-thread scratch (V floats) for exp(z - max), cached in thread-local storage and reallocated only when V
 * grows: OpenMP keeps its worker threads between parallel regions, so after the first step no call allocates.
 * Each thread that ever ran the loss keeps one buffer (16 KiB at V = 4096) until it exits. */
static _Thread_local float *xent_tls_buf = NULL;
static _Thread_local size_t xent_tls_cap = 0;

static float *xent_scratch(int V) {
    if ((size_t)V > xent_tls_cap) {
        mome_free(xent_tls_buf);
        xent_tls_buf = mome_malloc((size_t)V * sizeof *xent_tls_buf);
        xent_tls_cap = (size_t)V;
    }
    return xent_tls_buf;
}

/* g[v] = a * (e[v] * inv) */
static inline void scale_into(float *restrict g, float a, const float *restrict e, float inv, int n) {
    for (int v = 0; v < n; v++) g[v] = a * (e[v] * inv);
}

double mome_xent_forward_backward(float *logits, const int32_t *targets, size_t N, int V, float grad_scale,
                                  size_t *n_valid) {
    // logits is (N,V), targets is (N)
    MOME_CHECK(V > 0, "xent: bad vocabulary size %d", V);
    double part_loss[XENT_CHUNKS] = {0};
    size_t part_valid[XENT_CHUNKS] = {0};
    const size_t chunk = (N + XENT_CHUNKS - 1) / XENT_CHUNKS;
    for (size_t i = 0; i < N; i++) {
        const int32_t tg = targets[i];
        MOME_CHECK(tg >= -1 && tg < V, "xent: target %d of row %zu outside [-1, %d)", (int)tg, i, V);
    }
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < XENT_CHUNKS; ch++) {
        const size_t r0 = (size_t)ch * chunk;
        const size_t r1 = r0 + chunk < N ? r0 + chunk : N;
        float *e = r0 < r1 ? xent_scratch(V) : NULL;
        double acc = 0.0;
        size_t valid = 0;
        for (size_t r = r0; r < r1; r++) {
            float *row = logits + r * (size_t)V;
            const int32_t tg = targets[r];
            if (tg < 0) {
                if (grad_scale != 0.0f) memset(row, 0, (size_t)V * sizeof *row);
                continue;
            }
            const float mx = vm_max(row, V);
            const float zt = row[tg] - mx;
            // e = exp(z - max) in the scratch, then the gradient grad_scale * e / sum into the row
            const double sum = vm_exp_sum(e, row, mx, 1.0f, V);
            if (grad_scale != 0.0f) {
                scale_into(row, grad_scale, e, (float)(1.0 / sum), V);
                row[tg] -= grad_scale;
            }
            acc += log(sum) - (double)zt;
            valid++;
        }
        part_loss[ch] = acc;
        part_valid[ch] = valid;
    }
    double total = 0.0;
    size_t nv = 0;
    for (int ch = 0; ch < XENT_CHUNKS; ch++) {
        total += part_loss[ch];
        nv += part_valid[ch];
    }
    if (n_valid) *n_valid = nv;
    return total;
}
