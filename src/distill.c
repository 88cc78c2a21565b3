/* distill.c — the teacher during training: checks, placement (coordinator or each rank), targets, the MoE
 * teacher methods of kd.method (all, ka, sar: distill.h) and the student-aware router's training step.
 * The losses themselves are kd.c's. */
#include "mome/distill.h"

#include <limits.h>
#include <string.h>
#include <sys/stat.h>

#include <math.h>
#include <stdio.h>
#include <unistd.h>

#include "mome/checkpoint.h"
#include "mome/common.h"
#include "mome/data.h"
#include "mome/h5io.h"
#include "mome/rng.h"
#include "mome/train.h"

#define CACHE_FORMAT "mome-teacher-cache"
/* Cache attribute recording how the teacher routed (kd.method topk 0 or all 1); absent in older caches = 0. */
#define CACHE_GATE_ATTR "teacher_gate"
/* Stream purpose of the KA draws' seed (mome_rng_stream(train.seed, KA_STREAM, 0)). */
#define KA_STREAM 0x4b4100ULL

static const char *const method_names[] = {"topk", "all", "ka", "sar"};

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
    int64_t gate = 0;
    if (H5Aexists(d->cache, CACHE_GATE_ATTR) > 0 && (rc = mome_h5_attr_get_i64(d->cache, CACHE_GATE_ATTR, &gate)))
        return rc;
    if (gate != (int64_t)d->method)
        return mome_error_set(MOME_EMISMATCH, "%s was made with [kd] method = %s, this run has %s: rebuild the cache",
                              d->cache_path, gate >= 0 && gate < 4 ? method_names[gate] : "?",
                              method_names[d->method]);
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

/* The checks and the gate mode of kd.method != topk (d->tcfg is the teacher's configuration). The same result on
 * every rank: it depends on the configurations only. */
static int method_setup(mome_distiller *d, const mome_config *cfg) {
    const char *name = method_names[d->method];
    const int E = d->tcfg.moe.n_experts;
    if (E <= 0)
        return mome_error_set(MOME_ECONFIG,
                              "[kd] method = %s distils an MoE teacher, but teacher %s is dense ([moe] n_experts = 0): "
                              "use [kd] method = topk",
                              name, d->path);
    if (d->cached && (d->method == MOME_KD_METHOD_KA || d->method == MOME_KD_METHOD_SAR))
        return mome_error_set(MOME_ECONFIG,
                              "[kd] method = %s needs the teacher itself at every step, but [teacher] placement = cache "
                              "holds one fixed set of targets per sample: use placement = coordinator or each",
                              name);
    memset(&d->gate, 0, sizeof d->gate);
    if (d->method == MOME_KD_METHOD_KA) {
        const int n = cfg->kd.ka_n > 0 ? cfg->kd.ka_n : E > 1 ? E - 1 : 1;
        if (n > E)
            return mome_error_set(MOME_ECONFIG, "[kd] ka_n = %d exceeds the %d experts of teacher %s", n, E, d->path);
        mome_rng r;
        mome_rng_stream(&r, cfg->train.seed, KA_STREAM, 0);
        d->gate.kind = MOME_GATE_KA;
        d->gate.ka_n = n;
        d->gate.ka_lambda = cfg->kd.ka_lambda;
        d->gate.seed = mome_rng_u64(&r);
    } else {
        d->gate.kind = MOME_GATE_ALL; /* all, sar */
    }
    if (d->method == MOME_KD_METHOD_SAR) {
        d->sar_lr = cfg->kd.sar_lr;
        d->sar_aux_coef = cfg->kd.sar_aux_coef;
        d->gate_n = (size_t)d->tcfg.model.n_layer * (size_t)E * (size_t)d->tcfg.model.d_model;
        if (d->gate_n > (size_t)INT_MAX)
            return mome_error_set(MOME_ECONFIG, "[kd] method = sar: the teacher's gate has %zu floats, more than one "
                                  "MPI message holds", d->gate_n);
    }
    return MOME_OK;
}

