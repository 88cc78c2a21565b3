/* test_config.c — unit test of the configuration module (src/config.c).
 *
 * Checks: the defaults validate and describe the documented model; configs/tiny.ini and configs/teacher.ini
 * load and validate; every class of error (unknown section, also one with no keys, unknown key, bad integer,
 * bad float, out of range, overflow, duplicate key, syntax error, key outside a section, over-long line,
 * missing file, bad overrides) returns MOME_ECONFIG with a message naming the file (or override) and the right
 * line; overrides apply; cross-field validation; to_string -> load_string reproduces every field exactly
 * (including 2000 random floats and extreme values). Exits non-zero on any failure.
 */
#include "mome/common.h"
#include "mome/config.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"


static char dir[256];

/* Writes `text` to <dir>/<name> and returns the path (static buffer rotation of 4). */
static const char *write_ini(const char *name, const char *text) {
    static char paths[4][512];
    static int next = 0;
    char *p = paths[next++ % 4];
    snprintf(p, 512, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", p);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
    return p;
}

/* Loads `text` as file <name> over defaults; expects MOME_ECONFIG and "<path>:<line>:" plus each needle. */
static void expect_file_error(int src_line, const char *name, const char *text, int line, const char *needle1,
                              const char *needle2) {
    mome_config cfg;
    mome_config_defaults(&cfg);
    const char *path = write_ini(name, text);
    int rc = mome_config_load_file(&cfg, path);
    const char *msg = mome_error_message();
    char where[600];
    snprintf(where, sizeof where, "%s:%d: ", path, line);
    if (rc != MOME_ECONFIG) {
        fprintf(stderr, "%s:%d: loading %s returned %d (%s), expected MOME_ECONFIG; message: %s\n", __FILE__,
                src_line, name, rc, mome_strerror(rc), msg);
        failures++;
        return;
    }
    const char *needles[3] = {where, needle1, needle2};
    for (int i = 0; i < 3; i++) {
        if (needles[i] && !strstr(msg, needles[i])) {
            fprintf(stderr, "%s:%d: message \"%s\" does not contain \"%s\"\n", __FILE__, src_line, msg, needles[i]);
            failures++;
        }
    }
}

static void expect_override_error(int src_line, const char *assignment, const char *needle) {
    mome_config cfg;
    mome_config_defaults(&cfg);
    int rc = mome_config_override(&cfg, assignment);
    const char *msg = mome_error_message();
    char want[300];
    snprintf(want, sizeof want, "override '%s'", assignment);
    if (rc != MOME_ECONFIG) {
        fprintf(stderr, "%s:%d: override '%s' returned %d (%s), expected MOME_ECONFIG\n", __FILE__, src_line,
                assignment, rc, mome_strerror(rc));
        failures++;
        return;
    }
    if (!strstr(msg, want) || (needle && !strstr(msg, needle))) {
        fprintf(stderr, "%s:%d: message \"%s\" does not contain \"%s\" and \"%s\"\n", __FILE__, src_line, msg, want,
                needle ? needle : "");
        failures++;
    }
}

static void compare_configs(const mome_config *a, const mome_config *b) {
    CHECK_EQ_I(a->model.vocab_size, b->model.vocab_size);
    CHECK_EQ_I(a->model.seq_len, b->model.seq_len);
    CHECK_EQ_I(a->model.n_layer, b->model.n_layer);
    CHECK_EQ_I(a->model.n_head, b->model.n_head);
    CHECK_EQ_I(a->model.d_model, b->model.d_model);
    CHECK_EQ_I(a->model.d_ff, b->model.d_ff);
    CHECK_EQ_S(a->train.run_name, b->train.run_name);
    CHECK_EQ_I(a->train.steps, b->train.steps);
    CHECK_EQ_I(a->train.batch_size, b->train.batch_size);
    CHECK_EQ_I(a->train.grad_accum, b->train.grad_accum);
    CHECK_EQ_F(a->train.lr, b->train.lr);
    CHECK_EQ_F(a->train.min_lr, b->train.min_lr);
    CHECK_EQ_I(a->train.warmup_steps, b->train.warmup_steps);
    CHECK_EQ_F(a->train.weight_decay, b->train.weight_decay);
    CHECK_EQ_F(a->train.beta1, b->train.beta1);
    CHECK_EQ_F(a->train.beta2, b->train.beta2);
    CHECK_EQ_F(a->train.eps, b->train.eps);
    CHECK_EQ_F(a->train.grad_clip, b->train.grad_clip);
    if (a->train.seed != b->train.seed) {
        fprintf(stderr, "%s:%d: seed %llu != %llu\n", __FILE__, __LINE__, (unsigned long long)a->train.seed,
                (unsigned long long)b->train.seed);
        failures++;
    }
    CHECK_EQ_S(a->train.resume, b->train.resume);
    CHECK_EQ_I(a->train.log_every, b->train.log_every);
    CHECK_EQ_I(a->train.eval_every, b->train.eval_every);
    CHECK_EQ_I(a->train.eval_batches, b->train.eval_batches);
    CHECK_EQ_I(a->train.threads, b->train.threads);
    CHECK_EQ_S(a->data.dir, b->data.dir);
    CHECK_EQ_S(a->data.domains, b->data.domains);
    CHECK_EQ_S(a->checkpoint.dir, b->checkpoint.dir);
    CHECK_EQ_I(a->checkpoint.every, b->checkpoint.every);
    CHECK_EQ_I(a->checkpoint.keep, b->checkpoint.keep);
}

/* to_string(a) parsed over defaults must give a again, and print the same text. */
static void round_trip(const mome_config *a) {
    char *text = mome_config_to_string(a);
    mome_config b;
    mome_config_defaults(&b);
    CHECK_RC(mome_config_load_string(&b, text, "round trip"), MOME_OK);
    compare_configs(a, &b);
    char *text2 = mome_config_to_string(&b);
    CHECK_EQ_S(text2, text);
    mome_free(text2);
    mome_free(text);
}

static void test_defaults(void) {
    mome_config cfg;
    mome_config_defaults(&cfg);
    CHECK_RC(mome_config_validate(&cfg), MOME_OK);
    CHECK_EQ_I(cfg.model.seq_len, 128);
    CHECK_EQ_I(cfg.model.n_layer, 4);
    CHECK_EQ_I(cfg.model.n_head, 4);
    CHECK_EQ_I(cfg.model.d_model, 128);
    CHECK_EQ_I(cfg.model.d_ff, 0);
    CHECK_EQ_I(cfg.train.batch_size, 16);
    CHECK_EQ_F(cfg.train.lr, 3e-3f);
    CHECK_EQ_S(cfg.train.run_name, "run");
    CHECK_EQ_S(cfg.train.resume, "none");
    CHECK_EQ_I(cfg.train.threads, 0);
    CHECK_EQ_S(cfg.data.dir, "data/default");
    CHECK_EQ_S(cfg.data.domains, "");
    CHECK_EQ_S(cfg.checkpoint.dir, "checkpoints");
    CHECK_EQ_I(cfg.checkpoint.every, 0);
    CHECK_EQ_I(cfg.checkpoint.keep, 3);
    round_trip(&cfg);
}

static void test_shipped_configs(void) {
    mome_config cfg;
    mome_config_defaults(&cfg);
    CHECK_RC(mome_config_load_file(&cfg, MOME_SOURCE_DIR "/configs/tiny.ini"), MOME_OK);
    CHECK_RC(mome_config_validate(&cfg), MOME_OK);
    CHECK_EQ_S(cfg.train.run_name, "tiny");
    CHECK_EQ_I(cfg.model.seq_len, 64);
    CHECK_EQ_I(cfg.model.n_layer, 2);
    CHECK_EQ_I(cfg.model.d_model, 64);
    CHECK_EQ_I(cfg.train.steps, 50);
    CHECK_EQ_I(cfg.train.batch_size, 8);
    round_trip(&cfg);

    mome_config_defaults(&cfg);
    CHECK_RC(mome_config_load_file(&cfg, MOME_SOURCE_DIR "/configs/teacher.ini"), MOME_OK);
    CHECK_RC(mome_config_validate(&cfg), MOME_OK);
    CHECK_EQ_S(cfg.train.run_name, "teacher");
    CHECK_EQ_I(cfg.model.d_model, 192);
    CHECK_EQ_I(cfg.checkpoint.keep, 3);
    round_trip(&cfg);
}

static void test_good_file(void) {
    mome_config cfg;
    mome_config_defaults(&cfg);
    const char *p = write_ini("good.ini",
                              "\xef\xbb\xbf; a comment\n"
                              "# another comment\n"
                              "[model]\n"
                              "n_layer = 3\r\n"
                              "  d_model=96   ; inline comment, indentation is allowed\n"
                              "\n"
                              "[train]\n"
                              "lr = 1e-3\n"
                              "seed = 0x10\n"
                              "steps = +200\n"
                              "run_name = my-run.v2\n"
                              "[data]\n"
                              "dir = some dir/with spaces\n"
                              "domains = en,fr\n"
                              "[train]\n"
                              "min_lr = 0\n");
    CHECK_RC(mome_config_load_file(&cfg, p), MOME_OK);
    CHECK_RC(mome_config_validate(&cfg), MOME_OK);
    CHECK_EQ_I(cfg.model.n_layer, 3);
    CHECK_EQ_I(cfg.model.d_model, 96);
    CHECK_EQ_I(cfg.model.seq_len, 128); /* untouched: default */
    CHECK_EQ_F(cfg.train.lr, 1e-3f);
    CHECK_EQ_F(cfg.train.min_lr, 0.0f);
    CHECK_EQ_I(cfg.train.seed, 16);
    CHECK_EQ_I(cfg.train.steps, 200);
    CHECK_EQ_S(cfg.train.run_name, "my-run.v2");
    CHECK_EQ_S(cfg.data.dir, "some dir/with spaces");
    CHECK_EQ_S(cfg.data.domains, "en,fr");
    round_trip(&cfg);

    /* A long line (longer than inih's buffer) with a value of 250 bytes and an inline comment. */
    char text[1024], val[251];
    memset(val, 'p', 250);
    val[250] = 0;
    snprintf(text, sizeof text, "[model]\nn_head = 2\n[checkpoint]\n  dir = %s   ; %0100d\nkeep = 7\n", val, 0);
    CHECK_RC(mome_config_load_string(&cfg, text, "long"), MOME_OK);
    CHECK_EQ_S(cfg.checkpoint.dir, val);
    CHECK_EQ_I(cfg.checkpoint.keep, 7);
    CHECK_EQ_I(cfg.model.n_head, 2);
    round_trip(&cfg);

    /* seed: the full unsigned 64-bit range. */
    CHECK_RC(mome_config_override(&cfg, "train.seed=18446744073709551615"), MOME_OK);
    CHECK(cfg.train.seed == UINT64_MAX);
    round_trip(&cfg);
}

static void test_file_errors(void) {
    expect_file_error(__LINE__, "bad_section.ini", "[model]\nn_layer = 2\n[trian]\nsteps = 3\n", 3,
                      "unknown section [trian]", "did you mean [train]?");
    /* A section with no keys under it is never passed to inih's handler: still an error on its line. */
    expect_file_error(__LINE__, "bad_section2.ini", "[model]\nn_layer = 2\n[trian]\n", 3, "unknown section [trian]",
                      "known: model, train, data, checkpoint");
    expect_file_error(__LINE__, "bad_key.ini", "[model]\nn_layer = 2\n[train]\nstepz = 10\n", 4,
                      "unknown key 'stepz' in [train]", "did you mean 'steps'?");
    expect_file_error(__LINE__, "bad_key2.ini", "[data]\n\n\nfoo = 1\n", 4, "unknown key 'foo' in [data]",
                      "(known: dir, domains, order)");
    expect_file_error(__LINE__, "bad_int.ini", "[train]\nsteps = ten\n", 2, "[train] steps = 'ten'",
                      "expected an integer");
    expect_file_error(__LINE__, "bad_int2.ini", "[train]\n\nsteps = 10x\n", 3, "'10x'", "expected an integer");
    expect_file_error(__LINE__, "bad_int3.ini", "[train]\nsteps = 1.5\n", 2, "'1.5'", "expected an integer");
    expect_file_error(__LINE__, "overflow.ini", "[train]\nsteps = 99999999999999999999999\n", 2, "steps",
                      "expected an integer in [1, 1000000000]");
    expect_file_error(__LINE__, "overflow_int.ini", "[model]\nd_model = 4294967424\n", 2, "d_model",
                      "expected an integer in [1, 65536]");
    expect_file_error(__LINE__, "bad_float.ini", "[model]\n[train]\nlr = abc\n", 3, "[train] lr = 'abc'",
                      "expected a number");
    expect_file_error(__LINE__, "bad_float2.ini", "[train]\nlr = 1e-3x\n", 2, "'1e-3x'", "expected a number");
    expect_file_error(__LINE__, "nan.ini", "[train]\nlr = nan\n", 2, "'nan'", "expected a number");
    expect_file_error(__LINE__, "huge.ini", "[train]\ngrad_clip = 1e39\n", 2, "grad_clip", "expected a number");
    expect_file_error(__LINE__, "empty_val.ini", "[train]\nlr =\n", 2, "lr = ''", "expected a number");
    expect_file_error(__LINE__, "bad_range.ini", "[train]\nlr = -1\n", 2, "[train] lr = '-1'",
                      "expected a number in [0, 10]");
    expect_file_error(__LINE__, "bad_range2.ini", "[model]\nn_layer = 0\n", 2, "n_layer",
                      "expected an integer in [1, 1024]");
    expect_file_error(__LINE__, "bad_seed.ini", "[train]\nseed = -1\n", 2, "seed", "unsigned 64-bit");
    expect_file_error(__LINE__, "bad_seed2.ini", "[train]\nseed = 18446744073709551616\n", 2, "seed",
                      "unsigned 64-bit");
    expect_file_error(__LINE__, "dup.ini", "[train]\nsteps = 5\nlr = 0.1\nsteps = 6\n", 4, "steps is set twice",
                      "first on line 2");
    /* Indented lines are ordinary lines (no inih multi-line continuation): an error there has its own line. */
    expect_file_error(__LINE__, "indent.ini", "[train]\nsteps = 5\n  lr = x\n", 3, "[train] lr = 'x'", NULL);
    expect_file_error(__LINE__, "syntax.ini", "[train]\nsteps = 5\njust some words\n", 3, "syntax error",
                      "just some words");
    expect_file_error(__LINE__, "syntax2.ini", "[train\nsteps = 5\n", 1, "syntax error", NULL);
    expect_file_error(__LINE__, "nosection.ini", "steps = 5\n", 1, "outside any section", NULL);
    /* The first error is reported, not a later one. */
    expect_file_error(__LINE__, "two.ini", "[train]\nsteps = x\n[nope]\n", 2, "steps", NULL);
    /* Lines longer than inih's buffer are parsed too, with the same rules and the right line numbers. */
    char longline[1200];
    snprintf(longline, sizeof longline, "[data]\n; fine\ndir = %0400d\n", 7);
    expect_file_error(__LINE__, "long.ini", longline, 3, "[data] dir = '0000", "at most 255 bytes");
    snprintf(longline, sizeof longline, "[data]\n;%0300d\n[train]\nsteps = 5\n%0300d = 1\n", 1, 2);
    expect_file_error(__LINE__, "long2.ini", longline, 5, "unknown key '0000", "in [train]");
    snprintf(longline, sizeof longline, "[data]\n%0300d\n", 3);
    expect_file_error(__LINE__, "long3.ini", longline, 2, "syntax error", NULL);
    snprintf(longline, sizeof longline, "[data]\n;%0300d\n[train]\nsteps = 5\nsteps = 6 ;%0300d\n", 1, 2);
    expect_file_error(__LINE__, "long4.ini", longline, 5, "steps is set twice", "first on line 4");
    /* String longer than the struct holds, via an override (lines are capped by inih). */
    char longval[400];
    memset(longval, 'a', sizeof longval);
    memcpy(longval, "data.dir=", 9);
    longval[sizeof longval - 1] = 0;
    expect_override_error(__LINE__, longval, "too long");

    /* A missing file: the name and the system's reason. */
    mome_config cfg;
    mome_config_defaults(&cfg);
    char missing[512];
    snprintf(missing, sizeof missing, "%s/no_such.ini", dir);
    CHECK_RC(mome_config_load_file(&cfg, missing), MOME_ECONFIG);
    CHECK_CONTAINS(mome_error_message(), missing);
    CHECK_CONTAINS(mome_error_message(), "No such file");

    /* Strings from load_string name the origin. */
    mome_config_defaults(&cfg);
    CHECK_RC(mome_config_load_string(&cfg, "[model]\n\nn_head = 3x\n", "ckpt.h5:/config"), MOME_ECONFIG);
    CHECK_CONTAINS(mome_error_message(), "ckpt.h5:/config:3: [model] n_head = '3x'");
}

static void test_overrides(void) {
    mome_config cfg;
    mome_config_defaults(&cfg);
    CHECK_RC(mome_config_override(&cfg, "train.steps=7"), MOME_OK);
    CHECK_EQ_I(cfg.train.steps, 7);
    CHECK_RC(mome_config_override(&cfg, " model.d_model = 96 "), MOME_OK);
    CHECK_EQ_I(cfg.model.d_model, 96);
    CHECK_RC(mome_config_override(&cfg, "train.lr=0.25"), MOME_OK);
    CHECK_EQ_F(cfg.train.lr, 0.25f);
    CHECK_RC(mome_config_override(&cfg, "data.domains="), MOME_OK);
    CHECK_EQ_S(cfg.data.domains, "");
    CHECK_RC(mome_config_override(&cfg, "train.resume=/some/path=with=equals"), MOME_OK);
    CHECK_EQ_S(cfg.train.resume, "/some/path=with=equals");

    expect_override_error(__LINE__, "train.stepz=5", "unknown key 'stepz' in [train]");
    expect_override_error(__LINE__, "train.nope=1", "unknown key 'nope'");
    expect_override_error(__LINE__, "trian.steps=5", "unknown section [trian]");
    expect_override_error(__LINE__, "train.steps", "expected section.key=value");
    expect_override_error(__LINE__, "steps=5", "expected section.key=value");
    expect_override_error(__LINE__, ".steps=5", "expected section.key=value");
    expect_override_error(__LINE__, "train.steps=abc", "expected an integer");
    expect_override_error(__LINE__, "train.steps=0", "expected an integer in [1, 1000000000]");
    expect_override_error(__LINE__, "train.lr=inf", "expected a number");
}

static void expect_invalid(int src_line, const mome_config *cfg, const char *needle) {
    int rc = mome_config_validate(cfg);
    if (rc != MOME_ECONFIG || !strstr(mome_error_message(), needle)) {
        fprintf(stderr, "%s:%d: validate returned %d (%s) with \"%s\", expected MOME_ECONFIG with \"%s\"\n", __FILE__,
                src_line, rc, mome_strerror(rc), mome_error_message(), needle);
        failures++;
    }
}

static void test_validate(void) {
    mome_config base, cfg;
    mome_config_defaults(&base);
    cfg = base;
    cfg.model.n_head = 3;
    expect_invalid(__LINE__, &cfg, "n_head = 3 does not divide d_model = 128");
    cfg = base;
    cfg.train.min_lr = 0.1f;
    expect_invalid(__LINE__, &cfg, "min_lr");
    cfg = base;
    cfg.train.warmup_steps = 2000;
    expect_invalid(__LINE__, &cfg, "warmup_steps = 2000 is larger than steps = 1000");
    cfg = base;
    cfg.train.beta2 = 1.0f;
    expect_invalid(__LINE__, &cfg, "beta2");
    cfg = base;
    cfg.model.seq_len = 1; /* ranges are re-checked for structs filled by code */
    expect_invalid(__LINE__, &cfg, "seq_len");
    cfg = base;
    cfg.model.d_ff = -1;
    expect_invalid(__LINE__, &cfg, "d_ff");
    cfg = base;
    snprintf(cfg.train.run_name, sizeof cfg.train.run_name, "a/b");
    expect_invalid(__LINE__, &cfg, "run_name = 'a/b'");
    cfg = base;
    snprintf(cfg.train.run_name, sizeof cfg.train.run_name, "%s", "");
    expect_invalid(__LINE__, &cfg, "run_name");
    cfg = base;
    snprintf(cfg.data.domains, sizeof cfg.data.domains, "en,,fr");
    expect_invalid(__LINE__, &cfg, "domains = 'en,,fr'");
    cfg = base;
    snprintf(cfg.train.resume, sizeof cfg.train.resume, "%.200s/does_not_exist.h5", dir);
    expect_invalid(__LINE__, &cfg, "does_not_exist.h5");
    /* An existing file, auto and none are accepted. */
    const char *existing = write_ini("fake_ckpt.h5", "x");
    snprintf(cfg.train.resume, sizeof cfg.train.resume, "%s", existing);
    CHECK_RC(mome_config_validate(&cfg), MOME_OK);
    snprintf(cfg.train.resume, sizeof cfg.train.resume, "auto");
    CHECK_RC(mome_config_validate(&cfg), MOME_OK);
}

/* Random floats in range, extreme values and odd strings survive to_string -> load_string exactly. */
static void test_round_trip(void) {
    mome_config cfg;
    mome_config_defaults(&cfg);
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    int n_before = failures;
    for (int i = 0; i < 2000; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        float u = (float)((s >> 40) & 0xffffff) / 16777216.0f; /* [0, 1) with 24 random bits */
        int e = (int)((s >> 8) & 31);
        cfg.train.lr = ldexpf(u, -e) * 10.0f;
        cfg.train.min_lr = nextafterf(cfg.train.lr * 0.1f, 1.0f);
        cfg.train.eps = ldexpf(1.0f + u, -90); /* about 1e-27, inside [1e-30, 1] */
        cfg.train.weight_decay = u;
        cfg.train.grad_clip = 1e6f * u;
        cfg.train.seed = s;
        if (cfg.train.lr > 10.0f) continue;
        round_trip(&cfg);
        if (failures != n_before) break; /* one report is enough */
    }
    cfg.train.lr = 10.0f;
    cfg.train.min_lr = 0.0f;
    cfg.train.eps = 1.0f;
    cfg.train.beta1 = nextafterf(1.0f, 0.0f);
    cfg.train.steps = 1000000000;
    snprintf(cfg.data.dir, sizeof cfg.data.dir, "%s", "dir with spaces/and#hash;semi=eq[x]");
    snprintf(cfg.checkpoint.dir, sizeof cfg.checkpoint.dir, "%0255d", 1); /* the longest string */
    round_trip(&cfg);
    char *text = mome_config_to_string(&cfg);
    CHECK_CONTAINS(text, "[model]\nvocab_size = 0\n");
    CHECK_CONTAINS(text, "\n[checkpoint]\ndir = ");
    mome_free(text);
}

static void test_schema_listing(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/schema.txt", dir);
    FILE *f = fopen(path, "w+");
    CHECK(f != NULL);
    if (!f) return;
    mome_config_print_schema(f);
    fclose(f);
    char *text = NULL;
    CHECK_RC(mome_read_file(path, &text, NULL), MOME_OK);
    if (!text) return;
    const char *needles[] = {"[model]", "[train]", "[data]", "[checkpoint]", "run_name", "eval_batches",
                             "[1, 1000000000]", "keep"};
    for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++) CHECK_CONTAINS(text, needles[i]);
    mome_free(text);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/mome_test_config_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_defaults();
    test_shipped_configs();
    test_good_file();
    test_file_errors();
    test_overrides();
    test_validate();
    test_round_trip();
    test_schema_listing();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
    return check_summary("test_config");
}
