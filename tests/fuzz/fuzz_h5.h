/* fuzz_h5.h — the HDF5 files that fuzz_checkpoint.c and fuzz_checkpoint_raw.c start from, and the loaders they
 * feed: a small but complete checkpoint (model, AdamW moments, two ranks' RNG state and data cursors, the
 * adaptive-alpha windows and a student-aware router), a tokenizer file and a router file, each written at start
 * by mome's own writers into a scratch directory (on /dev/shm when there is one), and read into memory.
 */
#ifndef MOME_FUZZ_H5_H
#define MOME_FUZZ_H5_H

#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "mome/checkpoint.h"
#include "mome/route.h"
#include "mome/tokenizer.h"

enum { KIND_CKPT, KIND_TOKENIZER, KIND_ROUTER, N_KINDS };

typedef struct {
    uint8_t *image;
    size_t len;
} h5_template;

static char scratch_dir[256];
static char scratch_file[300]; /* the file each run writes and loads */
static h5_template templates[N_KINDS];
static mome_tensor_table ckpt_table;
static float *ckpt_params, *ckpt_m, *ckpt_v; /* buffers to load into (ckpt_table.total floats) */

static void scratch_remove(void) {
    char p[400];
    const char *names[] = {"ckpt.h5", "tok.h5", "router.h5", "load.h5", "latest"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", scratch_dir, names[i]);
        unlink(p);
    }
    rmdir(scratch_dir);
}

static void read_template(h5_template *t, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) abort();
    fseek(f, 0, SEEK_END);
    t->len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    t->image = malloc(t->len);
    if (!t->image || fread(t->image, 1, t->len, f) != t->len) abort();
    fclose(f);
}

static void make_templates(void) {
    struct stat st;
    snprintf(scratch_dir, sizeof scratch_dir, "%s/mome-fuzz-XXXXXX",
             stat("/dev/shm", &st) == 0 && access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(scratch_dir)) abort();
    atexit(scratch_remove);
    snprintf(scratch_file, sizeof scratch_file, "%s/load.h5", scratch_dir);
    char path[400];

    /* Checkpoint: three tensors, one of them nested (blocks/fc_w). */
    const size_t s_wte[2] = {8, 4}, s_fc[3] = {2, 4, 6}, s_lnf[1] = {4};
    memset(&ckpt_table, 0, sizeof ckpt_table);
    mome_tensor_table_add(&ckpt_table, "wte", 2, s_wte, 1);
    mome_tensor_table_add(&ckpt_table, "blocks/fc_w", 3, s_fc, 1);
    mome_tensor_table_add(&ckpt_table, "lnf_w", 1, s_lnf, 0);
    ckpt_params = mome_calloc(ckpt_table.total, sizeof(float));
    ckpt_m = mome_calloc(ckpt_table.total, sizeof(float));
    ckpt_v = mome_calloc(ckpt_table.total, sizeof(float));
    for (size_t i = 0; i < ckpt_table.total; i++) {
        ckpt_params[i] = (float)i * 0.25f - 3.0f;
        ckpt_m[i] = (float)i * 1e-3f;
        ckpt_v[i] = (float)i * 1e-6f;
    }
    const uint64_t rng[8] = {1, 2, 3, 4, 5, 6, 7, 8}, cursors[2] = {100, 200};
    const double ce[3] = {2.5, 2.4, 2.3}, kd[3] = {1.5, 1.4, 1.3};
    const float gate[5] = {0.1f, -0.2f, 0.3f, -0.4f, 0.5f}, gm[5] = {0}, gv[5] = {0};
    mome_ckpt_save_args a = {.step = 42,
                             .tokens_seen = 42 * 4096,
                             .world_size = 2,
                             .config_text = "[model]\nn_layer = 1\n",
                             .tokenizer_hash = "0123456789abcdef",
                             .model_kind = "gpt",
                             .table = &ckpt_table,
                             .params = ckpt_params,
                             .adam_m = ckpt_m,
                             .adam_v = ckpt_v,
                             .adam_step = 42,
                             .n_streams = 2,
                             .rng_states = rng,
                             .data_cursors = cursors,
                             .kd_window = 3,
                             .kd_ce = ce,
                             .kd_kd = kd,
                             .kd_count = 3,
                             .router_n = 5,
                             .router_gate = gate,
                             .router_m = gm,
                             .router_v = gv,
                             .router_step = 7};
    if (mome_ckpt_save(scratch_dir, &a, 0, path, sizeof path) != MOME_OK) abort();
    read_template(&templates[KIND_CKPT], path);
    unlink(path);
    snprintf(path, sizeof path, "%s/latest", scratch_dir);
    unlink(path);

    /* Tokenizer: a few merges. */
    static const char text[] = "the cat sat on the mat; the cat ate the rat. 0123 0123 caf\xc3\xa9 caf\xc3\xa9";
    const char *texts[1] = {text};
    const size_t lens[1] = {sizeof text - 1};
    mome_tokenizer *tok = NULL;
    snprintf(path, sizeof path, "%s/tok.h5", scratch_dir);
    if (mome_tokenizer_train(&tok, texts, lens, 1, MOME_TOK_FIRST_MERGE + 12) != MOME_OK ||
        mome_tokenizer_save(tok, path) != MOME_OK)
        abort();
    mome_tokenizer_free(tok);
    read_template(&templates[KIND_TOKENIZER], path);
    unlink(path);

    /* Router: 3 classes over 64 buckets. */
    const char *labels[3] = {"alpha", "beta", "gamma"};
    mome_route_hashing h;
    mome_route_hashing_defaults(&h);
    h.buckets = 64;
    mome_router *r = NULL;
    if (mome_router_create(&r, MOME_ROUTER_LR, labels, 3, &h) != MOME_OK) abort();
    for (uint32_t b = 0; b < h.buckets; b++) {
        r->idf[b] = 1.0f + (float)b / 64.0f;
        for (int c = 0; c < 3; c++) r->weights[b * 3 + (uint32_t)c] = (float)((int)(b * 7 + (uint32_t)c) % 13 - 6) / 6.0f;
    }
    snprintf(path, sizeof path, "%s/router.h5", scratch_dir);
    if (mome_router_save(r, path) != MOME_OK) abort();
    mome_router_free(r);
    read_template(&templates[KIND_ROUTER], path);
    unlink(path);
}

