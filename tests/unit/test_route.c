/* test_route.c — unit test of the router classifier (src/route.c).
 *
 * Checks:
 *  - features: one n-gram's bucket and sign equal an independent computation of the documented hash (FNV-1a over
 *    the code points from the seeded start, then murmur3's finaliser); the counts of a short text are exactly its
 *    n-grams; whitespace runs, padding and invalid UTF-8 normalise as documented; the same text gives the same
 *    vector from 2 threads and in repeated calls; different seeds give different vectors; only the first
 *    MOME_ROUTER_MAX_TEXT bytes of a text are read;
 *  - tf-idf: sublinear tf and idf by hand on a 3-bucket vector, unit L2 norm, an all-zero vector left alone;
 *  - naive Bayes: a 2-class, 3-bucket example whose weights, priors and posterior (288/435) are computed by hand;
 *  - segmentation: every text is a piece of the document within the length bounds, a table of numbers is dropped,
 *    a long line is cut at a space, the cut is deterministic and depends on the seed;
 *  - metrics: precision, recall, F1, macro and weighted averages of a hand-made confusion matrix;
 *  - router.h5: save + open round trip (labels, hashing, arrays bit-identical, same probabilities); a byte
 *    flipped in the weights' stored chunk (Fletcher32), an attribute changed after training (content hash), a
 *    missing dataset, a text file, a tokenizer file and a missing file are refused with the file named;
 *  - training end to end on a tiny 3-domain corpus written here, for lr, svm and nb: every held-in text of a
 *    clear domain is classified right, probabilities sum to 1, and mome_router_check_corpus accepts the corpus
 *    and refuses one with other domains.
 * Exits non-zero on any failure.
 */
#include "mome/route.h"

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "mome/common.h"
#include "mome/h5io.h"

static char dir[256];

