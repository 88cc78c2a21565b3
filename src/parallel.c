/* parallel.c — communicators, gradient reductions and checkpoint gathering for the layout in parallel.h. */
#include "mome/parallel.h"

#include <math.h>
#include <string.h>

#include "mome/common.h"
#include "mome/optim.h"

int mome_parallel_init(mome_parallel *p, MPI_Comm world, int ep, int n_experts) {
    memset(p, 0, sizeof *p);
    p->world = world;
    p->ep_comm = MPI_COMM_NULL;
    p->replica_comm = MPI_COMM_NULL;
    MPI_Comm_rank(world, &p->rank);
    MPI_Comm_size(world, &p->size);
    if (ep <= 0) ep = p->size;
    if (p->size % ep != 0)
        return mome_error_set(MOME_ECONFIG, "[parallel] ep = %d does not divide the %d ranks", ep, p->size);
    if (n_experts > 0 && n_experts < ep)
        return mome_error_set(MOME_ECONFIG,
                              "[moe] n_experts = %d cannot be spread over an expert-parallel group of %d ranks "
                              "(set parallel.ep to at most %d)",
                              n_experts, ep, n_experts);
    p->ep = ep;
    p->group = p->rank / ep;
    p->ep_rank = p->rank % ep;
    p->n_experts = n_experts;
    MPI_Comm_split(world, p->group, p->rank, &p->ep_comm);
    MPI_Comm_split(world, p->ep_rank, p->rank, &p->replica_comm);
    if (n_experts > 0) {
        int rc = mome_dispatch_init(&p->dispatch, p->ep_comm, n_experts);
        if (rc) return rc;
        p->expert_first = p->dispatch.first[p->ep_rank];
        p->expert_count = p->dispatch.n_local;
    }
    return MOME_OK;
}

void mome_parallel_free(mome_parallel *p) {
    if (p->n_experts > 0) mome_dispatch_free(&p->dispatch);
    if (p->ep_comm != MPI_COMM_NULL) MPI_Comm_free(&p->ep_comm);
    if (p->replica_comm != MPI_COMM_NULL) MPI_Comm_free(&p->replica_comm);
    memset(p, 0, sizeof *p);
}

/* Allreduce in chunks: MPI counts are ints. */
static int allreduce_floats(float *buf, size_t n, MPI_Comm comm) {
    const size_t chunk = (size_t)1 << 30;
    for (size_t off = 0; off < n; off += chunk) {
        int cnt = (int)(n - off < chunk ? n - off : chunk);
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, cnt, MPI_FLOAT, MPI_SUM, comm);
        if (rc != MPI_SUCCESS) return mome_error_set(MOME_EMPI, "gradient all-reduce failed (MPI error %d)", rc);
    }
    return MOME_OK;
}

int mome_parallel_allreduce_grads(const mome_parallel *p, float *grads, size_t n_dense, size_t total) {
    int rc = MOME_OK;
    if (p->size > 1) rc = allreduce_floats(grads, n_dense, p->world);
    int replicas = p->size / p->ep;
    if (rc == MOME_OK && replicas > 1 && total > n_dense)
        rc = allreduce_floats(grads + n_dense, total - n_dense, p->replica_comm);
    return rc;
}

double mome_parallel_grad_norm(const mome_parallel *p, const float *grads, size_t n_dense, size_t total) {
    double dense = mome_grad_norm(grads, n_dense);
    double experts = total > n_dense ? mome_grad_norm(grads + n_dense, total - n_dense) : 0.0;
    double sq = experts * experts;
    if (p->ep > 1) MPI_Allreduce(MPI_IN_PLACE, &sq, 1, MPI_DOUBLE, MPI_SUM, p->ep_comm);
    return sqrt(dense * dense + sq);
}

void mome_table_with_experts(const mome_tensor_table *local, int count, mome_tensor_table *out) {
    mome_tensor_table t;
    memset(&t, 0, sizeof t);
    for (int i = 0; i < local->n; i++) {
        const mome_tensor_info *ti = &local->t[i];
        size_t shape[MOME_MAX_DIMS];
        memcpy(shape, ti->shape, sizeof shape);
        if (ti->expert_dim >= 0) shape[ti->expert_dim] = (size_t)count;
        int k = mome_tensor_table_add(&t, ti->name, ti->ndim, shape, ti->decay);
        t.t[k].expert_dim = ti->expert_dim;
    }
    *out = t;
}

