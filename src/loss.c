/* loss.c — fused softmax cross-entropy over the vocabulary (see loss.h): one pass per row computes the loss
 * and overwrites the logits with the scaled gradient, so no (B,T,V) probability buffer exists.
 *
 * Numerically stable (the row max is subtracted before exp; sums in float64). The total is summed in fixed
 * chunks of rows whose partial sums are added in order, so it is the same for any thread count.
 * KD losses belong to the distillation module.
 */
#include "mome/loss.h"

#include <math.h>

#include "mome/common.h"

#define XENT_CHUNKS 256

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
        double acc = 0.0;
        size_t valid = 0;
        for (size_t r = r0; r < r1; r++) {
            float *row = logits + r * (size_t)V;
            const int32_t tg = targets[r];
            if (tg < 0) {
                if (grad_scale != 0.0f)
                    for (int v = 0; v < V; v++) row[v] = 0.0f;
                continue;
            }
            float mx = row[0];
            for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
            const float zt = row[tg] - mx;
            double sum = 0.0;
            if (grad_scale != 0.0f) {
                // keep exp(z - max) in the row, then turn it into the gradient
                for (int v = 0; v < V; v++) {
                    row[v] = expf(row[v] - mx);
                    sum += row[v];
                }
                const float inv = (float)(1.0 / sum);
                for (int v = 0; v < V; v++) row[v] = grad_scale * (row[v] * inv);
                row[tg] -= grad_scale;
            } else {
                for (int v = 0; v < V; v++) sum += expf(row[v] - mx);
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