#define CHECK_NEAR(a, b, tol)                                                                                  \
    do {                                                                                                       \
        double a_ = (a), b_ = (b);                                                                             \
        if (!(fabs(a_ - b_) <= (tol))) {                                                                       \
            fprintf(stderr, "%s:%d: %s = %.9g, expected %s = %.9g (tolerance %g)\n", __FILE__, __LINE__, #a, a_, \
                    #b, b_, (double)(tol));                                                                    \
            failures++;                                                                                        \
        }                                                                                                      \
    } while (0)

static uint64_t fmix64(uint64_t z) {
    z ^= z >> 33;
    z *= 0xff51afd7ed558ccdULL;
    z ^= z >> 33;
    z *= 0xc4ceb9fe1a85ec53ULL;
    z ^= z >> 33;
    return z;
}

/* The documented hash of the n-gram cps[0..n): bucket and sign (+1 / -1). */
static void ref_hash(const mome_route_hashing *h, const uint32_t *cps, int n, uint32_t *bucket, int *sign) {
    uint64_t st = MOME_FNV_OFFSET ^ fmix64(h->hash_seed);
    for (int i = 0; i < n; i++) st = (st ^ cps[i]) * 0x100000001b3ULL;
    uint64_t hv = fmix64(st);
    *bucket = (uint32_t)(hv % h->buckets);
    *sign = (hv >> 63) ? -1 : 1;
}

static float vec_get(const mome_route_vec *v, uint32_t b) {
    for (size_t j = 0; j < v->n; j++)
        if (v->idx[j] == b) return v->val[j];
    return 0.0f;
}

static int vec_equal(const mome_route_vec *a, const mome_route_vec *b) {
    return a->n == b->n && !memcmp(a->idx, b->idx, a->n * sizeof *a->idx) &&
           !memcmp(a->val, b->val, a->n * sizeof *a->val);
}

static void test_features(void) {
    mome_route_hashing h;
    mome_route_hashing_defaults(&h);
    CHECK_RC(mome_route_hashing_check(&h), MOME_OK);
    CHECK_EQ_I(h.ngram_min, 1);
    CHECK_EQ_I(h.ngram_max, 5);
    CHECK_EQ_U64(h.buckets, 1u << 20);
    CHECK_EQ_U64(h.hash_seed, mome_route_hash_seed(1));
    CHECK(mome_route_hash_seed(1) != mome_route_hash_seed(2));

    /* "ab" is " ab " after padding: 1-grams ' ' (x2), a, b; 2-grams " a", "ab", "b "; 3-grams " ab", "ab ";
     * 4-gram " ab ": 10 n-grams in all. */
    mome_route_vec u = {0}, s = {0};
    mome_route_counts(&h, "ab", 2, 0, &u);
    double total = 0;
    for (size_t j = 0; j < u.n; j++) total += u.val[j];
    CHECK_EQ_I((long long)total, 10);
    for (size_t j = 1; j < u.n; j++) CHECK(u.idx[j] > u.idx[j - 1]);
    const uint32_t sp = ' ', ab[4] = {' ', 'a', 'b', ' '};
    uint32_t b;
    int sign;
    ref_hash(&h, &sp, 1, &b, &sign);
    CHECK_EQ_F(vec_get(&u, b), 2.0f);
    mome_route_counts(&h, "ab", 2, 1, &s);
    CHECK_EQ_F(vec_get(&s, b), (float)(2 * sign));
    ref_hash(&h, ab, 4, &b, &sign);
    CHECK_EQ_F(vec_get(&u, b), 1.0f);
    CHECK_EQ_F(vec_get(&s, b), (float)sign);
    ref_hash(&h, ab + 1, 2, &b, &sign); /* "ab" */
    CHECK_EQ_F(vec_get(&s, b), (float)sign);

    /* Normalisation: whitespace runs (with NBSP), leading/trailing space; invalid UTF-8 is U+FFFD. */
    mome_route_vec a = {0}, c = {0};
    const char *spaced = "  le \t chat\n\n   noir\xc2\xa0 ";
    mome_route_counts(&h, spaced, strlen(spaced), 1, &a);
    mome_route_counts(&h, "le chat noir", 12, 1, &c);
    CHECK(vec_equal(&a, &c));
    mome_route_counts(&h, "x\xffy", 3, 1, &a);
    mome_route_counts(&h, "x\xef\xbf\xbdy", 5, 1, &c);
    CHECK(vec_equal(&a, &c));
    mome_route_counts(&h, "\xc3\xa9", 2, 0, &a); /* é: one code point -> " é " has 6 n-grams */
    total = 0;
    for (size_t j = 0; j < a.n; j++) total += a.val[j];
    CHECK_EQ_I((long long)total, 6);

    /* Determinism: repeated, and from two threads at once. */
    const char *text = "def parse(self, line):\n    return line.split()  # Les fonctions suivantes sont présentes";
    mome_route_counts(&h, text, strlen(text), 1, &a);
    mome_route_counts(&h, text, strlen(text), 1, &c);
    CHECK(vec_equal(&a, &c));
    mome_route_vec th[2] = {{0}, {0}};
#pragma omp parallel for num_threads(2)
    for (int t = 0; t < 2; t++) mome_route_counts(&h, text, strlen(text), 1, &th[t]);
    CHECK(vec_equal(&th[0], &a) && vec_equal(&th[1], &a));
    mome_route_hashing h2 = h;
    h2.hash_seed = mome_route_hash_seed(2);
    mome_route_counts(&h2, text, strlen(text), 1, &c);
    CHECK(!vec_equal(&a, &c));
    /* Signed sums never exceed the counts. */
    mome_route_counts(&h, text, strlen(text), 0, &c);
    double su = 0, ss = 0;
    for (size_t j = 0; j < c.n; j++) su += c.val[j];
    for (size_t j = 0; j < a.n; j++) ss += fabsf(a.val[j]);
    CHECK(ss <= su && su > 0);
    /* Only the first MOME_ROUTER_MAX_TEXT bytes are read. */
    size_t big = 2 * MOME_ROUTER_MAX_TEXT;
    char *huge = malloc(big);
    for (size_t i = 0; i < big; i++) huge[i] = i < MOME_ROUTER_MAX_TEXT ? "abc def "[i % 8] : "xyz\n"[i % 4];
    mome_route_counts(&h, huge, big, 1, &a);
    mome_route_counts(&h, huge, MOME_ROUTER_MAX_TEXT, 1, &c);
    CHECK(vec_equal(&a, &c));
    free(huge);
    /* Range checks. */
    h2 = h;
    h2.ngram_max = 9;
    CHECK_RC(mome_route_hashing_check(&h2), MOME_EINVAL);
    h2 = h;
    h2.buckets = 8;
    CHECK_RC(mome_route_hashing_check(&h2), MOME_EINVAL);
    mome_route_vec_free(&u);
    mome_route_vec_free(&s);
    mome_route_vec_free(&a);
    mome_route_vec_free(&c);
    mome_route_vec_free(&th[0]);
    mome_route_vec_free(&th[1]);
}

static void test_tfidf(void) {
    /* df of buckets 0..3 over 4 documents: 4, 1, 2, 0. */
    uint32_t df[4] = {4, 1, 2, 0};
    float idf[4];
    mome_route_idf(df, 4, 4, idf);
    CHECK_NEAR(idf[0], 1.0, 1e-6); /* ln(5/5) + 1 */
    CHECK_NEAR(idf[1], log(5.0 / 2.0) + 1, 1e-6);
    CHECK_NEAR(idf[2], log(5.0 / 3.0) + 1, 1e-6);
    CHECK_NEAR(idf[3], log(5.0) + 1, 1e-6);
    /* v = {b0: 1, b1: -3, b2: 2} -> {1 * idf0, -(1 + ln 3) * idf1, (1 + ln 2) * idf2} / norm. */
    uint32_t idx[3] = {0, 1, 2};
    float val[3] = {1, -3, 2};
    mome_route_vec v = {.idx = malloc(sizeof idx), .val = malloc(sizeof val), .n = 3, .cap = 3};
    memcpy(v.idx, idx, sizeof idx);
    memcpy(v.val, val, sizeof val);
    mome_route_tfidf(&v, idf);
    double e[3] = {idf[0], -(1 + log(3.0)) * idf[1], (1 + log(2.0)) * idf[2]};
    double norm = sqrt(e[0] * e[0] + e[1] * e[1] + e[2] * e[2]);
    for (int j = 0; j < 3; j++) CHECK_NEAR(v.val[j], e[j] / norm, 1e-6);
    double ss = 0;
    for (int j = 0; j < 3; j++) ss += (double)v.val[j] * v.val[j];
    CHECK_NEAR(ss, 1.0, 1e-6);
    /* Real text: unit norm. */
    mome_route_hashing h;
    mome_route_hashing_defaults(&h);
    float *ones = malloc(h.buckets * sizeof *ones);
    for (uint32_t i = 0; i < h.buckets; i++) ones[i] = 1.0f;
    mome_route_counts(&h, "Bonjour tout le monde, bonjour !", 32, 1, &v);
    mome_route_tfidf(&v, ones);
    ss = 0;
    for (size_t j = 0; j < v.n; j++) ss += (double)v.val[j] * v.val[j];
    CHECK_NEAR(ss, 1.0, 1e-5);
    v.n = 0;
    mome_route_tfidf(&v, ones); /* empty: nothing to do, no NaN */
    free(ones);
    mome_route_vec_free(&v);
}

static mome_route_vec make_vec(const float *dense, int n) {
    mome_route_vec v = {0};
    v.idx = malloc((size_t)n * sizeof *v.idx);
    v.val = malloc((size_t)n * sizeof *v.val);
    v.cap = (size_t)n;
    for (int b = 0; b < n; b++)
        if (dense[b] != 0) {
            v.idx[v.n] = (uint32_t)b;
            v.val[v.n++] = dense[b];
        }
    return v;
}

static void test_naive_bayes(void) {
    /* Class 0: counts [2,1,0] and [1,0,0]; class 1: [0,1,2]. alpha = 1, 3 buckets:
     * theta_0 = (3+1, 1+1, 0+1) / (4 + 3) = 4/7, 2/7, 1/7; theta_1 = (1, 2, 3) / (3 + 3) = 1/6, 2/6, 3/6;
     * priors 2/3, 1/3. Text [1,0,1]: P0 ~ 2/3 * 4/7 * 1/7 = 8/147, P1 ~ 1/3 * 1/6 * 3/6 = 1/36,
     * so P(class 0) = (8/147) / (8/147 + 1/36) = 288/435. */
    const float d[3][3] = {{2, 1, 0}, {1, 0, 0}, {0, 1, 2}};
    mome_route_vec x[3] = {make_vec(d[0], 3), make_vec(d[1], 3), make_vec(d[2], 3)};
    int y[3] = {0, 0, 1};
    float w[6], bias[2];
    mome_route_nb_fit(x, y, 3, 2, 3, 1.0, w, bias);
    CHECK_NEAR(w[0 * 2 + 0], log(4.0 / 7), 1e-6);
    CHECK_NEAR(w[1 * 2 + 0], log(2.0 / 7), 1e-6);
    CHECK_NEAR(w[2 * 2 + 0], log(1.0 / 7), 1e-6);
    CHECK_NEAR(w[0 * 2 + 1], log(1.0 / 6), 1e-6);
    CHECK_NEAR(w[1 * 2 + 1], log(2.0 / 6), 1e-6);
    CHECK_NEAR(w[2 * 2 + 1], log(3.0 / 6), 1e-6);
    CHECK_NEAR(bias[0], log(2.0 / 3), 1e-6);
    CHECK_NEAR(bias[1], log(1.0 / 3), 1e-6);

    /* The same through a router: probabilities are the posterior. */
    mome_route_hashing h;
    mome_route_hashing_defaults(&h);
    h.buckets = MOME_ROUTER_MIN_BUCKETS;
    const char *labels[2] = {"zero", "one"};
    mome_router *r = NULL;
    CHECK_RC(mome_router_create(&r, MOME_ROUTER_NB, labels, 2, &h), MOME_OK);
    if (r) {
        memcpy(r->weights, w, sizeof w);
        memcpy(r->bias, bias, sizeof bias);
        const float t[3] = {1, 0, 1};
        mome_route_vec q = make_vec(t, 3);
        float p[2];
        CHECK_EQ_I(mome_router_classify_features(r, &q, p), 0);
        CHECK_NEAR(p[0], 288.0 / 435.0, 1e-6);
        CHECK_NEAR(p[1], 147.0 / 435.0, 1e-6);
        const float t2[3] = {0, 0, 3}; /* P0 ~ 2/3 (1/7)^3, P1 ~ 1/3 (1/2)^3 */
        mome_route_vec q2 = make_vec(t2, 3);
        double p0 = (2.0 / 3) / 343.0, p1 = (1.0 / 3) / 8.0;
        CHECK_EQ_I(mome_router_classify_features(r, &q2, p), 1);
        CHECK_NEAR(p[1], p1 / (p0 + p1), 1e-6);
        mome_route_vec_free(&q);
        mome_route_vec_free(&q2);
        mome_router_free(r);
    }
    for (int i = 0; i < 3; i++) mome_route_vec_free(&x[i]);
}

typedef struct {
    const char *doc;
    size_t n, n_short;
    size_t off[256], len[256];
    int is_short[256];
} seg_log;

static void seg_cb(const char *text, size_t len, int is_short, void *ctx) {
    seg_log *l = ctx;
    if (l->n >= 256) return;
    l->off[l->n] = (size_t)(text - l->doc);
    l->len[l->n] = len;
    l->is_short[l->n] = is_short;
    l->n_short += (size_t)is_short;
    l->n++;
}

static void test_segmentation(void) {
    mome_route_seg_opts o;
    mome_route_seg_defaults(&o);
    CHECK_EQ_I(o.min_chars, 50);
    CHECK_EQ_I(o.max_chars, 600);
    /* A document of paragraphs of varied lengths, a table of numbers and one 1250-byte line. */
    char doc[12000];
    size_t n = 0;
    for (int p = 0; p < 20; p++) {
        int words = 5 + (p * 7) % 60;
        for (int w = 0; w < words; w++) n += (size_t)snprintf(doc + n, sizeof doc - n, "%s ", w % 3 ? "mots" : "texte");
        n += (size_t)snprintf(doc + n, sizeof doc - n, "fin.\n\n");
    }
    size_t table_at = n;
    for (int r = 0; r < 20; r++)
        n += (size_t)snprintf(doc + n, sizeof doc - n, "%3d  %3d  0x%02x  %c\n", r, r * 7, r, '!' + r);
    size_t table_end = n;
    n += (size_t)snprintf(doc + n, sizeof doc - n, "\n");
    for (int w = 0; w < 250; w++) n += (size_t)snprintf(doc + n, sizeof doc - n, "word ");
    n += (size_t)snprintf(doc + n, sizeof doc - n, "\n");

    seg_log a = {.doc = doc}, b = {.doc = doc}, c = {.doc = doc};
    size_t kept = mome_route_segment(doc, n, "doc.txt", 1, &o, seg_cb, &a);
    CHECK_EQ_I(kept, a.n);
    CHECK(a.n > 10 && a.n_short > 0);
    for (size_t i = 0; i < a.n; i++) {
        CHECK(a.off[i] + a.len[i] <= n);
        if (a.is_short[i]) {
            CHECK(a.len[i] >= o.short_min_chars && a.len[i] < o.min_chars);
        } else {
            CHECK(a.len[i] >= o.min_chars && a.len[i] <= o.max_chars);
        }
        /* The table carries no words: nothing may come from inside it alone. */
        CHECK(!(a.off[i] >= table_at && a.off[i] + a.len[i] <= table_end));
        CHECK(doc[a.off[i] + a.len[i] - 1] != ' ' && doc[a.off[i] + a.len[i] - 1] != '\n');
    }
    /* The 1250-byte line is cut at spaces: pieces end with a whole "word". */
    int long_pieces = 0;
    for (size_t i = 0; i < a.n; i++)
        if (!a.is_short[i] && a.off[i] > table_end) {
            long_pieces++;
            CHECK(!memcmp(doc + a.off[i] + a.len[i] - 4, "word", 4));
        }
    CHECK_EQ_I(long_pieces, 2); /* 599 + 599 bytes; the last 49 are under min_chars */
    /* Deterministic, and the seed (or the source name) changes the draws. */
    mome_route_segment(doc, n, "doc.txt", 1, &o, seg_cb, &b);
    CHECK(a.n == b.n && !memcmp(a.off, b.off, a.n * sizeof *a.off) && !memcmp(a.len, b.len, a.n * sizeof *a.len));
    mome_route_segment(doc, n, "doc.txt", 2, &o, seg_cb, &c);
    CHECK(c.n != a.n || memcmp(a.len, c.len, a.n * sizeof *a.len) != 0);
    /* The informative rule. */
    CHECK(!mome_route_informative("12 34 56 78 90 ab", 17, &o));
    CHECK(mome_route_informative("le chat noir", 12, &o));
    const char *tab = "0x00 0x01 0x02 0x03 0x04 0x05 0x06 0x07 0x08 0x09 0x0a 0x0b 0x0c 0x0d 0x0e Fin";
    CHECK(!mome_route_informative(tab, strlen(tab), &o));
    CHECK(mome_route_informative("Größe überall", strlen("Größe überall"), &o));
}

static void test_metrics(void) {
    /* rows true, cols predicted: a: 8 right, 2 as b; b: 1 as a, 4 right, 0 as c; c: 5 right */
    int64_t conf[9] = {8, 2, 0, 1, 4, 0, 0, 0, 5};
    mome_route_metrics m;
    mome_route_metrics_compute(&m, conf, 3);
    CHECK_NEAR(m.precision[0], 8.0 / 9, 1e-12);
    CHECK_NEAR(m.recall[0], 8.0 / 10, 1e-12);
    CHECK_NEAR(m.f1[0], 2 * (8.0 / 9) * 0.8 / (8.0 / 9 + 0.8), 1e-12);
    CHECK_NEAR(m.precision[1], 4.0 / 6, 1e-12);
    CHECK_NEAR(m.recall[1], 4.0 / 5, 1e-12);
    CHECK_NEAR(m.f1[2], 1.0, 1e-12);
    CHECK_EQ_I(m.support[0], 10);
    CHECK_EQ_I(m.n, 20);
    CHECK_NEAR(m.accuracy, 17.0 / 20, 1e-12);
    CHECK_NEAR(m.macro_f1, (m.f1[0] + m.f1[1] + m.f1[2]) / 3, 1e-12);
    CHECK_NEAR(m.weighted_f1, (10 * m.f1[0] + 5 * m.f1[1] + 5 * m.f1[2]) / 20, 1e-12);
    CHECK_NEAR(m.macro_p, (8.0 / 9 + 4.0 / 6 + 1) / 3, 1e-12);
    mome_route_metrics_free(&m);
    /* A class never predicted and never present: 0, not NaN. */
    int64_t z[4] = {3, 0, 0, 0};
    mome_route_metrics_compute(&m, z, 2);
    CHECK(m.precision[1] == 0 && m.recall[1] == 0 && m.f1[1] == 0);
    mome_route_metrics_free(&m);
}

static uint64_t rs = 0x9e3779b97f4a7c15ULL;
static float frand(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float)((rs >> 11) * 0x1.0p-53) * 2 - 1;
}