void mome_table_copy_experts(const mome_tensor_table *part, float *part_buf, int first, const mome_tensor_table *full,
                             float *full_buf, int to_full) {
    for (int i = 0; i < part->n; i++) {
        const mome_tensor_info *a = &part->t[i];
        int j = mome_tensor_table_find(full, a->name);
        MOME_CHECK(j >= 0, "tensor %s missing from the global table", a->name);
        const mome_tensor_info *b = &full->t[j];
        if (a->expert_dim < 0) {
            MOME_CHECK(a->numel == b->numel, "tensor %s: %zu vs %zu elements", a->name, a->numel, b->numel);
            if (to_full) memcpy(full_buf + b->offset, part_buf + a->offset, a->numel * sizeof(float));
            else memcpy(part_buf + a->offset, full_buf + b->offset, a->numel * sizeof(float));
            continue;
        }
        /* outer = product of dims before the expert dim; inner = one expert's slice. */
        size_t outer = 1, inner = 1;
        for (int d = 0; d < a->expert_dim; d++) outer *= a->shape[d];
        for (int d = a->expert_dim + 1; d < MOME_MAX_DIMS; d++) inner *= a->shape[d];
        size_t na = a->shape[a->expert_dim], nb = b->shape[b->expert_dim];
        MOME_CHECK((size_t)first + na <= nb, "tensor %s: experts [%d, %zu) beyond %zu", a->name, first,
                   (size_t)first + na, nb);
        for (size_t o = 0; o < outer; o++) {
            float *pa = part_buf + a->offset + o * na * inner;
            float *pb = full_buf + b->offset + (o * nb + (size_t)first) * inner;
            if (to_full) memcpy(pb, pa, na * inner * sizeof(float));
            else memcpy(pa, pb, na * inner * sizeof(float));
        }
    }
}

int mome_parallel_gather(const mome_parallel *p, const mome_tensor_table *local, const float *const *local_bufs,
                         const mome_tensor_table *full, float *const *full_bufs, int n_bufs) {
    if (p->group != 0) return MOME_OK;
    if (p->ep == 1 || p->n_experts == 0) {
        if (p->rank == 0)
            for (int b = 0; b < n_bufs; b++)
                mome_table_copy_experts(local, (float *)local_bufs[b], 0, full, full_bufs[b], 1);
        return MOME_OK;
    }
    /* Group 0: every rank sends its whole local buffer; rank 0 unpacks each with that rank's table. */
    int n = p->ep;
    int *counts = mome_calloc((size_t)n, sizeof(int)), *displs = mome_calloc((size_t)n, sizeof(int));
    mome_tensor_table *tabs = p->rank == 0 ? mome_malloc((size_t)n * sizeof *tabs) : NULL;
    size_t total = 0;
    for (int r = 0; r < n; r++) {
        mome_tensor_table t;
        mome_table_with_experts(local, p->dispatch.first[r + 1] - p->dispatch.first[r], &t);
        MOME_CHECK(t.total <= (size_t)1 << 30, "a rank's share (%zu floats) is too large to gather at once", t.total);
        counts[r] = (int)t.total;
        displs[r] = (int)total;
        total += t.total;
        if (tabs) tabs[r] = t;
    }
    float *recv = p->rank == 0 ? mome_malloc(total * sizeof(float)) : NULL;
    int rc = MOME_OK;
    for (int b = 0; b < n_bufs && rc == MOME_OK; b++) {
        int e = MPI_Gatherv(local_bufs[b], (int)local->total, MPI_FLOAT, recv, counts, displs, MPI_FLOAT, 0,
                            p->ep_comm);
        if (e != MPI_SUCCESS) {
            rc = mome_error_set(MOME_EMPI, "gathering the experts for a checkpoint failed (MPI error %d)", e);
            break;
        }
        if (p->rank == 0) {
            /* Every expert must come from exactly one rank before the checkpoint is written. */
            int *arrived = mome_calloc((size_t)p->n_experts, sizeof *arrived);
            for (int r = 0; r < n; r++) {
                mome_table_copy_experts(&tabs[r], recv + displs[r], p->dispatch.first[r], full, full_bufs[b], 1);
                for (int x = p->dispatch.first[r]; x < p->dispatch.first[r + 1]; x++) arrived[x]++;
            }
            for (int x = 0; x < p->n_experts && rc == MOME_OK; x++)
                if (arrived[x] != 1)
                    rc = mome_error_set(MOME_EMISMATCH, "checkpoint: expert %d arrived from %d ranks, expected 1", x,
                                        arrived[x]);
            mome_free(arrived);
        }
    }
    mome_free(recv);
    mome_free(tabs);
    mome_free(counts);
    mome_free(displs);
    return rc;
}
