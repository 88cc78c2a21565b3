/* distill.c — the teacher during training: checks, placement (coordinator or each rank), targets (distill.h).
 * The losses themselves are kd.c's. */
#include "mome/distill.h"

#include <string.h>
#include <sys/stat.h>

#include "mome/checkpoint.h"
#include "mome/common.h"
#include "mome/train.h"

static int resolve_path(const char *spec, char *out, size_t cap) {
    struct stat st;
    if (stat(spec, &st) != 0) return mome_error_set(MOME_ENOENT, "[teacher] checkpoint = '%s': no such file or directory", spec);
    if (S_ISDIR(st.st_mode)) {
        int rc = mome_ckpt_latest(spec, out, cap);
        if (rc) return mome_error_wrap(rc, "[teacher] checkpoint = '%s'", spec);
        return MOME_OK;
    }
    snprintf(out, cap, "%s", spec);
    return MOME_OK;
}

int mome_distill_init(mome_distiller *d, const mome_config *cfg, const char *corpus_hash, int vocab, int B_local,
                      int T, MPI_Comm comm) {
    memset(d, 0, sizeof *d);
    if (!cfg->teacher.checkpoint[0]) return MOME_OK;
    d->on = 1;
    d->comm = comm;
    MPI_Comm_rank(comm, &d->rank);
    MPI_Comm_size(comm, &d->world);
    d->B_local = B_local;
    d->T = T;
    d->V = vocab;
    d->coordinator = strcmp(cfg->teacher.placement, "coordinator") == 0;
    d->here = d->coordinator ? d->rank == 0 : 1;
    d->topk = cfg->kd.teacher_topk;
    d->dir = strcmp(cfg->kd.direction, "reverse") == 0 ? MOME_KD_REVERSE : MOME_KD_FORWARD;
    d->temperature = cfg->kd.temperature;
    if (d->topk > vocab)
        return mome_error_set(MOME_ECONFIG, "[kd] teacher_topk = %d exceeds the vocabulary (%d)", d->topk, vocab);
    int rc = resolve_path(cfg->teacher.checkpoint, d->path, sizeof d->path);
    if (rc) return rc;
    mome_ckpt_info info;
    rc = mome_ckpt_read_info(d->path, &info);
    if (rc) return mome_error_wrap(rc, "teacher");
    mome_config_defaults(&d->tcfg);
    char origin[1100];
    snprintf(origin, sizeof origin, "%s:/config", d->path);
    rc = mome_config_load_string(&d->tcfg, info.config_text, origin);
    if (rc == MOME_OK && strcmp(info.tokenizer_hash, corpus_hash) != 0)
        rc = mome_error_set(MOME_EMISMATCH,
                            "teacher %s uses tokenizer %s but the student's corpus uses tokenizer %s: a teacher must "
                            "share the student's tokenizer",
                            d->path, info.tokenizer_hash, corpus_hash);
    if (rc == MOME_OK && d->tcfg.model.vocab_size != vocab)
        rc = mome_error_set(MOME_EMISMATCH, "teacher %s has a vocabulary of %d tokens, the student %d", d->path,
                            d->tcfg.model.vocab_size, vocab);
    if (rc == MOME_OK && d->tcfg.model.seq_len < T)
        rc = mome_error_set(MOME_EMISMATCH, "teacher %s handles sequences of %d tokens, the student trains on %d",
                            d->path, d->tcfg.model.seq_len, T);
    mome_ckpt_info_free(&info);
    if (rc) return rc;
    if (d->here) {
        mome_config scratch;
        rc = mome_load_model(d->path, &scratch, &d->teacher);
        if (rc) return mome_error_wrap(rc, "loading teacher");
        int B = d->coordinator ? B_local * d->world : B_local;
        rc = mome_gpt_reserve(&d->teacher, B, T);
        if (rc) return rc;
    }
    const size_t rows = (size_t)B_local * (size_t)T, all = rows * (size_t)d->world;
    if (d->topk) {
        d->tk_ids = mome_malloc(rows * (size_t)d->topk * sizeof(int32_t));
        d->tk_logp = mome_malloc(rows * (size_t)d->topk * sizeof(float));
        d->tk_tail = mome_malloc(rows * sizeof(float));
        if (d->coordinator && d->rank == 0) {
            d->all_ids = mome_malloc(all * (size_t)d->topk * sizeof(int32_t));
            d->all_logp = mome_malloc(all * (size_t)d->topk * sizeof(float));
            d->all_tail = mome_malloc(all * sizeof(float));
        }
    } else {
        d->logits = mome_malloc(rows * (size_t)vocab * sizeof(float));
    }
    if (d->coordinator && d->rank == 0) d->all_inp = mome_malloc(all * sizeof(int32_t));
    return MOME_OK;
}

