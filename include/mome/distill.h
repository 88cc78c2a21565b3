/* distill.h — the teacher side of knowledge distillation during training.
 *
 * The teacher is any mome checkpoint (dense or MoE). Placement:
 *   coordinator: rank 0 gathers every rank's input tokens (MPI_Gather), runs the teacher once on the whole
 *                global micro-batch and sends each rank its targets (MPI_Scatter);
 *   each:        every rank runs its own copy of the teacher on its own micro-batch;
 *   cache:       targets come from an HDF5 file written once by `mome teacher cache` (mome_teacher_cache_write)
 *                for exactly the samples the run draws (samples are a function of the seed and the index).
 * Targets are the full teacher logits (4V bytes per position) or, with kd.teacher_topk = k, the top-k log-probs
 * at temperature T plus the remaining mass (8k + 4 bytes per position, kd.h). A teacher whose tokenizer or
 * vocabulary differs from the student's is refused at start, with both values.
 *
 * Distilling an MoE teacher (kd.method; "Every Expert Matters", Kim et al. 2025; docs/distillation.md):
 *   topk: the teacher routes as trained (any teacher, dense or MoE);
 *   all:  every token uses every expert of every teacher layer, weights the softmax over all E (gate mode ALL);
 *   ka:   knowledge augmentation: M = kd.ka_passes teacher passes per micro-batch, each in gate mode KA
 *         (n = kd.ka_n experts per token, drawn from the gate with probability kd.ka_lambda, else the top n)
 *         with its own counter; the targets are M sets and the KD loss is the mean of the M divergences.
 *         Draws depend on (seed, micro-batch, pass, layer, global token) only: identical between placements
 *         and thread counts, and a resumed run redraws them (mome_distill_gate_mode);
 *   sar:  student-aware router: the teacher uses all experts (ALL) and, on each micro-batch with a KD term, after
 *         the student's forward and before the targets, its gate ("blocks/gate_w", only it) takes one AdamW step on
 *         the router loss (mome_distill_router_step); the targets are then computed by the updated teacher.
 * Methods other than topk need an MoE teacher. Placement cache: topk and all (the cache records which); ka and
 * sar need the teacher itself and are refused.
 */
#ifndef MOME_DISTILL_H
#define MOME_DISTILL_H

#include <hdf5.h>
#include <mpi.h>
#include <stdint.h>

#include "mome/config.h"
#include "mome/kd.h"
#include "mome/model.h"
#include "mome/optim.h"

/* How an MoE teacher routes (kd.method). */
typedef enum {
    MOME_KD_METHOD_TOPK = 0, /* as trained */
    MOME_KD_METHOD_ALL = 1,  /* every expert (gate mode ALL) */
    MOME_KD_METHOD_KA = 2,   /* knowledge augmentation: M passes in gate mode KA, KD loss averaged */
    MOME_KD_METHOD_SAR = 3   /* student-aware router: ALL, and the gate trained against the student */
} mome_kd_method;

typedef struct {
    int on;                  /* a teacher is configured */
    int here;                /* this rank runs the teacher */
    int coordinator;         /* 1: rank 0 serves every rank; 0: each rank runs its own */
    int topk;                /* 0: full logits */
    mome_kd_direction dir;
    float temperature;
    MPI_Comm comm;
    int rank, world, B_local, T, V;
    char path[1024];         /* the teacher checkpoint */
    mome_config tcfg;        /* the teacher's configuration */
    mome_gpt teacher;        /* loaded where `here` */
    int32_t *all_inp;        /* coordinator rank 0: (world * B_local, T) inputs of every rank */
    float *logits;           /* (B_local*T, V) full targets of this rank (full mode) */
    int32_t *tk_ids;         /* (B_local*T, k) top-k targets of this rank (top-k mode) */
    float *tk_logp, *tk_tail;/* (B_local*T, k), (B_local*T) */
                             /* with M = passes target sets, each of these is stacked M times: (M, B_local*T, ...) */
    int32_t *all_ids;        /* coordinator rank 0: (world*B_local*T, k), one pass */
    float *all_logp, *all_tail;
    size_t bytes_sent;       /* bytes rank 0 sent to other ranks for the last targets (coordinator) */
    int cached;              /* placement = cache */
    hid_t cache;             /* the open cache file (cached) */
    char cache_path[1024];
    /* kd.method */
    mome_kd_method method;
    int passes;              /* M: target sets per micro-batch (ka_passes for ka, else 1) */
    mome_moe_gate_mode gate; /* the teacher's gate mode; for ka the counter and token_base are set per pass */
    /* sar: the teacher is in training mode (gradients, every layer's activations) where it runs */
    float sar_lr, sar_aux_coef;
    size_t gate_n;           /* floats in "blocks/gate_w" (L, E, C): the router state; 0 unless sar */
    size_t gate_off;         /* its offset in the teacher's flat buffer (where the teacher runs) */
    mome_tensor_table gate_tab; /* one tensor, the gate, at offset 0 (for mome_adamw_update) */
    mome_adamw gate_opt;     /* the gate's AdamW (where the teacher runs) */
    int32_t *no_targets;     /* (rows the teacher sees) all -1: the router loss has no CE */
    float *all_student;      /* coordinator rank 0: (world*B_local*T, V) the gathered student logits */
    double *sar_load;        /* (L, E) f_e of the last router loss (fractions of the top_k assignments) */
    double sar_kl, sar_aux;  /* the last router loss = sar_kl + sar_aux_coef * sar_aux (equal on every rank) */
    char *tconfig_text;      /* the teacher checkpoint's /config, tokenizer and kind (mome_distill_save_router) */
    char ttokenizer[32], tkind[32];
} mome_distiller;

