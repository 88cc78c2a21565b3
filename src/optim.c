/* optim.c — AdamW over the flat parameter buffer, warmup + cosine learning-rate schedule and the global
 * gradient norm (see optim.h).
 *
 * The update follows torch.optim.AdamW exactly (single-tensor path):
 *     p <- p * (1 - lr * wd)                      (decoupled decay, only on tensors with decay = 1)
 *     m <- beta1 * m + (1 - beta1) * g
 *     v <- beta2 * v + (1 - beta2) * g^2
 *     p <- p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * with t = step + 1 and g = grad_scale * grad. Loops are static and element-wise, so the result is the same
 * for any thread count. Averaging gradients across ranks and deciding the clip factor are the caller's job.
 */
#include "mome/optim.h"

#include <math.h>
#include <string.h>

#include "mome/common.h"
#include "vmath.h"

#define NORM_CHUNKS 256
#define PI 3.14159265358979323846

int mome_adamw_init(mome_adamw *opt, const mome_adamw_config *cfg, size_t n) {
    memset(opt, 0, sizeof *opt);
    const int ok = cfg->lr >= 0.0f && cfg->beta1 >= 0.0f && cfg->beta1 < 1.0f && cfg->beta2 >= 0.0f &&
                   cfg->beta2 < 1.0f && cfg->eps > 0.0f && cfg->weight_decay >= 0.0f && cfg->grad_clip >= 0.0f &&
                   cfg->warmup_steps >= 0; /* written so that NaN fails */
    if (!ok)
        return mome_error_set(MOME_EINVAL,
                              "adamw: bad config: lr %g (>= 0), beta1 %g, beta2 %g (in [0,1)), eps %g (> 0), "
                              "weight_decay %g (>= 0), grad_clip %g (>= 0), warmup_steps %d (>= 0)",
                              (double)cfg->lr, (double)cfg->beta1, (double)cfg->beta2, (double)cfg->eps,
                              (double)cfg->weight_decay, (double)cfg->grad_clip, cfg->warmup_steps);
    opt->cfg = *cfg;
    opt->n = n;
    opt->m = mome_calloc(n ? n : 1, sizeof(float));
    opt->v = mome_calloc(n ? n : 1, sizeof(float));
    opt->step = 0;
    return MOME_OK;
}

void mome_adamw_free(mome_adamw *opt) {
    if (!opt) return;
    mome_free(opt->m);
    mome_free(opt->v);
    opt->m = opt->v = NULL;
    opt->n = 0;
}

float mome_lr_at(const mome_adamw_config *cfg, long step) {
    if (step < 0) step = 0;
    if (cfg->warmup_steps > 0 && step < cfg->warmup_steps)
        return cfg->lr * (float)(step + 1) / (float)cfg->warmup_steps;
    if (step >= cfg->total_steps) return cfg->min_lr;
    const long span = (long)cfg->total_steps - cfg->warmup_steps;
    if (span <= 0) return cfg->min_lr;
    const double ratio = (double)(step - cfg->warmup_steps) / (double)span;
    const double coeff = 0.5 * (1.0 + cos(PI * ratio));
    return (float)(cfg->min_lr + coeff * ((double)cfg->lr - cfg->min_lr));
}

double mome_grad_norm(const float *grads, size_t n) {
    // Fixed chunks summed in order: the same value for any thread count.
    double part[NORM_CHUNKS] = {0};
    const size_t chunk = (n + NORM_CHUNKS - 1) / NORM_CHUNKS;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < NORM_CHUNKS; ch++) {
        const size_t i0 = (size_t)ch * chunk;
        const size_t i1 = i0 + chunk < n ? i0 + chunk : n;
        double s = 0.0;
        for (size_t i = i0; i < i1; i += (size_t)1 << 30) { /* vm_dot takes an int count */
            const size_t len = i1 - i < (size_t)1 << 30 ? i1 - i : (size_t)1 << 30;
            s += vm_dot(grads + i, grads + i, (int)len);
        }
        part[ch] = s;
    }
    double total = 0.0;
    for (int ch = 0; ch < NORM_CHUNKS; ch++) total += part[ch];
    return sqrt(total);
}

/* One AdamW update of n consecutive parameters. */
static void adamw_range(float *restrict p, float *restrict m, float *restrict v, const float *restrict g, size_t n,
                        float decay_factor, float beta1, float beta2, float eps, float step_size,
                        float bc2_sqrt, float grad_scale) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        const float gi = g[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = p[i] * decay_factor - step_size * (mi / denom);
    }
}

void mome_adamw_update(mome_adamw *opt, const mome_tensor_table *tab, float *params, const float *grads, float lr,
                       float grad_scale) {
    MOME_CHECK(tab->total <= opt->n, "adamw: table has %zu floats, optimizer %zu", tab->total, opt->n);
    const mome_adamw_config *c = &opt->cfg;
    const long t = opt->step + 1;
    const double bc1 = 1.0 - pow((double)c->beta1, (double)t);
    const double bc2 = 1.0 - pow((double)c->beta2, (double)t);
    const float step_size = (float)(lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    for (int k = 0; k < tab->n; k++) {
        const mome_tensor_info *ti = &tab->t[k];
        const float decay_factor = ti->decay ? 1.0f - lr * c->weight_decay : 1.0f;
        adamw_range(params + ti->offset, opt->m + ti->offset, opt->v + ti->offset, grads + ti->offset, ti->numel,
                    decay_factor, c->beta1, c->beta2, c->eps, step_size, bc2_sqrt, grad_scale);
    }
    opt->step++;
}
