/* test_checkpoint.c — unit test of HDF5 checkpoints (src/checkpoint.c).
 *
 * Checks, on a small hand-built tensor table with random data:
 *  - save + read back is bit-identical: params, both moments, rng states, data cursors, config text, scalars;
 *    padding between tensors is left untouched; no .tmp file is left behind;
 *  - `latest` names the newest; keep=2 leaves exactly the last two; keep never deletes the file just written;
 *  - mome_ckpt_latest: MOME_ENOENT without `latest`, MOME_ECORRUPT when it names a missing file;
 *  - a file truncated to half is refused (MOME_ECORRUPT or MOME_EFORMAT) naming the file;
 *  - a byte flipped in the middle of a tensor's stored chunk is refused with MOME_ECORRUPT naming the file and
 *    the tensor, and the same read with checksum verification disabled succeeds with exactly one changed
 *    value, which proves that the Fletcher32 checksum is what caught it;
 *  - shape mismatch, missing tensor and extra tensor are MOME_EMISMATCH naming the tensor (and both shapes);
 *  - a text file, an HDF5 file without the format attribute and an unsupported version are MOME_EFORMAT;
 *  - a checkpoint without moments reads params but refuses a request for moments;
 *  - a failed save (the temp name blocked by a directory) leaves `latest` and the previous checkpoint intact.
 * Exits non-zero on any failure.
 */
#include "mome/checkpoint.h"
#include "mome/common.h"
#include "mome/h5io.h"
#include "mome/tensor.h"

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"


static char dir[256];

static uint64_t rng_state = 0x243f6a8885a308d3ULL;
static uint64_t next_u64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static float next_float(void) { return (float)((double)(next_u64() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

/* Compares the floats of every tensor bit for bit (tolerance 0); reports the first difference. */
static void check_tensors_equal(int line, const mome_tensor_table *tab, const float *got, const float *want,
                                const char *what) {
    for (int i = 0; i < tab->n; i++) {
        const mome_tensor_info *t = &tab->t[i];
        for (size_t k = 0; k < t->numel; k++) {
            if (memcmp(&got[t->offset + k], &want[t->offset + k], sizeof(float)) != 0) {
                fprintf(stderr, "%s:%d: %s %s[%zu] = %.9g, expected %.9g (bit-exact)\n", __FILE__, line, what, t->name,
                        k, (double)got[t->offset + k], (double)want[t->offset + k]);
                failures++;
                return;
            }
        }
    }
}

static void build_table(mome_tensor_table *tab, size_t fc_hidden, int with_lnf, int with_extra) {
    memset(tab, 0, sizeof *tab);
    size_t s_wte[2] = {50, 16}, s_fc[3] = {2, fc_hidden, 16}, s_ln[2] = {2, 16}, s_lnf[1] = {16}, s_x[1] = {3};
    mome_tensor_table_add(tab, "wte", 2, s_wte, 1);
    mome_tensor_table_add(tab, "blocks/fc_w", 3, s_fc, 1);
    mome_tensor_table_add(tab, "blocks/ln_b", 2, s_ln, 0);
    if (with_lnf) mome_tensor_table_add(tab, "lnf_w", 1, s_lnf, 0);
    if (with_extra) mome_tensor_table_add(tab, "extra_w", 1, s_x, 0);
}

typedef struct {
    mome_tensor_table tab;
    float *params, *m, *v;
    uint64_t rng[3 * 4], cursors[3];
    char config[512];
} state;

static void state_init(state *s, long step) {
    build_table(&s->tab, 32, 1, 0);
    s->params = mome_malloc(s->tab.total * sizeof(float));
    s->m = mome_malloc(s->tab.total * sizeof(float));
    s->v = mome_malloc(s->tab.total * sizeof(float));
    for (size_t i = 0; i < s->tab.total; i++) {
        s->params[i] = next_float();
        s->m[i] = next_float() * 1e-3f;
        s->v[i] = fabsf(next_float()) * 1e-6f;
    }
    for (int i = 0; i < 12; i++) s->rng[i] = next_u64();
    for (int i = 0; i < 3; i++) s->cursors[i] = next_u64() >> 20;
    snprintf(s->config, sizeof s->config, "[model]\nn_layer = 2\n\n[train]\nsteps = %ld\nrun_name = t\n", step);
}

static void state_free(state *s) {
    mome_free(s->params);
    mome_free(s->m);
    mome_free(s->v);
}

static int save(const char *d, const state *s, long step, int keep, int with_moments, char *out, size_t cap) {
    mome_ckpt_save_args a = {
        .step = step,
        .tokens_seen = step * 1024 + 7,
        .world_size = 3,
        .config_text = s->config,
        .tokenizer_hash = "0123456789abcdef",
        .model_kind = "gpt",
        .table = &s->tab,
        .params = s->params,
        .adam_m = with_moments ? s->m : NULL,
        .adam_v = with_moments ? s->v : NULL,
        .adam_step = step + 100,
        .n_streams = 3,
        .rng_states = s->rng,
        .data_cursors = s->cursors,
    };
    return mome_ckpt_save(d, &a, keep, out, cap);
}

static int file_exists(const char *d, const char *name) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", d, name);
    return access(p, F_OK) == 0;
}

static int count_files(const char *d, const char *suffix) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "ls -1 '%s' | grep -c -- '%s$' > '%s/.count'", d, suffix, dir);
    if (system(cmd) < 0) return -1;
    char p[600], *text = NULL;
    snprintf(p, sizeof p, "%s/.count", dir);
    if (mome_read_file(p, &text, NULL) != MOME_OK) return -1;
    int n = atoi(text);
    mome_free(text);
    return n;
}

