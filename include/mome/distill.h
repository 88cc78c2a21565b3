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
 */
#ifndef MOME_DISTILL_H
#define MOME_DISTILL_H

#include <hdf5.h>
#include <mpi.h>
#include <stdint.h>

#include "mome/config.h"
#include "mome/kd.h"
#include "mome/model.h"

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
    int32_t *all_ids;        /* coordinator rank 0: (world*B_local*T, k) */
    float *all_logp, *all_tail;
    size_t bytes_sent;       /* bytes rank 0 sent to other ranks for the last targets (coordinator) */
    int cached;              /* placement = cache */
    hid_t cache;             /* the open cache file (cached) */
    char cache_path[1024];
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
/* The fused loss with this rank's last targets (see kd.h); w_kd == 0 needs no targets. */
double mome_distill_loss(const mome_distiller *d, float *logits, mome_kd_sums *sums, const int32_t *targets,
                         float w_ce, float w_kd, float grad_scale);

#endif