/* The cache file of a config: teacher.cache, or teacher_cache/<run_name>.h5. */
void mome_distill_cache_path(const mome_config *cfg, char *out, size_t cap);
/* `mome teacher cache`: runs the teacher over every sample of the configured run (steps x grad_accum x
 * batch_size sequences) and writes the top-k targets (kd.teacher_topk must be > 0) atomically to the cache path.
 * One process. */
int mome_teacher_cache_write(const mome_config *cfg);

/* Resolves and checks the teacher against the corpus (tokenizer hash, vocabulary, sequence length) on every
 * rank, loads it where it runs and sizes the buffers. Returns the same status on every rank. */
int mome_distill_init(mome_distiller *d, const mome_config *cfg, const char *corpus_hash, int vocab, int B_local,
                      int T, MPI_Comm comm);
void mome_distill_free(mome_distiller *d);
/* Collective: computes this rank's targets for inputs (B_local, T), which are global samples
 * [first_sample, first_sample + B_local) of the run (the cache placement reads them by that index). */
int mome_distill_targets(mome_distiller *d, const int32_t *inputs, uint64_t first_sample);
/* The fused loss with this rank's last targets (see kd.h); w_kd == 0 needs no targets. With M target sets (ka)
 * the KD term is the mean of the M divergences and the CE counts once (mome_kd_*_forward_backward_multi). */
double mome_distill_loss(const mome_distiller *d, float *logits, mome_kd_sums *sums, const int32_t *targets,
                         float w_ce, float w_kd, float grad_scale);

/* The gate mode of teacher pass `pass` for the micro-batch whose rank-local samples start at first_sample (the
 * value given to mome_distill_targets). For ka: counter = mb * M + pass with mb = first_sample / (world *
 * B_local), the global micro-batch index; token_base = the global index of the teacher's first token in that
 * micro-batch (0 for the coordinator, which runs the whole micro-batch; (first_sample mod (world * B_local)) * T
 * for each rank); seed = a stream of train.seed. Other methods: d->gate unchanged. */
void mome_distill_gate_mode(const mome_distiller *d, uint64_t first_sample, int pass, mome_moe_gate_mode *mode);

/* ---- sar: the student-aware router ----
 * Router loss of a micro-batch (the teacher in ALL mode, the student's logits z fixed):
 *     L_router = T^2 * mean over the micro-batch's positions of KL  +  sar_aux_coef * sum over layers aux_l
 * KL in kd.direction (forward: KL(p_teacher^T || q_student^T); reverse: KL(q_student^T || p_teacher^T)), aux_l =
 * E * sum_e f_e P_e the Switch term with P_e the mean gate probability and f_e the fraction of the top_k
 * assignments (the teacher's trained top_k, ties to the lower index) of expert e: in ALL mode the assignments
 * actually made are 1/E each, which would make the term constant. f_e is a constant for the gradient (Switch).
 * Statistics are over the global micro-batch (all ranks), so both placements give the same loss and update.
 * The gradient reaches gate_w of every layer through the whole teacher (its backward); only gate_w is updated. */

/* Collective over d->comm: one AdamW step (lr sar_lr, constant; train.beta1/beta2/eps; no weight decay, no
 * clipping) of the teacher's gate on L_router for inputs (B_local, T) and this rank's student logits
 * (B_local*T, V) of the same micro-batch (read only). Coordinator: rank 0 gathers inputs and student logits;
 * each: every rank runs its copy and the gate gradients are summed over d->comm, so the copies stay identical.
 * *router_loss (may be NULL) receives L_router before the step, the same on every rank. MOME_EINVAL unless
 * method = sar; MOME_ENONFINITE (no update) when the loss is not finite. Call it after the student's forward and
 * before mome_distill_targets for the same micro-batch. */
int mome_distill_router_step(mome_distiller *d, const int32_t *inputs, const float *student_logits,
                             uint64_t first_sample, double *router_loss);
/* The same loss and its gradient without a step (tests, diagnostics): *router_loss (may be NULL) as above;
 * grad_gate (gate_n floats, may be NULL; written where the teacher runs: rank 0 with coordinator, every rank with
 * each) receives dL_router/d gate_w. Collective. */
int mome_distill_router_loss(mome_distiller *d, const int32_t *inputs, const float *student_logits,
                             uint64_t first_sample, double *router_loss, float *grad_gate);
/* Router state for checkpoints: gate_w, both AdamW moments (gate_n floats each, layout (L, E, C)) and the AdamW
 * step count. Get: on rank 0 (which holds the teacher in both placements); MOME_EINVAL unless method = sar or on
 * a rank without the teacher. Set: collective; rank 0's arrays are broadcast and installed wherever the teacher
 * runs (other ranks may pass NULL). */
int mome_distill_router_state_get(const mome_distiller *d, float *gate, float *adam_m, float *adam_v,
                                  int64_t *adam_step);
int mome_distill_router_state_set(mome_distiller *d, const float *gate, const float *adam_m, const float *adam_v,
                                  int64_t adam_step);
/* Writes the teacher with its trained gate as a mome checkpoint into the directory dir: dir/step_<S>.h5 with S =
 * the router's AdamW steps, dir/latest updated, older step files removed (mome_ckpt_save with keep 1). The file
 * holds the teacher checkpoint's own config, tokenizer hash and every tensor, so it loads anywhere a checkpoint
 * does (e.g. teacher.checkpoint = dir, or `mome eval`). Call on rank 0; elsewhere it does nothing. */
int mome_distill_save_router(const mome_distiller *d, const char *dir);

#endif