/* Loads the teacher where it runs, in its gate mode, for B sequences. sar: a training-mode copy (gradients and
 * every layer's activations, which mome_load_model's inference model frees) with the router loss's coefficients
 * (aux = sar_aux_coef, no z-loss), global routing statistics under the each placement, and the gate's AdamW. */
static int load_teacher(mome_distiller *d, const mome_config *cfg, int B) {
    mome_config scratch;
    mome_gpt inf;
    int rc = mome_load_model(d->path, &scratch, &inf);
    if (rc) return mome_error_wrap(rc, "loading teacher");
    if (d->method == MOME_KD_METHOD_SAR) {
        mome_gpt_config mc = inf.cfg;
        mc.aux_coef = d->sar_aux_coef;
        mc.z_coef = 0.0f;
        rc = mome_gpt_init(&d->teacher, &mc);
        if (rc == MOME_OK) memcpy(d->teacher.params, inf.params, inf.table.total * sizeof(float));
        mome_gpt_free(&inf);
        if (rc) return mome_error_wrap(rc, "teacher %s in training mode", d->path);
    } else {
        d->teacher = inf;
    }
    if (d->method != MOME_KD_METHOD_TOPK && (rc = mome_gpt_set_gate_mode(&d->teacher, &d->gate)))
        return mome_error_wrap(rc, "teacher %s, [kd] method = %s", d->path, method_names[d->method]);
    if (d->method == MOME_KD_METHOD_SAR && !d->coordinator && d->world > 1)
        mome_gpt_set_parallel(&d->teacher, d->comm, NULL);
    if ((rc = mome_gpt_reserve(&d->teacher, B, d->T))) return rc;
    if (d->method == MOME_KD_METHOD_SAR) {
        const int gi = mome_tensor_table_find(&d->teacher.table, "blocks/gate_w");
        MOME_CHECK(gi >= 0 && d->teacher.table.t[gi].numel == d->gate_n,
                   "teacher %s: no blocks/gate_w of %zu floats", d->path, d->gate_n);
        const mome_tensor_info *t = &d->teacher.table.t[gi];
        d->gate_off = t->offset;
        memset(&d->gate_tab, 0, sizeof d->gate_tab);
        mome_tensor_table_add(&d->gate_tab, t->name, t->ndim, t->shape, 0);
        const mome_adamw_config oc = {.lr = d->sar_lr, .min_lr = d->sar_lr, .total_steps = 1,
                                      .beta1 = cfg->train.beta1, .beta2 = cfg->train.beta2, .eps = cfg->train.eps};
        if ((rc = mome_adamw_init(&d->gate_opt, &oc, d->gate_tab.total))) return mome_error_wrap(rc, "[kd] sar");
    }
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
    d->method = MOME_KD_METHOD_TOPK;
    for (int i = 1; i < 4; i++)
        if (strcmp(cfg->kd.method, method_names[i]) == 0) d->method = (mome_kd_method)i;
    d->passes = d->method == MOME_KD_METHOD_KA ? cfg->kd.ka_passes : 1;
    if (d->passes < 1)
        return mome_error_set(MOME_ECONFIG, "[kd] ka_passes = %d: expected at least 1", cfg->kd.ka_passes);
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
    if (rc == MOME_OK) {
        d->tconfig_text = mome_strdup(info.config_text);
        snprintf(d->ttokenizer, sizeof d->ttokenizer, "%s", info.tokenizer_hash);
        snprintf(d->tkind, sizeof d->tkind, "%s", info.model_kind);
    }
    mome_ckpt_info_free(&info);
    if (rc) return rc;
    if (d->method != MOME_KD_METHOD_TOPK && (rc = method_setup(d, cfg))) return rc;
    if (d->cached && (rc = open_cache(d, cfg, corpus_hash))) return rc;
    if (d->here) {
        int B = d->coordinator ? B_local * d->world : B_local;
        if ((rc = load_teacher(d, cfg, B))) return rc;
    }
    const size_t rows = (size_t)B_local * (size_t)T, all = rows * (size_t)d->world, M = (size_t)d->passes;
    if (d->method == MOME_KD_METHOD_SAR) {
        const size_t seen = d->coordinator ? all : rows; /* rows of the teacher's forward */
        if (d->here) {
            d->no_targets = mome_malloc(seen * sizeof(int32_t));
            for (size_t i = 0; i < seen; i++) d->no_targets[i] = -1;
        }
        if (d->coordinator && d->rank == 0) d->all_student = mome_malloc(all * (size_t)vocab * sizeof(float));
        d->sar_load = mome_calloc((size_t)d->tcfg.model.n_layer * (size_t)d->tcfg.moe.n_experts, sizeof(double));
    }
    if (d->topk) {
        d->tk_ids = mome_malloc(M * rows * (size_t)d->topk * sizeof(int32_t));
        d->tk_logp = mome_malloc(M * rows * (size_t)d->topk * sizeof(float));
        d->tk_tail = mome_malloc(M * rows * sizeof(float));
        if (d->coordinator && d->rank == 0) {
            d->all_ids = mome_malloc(all * (size_t)d->topk * sizeof(int32_t));
            d->all_logp = mome_malloc(all * (size_t)d->topk * sizeof(float));
            d->all_tail = mome_malloc(all * sizeof(float));
        }
    } else {
        d->logits = mome_malloc(M * rows * (size_t)vocab * sizeof(float));
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
    mome_free(d->no_targets);
    mome_free(d->all_student);
    mome_free(d->sar_load);
    mome_free(d->tconfig_text);
    mome_adamw_free(&d->gate_opt);
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

/* Full logits, one (T, V) sequence per message (they can exceed one message): gather = 0 scatters rank 0's all
 * (world*B_local, T, V) into every rank's local (B_local, T, V); gather = 1 collects every rank's local into rank 0's
 * all. Rank r's sequence b is global sequence r * B_local + b. */
static int seq_collective(const mome_distiller *d, float *all, float *local, int gather) {
    const size_t V = (size_t)d->V, seqf = (size_t)d->T * V;
    int rc = MOME_OK;
    for (int b = 0; b < d->B_local && rc == MOME_OK; b++) {
        MPI_Datatype seq, strided;
        MPI_Type_contiguous((int)seqf, MPI_FLOAT, &seq);
        MPI_Type_commit(&seq);
        MPI_Type_create_resized(seq, 0, (MPI_Aint)((size_t)d->B_local * seqf * sizeof(float)), &strided);
        MPI_Type_commit(&strided);
        float *a = d->rank == 0 ? all + (size_t)b * seqf : NULL;
        float *l = local + (size_t)b * seqf;
        if (gather)
            rc = mpi_ok(MPI_Gather(l, 1, seq, a, 1, strided, 0, d->comm), "MPI_Gather(logits)");
        else
            rc = mpi_ok(MPI_Scatter(a, 1, strided, l, 1, seq, 0, d->comm), "MPI_Scatter(logits)");
        MPI_Type_free(&strided);
        MPI_Type_free(&seq);
    }
    return rc;
}

void mome_distill_gate_mode(const mome_distiller *d, uint64_t first_sample, int pass, mome_moe_gate_mode *mode) {
    *mode = d->gate;
    if (d->method != MOME_KD_METHOD_KA) return;
    const uint64_t Bg = (uint64_t)d->B_local * (uint64_t)d->world, mb = first_sample / Bg;
    mode->counter = mb * (uint64_t)d->passes + (uint64_t)pass;
    mode->token_base = d->coordinator ? 0 : (first_sample - mb * Bg) * (uint64_t)d->T;
}

/* Puts the teacher in pass `pass`'s gate mode (ka: a new counter; no allocation). */
static int set_pass(mome_distiller *d, uint64_t first_sample, int pass) {
    if (d->method != MOME_KD_METHOD_KA) return MOME_OK;
    mome_moe_gate_mode g;
    mome_distill_gate_mode(d, first_sample, pass, &g);
    return mome_gpt_set_gate_mode(&d->teacher, &g);
}

int mome_distill_targets(mome_distiller *d, const int32_t *inputs, uint64_t first_sample) {
    const size_t rows = (size_t)d->B_local * (size_t)d->T, V = (size_t)d->V, k = (size_t)d->topk;
    const int M = d->passes;
    int rc = MOME_OK;
    if (d->cached) {
        hsize_t r0 = (hsize_t)first_sample * (hsize_t)d->T;
        if ((rc = cache_rows(d->cache, "ids", H5T_NATIVE_INT32, d->tk_ids, r0, rows, k, 0, d->cache_path))) return rc;
        if ((rc = cache_rows(d->cache, "logp", H5T_NATIVE_FLOAT, d->tk_logp, r0, rows, k, 0, d->cache_path))) return rc;
        return cache_rows(d->cache, "tail", H5T_NATIVE_FLOAT, d->tk_tail, r0, rows, 1, 0, d->cache_path);
    }
    if (!d->coordinator) {
        for (int m = 0; m < M && rc == MOME_OK; m++) {
            const size_t at = (size_t)m * rows;
            if ((rc = set_pass(d, first_sample, m))) break;
            mome_gpt_forward(&d->teacher, inputs, d->B_local, d->T);
            if (k)
                rc = mome_kd_topk_build(d->tk_ids + at * k, d->tk_logp + at * k, d->tk_tail + at, d->teacher.logits,
                                        rows, d->V, d->topk, d->temperature);
            else
                memcpy(d->logits + at * V, d->teacher.logits, rows * V * sizeof(float));
        }
        return rc;
    }
    rc = mpi_ok(MPI_Gather(inputs, (int)rows, MPI_INT32_T, d->all_inp, (int)rows, MPI_INT32_T, 0, d->comm),
                "MPI_Gather(inputs)");
    if (rc) return rc;
    const size_t all = rows * (size_t)d->world;
    d->bytes_sent = 0;
    /* one pass at a time: rank 0 holds one pass's targets of every rank */
    for (int m = 0; m < M; m++) {
        const size_t at = (size_t)m * rows;
        if (d->rank == 0) {
            rc = set_pass(d, first_sample, m);
            if (rc == MOME_OK) mome_gpt_forward(&d->teacher, d->all_inp, d->B_local * d->world, d->T);
            if (rc == MOME_OK && k)
                rc = mome_kd_topk_build(d->all_ids, d->all_logp, d->all_tail, d->teacher.logits, all, d->V, d->topk,
                                        d->temperature);
        }
        MPI_Bcast(&rc, 1, MPI_INT, 0, d->comm);
        if (rc) return mome_error_wrap(rc, "teacher targets on rank 0");
        if (k) {
            if ((rc = scatter(d->all_ids, d->tk_ids + at * k, rows * k, MPI_INT32_T, d->comm))) return rc;
            if ((rc = scatter(d->all_logp, d->tk_logp + at * k, rows * k, MPI_FLOAT, d->comm))) return rc;
            if ((rc = scatter(d->all_tail, d->tk_tail + at, rows, MPI_FLOAT, d->comm))) return rc;
            d->bytes_sent += (size_t)(d->world - 1) * rows * MOME_KD_TOPK_BYTES_PER_ROW(k);
        } else {
            if ((rc = seq_collective(d, d->rank == 0 ? d->teacher.logits : NULL, d->logits + at * V, 0))) return rc;
            d->bytes_sent += (size_t)(d->world - 1) * rows * MOME_KD_FULL_BYTES_PER_ROW(V);
        }
    }
    return rc;
}

double mome_distill_loss(const mome_distiller *d, float *logits, mome_kd_sums *sums, const int32_t *targets,
                         float w_ce, float w_kd, float grad_scale) {
    const size_t rows = (size_t)d->B_local * (size_t)d->T;
    if (d->topk)
        return mome_kd_topk_forward_backward_multi(logits, sums, w_kd > 0 ? d->tk_ids : NULL,
                                                   w_kd > 0 ? d->tk_logp : NULL, w_kd > 0 ? d->tk_tail : NULL,
                                                   d->passes, targets, rows, d->V, d->topk, d->dir, d->temperature,
                                                   w_ce, w_kd, grad_scale);
    return mome_kd_full_forward_backward_multi(logits, sums, w_kd > 0 ? d->logits : NULL, d->passes, targets, rows,
                                               d->V, d->dir, d->temperature, w_ce, w_kd, grad_scale);
}

/* ---- sar: the student-aware router ---- */

/* After the teacher's forward over N tokens (N_global over the ranks that share its statistics): the fractions f_e
 * of the top_k assignments of every layer (counted from the gate probabilities, summed over d->comm under the each
 * placement), written into each layer's load, the constant f of the Switch term's gradient in the layer's backward
 * (in ALL mode the layer's own f is 1/E for every expert), and into d->sar_load. Returns sum_l E sum_e f_e P_e. */
static double router_balance(mome_distiller *d, size_t N, double N_global) {
    const int L = d->teacher.cfg.n_layer, E = d->teacher.cfg.n_experts, k = d->teacher.cfg.top_k;
    double *cnt = d->sar_load; /* (L, E) */
    memset(cnt, 0, (size_t)L * (size_t)E * sizeof *cnt);
#pragma omp parallel
    {
        unsigned char *chosen = mome_malloc((size_t)E);
#pragma omp for schedule(static)
        for (int l = 0; l < L; l++) {
            const mome_moe *moe = mome_gpt_moe_layer(&d->teacher, l);
            for (size_t t = 0; t < N; t++) {
                const float *p = moe->probs + t * (size_t)E; /* (N, E) */
                memset(chosen, 0, (size_t)E);
                for (int s = 0; s < k; s++) { /* the s-th largest; ties to the lower index */
                    int best = -1;
                    for (int e = 0; e < E; e++)
                        if (!chosen[e] && (best < 0 || p[e] > p[best])) best = e;
                    chosen[best] = 1;
                    cnt[(size_t)l * (size_t)E + (size_t)best] += 1.0;
                }
            }
        }
        mome_free(chosen);
    }
    if (!d->coordinator && d->world > 1)
        MPI_Allreduce(MPI_IN_PLACE, cnt, L * E, MPI_DOUBLE, MPI_SUM, d->comm);
    double aux = 0.0;
    for (int l = 0; l < L; l++) {
        const mome_moe *moe = mome_gpt_moe_layer(&d->teacher, l);
        double a = 0.0;
        for (int e = 0; e < E; e++) {
            double *f = &cnt[(size_t)l * (size_t)E + (size_t)e];
            *f /= N_global * (double)k;
            moe->load[e] = *f; /* the layer's statistics of this forward (its struct is const, its arrays are not) */
            a += *f * moe->prob_mean[e];
        }
        aux += (double)E * a;
    }
    return aux;
}

int mome_distill_router_loss(mome_distiller *d, const int32_t *inputs, const float *student_logits,
                             uint64_t first_sample, double *router_loss, float *grad_gate) {
    (void)first_sample; /* ALL mode draws nothing: the loss depends on the tokens only */
    if (!d->on || d->method != MOME_KD_METHOD_SAR)
        return mome_error_set(MOME_EINVAL, "student-aware router: [kd] method = %s, not sar",
                              d->on ? method_names[d->method] : "(no teacher)");
    const size_t rows = (size_t)d->B_local * (size_t)d->T;
    const double Ng = (double)rows * (double)d->world; /* positions of the global micro-batch */
    const int32_t *inp = inputs;
    const float *stud = student_logits;
    int B = d->B_local, rc = MOME_OK;
    if (d->coordinator) {
        rc = mpi_ok(MPI_Gather(inputs, (int)rows, MPI_INT32_T, d->all_inp, (int)rows, MPI_INT32_T, 0, d->comm),
                    "MPI_Gather(inputs)");
        if (rc == MOME_OK) rc = seq_collective(d, d->all_student, (float *)student_logits, 1); /* only read */
        if (rc) return rc;
        inp = d->all_inp;
        stud = d->all_student;
        B *= d->world;
    }
    double parts[2] = {0.0, 0.0}; /* T^2 * mean KL, sum_l aux_l */
    if (d->here) {
        const size_t N = (size_t)B * (size_t)d->T;
        const float T = d->temperature;
        mome_gpt_forward(&d->teacher, inp, B, d->T);
        parts[1] = router_balance(d, N, Ng);
        /* the KL with the teacher as the variable: kd.c's kernel takes the variable first and computes
         * KL(p_second || q_first) in its forward direction, KL(q_first || p_second) in reverse, so the direction
         * is swapped; the teacher's logits become d(T^2 * KL_sum / N_global)/d(logits) */
        const mome_kd_direction kdir = d->dir == MOME_KD_FORWARD ? MOME_KD_REVERSE : MOME_KD_FORWARD;
        mome_kd_sums s;
        mome_kd_full_forward_backward(d->teacher.logits, &s, stud, d->no_targets, N, d->V, kdir, T, 0.0f, 1.0f,
                                      (float)(1.0 / Ng));
        double kl = s.kl_sum;
        mome_gpt_zero_grad(&d->teacher);
        mome_gpt_backward_ex(&d->teacher, inp, B, d->T, 1.0f);
        float *g = d->teacher.grads + d->gate_off;
        if (!d->coordinator && d->world > 1) {
            MPI_Allreduce(MPI_IN_PLACE, &kl, 1, MPI_DOUBLE, MPI_SUM, d->comm);
            rc = mpi_ok(MPI_Allreduce(MPI_IN_PLACE, g, (int)d->gate_n, MPI_FLOAT, MPI_SUM, d->comm),
                        "MPI_Allreduce(gate gradients)");
        }
        parts[0] = (double)T * (double)T * kl / Ng;
        if (grad_gate) memcpy(grad_gate, g, d->gate_n * sizeof *g);
    }
    if (d->coordinator) MPI_Bcast(parts, 2, MPI_DOUBLE, 0, d->comm);
    if (rc) return rc;
    d->sar_kl = parts[0];
    d->sar_aux = parts[1];
    const double loss = parts[0] + (double)d->sar_aux_coef * parts[1];
    if (router_loss) *router_loss = loss;
    if (!isfinite(loss))
        return mome_error_set(MOME_ENONFINITE, "student-aware router: router loss %g (KL part %g, balance %g)", loss,
                              parts[0], parts[1]);
    return MOME_OK;
}

int mome_distill_router_step(mome_distiller *d, const int32_t *inputs, const float *student_logits,
                             uint64_t first_sample, double *router_loss) {
    int rc = mome_distill_router_loss(d, inputs, student_logits, first_sample, router_loss, NULL);
    if (rc) return rc;
    if (d->here)
        mome_adamw_update(&d->gate_opt, &d->gate_tab, d->teacher.params + d->gate_off, d->teacher.grads + d->gate_off,
                          d->sar_lr, 1.0f);
    return MOME_OK;
}

int mome_distill_router_state_get(const mome_distiller *d, float *gate, float *adam_m, float *adam_v,
                                  int64_t *adam_step) {
    if (!d->on || d->method != MOME_KD_METHOD_SAR || !d->here)
        return mome_error_set(MOME_EINVAL, "router state: only a rank running the teacher of [kd] method = sar has one");
    memcpy(gate, d->teacher.params + d->gate_off, d->gate_n * sizeof(float));
    memcpy(adam_m, d->gate_opt.m, d->gate_n * sizeof(float));
    memcpy(adam_v, d->gate_opt.v, d->gate_n * sizeof(float));
    *adam_step = (int64_t)d->gate_opt.step;
    return MOME_OK;
}

int mome_distill_router_state_set(mome_distiller *d, const float *gate, const float *adam_m, const float *adam_v,
                                  int64_t adam_step) {
    if (!d->on || d->method != MOME_KD_METHOD_SAR)
        return mome_error_set(MOME_EINVAL, "router state: [kd] method is not sar");
    int rc = d->rank == 0 && (!gate || !adam_m || !adam_v || adam_step < 0)
                 ? mome_error_set(MOME_EINVAL, "router state: rank 0 needs the gate, both moments and a step >= 0")
                 : MOME_OK;
    MPI_Bcast(&rc, 1, MPI_INT, 0, d->comm);
    if (rc) return d->rank == 0 ? rc : mome_error_set(rc, "router state: refused on rank 0");
    int64_t step = adam_step;
    MPI_Bcast(&step, 1, MPI_INT64_T, 0, d->comm);
    if (d->rank == 0) {
        memcpy(d->teacher.params + d->gate_off, gate, d->gate_n * sizeof(float));
        memcpy(d->gate_opt.m, adam_m, d->gate_n * sizeof(float));
        memcpy(d->gate_opt.v, adam_v, d->gate_n * sizeof(float));
    }
    if (!d->coordinator && d->world > 1) {
        const int n = (int)d->gate_n;
        MPI_Bcast(d->teacher.params + d->gate_off, n, MPI_FLOAT, 0, d->comm);
        MPI_Bcast(d->gate_opt.m, n, MPI_FLOAT, 0, d->comm);
        MPI_Bcast(d->gate_opt.v, n, MPI_FLOAT, 0, d->comm);
    }
    if (d->here) d->gate_opt.step = (long)step;
    return MOME_OK;
}

int mome_distill_save_router(const mome_distiller *d, const char *dir) {
    if (!d->on || d->method != MOME_KD_METHOD_SAR)
        return mome_error_set(MOME_EINVAL, "save router: [kd] method is not sar");
    if (d->rank != 0) return MOME_OK;
    const uint64_t rng0[4] = {0, 0, 0, 0}, cursor0 = 0;
    const mome_ckpt_save_args a = {.step = (int64_t)d->gate_opt.step,
                                   .world_size = 1,
                                   .config_text = d->tconfig_text,
                                   .tokenizer_hash = d->ttokenizer,
                                   .model_kind = d->tkind,
                                   .table = &d->teacher.table,
                                   .params = d->teacher.params,
                                   .adam_step = (int64_t)d->gate_opt.step,
                                   .n_streams = 1,
                                   .rng_states = rng0,
                                   .data_cursors = &cursor0};
    int rc = mome_ckpt_save(dir, &a, 1, NULL, 0);
    return rc ? mome_error_wrap(rc, "student-aware router: saving the teacher") : MOME_OK;
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
    if (strcmp(cfg->kd.method, "ka") == 0 || strcmp(cfg->kd.method, "sar") == 0)
        return mome_error_set(MOME_ECONFIG,
                              "`mome teacher cache` writes one fixed set of targets per sample: [kd] method = %s needs "
                              "the teacher at every step (cache topk or all)",
                              cfg->kd.method);
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
        if (!rc) rc = mome_h5_attr_set_i64(f, CACHE_GATE_ATTR, (int64_t)d.method);
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
    rc = mome_h5_close_into_place(f, tmp, path, rc);
    if (rc == MOME_OK)
        mome_info("teacher cache written: %s (%llu positions, top-%d, %.1f MB)", path, (unsigned long long)total_rows,
                  k, (double)total_rows * (8.0 * k + 4) / 1e6);
    mome_distill_free(&d);
    mome_dataset_close(&ds);
    return rc;
}
