/* gpt_loss.h — the loss of the whole-model gradient tests (test_model_grad, test_model_moe, test_moe_modes): the
 * mean cross-entropy of a GPT on one batch. Each test adds its own terms and runs the model's backward itself. */
#ifndef MOME_TEST_GPT_LOSS_H
#define MOME_TEST_GPT_LOSS_H

#include "mome/loss.h"
#include "mome/model.h"

/* Forward of m on inputs (batch, seq), then the mean cross-entropy against targets; with backward, the gradient of
 * that mean w.r.t. the logits is left in m->logits for the model's backward. */
static inline double gpt_mean_xent(mome_gpt *m, const int32_t *inputs, const int32_t *targets, int batch, int seq,
                                   int backward) {
    mome_gpt_forward(m, inputs, batch, seq);
    size_t nv = 0;
    const double sum = mome_xent_forward_backward(m->logits, targets, (size_t)batch * seq, m->cfg.vocab_size,
                                                  backward ? 1.0f / (batch * seq) : 0.0f, &nv);
    return sum / (double)nv;
}

#endif
