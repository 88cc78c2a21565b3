/* distill.c — the teacher during training: checks, placement (coordinator or each rank), targets (distill.h).
 * The losses themselves are kd.c's. */
#include "mome/distill.h"

#include <string.h>
#include <sys/stat.h>

#include <math.h>
#include <stdio.h>
#include <unistd.h>

#include "mome/checkpoint.h"
#include "mome/common.h"
#include "mome/data.h"
#include "mome/h5io.h"
#include "mome/train.h"

#define CACHE_FORMAT "mome-teacher-cache"

void mome_distill_cache_path(const mome_config *cfg, char *out, size_t cap) {
    if (cfg->teacher.cache[0]) snprintf(out, cap, "%s", cfg->teacher.cache);
    else snprintf(out, cap, "teacher_cache/%s.h5", cfg->train.run_name);
}

/* The identity a cache must match: what decides which samples a run draws and what the targets are. */
typedef struct {
    const char *key;
    int64_t value;
} cache_attr;

static void cache_attrs(const mome_config *cfg, int T, cache_attr *a) {
    a[0] = (cache_attr){"seed", (int64_t)cfg->train.seed};
    a[1] = (cache_attr){"seq_len", T};
    a[2] = (cache_attr){"topk", cfg->kd.teacher_topk};
    uint32_t tbits;
    memcpy(&tbits, &cfg->kd.temperature, sizeof tbits);
    a[3] = (cache_attr){"temperature_bits", (int64_t)tbits};
}
#define N_CACHE_ATTRS 4

/* Reads or writes rows [row0, row0 + n) of a 2-D (rows, cols) or 1-D dataset. */
static int cache_rows(hid_t f, const char *name, hid_t mtype, void *buf, hsize_t row0, hsize_t n, hsize_t cols,
                      int write, const char *path) {
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    if (ds < 0) return mome_error_set(MOME_EFORMAT, "%s: no dataset %s", path, name);
    hid_t fs = H5Dget_space(ds);
    int nd = H5Sget_simple_extent_ndims(fs);
    hsize_t start[2] = {row0, 0}, count[2] = {n, cols}, total[2] = {0, 0};
    H5Sget_simple_extent_dims(fs, total, NULL);
    int rc = MOME_OK;
    if (row0 + n > total[0]) {
        rc = mome_error_set(MOME_EMISMATCH, "%s:%s has %llu rows, the run needs rows up to %llu", path, name,
                            (unsigned long long)total[0], (unsigned long long)(row0 + n));
    } else {
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
        hid_t ms = H5Screate_simple(nd, count, NULL);
        herr_t e = write ? H5Dwrite(ds, mtype, ms, fs, H5P_DEFAULT, buf) : H5Dread(ds, mtype, ms, fs, H5P_DEFAULT, buf);
        if (e < 0)
            rc = mome_error_set(write ? MOME_EIO : MOME_ECORRUPT, "%s:%s: %s rows %llu..%llu failed%s", path, name,
                                write ? "writing" : "reading", (unsigned long long)row0,
                                (unsigned long long)(row0 + n), write ? "" : " (checksum or truncation)");
        H5Sclose(ms);
    }
    H5Sclose(fs);
    H5Dclose(ds);
    return rc;
}

