/* kd.h — knowledge distillation: the fused KD + cross-entropy loss over the vocabulary, the compressed top-k
 * teacher targets, and the rule that sets alpha (fixed, adaptive, or an alternating schedule).
 *
 * Loss of one row (student logits z, V entries):
 *     loss = w_ce * CE + w_kd * T^2 * KL
 *     CE   = -log softmax(z)[target]                       (temperature 1; rows with target -1 have no CE)
 *     KL   = KL(p || q)   forward  (MOME_KD_FORWARD)
 *          = KL(q || p)   reverse  (MOME_KD_REVERSE)
 * with q = softmax(z / T) the student and p the teacher, both at temperature T. For the usual combined loss
 * w_ce = alpha, w_kd = 1 - alpha (mome_kd_weights gives the weights for each schedule).
 *
 * Ignored rows: a row whose target is -1 has no CE term, but KD applies to every row (every position has a
 * teacher distribution), so its KL still counts in kl_sum and its gradient. Callers that want KD only on some
 * rows drop the other rows before calling.
 *
 * Teacher target formats, bytes per row (V = vocabulary size, k = top-k size):
 *  (a) full logits:  float32 (V,)                                              4V bytes per row
 *  (b) top-k:        int32 ids (k,) + float32 log-probs at temperature T (k,)
 *                    + float32 tail mass (1,)                                   8k + 4 bytes per row
 *      The ids are the teacher's k most likely tokens at temperature T in decreasing probability (ties: lower
 *      id first); the tail is the teacher's remaining probability 1 - sum(exp(logp)) (computed without
 *      cancellation). The KL is then taken over k + 1 buckets: the k ids and one tail bucket whose student
 *      probability is the student's mass on every other id (a log-sum-exp over the non-top-k logits, so it is
 *      exact even when the top-k hold nearly all the mass). With k = V there is no tail bucket and the result
 *      equals the full-logits KL. In reverse KL a teacher tail below MOME_KD_TAIL_FLOOR is raised to that floor
 *      inside the logarithm (a teacher tail of exactly 0 would make the reverse KL infinite).
 *
 * Gradient: the logits are overwritten with grad_scale * d(sum of row losses)/dz (no extra (N, V) buffer; each
 * thread uses a V-sized scratch). grad_scale = 0 leaves the logits untouched (evaluation). Typical training use:
 * grad_scale = 1 / N with the means ce_sum / n_valid and kl_sum / n_kd logged; or fold different normalisations
 * into w_ce and w_kd with grad_scale = 1.
 * Sums are float64, over a fixed chunking of rows (as in loss.c), so results do not depend on the thread count.
 * Invalid inputs (target outside [-1, V), an id outside [0, V) or repeated in a row, T <= 0, a negative or
 * non-finite tail) are broken invariants of the caller and abort through MOME_CHECK.
 */
#ifndef MOME_KD_H
#define MOME_KD_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    MOME_KD_FORWARD = 0, /* KL(p_teacher || q_student): mean-seeking, the classic Hinton KD */
    MOME_KD_REVERSE = 1  /* KL(q_student || p_teacher): mode-seeking */
} mome_kd_direction;

/* In reverse KL, the teacher tail probability used inside log() is at least this. */
#define MOME_KD_TAIL_FLOOR 1e-30

/* Bytes per row of each teacher target format. */
#define MOME_KD_FULL_BYTES_PER_ROW(V) ((size_t)4 * (size_t)(V))
#define MOME_KD_TOPK_BYTES_PER_ROW(k) ((size_t)8 * (size_t)(k) + 4)

/* What one call of the fused loss sums up. */
typedef struct {
    double loss;    /* w_ce * ce_sum + w_kd * T^2 * kl_sum */
    double ce_sum;  /* sum over rows with target >= 0 of -log softmax(z)[target], temperature 1 */
    double kl_sum;  /* sum over all rows of the KL at temperature T (not multiplied by T^2); 0 without teacher */
    size_t n_valid; /* rows with target >= 0 (the CE rows) */
    size_t n_kd;    /* rows in kl_sum: N, or 0 when no teacher was given */
} mome_kd_sums;

/* Fused KD + CE with full teacher logits.
 * logits (N,V): student logits in, grad_scale * gradient out (untouched when grad_scale == 0).
 * teacher_logits (N,V): raw teacher logits (temperature 1; divided by T here). May be NULL only when
 * w_kd == 0: then no KL is computed (kl_sum = 0, n_kd = 0), e.g. for the CE-only micro-batches of the
 * alternating schedule. targets (N,): ids in [0, V) or -1. Returns out->loss; out may be NULL. */
double mome_kd_full_forward_backward(float *logits, mome_kd_sums *out, const float *teacher_logits,
                                     const int32_t *targets, size_t N, int V, mome_kd_direction dir, float T,
                                     float w_ce, float w_kd, float grad_scale);

/* Fused KD + CE with top-k teacher targets (format (b) above, as written by mome_kd_topk_build).
 * topk_ids (N,k), topk_logp (N,k), topk_tail (N,); all three may be NULL only when w_kd == 0. 1 <= k <= V.
 * Everything else as mome_kd_full_forward_backward. */
double mome_kd_topk_forward_backward(float *logits, mome_kd_sums *out, const int32_t *topk_ids,
                                     const float *topk_logp, const float *topk_tail, const int32_t *targets,
                                     size_t N, int V, int k, mome_kd_direction dir, float T, float w_ce,
                                     float w_kd, float grad_scale);

