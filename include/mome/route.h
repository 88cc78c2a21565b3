/* route.h — the router classifier of Mixture of Modular Experts: sends each text (a sequence) to the expert of
 * its domain (docs/routing.md).
 *
 * Features: TF-IDF over hashed character n-grams. A text is decoded from UTF-8 to code points, every run of
 * whitespace becomes one space (so hard-wrapped, indented and reflowed copies of a text look the same), a space is
 * added at both ends, and every n-gram of n_min..n_max code points is hashed (64-bit FNV-1a over the code points
 * from a seeded start, then a 64-bit finaliser) into `buckets` buckets with a sign (the top bit of the hash), so
 * collisions cancel on average instead of adding up. LR and SVM see the signed sums per bucket with sublinear tf
 * (sign(v) (1 + ln|v|)) times the bucket's idf (ln((1 + N) / (1 + df)) + 1), L2-normalised; naive Bayes sees the
 * unsigned counts.
 *
 * Classifiers: L2-regularised logistic regression (liblinear, dual solver, one-vs-rest; probabilities p_k ~
 * sigmoid(s_k), as liblinear computes them), a linear SVM (liblinear L2-loss dual, one-vs-rest; probabilities
 * are a softmax of the decision values, not calibrated) and multinomial naive Bayes (Laplace/Lidstone smoothing;
 * probabilities are its posterior). All three end as the same thing: a dense weight matrix (buckets x classes)
 * and a bias per class, so classifying a text is one pass over its n-grams.
 *
 * router.h5 (HDF5 through h5io, every dataset chunked with Fletcher32):
 *   root attrs: format = "mome-router", format_version, classifier ("lr" | "svm" | "nb"), features (the name of
 *     the feature scheme, FEATURES in route.c), n_classes, buckets, ngram_min, ngram_max, hash_seed (16 hex
 *     digits), corpus_tokenizer_hash (the hash of DIR/tokenizer.h5, "" when DIR has none), corpus_train_hash
 *     (FNV-1a of the training files, 16 hex digits), content_hash (FNV-1a of labels, idf, weights and bias: a
 *     file whose parts do not belong together is refused), and the training settings (C or alpha, seed,
 *     segmentation, numbers of segments).
 *   datasets: labels (one string, class names joined by '\n'), idf (buckets) f32, weights (buckets, n_classes)
 *     f32, bias (n_classes) f32.
 */
#ifndef MOME_ROUTE_H
#define MOME_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOME_ROUTER_MAX_CLASSES 64
#define MOME_ROUTER_LABEL_MAX 32 /* bytes of a class name, with the NUL */
#define MOME_ROUTER_MAX_NGRAM 8
#define MOME_ROUTER_MIN_BUCKETS 16
#define MOME_ROUTER_MAX_BUCKETS (1u << 24)
#define MOME_ROUTER_MAX_TEXT ((size_t)1 << 20) /* bytes of a text that are read (the rest is ignored) */

typedef enum { MOME_ROUTER_LR = 0, MOME_ROUTER_SVM = 1, MOME_ROUTER_NB = 2 } mome_router_kind;

/* "lr", "svm", "nb"; parse returns -1 for anything else. */
const char *mome_router_kind_name(mome_router_kind kind);
int mome_router_kind_parse(const char *name);

/* ---- Features ---- */

typedef struct {
    int ngram_min, ngram_max; /* code points per n-gram: 1..5 by default, within [1, MOME_ROUTER_MAX_NGRAM] */
    uint32_t buckets;         /* 2^20 by default, within [MOME_ROUTER_MIN_BUCKETS, MOME_ROUTER_MAX_BUCKETS] */
    uint64_t hash_seed;       /* starts every n-gram hash */
} mome_route_hashing;

/* Defaults: n-grams 1-5, 2^20 buckets, hash seed mome_route_hash_seed(1). */
void mome_route_hashing_defaults(mome_route_hashing *h);
/* The hash seed of `--seed S`: a 64-bit mix of S, so nearby seeds give unrelated hashes. */
uint64_t mome_route_hash_seed(uint64_t seed);
/* MOME_EINVAL with a message when a field is out of range. */
int mome_route_hashing_check(const mome_route_hashing *h);

