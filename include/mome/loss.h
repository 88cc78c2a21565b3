/* loss.h — fused losses over the vocabulary: they read logits and overwrite them with the gradient in place,
 * so no extra (B, T, V) buffer is ever materialised.
 */
#ifndef MOME_LOSS_H
#define MOME_LOSS_H

#include <stddef.h>
#include <stdint.h>

/* Softmax cross-entropy. logits is (N, V) with N = B*T rows; targets is (N,) with values in [0, V) or -1 to
 * ignore a row. Returns the sum of per-row losses (float64) over non-ignored rows and writes the count of
 * non-ignored rows into *n_valid. If `grad_scale` != 0, logits are overwritten with
 * grad_scale * (softmax(logits) - onehot(target)) (rows that are ignored get 0); if 0, logits are untouched. */
double mome_xent_forward_backward(float *logits, const int32_t *targets, size_t N, int V, float grad_scale,
                                  size_t *n_valid);

#endif