static void read_latest_text(const char *d, char *buf, size_t cap) {
    char p[600], *text = NULL;
    snprintf(p, sizeof p, "%s/latest", d);
    buf[0] = 0;
    if (mome_read_file(p, &text, NULL) == MOME_OK) {
        snprintf(buf, cap, "%s", text);
        mome_free(text);
    }
}

/* Reads everything back and compares with `s`. */
static void check_round_trip(int line, const char *path, const state *s, long step, int with_moments) {
    mome_ckpt_info info;
    int rc = mome_ckpt_read_info(path, &info);
    if (rc != MOME_OK) {
        fprintf(stderr, "%s:%d: read_info(%s) failed: %s\n", __FILE__, line, path, mome_error_message());
        failures++;
        return;
    }
    CHECK_EQ_I(info.step, step);
    CHECK_EQ_I(info.tokens_seen, step * 1024 + 7);
    CHECK_EQ_I(info.adam_step, step + 100);
    CHECK_EQ_I(info.world_size, 3);
    CHECK_EQ_I(info.n_streams, 3);
    CHECK_EQ_S(info.tokenizer_hash, "0123456789abcdef");
    CHECK_EQ_S(info.model_kind, "gpt");
    CHECK(info.git_sha[0] != 0);
    CHECK_EQ_S(info.config_text, s->config);
    CHECK(memcmp(info.rng_states, s->rng, sizeof s->rng) == 0);
    CHECK(memcmp(info.data_cursors, s->cursors, sizeof s->cursors) == 0);
    mome_ckpt_info_free(&info);

    size_t total = s->tab.total;
    float *p = mome_malloc(total * sizeof(float)), *m = mome_malloc(total * sizeof(float)),
          *v = mome_malloc(total * sizeof(float));
    for (size_t i = 0; i < total; i++) p[i] = m[i] = v[i] = -12345.0f; /* padding must stay untouched */
    rc = mome_ckpt_read_tensors(path, &s->tab, p, with_moments ? m : NULL, with_moments ? v : NULL);
    if (rc != MOME_OK) {
        fprintf(stderr, "%s:%d: read_tensors(%s) failed: %s\n", __FILE__, line, path, mome_error_message());
        failures++;
    } else {
        check_tensors_equal(line, &s->tab, p, s->params, "params");
        if (with_moments) {
            check_tensors_equal(line, &s->tab, m, s->m, "adam_m");
            check_tensors_equal(line, &s->tab, v, s->v, "adam_v");
        }
        /* padding floats between tensors */
        size_t end_prev = 0;
        for (int i = 0; i < s->tab.n; i++) {
            for (size_t k = end_prev; k < s->tab.t[i].offset; k++) CHECK(p[k] == -12345.0f);
            end_prev = s->tab.t[i].offset + s->tab.t[i].numel;
        }
    }
    mome_free(p);
    mome_free(m);
    mome_free(v);
}