/* A sparse vector: idx strictly increasing, one value each. Grows with realloc; free with mome_route_vec_free. */
typedef struct {
    uint32_t *idx;
    float *val;
    size_t n, cap;
} mome_route_vec;

void mome_route_vec_free(mome_route_vec *v);

/* The hashed n-gram counts of text[0..len) (any bytes; invalid UTF-8 counts as U+FFFD; only the first
 * MOME_ROUTER_MAX_TEXT bytes, cut at a character boundary) into *out (replacing its
 * contents): with signed != 0 the sum of the signs of the n-grams in each bucket (buckets that cancel to 0 are
 * left out), otherwise the number of n-grams in each bucket. Deterministic: the same text and hashing give the
 * same vector on every machine. */
void mome_route_counts(const mome_route_hashing *h, const char *text, size_t len, int is_signed,
                       mome_route_vec *out);
/* In place: v_b <- sign(v_b) (1 + ln|v_b|) * idf[b], then v <- v / ||v||_2 (left as is when all zero). */
void mome_route_tfidf(mome_route_vec *v, const float *idf);
/* idf[b] = ln((1 + n_docs) / (1 + df[b])) + 1 for every bucket. */
void mome_route_idf(const uint32_t *df, size_t buckets, size_t n_docs, float *idf);

/* ---- Segmentation: how documents become training and evaluation texts ----
 *
 * A document is cut into blocks at blank lines (lines of whitespace only). A block longer than max_chars is
 * split at the last line break before max_chars (else the last space, else a UTF-8 character boundary).
 * Consecutive blocks are then merged into segments: each segment draws a target length uniformly in
 * [min_chars, max_chars] and takes the next blocks while it is shorter than the target and the merged text
 * (blank lines between blocks included: a segment is always one contiguous piece of the document) stays within
 * max_chars. A segment shorter than min_chars (a document's last bits) is dropped. After each segment, with
 * probability short_fraction, one short text is cut from it too: from the start of one of its lines, a length
 * drawn in [short_min_chars, min_chars), cut back to a space when there is one. Texts with too few words (fewer
 * than one run of three or more letters per words_per_chars characters, and at least 2: tables of numbers and
 * symbols) carry no evidence of a domain and are dropped. Lengths are in bytes; segments never split a UTF-8
 * character. The random draws come from a generator seeded by the document's source name and the seed, so a
 * document is cut the same way whatever else is in the corpus. */
typedef struct {
    size_t min_chars, max_chars; /* 50, 600 */
    double short_fraction;       /* 0.25 */
    size_t short_min_chars;      /* 20 */
    size_t words_per_chars;      /* 50 */
} mome_route_seg_opts;

void mome_route_seg_defaults(mome_route_seg_opts *o);
/* Called once per text kept: text[0..len) points into the document; is_short tells a short text. */
typedef void (*mome_route_seg_fn)(const char *text, size_t len, int is_short, void *ctx);
/* Returns the number of texts passed to fn. */
size_t mome_route_segment(const char *doc, size_t len, const char *source, uint64_t seed,
                          const mome_route_seg_opts *o, mome_route_seg_fn fn, void *ctx);
/* 1 when text[0..len) has enough words to be kept (the rule above), else 0. */
int mome_route_informative(const char *text, size_t len, const mome_route_seg_opts *o);

/* ---- The router ---- */

typedef struct {
    mome_router_kind kind;
    int n_classes;
    char labels[MOME_ROUTER_MAX_CLASSES][MOME_ROUTER_LABEL_MAX];
    mome_route_hashing hashing;
    float *idf;     /* (buckets); used by lr and svm */
    float *weights; /* (buckets, n_classes) */
    float *bias;    /* (n_classes) */
    /* Where it came from (informative; check with mome_router_check_corpus). */
    char corpus_tokenizer_hash[24];
    char corpus_train_hash[24];
    double reg;     /* C for lr and svm, alpha for nb */
    uint64_t seed;
    int64_t n_train_segments, n_train_short; /* texts trained on (after cleaning) */
    int64_t n_train_dropped;                  /* texts the cleaning pass dropped */
    int clean_folds;
    double clean_threshold;
    mome_route_seg_opts seg;
    char path[1024]; /* the file it was loaded from, for messages; "" for a router built in memory */
} mome_router;