/* The same losses against M >= 1 target sets of the teacher (several teacher passes, e.g. the knowledge
 * augmentation of "Every Expert Matters", distill.h): per row
 *     loss = w_ce * CE + w_kd * T^2 * (1/M) sum_m KL_m
 * so the CE counts once and the KD term is the mean of the M divergences, each KL_m in the configured direction
 * against set m. kl_sum is the sum over rows of that mean (so loss = w_ce * ce_sum + w_kd * T^2 * kl_sum as
 * above); n_kd = N. Sets are stacked: teacher_logits (M, N, V); topk_ids, topk_logp (M, N, k), topk_tail (M, N).
 * M = 1 is exactly the single-set function (same bits). For M > 1 each set's gradient is computed on a copy of
 * the row and added in set order (two extra V-sized rows of per-thread scratch, allocated on first use). */
double mome_kd_full_forward_backward_multi(float *logits, mome_kd_sums *out, const float *teacher_logits, int M,
                                           const int32_t *targets, size_t N, int V, mome_kd_direction dir, float T,
                                           float w_ce, float w_kd, float grad_scale);
double mome_kd_topk_forward_backward_multi(float *logits, mome_kd_sums *out, const int32_t *topk_ids,
                                           const float *topk_logp, const float *topk_tail, int M,
                                           const int32_t *targets, size_t N, int V, int k, mome_kd_direction dir,
                                           float T, float w_ce, float w_kd, float grad_scale);

/* Builds the top-k targets from teacher logits (N,V) at temperature T: topk_ids (N,k) in decreasing
 * probability, ties to the lower id; topk_logp (N,k) = log_softmax(teacher / T) at those ids; topk_tail (N,) =
 * the probability of every other id, summed directly (no 1 - sum cancellation; 0 when k = V). Returns MOME_OK,
 * or MOME_ENONFINITE (with a message naming the row and column) when a teacher logit is NaN or infinite. */
int mome_kd_topk_build(int32_t *topk_ids, float *topk_logp, float *topk_tail, const float *teacher_logits,
                       size_t N, int V, int k, float T);

/* ---- alpha ------------------------------------------------------------------------------------------------
 * Adaptive alpha (Al-Maamari et al., "Mixture of Modular Experts"): the last K values of each loss are kept,
 * K = max(20, total_steps / 100). For each loss
 *     d = (L_t - L_{t-K+1}) / mean(last K values),   w = 1 - clip(d, 0, 1)
 * (a loss that is falling or flat keeps full weight; one that rises by a fraction d of its mean loses it), and
 *     alpha = w_CE / (w_CE + w_KD).
 * alpha = 0.5 until K values of each loss exist, and when both w are 0. A mean that is not > 0 or a
 * non-finite d counts as d = 0. alpha is the CE weight: loss = alpha * CE + (1 - alpha) * T^2 * KL.
 * Fixed mode returns the constant alpha but still records the losses (so logs and checkpoints look alike).
 * Push once per optimizer step with that step's mean CE and KD loss (the rule is scale-free in each loss, so
 * logging KL or T^2 * KL gives the same alpha). */
typedef enum { MOME_KD_ALPHA_FIXED = 0, MOME_KD_ALPHA_ADAPTIVE = 1 } mome_kd_alpha_mode;

typedef struct {
    mome_kd_alpha_mode mode;
    double alpha_fixed; /* the alpha of fixed mode */
    size_t window;      /* K */
    uint64_t count;     /* values pushed since init (the ring holds the last min(count, K)) */
    size_t head;        /* ring index the next push writes */
    double *ce;         /* (K) ring buffer of CE losses, heap-allocated */
    double *kd;         /* (K) ring buffer of KD losses */
} mome_kd_alpha;

/* K = max(20, total_steps / 100). */
size_t mome_kd_alpha_window(uint64_t total_steps);
/* alpha_fixed must lie in [0, 1] (checked in both modes); window >= 2. MOME_EINVAL with a message otherwise. */
int mome_kd_alpha_init(mome_kd_alpha *a, mome_kd_alpha_mode mode, double alpha_fixed, size_t window);
/* Accepts NULL and a zeroed struct. */
void mome_kd_alpha_free(mome_kd_alpha *a);
void mome_kd_alpha_push(mome_kd_alpha *a, double ce, double kd);
/* The alpha for the next step. */
double mome_kd_alpha_get(const mome_kd_alpha *a);

/* Checkpoint state: ce and kd (window,) receive the ring in chronological order (oldest first; the first
 * min(count, window) entries are meaningful, the rest 0) and *count the number of pushes. Restoring with
 * mome_kd_alpha_import into a state made by init with the same window continues exactly as the original.
 * Import: MOME_EMISMATCH (naming both) when window differs from a->window. */
void mome_kd_alpha_export(const mome_kd_alpha *a, double *ce, double *kd, uint64_t *count);
int mome_kd_alpha_import(mome_kd_alpha *a, const double *ce, const double *kd, size_t window, uint64_t count);

/* ---- schedule ---------------------------------------------------------------------------------------------
 * Effective weights of one micro-batch (global micro-batch index i, counted from 0 over the whole run):
 *   MOME_KD_COMBINED:     (w_ce, w_kd) = (alpha, 1 - alpha) on every micro-batch;
 *   MOME_KD_ALTERNATING:  micro-batch i is CE-only when i is even, (1, 0), and KD-only when i is odd, (0, 1);
 *                         alpha is not used (the teacher is not needed on even micro-batches). */
typedef enum { MOME_KD_COMBINED = 0, MOME_KD_ALTERNATING = 1 } mome_kd_schedule;

void mome_kd_weights(mome_kd_schedule schedule, double alpha, uint64_t micro_batch, float *w_ce, float *w_kd);

#endif