/* Writes image to the scratch file. */
static void write_scratch(const void *image, size_t len) {
    FILE *f = fopen(scratch_file, "wb");
    if (!f || (len && fwrite(image, 1, len, f) != len) || fclose(f) != 0) abort();
}

/* A refusal must say what and where: a message naming the file. */
static void check_refusal(int rc, const char *what) {
    const char *msg = mome_error_message();
    FUZZ_CHECK(msg[0] != 0, "%s refused the file (%d) without a message", what, rc);
    FUZZ_CHECK(strstr(msg, scratch_file) != NULL || strstr(msg, "load.h5") != NULL,
               "%s: the message does not name the file: %s", what, msg);
}

/* Loads the scratch file as a `kind` file with every reader mome has for it, and uses what loaded (checkpoint
 * tensors with or without the AdamW moments). */
static void load_scratch(int kind, int with_moments) {
    if (kind == KIND_CKPT) {
        mome_ckpt_info info;
        int rc = mome_ckpt_read_info(scratch_file, &info);
        if (rc == MOME_OK) {
            FUZZ_CHECK(info.n_streams >= 1 && info.rng_states && info.data_cursors && info.config_text,
                       "read_info: %d streams", info.n_streams);
            FUZZ_CHECK((info.kd_window > 0) == (info.kd_ce != NULL && info.kd_kd != NULL), "kd window %zu",
                       info.kd_window);
            FUZZ_CHECK((info.router_n > 0) == (info.router_gate != NULL), "router %zu", info.router_n);
            FUZZ_CHECK(memchr(info.tokenizer_hash, 0, sizeof info.tokenizer_hash) &&
                           memchr(info.model_kind, 0, sizeof info.model_kind) &&
                           memchr(info.git_sha, 0, sizeof info.git_sha),
                       "an unterminated string attribute");
            mome_ckpt_info_free(&info);
        } else {
            check_refusal(rc, "mome_ckpt_read_info");
        }
        rc = with_moments ? mome_ckpt_read_tensors(scratch_file, &ckpt_table, ckpt_params, ckpt_m, ckpt_v)
                          : mome_ckpt_read_tensors(scratch_file, &ckpt_table, ckpt_params, NULL, NULL);
        if (rc != MOME_OK) check_refusal(rc, "mome_ckpt_read_tensors");
    } else if (kind == KIND_TOKENIZER) {
        mome_tokenizer *t = NULL;
        int rc = mome_tokenizer_load(&t, scratch_file);
        if (rc == MOME_OK) {
            static const char s[] = "the cat ate 0123 caf\xc3\xa9 \xff";
            uint32_t *ids = NULL;
            size_t n = 0, cap = 0;
            FUZZ_CHECK(mome_tokenizer_encode(t, s, sizeof s - 1, &ids, &n, &cap) == MOME_OK, "encode");
            char out[sizeof s];
            FUZZ_CHECK(mome_tokenizer_decode(t, ids, n, out, sizeof out) == sizeof s - 1 &&
                           memcmp(out, s, sizeof s - 1) == 0,
                       "a loaded tokenizer does not round-trip");
            free(ids);
            mome_tokenizer_free(t);
        } else {
            check_refusal(rc, "mome_tokenizer_load");
        }
    } else {
        mome_router *r = NULL;
        int rc = mome_router_open(&r, scratch_file);
        if (rc == MOME_OK) {
            float probs[MOME_ROUTER_MAX_CLASSES];
            const int k = mome_router_classify(r, "def f(x): return x", 18, probs);
            FUZZ_CHECK(k >= 0 && k < r->n_classes, "class %d of %d", k, r->n_classes);
            mome_router_free(r);
        } else {
            check_refusal(rc, "mome_router_open");
        }
    }
}

#endif