/* Allocates a router with zeroed idf, weights and bias for n_classes labels. */
int mome_router_create(mome_router **out, mome_router_kind kind, const char *const *labels, int n_classes,
                       const mome_route_hashing *h);
void mome_router_free(mome_router *r);

/* Loads and checks router.h5: format and version, the feature scheme, the shapes against the attributes, the
 * Fletcher32 checksums and the content hash. Every error names the file. */
int mome_router_open(mome_router **out, const char *path);
/* Writes atomically (temporary name, rename, directory fsync). */
int mome_router_save(const mome_router *r, const char *path);
/* Refuses (MOME_EMISMATCH, naming both) a router whose classes differ from the domains of corpus DIR (names and
 * order) or whose tokenizer hash differs from DIR/tokenizer.h5's. */
int mome_router_check_corpus(const mome_router *r, const char *data_dir);

int mome_router_n_classes(const mome_router *r);
const char *mome_router_label(const mome_router *r, int k);
/* Index of the class named name, or -1. */
int mome_router_label_index(const mome_router *r, const char *name);

/* Classifies text[0..len): returns the class index and, when probs != NULL, writes n_classes probabilities.
 * Thread-safe: the router is only read. */
int mome_router_classify(const mome_router *r, const char *text, size_t len, float *probs);

/* The same from a feature vector already made for the router's kind: counts (mome_route_counts, unsigned) for
 * nb, tf-idf of the signed counts (mome_route_counts + mome_route_tfidf with r->idf) for lr and svm. */
int mome_router_classify_features(const mome_router *r, const mome_route_vec *x, float *probs);

/* ---- Training ---- */

typedef struct {
    const char *data_dir;     /* corpus: DIR/raw/<domain>/train.jsonl */
    mome_router_kind kind;    /* lr */
    mome_route_hashing hashing;
    mome_route_seg_opts seg;
    double C;                 /* lr and svm; <= 0: 1 */
    double alpha;             /* nb smoothing; <= 0: 0.01 */
    uint64_t seed;            /* segmentation draws and liblinear's shuffling; 1 */
    int clean_folds;          /* label-noise filter: folds of documents (0 = off, else 2..20) */
    double clean_threshold;   /* drop a text whose out-of-fold probability of its own class is below this */
    int verbose;              /* progress on stderr */
} mome_route_train_opts;

void mome_route_train_defaults(mome_route_train_opts *o);
int mome_route_train(const mome_route_train_opts *o, mome_router **out);

/* Multinomial naive Bayes on unsigned counts: weights[b * n_classes + k] = ln((N_kb + alpha) / (N_k + alpha B)),
 * bias[k] = ln(n_k / n), N_kb the count of bucket b over the texts of class k, N_k its sum over b, n_k the texts
 * of class k. x[i] are count vectors (idx < buckets), y[i] in [0, n_classes). */
void mome_route_nb_fit(const mome_route_vec *x, const int *y, size_t n, int n_classes, uint32_t buckets,
                       double alpha, float *weights, float *bias);

/* ---- Metrics (route eval) ---- */

typedef struct {
    int n_classes;
    int64_t *confusion; /* (n_classes, n_classes): rows true class, columns predicted */
    double precision[MOME_ROUTER_MAX_CLASSES], recall[MOME_ROUTER_MAX_CLASSES], f1[MOME_ROUTER_MAX_CLASSES];
    int64_t support[MOME_ROUTER_MAX_CLASSES];
    double macro_p, macro_r, macro_f1, weighted_p, weighted_r, weighted_f1, accuracy;
    int64_t n;
} mome_route_metrics;

/* From a confusion matrix (copied): precision, recall and F1 per class (0 where undefined), their macro and
 * support-weighted averages, accuracy. */
void mome_route_metrics_compute(mome_route_metrics *m, const int64_t *confusion, int n_classes);
void mome_route_metrics_free(mome_route_metrics *m);

/* `mome route train|predict|eval|segment ...`; argv[0] is "route". Prints its own usage; returns the exit code
 * (0 ok, 1 error, 2 usage). */
int mome_route_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