void mome_distill_free(mome_distiller *d) {
    if (d->here) mome_gpt_free(&d->teacher);
    mome_free(d->all_inp);
    mome_free(d->logits);
    mome_free(d->tk_ids);
    mome_free(d->tk_logp);
    mome_free(d->tk_tail);
    mome_free(d->all_ids);
    mome_free(d->all_logp);
    mome_free(d->all_tail);
    memset(d, 0, sizeof *d);
}

static int mpi_ok(int e, const char *what) {
    return e == MPI_SUCCESS ? MOME_OK : mome_error_set(MOME_EMPI, "teacher targets: %s failed (MPI error %d)", what, e);
}

/* Scatters `per_rank` items of `type` from rank 0's buffer (rank order) into each rank's `local`. */
static int scatter(const void *all, void *local, size_t per_rank, MPI_Datatype type, MPI_Comm comm) {
    MOME_CHECK(per_rank <= (size_t)1 << 30, "teacher targets: %zu items per rank exceed one MPI message", per_rank);
    return mpi_ok(MPI_Scatter(all, (int)per_rank, type, local, (int)per_rank, type, 0, comm), "MPI_Scatter");
}

int mome_distill_targets(mome_distiller *d, const int32_t *inputs) {
    const size_t rows = (size_t)d->B_local * (size_t)d->T, V = (size_t)d->V, k = (size_t)d->topk;
    int rc = MOME_OK;
    if (!d->coordinator) {
        mome_gpt_forward(&d->teacher, inputs, d->B_local, d->T);
        if (k) return mome_kd_topk_build(d->tk_ids, d->tk_logp, d->tk_tail, d->teacher.logits, rows, d->V, d->topk,
                                         d->temperature);
        memcpy(d->logits, d->teacher.logits, rows * V * sizeof(float));
        return MOME_OK;
    }
    rc = mpi_ok(MPI_Gather(inputs, (int)rows, MPI_INT32_T, d->all_inp, (int)rows, MPI_INT32_T, 0, d->comm),
                "MPI_Gather(inputs)");
    if (rc) return rc;
    const size_t all = rows * (size_t)d->world;
    if (d->rank == 0) {
        mome_gpt_forward(&d->teacher, d->all_inp, d->B_local * d->world, d->T);
        if (k) rc = mome_kd_topk_build(d->all_ids, d->all_logp, d->all_tail, d->teacher.logits, all, d->V, d->topk,
                                       d->temperature);
    }
    MPI_Bcast(&rc, 1, MPI_INT, 0, d->comm);
    if (rc) return rc == MOME_OK ? rc : mome_error_wrap(rc, "teacher targets on rank 0");
    if (k) {
        if ((rc = scatter(d->all_ids, d->tk_ids, rows * k, MPI_INT32_T, d->comm))) return rc;
        if ((rc = scatter(d->all_logp, d->tk_logp, rows * k, MPI_FLOAT, d->comm))) return rc;
        rc = scatter(d->all_tail, d->tk_tail, rows, MPI_FLOAT, d->comm);
        d->bytes_sent = (size_t)(d->world - 1) * rows * MOME_KD_TOPK_BYTES_PER_ROW(k);
    } else {
        /* Full logits can exceed one message: send them per sequence. */
        for (int b = 0; b < d->B_local && rc == MOME_OK; b++) {
            MPI_Datatype seq;
            MPI_Type_contiguous((int)((size_t)d->T * V), MPI_FLOAT, &seq);
            MPI_Type_commit(&seq);
            /* Rank r's sequence b is global sequence r * B_local + b. */
            MPI_Datatype strided;
            MPI_Type_create_resized(seq, 0, (MPI_Aint)((size_t)d->B_local * d->T * V * sizeof(float)), &strided);
            MPI_Type_commit(&strided);
            const float *src = d->rank == 0 ? d->teacher.logits + (size_t)b * d->T * V : NULL;
            rc = mpi_ok(MPI_Scatter(src, 1, strided, d->logits + (size_t)b * d->T * V, 1, seq, 0, d->comm),
                        "MPI_Scatter(logits)");
            MPI_Type_free(&strided);
            MPI_Type_free(&seq);
        }
        d->bytes_sent = (size_t)(d->world - 1) * rows * MOME_KD_FULL_BYTES_PER_ROW(V);
    }
    return rc;
}

double mome_distill_loss(const mome_distiller *d, float *logits, mome_kd_sums *sums, const int32_t *targets,
                         float w_ce, float w_kd, float grad_scale) {
    const size_t rows = (size_t)d->B_local * (size_t)d->T;
    if (d->topk)
        return mome_kd_topk_forward_backward(logits, sums, w_kd > 0 ? d->tk_ids : NULL, w_kd > 0 ? d->tk_logp : NULL,
                                             w_kd > 0 ? d->tk_tail : NULL, targets, rows, d->V, d->topk, d->dir,
                                             d->temperature, w_ce, w_kd, grad_scale);
    return mome_kd_full_forward_backward(logits, sums, w_kd > 0 ? d->logits : NULL, targets, rows, d->V, d->dir,
                                         d->temperature, w_ce, w_kd, grad_scale);
}