static void copy_file(const char *from, const char *to, long max_bytes) {
    char *data = NULL;
    size_t len = 0;
    if (mome_read_file(from, &data, &len) != MOME_OK) {
        fprintf(stderr, "cannot read %s: %s\n", from, mome_error_message());
        exit(1);
    }
    if (max_bytes >= 0 && (size_t)max_bytes < len) len = (size_t)max_bytes;
    FILE *f = fopen(to, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", to);
        exit(1);
    }
    mome_free(data);
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void test_save_latest_keep(void) {
    char d[512], path[1024], latest[1024], text[256];
    snprintf(d, sizeof d, "%s/run/a", dir); /* created by save (two levels) */
    state s;
    state_init(&s, 10);

    CHECK_RC(mome_ckpt_latest(d, latest, sizeof latest), MOME_ENOENT);

    CHECK_RC(save(d, &s, 10, 2, 1, path, sizeof path), MOME_OK);
    CHECK(strstr(path, "/run/a/step_00000010.h5") != NULL);
    check_round_trip(__LINE__, path, &s, 10, 1);
    CHECK_RC(mome_ckpt_latest(d, latest, sizeof latest), MOME_OK);
    CHECK_EQ_S(latest, path);
    read_latest_text(d, text, sizeof text);
    CHECK_EQ_S(text, "step_00000010.h5\n");
    CHECK_EQ_I(count_files(d, ".tmp"), 0);

    /* New values for later steps: each file keeps its own. */
    for (size_t i = 0; i < s.tab.total; i++) s.params[i] += 1.0f;
    CHECK_RC(save(d, &s, 20, 2, 1, path, sizeof path), MOME_OK);
    for (size_t i = 0; i < s.tab.total; i++) s.params[i] += 1.0f;
    s.rng[5] ^= 0xff;
    CHECK_RC(save(d, &s, 30, 2, 1, path, sizeof path), MOME_OK);
    check_round_trip(__LINE__, path, &s, 30, 1);
    CHECK(!file_exists(d, "step_00000010.h5"));
    CHECK(file_exists(d, "step_00000020.h5"));
    CHECK(file_exists(d, "step_00000030.h5"));
    CHECK_EQ_I(count_files(d, ".h5"), 2);
    CHECK_EQ_I(count_files(d, ".tmp"), 0);
    CHECK_RC(mome_ckpt_latest(d, latest, sizeof latest), MOME_OK);
    CHECK(strstr(latest, "step_00000030.h5") != NULL);

    /* keep never deletes the file just written, even when it is the oldest step in the directory. */
    CHECK_RC(save(d, &s, 5, 2, 1, path, sizeof path), MOME_OK);
    CHECK(file_exists(d, "step_00000005.h5"));
    CHECK(!file_exists(d, "step_00000020.h5"));
    CHECK(file_exists(d, "step_00000030.h5"));
    CHECK_RC(mome_ckpt_latest(d, latest, sizeof latest), MOME_OK);
    CHECK(strstr(latest, "step_00000005.h5") != NULL);

    /* keep = 0 keeps everything. */
    CHECK_RC(save(d, &s, 40, 0, 1, path, sizeof path), MOME_OK);
    CHECK_RC(save(d, &s, 50, 0, 1, path, sizeof path), MOME_OK);
    CHECK_EQ_I(count_files(d, ".h5"), 4);

    /* `latest` naming a file that is gone is an error, not "no checkpoint". */
    char p[1024];
    snprintf(p, sizeof p, "%s/step_00000050.h5", d);
    CHECK(unlink(p) == 0);
    CHECK_RC(mome_ckpt_latest(d, latest, sizeof latest), MOME_ECORRUPT);
    CHECK_CONTAINS(mome_error_message(), "step_00000050.h5");
    state_free(&s);
}

static void test_corruption(void) {
    char d[512], path[1024], bad[1024];
    snprintf(d, sizeof d, "%s/corrupt", dir);
    state s;
    state_init(&s, 7);
    CHECK_RC(save(d, &s, 7, 3, 1, path, sizeof path), MOME_OK);
    float *buf = mome_malloc(s.tab.total * sizeof(float));

    /* Truncated to half. */
    snprintf(bad, sizeof bad, "%s/truncated.h5", dir);
    copy_file(path, bad, file_size(path) / 2);
    mome_ckpt_info info;
    int rc = mome_ckpt_read_info(bad, &info);
    CHECK(rc == MOME_ECORRUPT || rc == MOME_EFORMAT);
    CHECK_CONTAINS(mome_error_message(), "truncated.h5");
    rc = mome_ckpt_read_tensors(bad, &s.tab, buf, NULL, NULL);
    CHECK(rc == MOME_ECORRUPT || rc == MOME_EFORMAT);
    CHECK_CONTAINS(mome_error_message(), "truncated.h5");

    /* One byte flipped in the middle of /model/blocks/fc_w's stored chunk. */
    snprintf(bad, sizeof bad, "%s/flipped.h5", dir);
    copy_file(path, bad, -1);
    haddr_t addr = HADDR_UNDEF;
    hsize_t size = 0;
    {
        hid_t f = H5Fopen(bad, H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t ds = H5Dopen2(f, "/model/blocks/fc_w", H5P_DEFAULT);
        hid_t sp = H5Dget_space(ds);
        hsize_t nchunks = 0, off[3];
        unsigned mask = 0;
        CHECK(H5Dget_num_chunks(ds, sp, &nchunks) >= 0 && nchunks >= 1);
        CHECK(H5Dget_chunk_info(ds, sp, 0, off, &mask, &addr, &size) >= 0);
        H5Sclose(sp);
        H5Dclose(ds);
        H5Fclose(f);
    }
    CHECK(addr != HADDR_UNDEF && size > 8);
    if (addr != HADDR_UNDEF && size > 8) {
        FILE *fp = fopen(bad, "r+b");
        long at = (long)(addr + size / 2);
        int c = (fseek(fp, at, SEEK_SET) == 0) ? fgetc(fp) : EOF;
        CHECK(c != EOF);
        fseek(fp, at, SEEK_SET);
        fputc(c ^ 0x5a, fp);
        fclose(fp);

        /* read_info does not touch /model: it still succeeds. */
        CHECK_RC(mome_ckpt_read_info(bad, &info), MOME_OK);
        mome_ckpt_info_free(&info);
        CHECK_RC(mome_ckpt_read_tensors(bad, &s.tab, buf, NULL, NULL), MOME_ECORRUPT);
        CHECK_CONTAINS(mome_error_message(), "flipped.h5");
        CHECK_CONTAINS(mome_error_message(), "blocks/fc_w");

        /* Proof that the checksum caught it: with Fletcher32 verification off the read succeeds and exactly one
         * float differs from what was saved. */
        int t = mome_tensor_table_find(&s.tab, "blocks/fc_w");
        size_t numel = s.tab.t[t].numel;
        float *raw = mome_malloc(numel * sizeof(float));
        hid_t f = H5Fopen(bad, H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t ds = H5Dopen2(f, "/model/blocks/fc_w", H5P_DEFAULT);
        hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
        H5Pset_edc_check(dxpl, H5Z_DISABLE_EDC);
        herr_t e = H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, dxpl, raw);
        CHECK(e >= 0);
        if (e >= 0) {
            size_t ndiff = 0;
            for (size_t k = 0; k < numel; k++)
                ndiff += memcmp(&raw[k], &s.params[s.tab.t[t].offset + k], sizeof(float)) != 0;
            CHECK_EQ_I(ndiff, 1);
        }
        H5Pclose(dxpl);
        H5Dclose(ds);
        H5Fclose(f);
        mome_free(raw);
    }

    /* Not a checkpoint: a text file; an HDF5 file without the format attribute; an unsupported version. */
    snprintf(bad, sizeof bad, "%s/hello.h5", dir);
    FILE *fp = fopen(bad, "w");
    fputs("hello\n", fp);
    fclose(fp);
    CHECK_RC(mome_ckpt_read_info(bad, &info), MOME_EFORMAT);
    CHECK_CONTAINS(mome_error_message(), "hello.h5");
    CHECK_RC(mome_ckpt_read_tensors(bad, &s.tab, buf, NULL, NULL), MOME_EFORMAT);

    snprintf(bad, sizeof bad, "%s/plain.h5", dir);
    hid_t f = mome_h5_create(bad);
    hsize_t one = 1;
    float x = 1.0f;
    CHECK_RC(mome_h5_write_f32(f, "x", &x, 1, &one), MOME_OK);
    H5Fclose(f);
    CHECK_RC(mome_ckpt_read_info(bad, &info), MOME_EFORMAT);
    CHECK_CONTAINS(mome_error_message(), "plain.h5: not a mome checkpoint");

    snprintf(bad, sizeof bad, "%s/future.h5", dir);
    copy_file(path, bad, -1);
    f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
    CHECK_RC(mome_h5_attr_set_i64(f, "format_version", MOME_CKPT_VERSION + 1), MOME_OK);
    H5Fclose(f);
    CHECK_RC(mome_ckpt_read_info(bad, &info), MOME_EFORMAT);
    CHECK_CONTAINS(mome_error_message(), "format_version 2 is not supported");

    snprintf(bad, sizeof bad, "%s/no_such_file.h5", dir);
    CHECK_RC(mome_ckpt_read_info(bad, &info), MOME_ENOENT);
    CHECK_CONTAINS(mome_error_message(), "no_such_file.h5");

    mome_free(buf);
    state_free(&s);
}

static void test_mismatch(void) {
    char d[512], path[1024];
    snprintf(d, sizeof d, "%s/mismatch", dir);
    state s;
    state_init(&s, 3);
    CHECK_RC(save(d, &s, 3, 3, 1, path, sizeof path), MOME_OK);

    mome_tensor_table other;
    build_table(&other, 64, 1, 0); /* fc_w (2, 64, 16) instead of (2, 32, 16) */
    float *buf = mome_malloc(other.total * sizeof(float));
    CHECK_RC(mome_ckpt_read_tensors(path, &other, buf, NULL, NULL), MOME_EMISMATCH);
    CHECK_CONTAINS(mome_error_message(), "/model/blocks/fc_w has shape (2, 32, 16), the config expects (2, 64, 16)");
    CHECK_CONTAINS(mome_error_message(), path);
    mome_free(buf);

    build_table(&other, 32, 1, 1); /* a tensor the checkpoint lacks */
    buf = mome_malloc(other.total * sizeof(float));
    CHECK_RC(mome_ckpt_read_tensors(path, &other, buf, NULL, NULL), MOME_EMISMATCH);
    CHECK_CONTAINS(mome_error_message(), "/model/extra_w");
    CHECK_CONTAINS(mome_error_message(), "(3)");
    mome_free(buf);

    build_table(&other, 32, 0, 0); /* the checkpoint has lnf_w, the table does not */
    buf = mome_malloc(other.total * sizeof(float));
    CHECK_RC(mome_ckpt_read_tensors(path, &other, buf, NULL, NULL), MOME_EMISMATCH);
    CHECK_CONTAINS(mome_error_message(), "/model/lnf_w");
    mome_free(buf);

    /* Without moments: params read, a request for moments refused. */
    CHECK_RC(save(d, &s, 4, 3, 0, path, sizeof path), MOME_OK);
    check_round_trip(__LINE__, path, &s, 4, 0);
    float *p = mome_malloc(s.tab.total * sizeof(float)), *m = mome_malloc(s.tab.total * sizeof(float)),
          *v = mome_malloc(s.tab.total * sizeof(float));
    CHECK_RC(mome_ckpt_read_tensors(path, &s.tab, p, m, v), MOME_EMISMATCH);
    CHECK_CONTAINS(mome_error_message(), "no optimizer state");
    mome_free(p);
    mome_free(m);
    mome_free(v);
    state_free(&s);
}

static void test_failed_save(void) {
    char d[512], path[1024], prev[1024], latest_before[256], latest_after[256], blocker[1024];
    snprintf(d, sizeof d, "%s/failing", dir);
    state s;
    state_init(&s, 30);
    CHECK_RC(save(d, &s, 30, 3, 1, prev, sizeof prev), MOME_OK);
    read_latest_text(d, latest_before, sizeof latest_before);

    /* The temporary name is taken by a directory: H5Fcreate fails. */
    snprintf(blocker, sizeof blocker, "%s/step_00000040.h5.tmp", d);
    CHECK(mkdir(blocker, 0755) == 0);
    state s2;
    state_init(&s2, 40);
    int rc = save(d, &s2, 40, 1, 1, path, sizeof path);
    CHECK(rc != MOME_OK);
    CHECK_CONTAINS(mome_error_message(), "step_00000040.h5");
    read_latest_text(d, latest_after, sizeof latest_after);
    CHECK_EQ_S(latest_after, latest_before);
    CHECK(!file_exists(d, "step_00000040.h5"));
    CHECK(file_exists(d, "step_00000040.h5.tmp")); /* the directory is not ours to remove */
    char lp[1024];
    CHECK_RC(mome_ckpt_latest(d, lp, sizeof lp), MOME_OK);
    CHECK_EQ_S(lp, prev);
    check_round_trip(__LINE__, prev, &s, 30, 1); /* keep=1 did not run: the previous one is intact */
    rmdir(blocker);

    /* Bad arguments are refused before anything is written. */
    mome_ckpt_save_args a = {.step = 50, .table = &s.tab, .params = s.params, .config_text = "x", .n_streams = 0};
    CHECK_RC(mome_ckpt_save(d, &a, 3, NULL, 0), MOME_EINVAL);
    CHECK(!file_exists(d, "step_00000050.h5"));
    state_free(&s);
    state_free(&s2);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/mome_test_ckpt_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    mome_h5_quiet();
    test_save_latest_keep();
    test_corruption();
    test_mismatch();
    test_failed_save();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (failures == 0 && system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
    if (failures) {
        fprintf(stderr, "test_checkpoint: %d check(s) failed (files kept in %s)\n", failures, dir);
        return 1;
    }
    printf("test_checkpoint: all checks passed\n");
    return 0;
}
