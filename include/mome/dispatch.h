/* dispatch.h — moving rows to the ranks that hold their expert, and back (expert parallelism).
 *
 * Experts 0..E-1 are partitioned over the ranks of an expert-parallel communicator in contiguous ranges: rank r
 * holds experts [first[r], first[r+1]). A row is a token (token-level MoE) or a whole sequence (modular
 * experts); it is `width` floats. Each rank hands over its rows grouped by global expert id; a plan exchanges
 * the per-expert counts first (MPI_Alltoall), so every rank knows every size before any variable-size exchange
 * (MPI_Alltoallv) starts and none can wait on a mismatched shape. The rows a rank receives are regrouped by
 * local expert, so each expert sees one contiguous block of rows for its matrix products; the way back (the
 * expert outputs, or in backward the gradients) is the exact reverse.
 *
 * The plan owns its count and displacement arrays; the caller owns the row buffers (sized with
 * mome_dispatch_recv_rows after planning), so a step allocates nothing once the plan has seen its largest batch.
 */
#ifndef MOME_DISPATCH_H
#define MOME_DISPATCH_H

#include <mpi.h>
#include <stddef.h>

typedef struct {
    MPI_Comm comm;     /* expert-parallel group (not owned) */
    int rank, size;    /* in comm */
    int n_experts;     /* E, global */
    int *first;        /* (size + 1): rank r holds experts [first[r], first[r+1]) */
    int n_local;       /* experts on this rank */
    int max_local;     /* most experts on any rank */
    int *count_buf;    /* (2, size, max_local) scratch for the count exchange */
    /* Plan of the current exchange (mome_dispatch_plan). */
    int *send_counts;  /* (E) rows this rank sends to each global expert */
    int *recv_counts;  /* (size, n_local) rows received from each source rank for each local expert */
    int *peer_send;    /* (size) rows sent to each rank */
    int *peer_sdispl;  /* (size) */
    int *peer_recv;    /* (size) rows received from each rank */
    int *peer_rdispl;  /* (size) */
    int *expert_rows;  /* (n_local) rows received for each local expert, over all sources */
    int *expert_first; /* (n_local + 1) first row of each local expert in the regrouped buffer */
    size_t n_send;     /* rows sent in total */
    size_t n_recv;     /* rows received in total */
    size_t bytes_sent; /* by the last forward/backward call, for the log */
} mome_dispatch;

/* Partitions n_experts over the ranks of comm as evenly as possible (the first E mod size ranks get one more).
 * Collective only in that every rank must call it with the same arguments. */
int mome_dispatch_init(mome_dispatch *d, MPI_Comm comm, int n_experts);
void mome_dispatch_free(mome_dispatch *d);
/* The rank of comm that holds global expert e. */
int mome_dispatch_owner(const mome_dispatch *d, int e);

/* Collective: exchanges the per-expert row counts (counts[e] = rows this rank sends to expert e, E entries). */
int mome_dispatch_plan(mome_dispatch *d, const int *counts);
/* Rows this rank will receive (after plan). */
size_t mome_dispatch_recv_rows(const mome_dispatch *d);

/* Collective. send is (n_send, width) grouped by global expert in increasing id; recv becomes (n_recv, width)
 * grouped by local expert (expert_first gives the blocks), within an expert by source rank, then in the order
 * the source sent them. scratch is (n_recv, width) floats. */
int mome_dispatch_forward(mome_dispatch *d, const float *send, float *recv, float *scratch, int width);
/* Collective, the reverse: back is (n_recv, width) grouped by local expert as forward produced; out becomes
 * (n_send, width) in the order of the original send buffer. scratch is (n_recv, width) floats. */
int mome_dispatch_reverse(mome_dispatch *d, const float *back, float *out, float *scratch, int width);

#endif
