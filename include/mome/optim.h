/* optim.h — AdamW over the flat parameter buffer, learning-rate schedule and gradient clipping. */
#ifndef MOME_OPTIM_H
#define MOME_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "mome/tensor.h"

typedef struct {
    float lr;           /* peak learning rate */
    float min_lr;       /* floor of the cosine decay */
    int warmup_steps;   /* linear warmup from lr/warmup_steps to lr */
    int total_steps;    /* cosine decay from the end of warmup to total_steps */
    float beta1, beta2, eps;
    float weight_decay; /* decoupled, applied only to tensors with decay = 1 */
    float grad_clip;    /* clip the global L2 norm to this; 0 disables */
} mome_adamw_config;

typedef struct {
    mome_adamw_config cfg;
    size_t n;   /* floats in the flat buffers */
    float *m;   /* first moment, same layout as the parameters */
    float *v;   /* second moment */
    long step;  /* number of updates done (the bias correction uses step+1 for the next update) */
} mome_adamw;

int mome_adamw_init(mome_adamw *opt, const mome_adamw_config *cfg, size_t n);
void mome_adamw_free(mome_adamw *opt);
/* Learning rate at 0-based step `step`: linear warmup, then cosine to min_lr at total_steps. */
float mome_lr_at(const mome_adamw_config *cfg, long step);
/* L2 norm of a flat gradient buffer (float64 accumulation, deterministic order). */
double mome_grad_norm(const float *grads, size_t n);
/* One AdamW update of `params` with `grads` at learning rate lr. grad_scale multiplies the gradients first
 * (clipping: min(1, clip/norm)). Weight decay follows tab->t[i].decay. Increments opt->step. */
void mome_adamw_update(mome_adamw *opt, const mome_tensor_table *tab, float *params, const float *grads,
                       float lr, float grad_scale);

#endif