static void copy_file(const char *from, const char *to) {
    char *data;
    size_t len;
    CHECK_RC(mome_read_file(from, &data, &len), MOME_OK);
    FILE *f = fopen(to, "wb");
    fwrite(data, 1, len, f);
    fclose(f);
    mome_free(data);
}

static void test_save_load(void) {
    mome_route_hashing h;
    mome_route_hashing_defaults(&h);
    h.buckets = 4096;
    h.ngram_min = 2;
    h.ngram_max = 4;
    h.hash_seed = mome_route_hash_seed(7);
    const char *labels[3] = {"en", "fr", "python"};
    mome_router *r = NULL;
    CHECK_RC(mome_router_create(&r, MOME_ROUTER_LR, labels, 3, &h), MOME_OK);
    if (!r) return;
    for (uint32_t b = 0; b < h.buckets; b++) r->idf[b] = 1 + fabsf(frand()) * 5;
    for (uint32_t i = 0; i < h.buckets * 3; i++) r->weights[i] = frand();
    for (int k = 0; k < 3; k++) r->bias[k] = frand();
    snprintf(r->corpus_tokenizer_hash, sizeof r->corpus_tokenizer_hash, "0123456789abcdef");
    r->reg = 3;
    char path[512];
    snprintf(path, sizeof path, "%s/router.h5", dir);
    CHECK_RC(mome_router_save(r, path), MOME_OK);
    char tmpname[600];
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld", path, (long)getpid());
    CHECK(access(tmpname, F_OK) != 0);

    mome_router *q = NULL;
    CHECK_RC(mome_router_open(&q, path), MOME_OK);
    if (q) {
        CHECK_EQ_I(q->kind, MOME_ROUTER_LR);
        CHECK_EQ_I(mome_router_n_classes(q), 3);
        CHECK_EQ_S(mome_router_label(q, 2), "python");
        CHECK_EQ_I(mome_router_label_index(q, "fr"), 1);
        CHECK_EQ_I(mome_router_label_index(q, "de"), -1);
        CHECK_EQ_I(q->hashing.ngram_min, 2);
        CHECK_EQ_I(q->hashing.ngram_max, 4);
        CHECK_EQ_U64(q->hashing.buckets, 4096);
        CHECK_EQ_U64(q->hashing.hash_seed, h.hash_seed);
        CHECK(!memcmp(q->idf, r->idf, h.buckets * sizeof(float)));
        CHECK(!memcmp(q->weights, r->weights, h.buckets * 3 * sizeof(float)));
        CHECK(!memcmp(q->bias, r->bias, 3 * sizeof(float)));
        CHECK_EQ_S(q->corpus_tokenizer_hash, "0123456789abcdef");
        CHECK_NEAR(q->reg, 3, 0);
        const char *text = "import os\nprint(os.getcwd())";
        float p1[3], p2[3];
        int k1 = mome_router_classify(r, text, strlen(text), p1);
        int k2 = mome_router_classify(q, text, strlen(text), p2);
        CHECK_EQ_I(k1, k2);
        CHECK(!memcmp(p1, p2, sizeof p1));
        CHECK_NEAR(p1[0] + p1[1] + p1[2], 1.0, 1e-6);
        mome_router_free(q);
        q = NULL;
    }

    /* A byte flipped in the middle of the weights' first stored chunk: Fletcher32. */
    char bad[512];
    snprintf(bad, sizeof bad, "%s/flipped.h5", dir);
    copy_file(path, bad);
    haddr_t addr = HADDR_UNDEF;
    hsize_t size = 0;
    {
        hid_t f = H5Fopen(bad, H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t ds = H5Dopen2(f, "weights", H5P_DEFAULT);
        hid_t sp = H5Dget_space(ds);
        hsize_t off[2];
        unsigned mask = 0;
        if (H5Dget_chunk_info(ds, sp, 0, off, &mask, &addr, &size) < 0) addr = HADDR_UNDEF;
        H5Sclose(sp);
        H5Dclose(ds);
        H5Fclose(f);
    }
    CHECK(addr != HADDR_UNDEF && size > 8);
    if (addr != HADDR_UNDEF) {
        FILE *fp = fopen(bad, "r+b");
        long at = (long)(addr + size / 2);
        fseek(fp, at, SEEK_SET);
        int c = fgetc(fp);
        fseek(fp, at, SEEK_SET);
        fputc(c ^ 0x5a, fp);
        fclose(fp);
        CHECK_RC(mome_router_open(&q, bad), MOME_ECORRUPT);
        CHECK_CONTAINS(mome_error_message(), "flipped.h5");
        CHECK(q == NULL);
    }

    /* An attribute changed after training (n-gram range): the content hash no longer matches. */
    snprintf(bad, sizeof bad, "%s/edited.h5", dir);
    copy_file(path, bad);
    {
        hid_t f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
        CHECK_RC(mome_h5_attr_set_i64(f, "ngram_max", 5), MOME_OK);
        H5Fclose(f);
    }
    CHECK_RC(mome_router_open(&q, bad), MOME_ECORRUPT);
    CHECK_CONTAINS(mome_error_message(), "edited.h5");
    CHECK_CONTAINS(mome_error_message(), "content hash");

    /* Another feature scheme: refused as a mismatch. */
    snprintf(bad, sizeof bad, "%s/features.h5", dir);
    copy_file(path, bad);
    {
        hid_t f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
        CHECK_RC(mome_h5_attr_set_str(f, "features", "word-unigram-v0"), MOME_OK);
        H5Fclose(f);
    }
    CHECK_RC(mome_router_open(&q, bad), MOME_EMISMATCH);
    CHECK_CONTAINS(mome_error_message(), "features.h5");

    /* The weights dataset missing. */
    snprintf(bad, sizeof bad, "%s/noweights.h5", dir);
    copy_file(path, bad);
    {
        hid_t f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
        H5Ldelete(f, "weights", H5P_DEFAULT);
        H5Fclose(f);
    }
    CHECK(mome_router_open(&q, bad) != MOME_OK);
    CHECK_CONTAINS(mome_error_message(), "noweights.h5");

    /* Not HDF5; HDF5 of another kind; no file. */
    snprintf(bad, sizeof bad, "%s/text.h5", dir);
    FILE *fp = fopen(bad, "w");
    fputs("{\"text\": \"not a router\"}\n", fp);
    fclose(fp);
    CHECK(mome_router_open(&q, bad) != MOME_OK);
    CHECK_CONTAINS(mome_error_message(), "text.h5");
    snprintf(bad, sizeof bad, "%s/other.h5", dir);
    {
        hid_t f = mome_h5_create(bad);
        mome_h5_attr_set_str(f, "format", "mome-tokenizer");
        H5Fclose(f);
    }
    CHECK_RC(mome_router_open(&q, bad), MOME_EFORMAT);
    CHECK_CONTAINS(mome_error_message(), "other.h5");
    CHECK_CONTAINS(mome_error_message(), "mome-router");
    snprintf(bad, sizeof bad, "%s/missing.h5", dir);
    CHECK(mome_router_open(&q, bad) != MOME_OK);
    CHECK_CONTAINS(mome_error_message(), "missing.h5");
    mome_router_free(r);
}

/* A tiny corpus: raw/<domain>/train.jsonl with one document per line. */
static void write_domain(const char *root, const char *name, const char *const *docs, int n) {
    char p[600];
    snprintf(p, sizeof p, "%s/raw/%s", root, name);
    CHECK_RC(mome_mkdirs(p), MOME_OK);
    snprintf(p, sizeof p, "%s/raw/%s/train.jsonl", root, name);
    FILE *f = fopen(p, "w");
    for (int i = 0; i < n; i++) {
        fprintf(f, "{\"source\": \"%s-%d\", \"text\": \"", name, i);
        for (const char *c = docs[i]; *c; c++) {
            if (*c == '\n') fputs("\\n", f);
            else if (*c == '"') fputs("\\\"", f);
            else fputc(*c, f);
        }
        fputs("\"}\n", f);
    }
    fclose(f);
}

static void test_train(void) {
    static const char *en[] = {
        "The kernel reads the configuration file when the system starts. Every option is described below.\n\n"
        "If the file is missing, the defaults are used and a warning is written to the log.",
        "You can change the behaviour of the program with the following options. The value must be a number.\n\n"
        "When the command fails, it prints a message and returns a non-zero exit status to the shell.",
        "This page describes the format of the file and the meaning of each field in the list of entries.\n\n"
        "Lines that begin with a hash sign are comments and are ignored by the parser of the service."};
    static const char *fr[] = {
        "Le noyau lit le fichier de configuration au démarrage du système. Chaque option est décrite ci-dessous.\n\n"
        "Si le fichier est absent, les valeurs par défaut sont utilisées et un avertissement est écrit.",
        "Vous pouvez modifier le comportement du programme avec les options suivantes. La valeur doit être un "
        "nombre.\n\nQuand la commande échoue, elle affiche un message et renvoie un code de retour non nul.",
        "Cette page décrit le format du fichier et la signification de chaque champ de la liste des entrées.\n\n"
        "Les lignes qui commencent par un dièse sont des commentaires et sont ignorées par le service."};
    static const char *py[] = {
        "import os\nimport sys\n\n\ndef main(argv):\n    for name in argv[1:]:\n        with open(name) as f:\n"
        "            print(f.read())\n    return 0\n\n\nif __name__ == '__main__':\n    sys.exit(main(sys.argv))",
        "class Parser:\n    def __init__(self, text):\n        self.text = text\n        self.pos = 0\n\n"
        "    def next(self):\n        if self.pos >= len(self.text):\n            return None\n"
        "        self.pos += 1\n        return self.text[self.pos - 1]",
        "def split_lines(data, keep=False):\n    lines = []\n    for line in data.splitlines(keep):\n"
        "        if line.strip():\n            lines.append(line.rstrip())\n    return lines\n\n"
        "result = {key: value for key, value in zip(keys, values) if value is not None}"};
    char root[512];
    snprintf(root, sizeof root, "%s/corpus", dir);
    write_domain(root, "en", en, 3);
    write_domain(root, "fr", fr, 3);
    write_domain(root, "python", py, 3);
    const char *tests[3] = {"The program prints a message when the file is missing and the command fails.",
                            "Le programme affiche un message quand le fichier est absent et la commande échoue.",
                            "def read(path):\n    with open(path) as f:\n        return f.read().splitlines()"};
    for (int kind = 0; kind < 3; kind++) {
        mome_route_train_opts o;
        mome_route_train_defaults(&o);
        o.data_dir = root;
        o.kind = (mome_router_kind)kind;
        o.hashing.buckets = 1 << 14;
        o.seg.short_fraction = 0;
        mome_router *r = NULL;
        CHECK_RC(mome_route_train(&o, &r), MOME_OK);
        if (!r) continue;
        CHECK_EQ_I(r->n_classes, 3);
        CHECK_EQ_S(r->labels[0], "en"); /* no manifest: sorted directory names */
        CHECK_EQ_S(r->labels[2], "python");
        CHECK(r->n_train_segments >= 9);
        for (int k = 0; k < 3; k++) {
            float p[3];
            int got = mome_router_classify(r, tests[k], strlen(tests[k]), p);
            if (got != k)
                fprintf(stderr, "%s: \"%s\" classified as %s\n", mome_router_kind_name(o.kind), tests[k],
                        r->labels[got]);
            CHECK_EQ_I(got, k);
            CHECK_NEAR(p[0] + p[1] + p[2], 1.0, 1e-5);
            CHECK(p[k] > p[(k + 1) % 3] && p[k] > p[(k + 2) % 3]);
        }
        CHECK_RC(mome_router_check_corpus(r, root), MOME_OK);
        /* Trained twice: identical. */
        mome_router *r2 = NULL;
        CHECK_RC(mome_route_train(&o, &r2), MOME_OK);
        if (r2) {
            CHECK(!memcmp(r->weights, r2->weights, (size_t)o.hashing.buckets * 3 * sizeof(float)));
            mome_router_free(r2);
        }
        mome_router_free(r);
    }
    /* A corpus with other domains is refused by check_corpus, naming both. */
    char other[512];
    snprintf(other, sizeof other, "%s/other", dir);
    write_domain(other, "en", en, 3);
    write_domain(other, "de", fr, 3);
    mome_route_train_opts o;
    mome_route_train_defaults(&o);
    o.data_dir = root;
    o.kind = MOME_ROUTER_NB;
    o.hashing.buckets = 1 << 12;
    mome_router *r = NULL;
    CHECK_RC(mome_route_train(&o, &r), MOME_OK);
    if (r) {
        CHECK_RC(mome_router_check_corpus(r, other), MOME_EMISMATCH);
        CHECK_CONTAINS(mome_error_message(), "en,fr,python");
        CHECK_CONTAINS(mome_error_message(), "de,en");
        mome_router_free(r);
    }
    /* A bad JSON line in a training file names the file and the line. */
    char p[600];
    snprintf(p, sizeof p, "%s/raw/de/train.jsonl", other);
    FILE *f = fopen(p, "a");
    fputs("{\"text\": \"ok\"}\n{\"text\": broken\n", f);
    fclose(f);
    o.data_dir = other;
    CHECK_RC(mome_route_train(&o, &r), MOME_EFORMAT);
    CHECK_CONTAINS(mome_error_message(), "de/train.jsonl:5");
    o.data_dir = "/nonexistent/corpus";
    CHECK(mome_route_train(&o, &r) != MOME_OK);
    CHECK_CONTAINS(mome_error_message(), "/nonexistent/corpus");
}

int main(void) {
    mome_h5_quiet();
    snprintf(dir, sizeof dir, "/tmp/mome_test_route_%ld", (long)getpid());
    CHECK_RC(mome_mkdirs(dir), MOME_OK);
    test_features();
    test_tfidf();
    test_naive_bayes();
    test_segmentation();
    test_metrics();
    test_save_load();
    test_train();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_summary("test_route");
}
