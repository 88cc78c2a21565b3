/* dispatch.c — expert-parallel row exchange: counts with MPI_Alltoall, rows with MPI_Alltoallv (dispatch.h).
 *
 * Received rows arrive grouped by source rank (each source's rows ordered by expert); a local permutation turns
 * that into grouping by local expert and back. The MoE layer decides which rows go where; this file only moves
 * them.
 */
#include "mome/dispatch.h"

#include <string.h>

#include "mome/common.h"

static int mpi_check(int rc, const char *what) {
    if (rc == MPI_SUCCESS) return MOME_OK;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return mome_error_set(MOME_EMPI, "dispatch: %s failed: %s", what, msg);
}

int mome_dispatch_init(mome_dispatch *d, MPI_Comm comm, int n_experts) {
    memset(d, 0, sizeof *d);
    d->comm = comm;
    MPI_Comm_rank(comm, &d->rank);
    MPI_Comm_size(comm, &d->size);
    if (n_experts < d->size)
        return mome_error_set(MOME_ECONFIG, "%d experts cannot be spread over %d expert-parallel ranks (need at "
                              "least one expert per rank)", n_experts, d->size);
    d->n_experts = n_experts;
    d->first = mome_calloc((size_t)d->size + 1, sizeof *d->first);
    int base = n_experts / d->size, extra = n_experts % d->size;
    for (int r = 0; r < d->size; r++) d->first[r + 1] = d->first[r] + base + (r < extra ? 1 : 0);
    d->n_local = d->first[d->rank + 1] - d->first[d->rank];
    d->max_local = base + (extra ? 1 : 0);
    d->count_buf = mome_calloc(2 * (size_t)d->size * (size_t)d->max_local, sizeof *d->count_buf);
    d->send_counts = mome_calloc((size_t)n_experts, sizeof *d->send_counts);
    d->recv_counts = mome_calloc((size_t)d->size * (size_t)d->n_local, sizeof *d->recv_counts);
    d->peer_send = mome_calloc((size_t)d->size, sizeof(int));
    d->peer_sdispl = mome_calloc((size_t)d->size, sizeof(int));
    d->peer_recv = mome_calloc((size_t)d->size, sizeof(int));
    d->peer_rdispl = mome_calloc((size_t)d->size, sizeof(int));
    d->expert_rows = mome_calloc((size_t)d->n_local, sizeof(int));
    d->expert_first = mome_calloc((size_t)d->n_local + 1, sizeof(int));
    return MOME_OK;
}

void mome_dispatch_free(mome_dispatch *d) {
    mome_free(d->first);
    mome_free(d->send_counts);
    mome_free(d->recv_counts);
    mome_free(d->peer_send);
    mome_free(d->peer_sdispl);
    mome_free(d->peer_recv);
    mome_free(d->peer_rdispl);
    mome_free(d->expert_rows);
    mome_free(d->expert_first);
    mome_free(d->count_buf);
    memset(d, 0, sizeof *d);
}