static int open_cache(mome_distiller *d, const mome_config *cfg, const char *corpus_hash) {
    mome_distill_cache_path(cfg, d->cache_path, sizeof d->cache_path);
    mome_h5_quiet();
    d->cache = mome_h5_open_read(d->cache_path);
    if (d->cache < 0)
        return mome_error_wrap(MOME_ENOENT, "teacher cache (write it with `mome teacher cache CONFIG`)");
    char fmt[64] = "", hash[32] = "";
    int rc = mome_h5_attr_get_str(d->cache, "format", fmt, sizeof fmt);
    if (rc || strcmp(fmt, CACHE_FORMAT) != 0)
        return mome_error_set(MOME_EFORMAT, "%s: not a mome teacher cache", d->cache_path);
    if ((rc = mome_h5_attr_get_str(d->cache, "tokenizer_hash", hash, sizeof hash))) return rc;
    if (strcmp(hash, corpus_hash) != 0)
        return mome_error_set(MOME_EMISMATCH, "%s was made with tokenizer %s, the corpus has tokenizer %s",
                              d->cache_path, hash, corpus_hash);
    cache_attr want[N_CACHE_ATTRS];
    cache_attrs(cfg, d->T, want);
    for (int i = 0; i < N_CACHE_ATTRS; i++) {
        int64_t got = 0;
        if ((rc = mome_h5_attr_get_i64(d->cache, want[i].key, &got))) return rc;
        if (got != want[i].value)
            return mome_error_set(MOME_EMISMATCH, "%s was made with %s = %lld, this run has %lld: rebuild the cache",
                                  d->cache_path, want[i].key, (long long)got, (long long)want[i].value);
    }
    return MOME_OK;
}

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
    d->cached = strcmp(cfg->teacher.placement, "cache") == 0;
    d->here = d->cached ? 0 : d->coordinator ? d->rank == 0 : 1;
    d->cache = -1;
    d->topk = cfg->kd.teacher_topk;
    d->dir = strcmp(cfg->kd.direction, "reverse") == 0 ? MOME_KD_REVERSE : MOME_KD_FORWARD;
    d->temperature = cfg->kd.temperature;
    if (d->topk > vocab)
        return mome_error_set(MOME_ECONFIG, "[kd] teacher_topk = %d exceeds the vocabulary (%d)", d->topk, vocab);
    if (d->cached && d->topk == 0)
        return mome_error_set(MOME_ECONFIG, "[teacher] placement = cache needs [kd] teacher_topk > 0 (the cache holds "
                              "top-k targets)");
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
    if (d->cached && (rc = open_cache(d, cfg, corpus_hash))) return rc;
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
    if (d->cached && d->cache >= 0) H5Fclose(d->cache);
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

