/* parallel.h — the parallel layout of a run: data parallelism over all ranks, expert parallelism within groups.
 *
 * The world is cut into groups of `ep` consecutive ranks. Within a group (ep_comm) the experts are partitioned
 * (dispatch.h moves rows to them); across groups, the ranks at the same position hold the same experts
 * (replica_comm) and average their gradients. Dense parameters are replicated everywhere. Parameter buffers
 * put the dense tensors first and this rank's experts last (model.h: n_dense), so each reduction is one call.
 * The communicators are created once here and passed explicitly to whatever needs them.
 */
#ifndef MOME_PARALLEL_H
#define MOME_PARALLEL_H

#include <mpi.h>
#include <stddef.h>

#include "mome/dispatch.h"
#include "mome/tensor.h"

typedef struct {
    MPI_Comm world;        /* every rank (not owned) */
    int rank, size;        /* in world */
    int ep;                /* ranks per expert-parallel group */
    int group;             /* rank / ep */
    int ep_rank;           /* rank % ep: position in the group */
    MPI_Comm ep_comm;      /* the ranks of this group */
    MPI_Comm replica_comm; /* the ranks holding the same experts (one per group) */
    int n_experts;         /* 0 for a dense model */
    mome_dispatch dispatch;/* partition of the experts over ep_comm (valid when n_experts > 0) */
    int expert_first, expert_count; /* this rank's experts */
} mome_parallel;

/* ep = 0 means the whole world. Errors (ep not dividing the world, fewer experts than ep) are MOME_ECONFIG;
 * every rank gets the same result. Collective over world. */
int mome_parallel_init(mome_parallel *p, MPI_Comm world, int ep, int n_experts);
void mome_parallel_free(mome_parallel *p);

/* Sums gradients: [0, n_dense) over the world, [n_dense, total) over the replicas of this rank's experts. */
int mome_parallel_allreduce_grads(const mome_parallel *p, float *grads, size_t n_dense, size_t total);
/* Global L2 norm of the gradient (after mome_parallel_allreduce_grads): the dense part once, every expert once.
 * The same value on every rank. */
double mome_parallel_grad_norm(const mome_parallel *p, const float *grads, size_t n_dense, size_t total);

/* The table `local` with `count` experts along every expert dimension (offsets recomputed in the same order):
 * the table of another rank's share, or with count = n_experts, the checkpoint's global table. */
void mome_table_with_experts(const mome_tensor_table *local, int count, mome_tensor_table *out);
/* Copies the tensors of a table holding experts [first, first + table_count) between its buffer `part` and a
 * global-table buffer `full`. to_full = 1: part -> full; 0: full -> part. Dense tensors are copied whole. */
void mome_table_copy_experts(const mome_tensor_table *part, float *part_buf, int first, const mome_tensor_table *full,
                             float *full_buf, int to_full);

/* Assembles the global buffers (params and optional moments) on world rank 0 from the ranks of group 0: dense
 * tensors from rank 0, every expert from the rank that holds it. full_* (global table size) need to be valid on
 * rank 0 only. Collective over group 0's ep_comm; other groups return at once. */
int mome_parallel_gather(const mome_parallel *p, const mome_tensor_table *local, const float *const *local_bufs,
                         const mome_tensor_table *full, float *const *full_bufs, int n_bufs);

#endif