int mome_dispatch_owner(const mome_dispatch *d, int e) {
    MOME_CHECK(e >= 0 && e < d->n_experts, "expert %d out of range [0, %d)", e, d->n_experts);
    int lo = 0, hi = d->size - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (d->first[mid] <= e) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

int mome_dispatch_plan(mome_dispatch *d, const int *counts) {
    const int P = d->size, L = d->n_local;
    memcpy(d->send_counts, counts, (size_t)d->n_experts * sizeof *counts);
    /* Peer r receives, for each of its local experts, the count this rank sends: a block of (first[r+1]-first[r])
     * ints. Alltoall needs equal block sizes, so pad every block to the largest expert range. */
    const int maxl = d->max_local;
    int *sendbuf = d->count_buf, *recvbuf = d->count_buf + P * maxl;
    memset(sendbuf, 0, (size_t)P * (size_t)maxl * sizeof *sendbuf);
    for (int r = 0; r < P; r++)
        for (int e = d->first[r]; e < d->first[r + 1]; e++) sendbuf[r * maxl + (e - d->first[r])] = counts[e];
    int rc = mpi_check(MPI_Alltoall(sendbuf, maxl, MPI_INT, recvbuf, maxl, MPI_INT, d->comm), "MPI_Alltoall(counts)");
    if (rc) return rc;
    d->n_send = 0;
    d->n_recv = 0;
    for (int r = 0; r < P; r++) {
        int s = 0, q = 0;
        for (int e = d->first[r]; e < d->first[r + 1]; e++) s += counts[e];
        for (int l = 0; l < L; l++) {
            d->recv_counts[r * L + l] = recvbuf[r * maxl + l];
            q += recvbuf[r * maxl + l];
        }
        d->peer_send[r] = s;
        d->peer_sdispl[r] = (int)d->n_send;
        d->peer_recv[r] = q;
        d->peer_rdispl[r] = (int)d->n_recv;
        d->n_send += (size_t)s;
        d->n_recv += (size_t)q;
    }
    d->expert_first[0] = 0;
    for (int l = 0; l < L; l++) {
        int n = 0;
        for (int r = 0; r < P; r++) n += d->recv_counts[r * L + l];
        d->expert_rows[l] = n;
        d->expert_first[l + 1] = d->expert_first[l] + n;
    }
    return MOME_OK;
}

size_t mome_dispatch_recv_rows(const mome_dispatch *d) { return d->n_recv; }

/* Copies rows between the by-source layout (as received) and the by-expert layout. to_expert = 1: src is
 * by-source, dst by-expert; 0: the reverse. */
static void regroup(const mome_dispatch *d, const float *src, float *dst, int width, int to_expert) {
    const int P = d->size, L = d->n_local;
    size_t row_bytes = (size_t)width * sizeof(float);
    for (int l = 0; l < L; l++) {
        size_t eo = (size_t)d->expert_first[l];
        for (int r = 0; r < P; r++) {
            /* Offset of (r, l) in the by-source layout: r's block, then r's rows for local experts < l. */
            size_t so = (size_t)d->peer_rdispl[r];
            for (int k = 0; k < l; k++) so += (size_t)d->recv_counts[r * L + k];
            size_t n = (size_t)d->recv_counts[r * L + l];
            if (n) {
                if (to_expert)
                    memcpy(dst + eo * (size_t)width, src + so * (size_t)width, n * row_bytes);
                else
                    memcpy(dst + so * (size_t)width, src + eo * (size_t)width, n * row_bytes);
            }
            eo += n;
        }
    }
}

static int exchange(mome_dispatch *d, const float *send, const int *scount, const int *sdispl, float *recv,
                    const int *rcount, const int *rdispl, int width, const char *what) {
    MPI_Datatype row;
    MPI_Type_contiguous(width, MPI_FLOAT, &row);
    MPI_Type_commit(&row);
    int rc = mpi_check(MPI_Alltoallv(send, scount, sdispl, row, recv, rcount, rdispl, row, d->comm), what);
    MPI_Type_free(&row);
    size_t sent = 0;
    for (int r = 0; r < d->size; r++)
        if (r != d->rank) sent += (size_t)scount[r];
    d->bytes_sent = sent * (size_t)width * sizeof(float);
    return rc;
}

int mome_dispatch_forward(mome_dispatch *d, const float *send, float *recv, float *scratch, int width) {
    int rc = exchange(d, send, d->peer_send, d->peer_sdispl, scratch, d->peer_recv, d->peer_rdispl, width,
                      "MPI_Alltoallv(rows)");
    if (rc) return rc;
    regroup(d, scratch, recv, width, 1);
    return MOME_OK;
}

int mome_dispatch_reverse(mome_dispatch *d, const float *back, float *out, float *scratch, int width) {
    regroup(d, back, scratch, width, 0);
    return exchange(d, scratch, d->peer_recv, d->peer_rdispl, out, d->peer_send, d->peer_sdispl, width,
                    "MPI_Alltoallv(rows back)");
}