int mome_distill_targets(mome_distiller *d, const int32_t *inputs, uint64_t first_sample) {
    const size_t rows = (size_t)d->B_local * (size_t)d->T, V = (size_t)d->V, k = (size_t)d->topk;
    int rc = MOME_OK;
    if (d->cached) {
        hsize_t r0 = (hsize_t)first_sample * (hsize_t)d->T;
        if ((rc = cache_rows(d->cache, "ids", H5T_NATIVE_INT32, d->tk_ids, r0, rows, k, 0, d->cache_path))) return rc;
        if ((rc = cache_rows(d->cache, "logp", H5T_NATIVE_FLOAT, d->tk_logp, r0, rows, k, 0, d->cache_path))) return rc;
        return cache_rows(d->cache, "tail", H5T_NATIVE_FLOAT, d->tk_tail, r0, rows, 1, 0, d->cache_path);
    }
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

/* ---- mome teacher cache ---- */

static hid_t create_rows(hid_t f, const char *name, hid_t type, hsize_t rows, hsize_t cols, hsize_t chunk_rows) {
    hsize_t dims[2] = {rows, cols}, chunk[2] = {chunk_rows < rows ? chunk_rows : rows, cols};
    hid_t sp = H5Screate_simple(cols > 1 ? 2 : 1, dims, NULL);
    hid_t pl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(pl, cols > 1 ? 2 : 1, chunk);
    H5Pset_fletcher32(pl);
    hid_t ds = H5Dcreate2(f, name, type, sp, H5P_DEFAULT, pl, H5P_DEFAULT);
    H5Pclose(pl);
    H5Sclose(sp);
    return ds;
}

int mome_teacher_cache_write(const mome_config *cfg) {
    if (cfg->kd.teacher_topk <= 0)
        return mome_error_set(MOME_ECONFIG, "`mome teacher cache` writes top-k targets: set [kd] teacher_topk > 0");
    mome_dataset ds;
    int rc = mome_dataset_open(&ds, cfg->data.dir, cfg->data.domains);
    if (rc) return rc;
    const int T = cfg->model.seq_len, B = cfg->train.batch_size, k = cfg->kd.teacher_topk;
    mome_config each = *cfg;
    snprintf(each.teacher.placement, sizeof each.teacher.placement, "each");
    mome_distiller d;
    rc = mome_distill_init(&d, &each, ds.tokenizer_hash, ds.vocab_size, B, T, MPI_COMM_SELF);
    if (rc == MOME_OK && !d.on) rc = mome_error_set(MOME_ECONFIG, "[teacher] checkpoint is empty: no teacher to cache");
    char path[1024], tmp[1100];
    mome_distill_cache_path(cfg, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    const uint64_t batches = (uint64_t)cfg->train.steps * (uint64_t)cfg->train.grad_accum;
    const hsize_t total_rows = (hsize_t)batches * (hsize_t)B * (hsize_t)T;
    hid_t f = -1;
    if (rc == MOME_OK) {
        char *dir = mome_strdup(path), *slash = strrchr(dir, '/');
        if (slash) {
            *slash = 0;
            rc = mome_mkdirs(dir);
        }
        mome_free(dir);
    }
    if (rc == MOME_OK && (f = mome_h5_create(tmp)) < 0) rc = mome_error_wrap(MOME_EIO, "teacher cache");
    if (rc == MOME_OK) {
        cache_attr a[N_CACHE_ATTRS];
        cache_attrs(cfg, T, a);
        rc = mome_h5_attr_set_str(f, "format", CACHE_FORMAT);
        if (!rc) rc = mome_h5_attr_set_str(f, "tokenizer_hash", ds.tokenizer_hash);
        if (!rc) rc = mome_h5_attr_set_str(f, "teacher", d.path);
        if (!rc) rc = mome_h5_attr_set_i64(f, "samples", (int64_t)(batches * (uint64_t)B));
        for (int i = 0; i < N_CACHE_ATTRS && !rc; i++) rc = mome_h5_attr_set_i64(f, a[i].key, a[i].value);
        hid_t s[3] = {create_rows(f, "ids", H5T_STD_I32LE, total_rows, (hsize_t)k, (hsize_t)B * T),
                      create_rows(f, "logp", H5T_IEEE_F32LE, total_rows, (hsize_t)k, (hsize_t)B * T),
                      create_rows(f, "tail", H5T_IEEE_F32LE, total_rows, 1, (hsize_t)B * T)};
        for (int i = 0; i < 3; i++) {
            if (s[i] < 0 && !rc) rc = mome_error_set(MOME_EIO, "%s: cannot create the target datasets", tmp);
            if (s[i] >= 0) H5Dclose(s[i]);
        }
    }
    int32_t *buf = mome_malloc((size_t)B * (size_t)(T + 1) * sizeof *buf);
    int32_t *inp = mome_malloc((size_t)B * (size_t)T * sizeof *inp);
    double t0 = mome_now();
    for (uint64_t mb = 0; mb < batches && rc == MOME_OK; mb++) {
        uint64_t g0 = mb * (uint64_t)B;
        for (int b = 0; b < B; b++) {
            mome_dataset_sample(&ds, cfg->train.seed, g0 + (uint64_t)b, T, buf + (size_t)b * (T + 1), NULL);
            memcpy(inp + (size_t)b * T, buf + (size_t)b * (T + 1), (size_t)T * sizeof *inp);
        }
        rc = mome_distill_targets(&d, inp, g0);
        hsize_t r0 = (hsize_t)g0 * (hsize_t)T, n = (hsize_t)B * (hsize_t)T;
        if (!rc) rc = cache_rows(f, "ids", H5T_NATIVE_INT32, d.tk_ids, r0, n, (hsize_t)k, 1, tmp);
        if (!rc) rc = cache_rows(f, "logp", H5T_NATIVE_FLOAT, d.tk_logp, r0, n, (hsize_t)k, 1, tmp);
        if (!rc) rc = cache_rows(f, "tail", H5T_NATIVE_FLOAT, d.tk_tail, r0, n, 1, 1, tmp);
        if (!rc && ((mb + 1) % 50 == 0 || mb + 1 == batches))
            mome_info("teacher cache: %llu/%llu micro-batches (%.0f s)", (unsigned long long)(mb + 1),
                      (unsigned long long)batches, mome_now() - t0);
    }
    mome_free(buf);
    mome_free(inp);
    if (f >= 0 && H5Fclose(f) < 0 && !rc) rc = mome_error_set(MOME_EIO, "%s: closing failed", tmp);
    if (rc == MOME_OK && rename(tmp, path) != 0) rc = mome_error_set(MOME_EIO, "%s: rename to %s failed", tmp, path);
    if (rc) unlink(tmp);
    else
        mome_info("teacher cache written: %s (%llu positions, top-%d, %.1f MB)", path, (unsigned long long)total_rows,
                  k, (double)total_rows * (8.0 * k + 4) / 1e6);
    mome_distill_free(&d);
    mome_dataset_close(&ds);
    return rc;
}
