/* route.c — the router classifier (route.h): hashed character n-gram features, segmentation of documents,
 * training through liblinear (LR, SVM) or our own multinomial naive Bayes, router.h5, and `mome route`.
 *
 * Everything a trained router needs at inference time is in router.h5 as plain arrays (idf, weights, bias), so
 * classifying never calls liblinear: it hashes the text's n-grams, looks up one row of the weight matrix per
 * distinct bucket and turns the class scores into probabilities the way the classifier kind defines them.
 *
 * Left to others: wiring `mome route` into cli/main.c and linking liblinear (-llinear) into the binary; the
 * trainer's use of the C API (mome_router_open / mome_router_classify) for modular routing.
 */
#include "mome/route.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <linear.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mome/common.h"
#include "mome/h5io.h"
#include "route_jsonl.h"

#define FORMAT_NAME "mome-router"
#define FORMAT_VERSION 1
/* The feature scheme: changing the normalisation, the hash or the tf-idf must change this name, so a router
 * trained with other features is refused instead of silently misclassifying. */
#define FEATURES "char-ngram-fnv1a-fmix64-signed-ws1-v1"
#define FNV_PRIME 0x100000001b3ULL

enum { EXIT_OK = 0, EXIT_ERROR = 1, EXIT_USAGE = 2 };

const char *mome_router_kind_name(mome_router_kind kind) {
    switch (kind) {
    case MOME_ROUTER_LR: return "lr";
    case MOME_ROUTER_SVM: return "svm";
    case MOME_ROUTER_NB: return "nb";
    }
    return "?";
}

int mome_router_kind_parse(const char *name) {
    if (!strcmp(name, "lr")) return MOME_ROUTER_LR;
    if (!strcmp(name, "svm")) return MOME_ROUTER_SVM;
    if (!strcmp(name, "nb")) return MOME_ROUTER_NB;
    return -1;
}

/* ---------------------------------------------------------------------------------------------------------
 * Hashed n-gram features. */

/* murmur3's 64-bit finaliser: FNV-1a alone leaves the low bits (the bucket) poorly mixed for short inputs. */
static inline uint64_t fmix64(uint64_t z) {
    z ^= z >> 33;
    z *= 0xff51afd7ed558ccdULL;
    z ^= z >> 33;
    z *= 0xc4ceb9fe1a85ec53ULL;
    z ^= z >> 33;
    return z;
}


uint64_t mome_route_hash_seed(uint64_t seed) { return fmix64(0x6d6f6d65726f7574ULL /* "momerout" */ + seed); }

void mome_route_hashing_defaults(mome_route_hashing *h) {
    h->ngram_min = 1;
    h->ngram_max = 5;
    h->buckets = 1u << 20;
    h->hash_seed = mome_route_hash_seed(1);
}

int mome_route_hashing_check(const mome_route_hashing *h) {
    if (h->ngram_min < 1 || h->ngram_max < h->ngram_min || h->ngram_max > MOME_ROUTER_MAX_NGRAM)
        return mome_error_set(MOME_EINVAL, "n-gram range %d-%d: need 1 <= min <= max <= %d", h->ngram_min,
                              h->ngram_max, MOME_ROUTER_MAX_NGRAM);
    if (h->buckets < MOME_ROUTER_MIN_BUCKETS || h->buckets > MOME_ROUTER_MAX_BUCKETS)
        return mome_error_set(MOME_EINVAL, "buckets %u outside [%u, %u]", h->buckets, MOME_ROUTER_MIN_BUCKETS,
                              MOME_ROUTER_MAX_BUCKETS);
    return MOME_OK;
}

void mome_route_vec_free(mome_route_vec *v) {
    free(v->idx);
    free(v->val);
    memset(v, 0, sizeof *v);
}

static void vec_reserve(mome_route_vec *v, size_t need) {
    if (need <= v->cap) return;
    size_t c = v->cap ? v->cap : 64;
    while (c < need) c *= 2;
    v->idx = realloc(v->idx, c * sizeof *v->idx);
    v->val = realloc(v->val, c * sizeof *v->val);
    MOME_CHECK(v->idx && v->val, "out of memory (%zu features)", c);
    v->cap = c;
}

/* Next code point of s[*i..len); invalid or truncated sequences are one byte each, as U+FFFD. */
static uint32_t utf8_next(const unsigned char *s, size_t len, size_t *i) {
    unsigned c = s[*i];
    if (c < 0x80) {
        (*i)++;
        return c;
    }
    int n = c >= 0xf0 && c < 0xf5 ? 3 : c >= 0xe0 ? (c < 0xf0 ? 2 : -1) : c >= 0xc2 ? 1 : -1;
    if (n < 0 || *i + (size_t)n >= len) {
        (*i)++;
        return 0xfffd;
    }
    uint32_t cp = c & (n == 1 ? 0x1f : n == 2 ? 0x0f : 0x07);
    for (int k = 1; k <= n; k++) {
        unsigned b = s[*i + (size_t)k];
        if ((b & 0xc0) != 0x80) {
            (*i)++;
            return 0xfffd;
        }
        cp = (cp << 6) | (b & 0x3f);
    }
    /* Overlong forms and surrogates are invalid too. */
    if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff)) {
        (*i)++;
        return 0xfffd;
    }
    *i += (size_t)n + 1;
    return cp;
}

static inline int is_space_cp(uint32_t cp) {
    return cp == ' ' || (cp >= '\t' && cp <= '\r') || cp == 0xa0 || cp == 0x2007 || cp == 0x202f;
}

/* The code points the n-grams run over: one space at both ends, every whitespace run as one space. cps has
 * room for len + 2. */
static size_t normalise(const char *text, size_t len, uint32_t *cps) {
    const unsigned char *s = (const unsigned char *)text;
    size_t n = 0, i = 0;
    cps[n++] = ' ';
    while (i < len) {
        uint32_t cp = utf8_next(s, len, &i);
        if (is_space_cp(cp)) {
            if (cps[n - 1] != ' ') cps[n++] = ' ';
        } else {
            cps[n++] = cp;
        }
    }
    if (cps[n - 1] != ' ') cps[n++] = ' ';
    return n;
}

/* Sorts keys[0..n) (values < 2^bits) with an LSD radix sort of 11-bit digits; tmp has room for n. */
static void radix_sort_u32(uint32_t *keys, uint32_t *tmp, size_t n, int bits) {
    if (n < 64) {
        for (size_t i = 1; i < n; i++) {
            uint32_t k = keys[i];
            size_t j = i;
            while (j > 0 && keys[j - 1] > k) {
                keys[j] = keys[j - 1];
                j--;
            }
            keys[j] = k;
        }
        return;
    }
    uint32_t *src = keys, *dst = tmp;
    for (int shift = 0; shift < bits; shift += 11) {
        size_t count[2048] = {0};
        for (size_t i = 0; i < n; i++) count[(src[i] >> shift) & 2047]++;
        size_t sum = 0;
        for (int d = 0; d < 2048; d++) {
            size_t c = count[d];
            count[d] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++) dst[count[(src[i] >> shift) & 2047]++] = src[i];
        uint32_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != keys) memcpy(keys, src, n * sizeof *keys);
}

void mome_route_counts(const mome_route_hashing *h, const char *text, size_t len, int is_signed,
                       mome_route_vec *out) {
    out->n = 0;
    /* Scratch grows with the text (about 40 bytes a byte): a megabyte is evidence enough for any router. */
    if (len > MOME_ROUTER_MAX_TEXT) {
        len = MOME_ROUTER_MAX_TEXT;
        while (len > 0 && ((unsigned char)text[len] & 0xc0) == 0x80) len--;
    }
    uint32_t *cps = malloc((len + 2) * sizeof *cps);
    MOME_CHECK(cps, "out of memory");
    size_t n = normalise(text, len, cps);
    int span = h->ngram_max - h->ngram_min + 1;
    size_t cap = n * (size_t)span;
    uint32_t *keys = malloc(2 * cap * sizeof *keys);
    MOME_CHECK(keys, "out of memory");
    /* key = bucket << 1 | negative sign: sorting groups each bucket's n-grams together. */
    const uint64_t start = MOME_FNV_OFFSET ^ fmix64(h->hash_seed);
    const uint64_t nb = h->buckets;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t st = start;
        for (int k = 1; k <= h->ngram_max && i + (size_t)k <= n; k++) {
            st = (st ^ cps[i + (size_t)k - 1]) * FNV_PRIME;
            if (k < h->ngram_min) continue;
            uint64_t hv = fmix64(st);
            keys[m++] = (uint32_t)((hv % nb) << 1) | (uint32_t)(hv >> 63);
        }
    }
    int bits = 1;
    while (bits < 32 && ((uint64_t)1 << bits) < 2 * nb) bits++;
    radix_sort_u32(keys, keys + cap, m, bits);
    for (size_t i = 0; i < m;) {
        uint32_t b = keys[i] >> 1;
        int pos = 0, neg = 0;
        for (; i < m && (keys[i] >> 1) == b; i++) {
            if (keys[i] & 1) neg++;
            else pos++;
        }
        int v = is_signed ? pos - neg : pos + neg;
        if (v == 0) continue;
        vec_reserve(out, out->n + 1);
        out->idx[out->n] = b;
        out->val[out->n] = (float)v;
        out->n++;
    }
    free(keys);
    free(cps);
}

void mome_route_tfidf(mome_route_vec *v, const float *idf) {
    double ss = 0;
    for (size_t j = 0; j < v->n; j++) {
        float x = v->val[j];
        float a = 1.0f + logf(fabsf(x));
        float t = (x < 0 ? -a : a) * idf[v->idx[j]];
        v->val[j] = t;
        ss += (double)t * t;
    }
    if (ss > 0) {
        float inv = (float)(1.0 / sqrt(ss));
        for (size_t j = 0; j < v->n; j++) v->val[j] *= inv;
    }
}

void mome_route_idf(const uint32_t *df, size_t buckets, size_t n_docs, float *idf) {
    for (size_t b = 0; b < buckets; b++) idf[b] = (float)(log((1.0 + (double)n_docs) / (1.0 + df[b])) + 1.0);
}

/* ---------------------------------------------------------------------------------------------------------
 * Segmentation (route.h describes the rules). */

void mome_route_seg_defaults(mome_route_seg_opts *o) {
    o->min_chars = 50;
    o->max_chars = 600;
    o->short_fraction = 0.25;
    o->short_min_chars = 20;
    o->words_per_chars = 50;
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi]. */
static size_t draw(uint64_t *s, size_t lo, size_t hi) { return lo + (size_t)(splitmix64(s) % (hi - lo + 1)); }

static int is_letter_cp(uint32_t cp) {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    if (cp >= 0xc0 && cp <= 0x24f) return cp != 0xd7 && cp != 0xf7;
    /* Greek, Cyrillic and the scripts after them, without the punctuation and symbol blocks. */
    if (cp >= 0x370 && cp < 0x2000) return 1;
    if (cp >= 0x2000 && cp < 0x3040) return 0;
    return cp >= 0x3040 && cp != 0xfffd && !(cp >= 0xfe30 && cp <= 0xfe4f) && !(cp >= 0xff00 && cp <= 0xff20);
}

int mome_route_informative(const char *text, size_t len, const mome_route_seg_opts *o) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, run = 0, words = 0;
    while (i < len) {
        if (is_letter_cp(utf8_next(s, len, &i))) {
            if (++run == 3) words++;
        } else {
            run = 0;
        }
    }
    size_t need = o->words_per_chars ? len / o->words_per_chars : 0;
    if (need < 2) need = 2;
    return words >= need;
}

static int is_blank_byte(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

typedef struct {
    size_t s, e;
} span;

typedef struct {
    span *v;
    size_t n, cap;
} spans;

static void spans_push(spans *a, size_t s, size_t e) {
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 64;
        a->v = realloc(a->v, a->cap * sizeof *a->v);
        MOME_CHECK(a->v, "out of memory");
    }
    a->v[a->n].s = s;
    a->v[a->n].e = e;
    a->n++;
}

/* Trailing whitespace (and newlines) off [s, e). */
static size_t trim_end(const char *d, size_t s, size_t e) {
    while (e > s && (is_blank_byte(d[e - 1]) || d[e - 1] == '\n')) e--;
    return e;
}

/* The last position p in (s, lim] where d[p] == c and the piece [s, p) is at least min_len long; 0 if none. */
static size_t last_of(const char *d, size_t s, size_t lim, char c, size_t min_len) {
    for (size_t p = lim; p > s + min_len; p--)
        if (d[p] == c) return p;
    return 0;
}

/* Splits the block [s, e) into units of at most max bytes: at a line break, else a space, else a character
 * boundary; a break that leaves a unit of at least min bytes is preferred. */
static void split_block(const char *d, size_t s, size_t e, const mome_route_seg_opts *o, spans *units) {
    size_t max = o->max_chars;
    while (e - s > max) {
        size_t lim = s + max; /* the unit is [s, cut) with cut <= lim */
        size_t cut, next;
        size_t p = last_of(d, s, lim, '\n', o->min_chars);
        if (!p) p = last_of(d, s, lim, ' ', o->min_chars);
        if (!p) p = last_of(d, s, lim, '\n', 0);
        if (!p) p = last_of(d, s, lim, ' ', 0);
        if (p) {
            cut = p;
            next = p + 1;
            if (d[p] == ' ')
                while (next < e && d[next] == ' ') next++;
        } else {
            cut = lim;
            while (cut > s + 1 && ((unsigned char)d[cut] & 0xc0) == 0x80) cut--;
            next = cut;
        }
        size_t ce = trim_end(d, s, cut);
        if (ce > s) spans_push(units, s, ce);
        s = next;
    }
    e = trim_end(d, s, e);
    if (e > s) spans_push(units, s, e);
}

/* Cuts one short text from the segment [s, e) and passes it on when it is kept. */
static size_t cut_short(const char *d, size_t s, size_t e, uint64_t *rng, const mome_route_seg_opts *o,
                        mome_route_seg_fn fn, void *ctx) {
    size_t lines = 1;
    for (size_t p = s; p < e; p++) lines += d[p] == '\n';
    size_t pick = draw(rng, 0, lines - 1), st = s;
    for (size_t p = s; pick > 0 && p < e; p++)
        if (d[p] == '\n' && --pick == 0) st = p + 1;
    while (st < e && (is_blank_byte(d[st]) || d[st] == '\n')) st++;
    size_t want = draw(rng, o->short_min_chars, o->min_chars - 1);
    size_t en = st + want < e ? st + want : e;
    /* Back to the last space, when that still leaves short_min_chars. */
    for (size_t p = en; p > st + o->short_min_chars; p--) {
        if (en == e) break;
        if (d[p] == ' ' || d[p] == '\n') {
            en = p;
            break;
        }
    }
    while (en > st && en < e && ((unsigned char)d[en] & 0xc0) == 0x80) en--;
    en = trim_end(d, st, en);
    if (en - st < o->short_min_chars || !mome_route_informative(d + st, en - st, o)) return 0;
    fn(d + st, en - st, 1, ctx);
    return 1;
}

size_t mome_route_segment(const char *doc, size_t len, const char *source, uint64_t seed,
                          const mome_route_seg_opts *o, mome_route_seg_fn fn, void *ctx) {
    uint64_t rng = mome_fnv1a(MOME_FNV_OFFSET, source ? source : "", source ? strlen(source) : 0) ^ fmix64(seed);
    spans units = {0};
    /* Blocks: runs of non-blank lines. */
    size_t bs = 0, be = 0;
    int in_block = 0;
    for (size_t ls = 0; ls < len;) {
        size_t le = ls;
        while (le < len && doc[le] != '\n') le++;
        int blank = 1;
        for (size_t p = ls; p < le && blank; p++) blank = is_blank_byte(doc[p]);
        if (!blank) {
            if (!in_block) bs = ls;
            be = le;
            in_block = 1;
        } else if (in_block) {
            split_block(doc, bs, be, o, &units);
            in_block = 0;
        }
        ls = le + 1;
    }
    if (in_block) split_block(doc, bs, be, o, &units);

    size_t kept = 0;
    for (size_t i = 0; i < units.n;) {
        size_t target = draw(&rng, o->min_chars, o->max_chars);
        size_t s = units.v[i].s, e = units.v[i].e, j = i + 1;
        while (e - s < target && j < units.n && units.v[j].e - s <= o->max_chars) e = units.v[j++].e;
        i = j;
        if (e - s < o->min_chars) continue;
        int keep = mome_route_informative(doc + s, e - s, o);
        if (keep) {
            fn(doc + s, e - s, 0, ctx);
            kept++;
        }
        /* Drawn for every segment, kept or not, so one text's fate never shifts the draws of the next. */
        double u = (double)(splitmix64(&rng) >> 11) * 0x1.0p-53;
        if (u < o->short_fraction) {
            uint64_t sub = splitmix64(&rng);
            if (keep && o->short_min_chars < o->min_chars) kept += cut_short(doc, s, e, &sub, o, fn, ctx);
        }
    }
    free(units.v);
    return kept;
}

/* ---------------------------------------------------------------------------------------------------------
 * The router object, router.h5. */

int mome_router_create(mome_router **out, mome_router_kind kind, const char *const *labels, int n_classes,
                       const mome_route_hashing *h) {
    *out = NULL;
    int rc = mome_route_hashing_check(h);
    if (rc) return rc;
    if (n_classes < 2 || n_classes > MOME_ROUTER_MAX_CLASSES)
        return mome_error_set(MOME_EINVAL, "%d classes: a router needs 2 to %d", n_classes, MOME_ROUTER_MAX_CLASSES);
    for (int k = 0; k < n_classes; k++) {
        size_t l = strlen(labels[k]);
        if (l == 0 || l >= MOME_ROUTER_LABEL_MAX || strchr(labels[k], '\n'))
            return mome_error_set(MOME_EINVAL, "class name \"%s\": 1 to %d bytes, no line break", labels[k],
                                  MOME_ROUTER_LABEL_MAX - 1);
        for (int j = 0; j < k; j++)
            if (!strcmp(labels[j], labels[k]))
                return mome_error_set(MOME_EINVAL, "class name \"%s\" given twice", labels[k]);
    }
    mome_router *r = mome_calloc(1, sizeof *r);
    r->kind = kind;
    r->n_classes = n_classes;
    for (int k = 0; k < n_classes; k++) snprintf(r->labels[k], MOME_ROUTER_LABEL_MAX, "%s", labels[k]);
    r->hashing = *h;
    r->idf = mome_calloc(h->buckets, sizeof *r->idf);
    r->weights = mome_calloc((size_t)h->buckets * (size_t)n_classes, sizeof *r->weights);
    r->bias = mome_calloc((size_t)n_classes, sizeof *r->bias);
    mome_route_seg_defaults(&r->seg);
    *out = r;
    return MOME_OK;
}

void mome_router_free(mome_router *r) {
    if (!r) return;
    mome_free(r->idf);
    mome_free(r->weights);
    mome_free(r->bias);
    mome_free(r);
}

int mome_router_n_classes(const mome_router *r) { return r->n_classes; }

const char *mome_router_label(const mome_router *r, int k) {
    return k >= 0 && k < r->n_classes ? r->labels[k] : NULL;
}

int mome_router_label_index(const mome_router *r, const char *name) {
    for (int k = 0; k < r->n_classes; k++)
        if (!strcmp(r->labels[k], name)) return k;
    return -1;
}

static void hex16(uint64_t v, char out[17]) { snprintf(out, 17, "%016llx", (unsigned long long)v); }

static int parse_hex16(const char *s, uint64_t *v) {
    if (strlen(s) != 16) return -1;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 16);
    if (errno || *end) return -1;
    *v = x;
    return 0;
}

static char *labels_joined(const mome_router *r) {
    size_t cap = (size_t)r->n_classes * MOME_ROUTER_LABEL_MAX + 1, n = 0;
    char *s = mome_malloc(cap);
    s[0] = 0;
    for (int k = 0; k < r->n_classes; k++) n += (size_t)snprintf(s + n, cap - n, "%s%s", k ? "\n" : "", r->labels[k]);
    return s;
}

/* FNV-1a over everything that decides a prediction: kind, hashing, labels, idf, weights, bias. */
static uint64_t content_hash(const mome_router *r) {
    char head[256];
    int hn = snprintf(head, sizeof head, "%s|%s|%d-%d|%u|%016llx|", FEATURES, mome_router_kind_name(r->kind),
                      r->hashing.ngram_min, r->hashing.ngram_max, r->hashing.buckets,
                      (unsigned long long)r->hashing.hash_seed);
    uint64_t h = mome_fnv1a(MOME_FNV_OFFSET, head, (size_t)hn);
    char *lab = labels_joined(r);
    h = mome_fnv1a(h, lab, strlen(lab));
    mome_free(lab);
    h = mome_fnv1a(h, r->idf, (size_t)r->hashing.buckets * sizeof *r->idf);
    h = mome_fnv1a(h, r->weights, (size_t)r->hashing.buckets * (size_t)r->n_classes * sizeof *r->weights);
    h = mome_fnv1a(h, r->bias, (size_t)r->n_classes * sizeof *r->bias);
    return h;
}

int mome_router_save(const mome_router *r, const char *path) {
    char tmp[4096];
    int np = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (np < 0 || (size_t)np >= sizeof tmp) return mome_error_set(MOME_EINVAL, "%s: path too long", path);
    mome_h5_quiet();
    hid_t f = mome_h5_create(tmp);
    if (f < 0) return mome_error_wrap(MOME_EIO, "saving router %s", path);
    char seed_hex[17], chash[17];
    hex16(r->hashing.hash_seed, seed_hex);
    hex16(content_hash(r), chash);
    char *lab = labels_joined(r);
    int rc = mome_h5_attr_set_str(f, "format", FORMAT_NAME);
    if (!rc) rc = mome_h5_attr_set_i64(f, "format_version", FORMAT_VERSION);
    if (!rc) rc = mome_h5_attr_set_str(f, "classifier", mome_router_kind_name(r->kind));
    if (!rc) rc = mome_h5_attr_set_str(f, "features", FEATURES);
    if (!rc) rc = mome_h5_attr_set_i64(f, "n_classes", r->n_classes);
    if (!rc) rc = mome_h5_attr_set_i64(f, "buckets", r->hashing.buckets);
    if (!rc) rc = mome_h5_attr_set_i64(f, "ngram_min", r->hashing.ngram_min);
    if (!rc) rc = mome_h5_attr_set_i64(f, "ngram_max", r->hashing.ngram_max);
    if (!rc) rc = mome_h5_attr_set_str(f, "hash_seed", seed_hex);
    if (!rc) rc = mome_h5_attr_set_str(f, "content_hash", chash);
    if (!rc) rc = mome_h5_attr_set_str(f, "corpus_tokenizer_hash", r->corpus_tokenizer_hash);
    if (!rc) rc = mome_h5_attr_set_str(f, "corpus_train_hash", r->corpus_train_hash);
    if (!rc) rc = mome_h5_attr_set_f64(f, r->kind == MOME_ROUTER_NB ? "alpha" : "C", r->reg);
    if (!rc) rc = mome_h5_attr_set_i64(f, "seed", (int64_t)r->seed);
    if (!rc) rc = mome_h5_attr_set_i64(f, "n_train_segments", r->n_train_segments);
    if (!rc) rc = mome_h5_attr_set_i64(f, "n_train_short", r->n_train_short);
    if (!rc) rc = mome_h5_attr_set_i64(f, "n_train_dropped", r->n_train_dropped);
    if (!rc) rc = mome_h5_attr_set_i64(f, "clean_folds", r->clean_folds);
    if (!rc) rc = mome_h5_attr_set_f64(f, "clean_threshold", r->clean_threshold);
    if (!rc) rc = mome_h5_attr_set_i64(f, "seg_min_chars", (int64_t)r->seg.min_chars);
    if (!rc) rc = mome_h5_attr_set_i64(f, "seg_max_chars", (int64_t)r->seg.max_chars);
    if (!rc) rc = mome_h5_attr_set_f64(f, "seg_short_fraction", r->seg.short_fraction);
    if (!rc) rc = mome_h5_attr_set_i64(f, "seg_short_min_chars", (int64_t)r->seg.short_min_chars);
    if (!rc) rc = mome_h5_attr_set_i64(f, "seg_words_per_chars", (int64_t)r->seg.words_per_chars);
    if (!rc) rc = mome_h5_write_string(f, "labels", lab);
    hsize_t db[1] = {r->hashing.buckets}, dw[2] = {r->hashing.buckets, (hsize_t)r->n_classes},
            dk[1] = {(hsize_t)r->n_classes};
    if (!rc) rc = mome_h5_write_f32(f, "idf", r->idf, 1, db);
    if (!rc) rc = mome_h5_write_f32(f, "weights", r->weights, 2, dw);
    if (!rc) rc = mome_h5_write_f32(f, "bias", r->bias, 1, dk);
    mome_free(lab);
    rc = mome_h5_close_into_place(f, tmp, path, rc);
    return rc ? mome_error_wrap(rc, "saving router %s", path) : MOME_OK;
}

static int get_i64_in(hid_t f, const char *path, const char *name, int64_t lo, int64_t hi, int64_t *v) {
    int rc = mome_h5_attr_get_i64(f, name, v);
    if (rc) return rc;
    if (*v < lo || *v > hi)
        return mome_error_set(MOME_EFORMAT, "%s: attribute %s = %lld outside [%lld, %lld]", path, name,
                              (long long)*v, (long long)lo, (long long)hi);
    return MOME_OK;
}

int mome_router_open(mome_router **out, const char *path) {
    *out = NULL;
    mome_h5_quiet();
    struct stat st;
    if (stat(path, &st) != 0) return mome_error_set(MOME_EIO, "%s: cannot open router: %s", path, strerror(errno));
    hid_t f = mome_h5_open_read(path);
    if (f < 0) return mome_error_wrap(MOME_EFORMAT, "opening router");
    char kind_s[16] = "", feat[128] = "", seed_hex[32] = "", chash[32] = "";
    int64_t ncls = 0, buckets = 0, nmin = 0, nmax = 0;
    mome_router *r = NULL;
    char *lab = NULL;
    int rc = mome_h5_check_format(f, path, FORMAT_NAME, FORMAT_VERSION);
    if (!rc) rc = mome_h5_attr_get_str(f, "features", feat, sizeof feat);
    if (!rc && strcmp(feat, FEATURES) != 0)
        rc = mome_error_set(MOME_EMISMATCH, "%s: features \"%s\", this build computes \"%s\"", path, feat, FEATURES);
    if (!rc) rc = mome_h5_attr_get_str(f, "classifier", kind_s, sizeof kind_s);
    int kind = rc ? -1 : mome_router_kind_parse(kind_s);
    if (!rc && kind < 0)
        rc = mome_error_set(MOME_EFORMAT, "%s: classifier \"%s\" is not lr, svm or nb", path, kind_s);
    if (!rc) rc = get_i64_in(f, path, "n_classes", 2, MOME_ROUTER_MAX_CLASSES, &ncls);
    if (!rc) rc = get_i64_in(f, path, "buckets", MOME_ROUTER_MIN_BUCKETS, MOME_ROUTER_MAX_BUCKETS, &buckets);
    if (!rc) rc = get_i64_in(f, path, "ngram_min", 1, MOME_ROUTER_MAX_NGRAM, &nmin);
    if (!rc) rc = get_i64_in(f, path, "ngram_max", nmin, MOME_ROUTER_MAX_NGRAM, &nmax);
    mome_route_hashing h = {.ngram_min = (int)nmin, .ngram_max = (int)nmax, .buckets = (uint32_t)buckets};
    if (!rc) rc = mome_h5_attr_get_str(f, "hash_seed", seed_hex, sizeof seed_hex);
    if (!rc && parse_hex16(seed_hex, &h.hash_seed))
        rc = mome_error_set(MOME_EFORMAT, "%s: hash_seed \"%s\" is not 16 hex digits", path, seed_hex);
    if (!rc) rc = mome_h5_attr_get_str(f, "content_hash", chash, sizeof chash);
    if (!rc) rc = mome_h5_read_string(f, "labels", &lab);
    const char *names[MOME_ROUTER_MAX_CLASSES];
    int nl = 0;
    if (!rc) {
        for (char *p = lab; nl < MOME_ROUTER_MAX_CLASSES;) {
            names[nl++] = p;
            char *nlp = strchr(p, '\n');
            if (!nlp) break;
            *nlp = 0;
            p = nlp + 1;
        }
        if (nl != ncls)
            rc = mome_error_set(MOME_EFORMAT, "%s: %d labels stored, n_classes is %lld", path, nl, (long long)ncls);
    }
    /* The arrays' shapes before allocating them: the attributes alone could ask for 2^24 x 64 weights (4 GiB). */
    const struct {
        const char *name;
        int ndim;
        hsize_t d0, d1;
    } arrays[3] = {{"idf", 1, (hsize_t)buckets, 0}, {"weights", 2, (hsize_t)buckets, (hsize_t)ncls},
                   {"bias", 1, (hsize_t)ncls, 0}};
    for (int i = 0; i < 3 && !rc; i++) {
        int nd = 0;
        hsize_t got[8] = {0};
        rc = mome_h5_shape(f, arrays[i].name, &nd, got);
        if (!rc && (nd != arrays[i].ndim || got[0] != arrays[i].d0 || (nd == 2 && got[1] != arrays[i].d1))) {
            char want[64];
            if (arrays[i].ndim == 2)
                snprintf(want, sizeof want, "(%llu, %llu)", (unsigned long long)arrays[i].d0,
                         (unsigned long long)arrays[i].d1);
            else
                snprintf(want, sizeof want, "(%llu)", (unsigned long long)arrays[i].d0);
            rc = mome_error_set(MOME_EFORMAT,
                                "%s:/%s has %d dims (first %llu), expected %s from the attributes buckets and "
                                "n_classes",
                                path, arrays[i].name, nd, (unsigned long long)got[0], want);
        }
    }
    if (!rc) rc = mome_router_create(&r, (mome_router_kind)kind, names, nl, &h);
    if (rc == MOME_EINVAL) rc = mome_error_wrap(MOME_EFORMAT, "%s", path);
    hsize_t db[1] = {(hsize_t)buckets}, dw[2] = {(hsize_t)buckets, (hsize_t)ncls}, dk[1] = {(hsize_t)ncls};
    if (!rc) rc = mome_h5_read_f32(f, "idf", r->idf, 1, db);
    if (!rc) rc = mome_h5_read_f32(f, "weights", r->weights, 2, dw);
    if (!rc) rc = mome_h5_read_f32(f, "bias", r->bias, 1, dk);
    /* Informative attributes: absent ones keep their defaults. */
    if (!rc) {
        int64_t v;
        double d;
        mome_h5_attr_get_str(f, "corpus_tokenizer_hash", r->corpus_tokenizer_hash, sizeof r->corpus_tokenizer_hash);
        mome_h5_attr_get_str(f, "corpus_train_hash", r->corpus_train_hash, sizeof r->corpus_train_hash);
        if (!mome_h5_attr_get_f64(f, r->kind == MOME_ROUTER_NB ? "alpha" : "C", &d)) r->reg = d;
        if (!mome_h5_attr_get_i64(f, "seed", &v)) r->seed = (uint64_t)v;
        if (!mome_h5_attr_get_i64(f, "n_train_segments", &v)) r->n_train_segments = v;
        if (!mome_h5_attr_get_i64(f, "n_train_short", &v)) r->n_train_short = v;
        if (!mome_h5_attr_get_i64(f, "n_train_dropped", &v)) r->n_train_dropped = v;
        if (!mome_h5_attr_get_i64(f, "clean_folds", &v)) r->clean_folds = (int)v;
        if (!mome_h5_attr_get_f64(f, "clean_threshold", &d)) r->clean_threshold = d;
        if (!mome_h5_attr_get_i64(f, "seg_min_chars", &v)) r->seg.min_chars = (size_t)v;
        if (!mome_h5_attr_get_i64(f, "seg_max_chars", &v)) r->seg.max_chars = (size_t)v;
        if (!mome_h5_attr_get_f64(f, "seg_short_fraction", &d)) r->seg.short_fraction = d;
        if (!mome_h5_attr_get_i64(f, "seg_short_min_chars", &v)) r->seg.short_min_chars = (size_t)v;
        if (!mome_h5_attr_get_i64(f, "seg_words_per_chars", &v)) r->seg.words_per_chars = (size_t)v;
        mome_error_set(MOME_OK, "%s", "");
    }
    H5Fclose(f);
    mome_free(lab);
    if (!rc) {
        char got[17];
        hex16(content_hash(r), got);
        if (strcmp(got, chash) != 0)
            rc = mome_error_set(MOME_ECORRUPT,
                                "%s: content hash %s differs from the stored %s: the labels, idf, weights or "
                                "settings were changed after training",
                                path, got, chash);
    }
    if (!rc) {
        size_t nw = (size_t)buckets * (size_t)ncls;
        for (size_t i = 0; i < nw && !rc; i++)
            if (!isfinite(r->weights[i])) rc = mome_error_set(MOME_ECORRUPT, "%s: weights[%zu] is not finite", path, i);
    }
    if (rc) {
        mome_router_free(r);
        if (!strstr(mome_error_message(), path)) return mome_error_wrap(rc, "%s", path);
        return rc;
    }
    snprintf(r->path, sizeof r->path, "%s", path);
    *out = r;
    return MOME_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * Reading a corpus: the domains of DIR and their documents. */

typedef struct {
    char *source;
    char *text;
    size_t len;
} doc_t;

typedef struct {
    doc_t *v;
    size_t n, cap;
} docs_t;

static void docs_free(docs_t *d) {
    for (size_t i = 0; i < d->n; i++) {
        free(d->v[i].source);
        free(d->v[i].text);
    }
    free(d->v);
    memset(d, 0, sizeof *d);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* The domains of a corpus in its order: manifest.json's when present, else the sorted subdirectories of raw/
 * that hold a <split>.jsonl. names[k] are MOME_ROUTER_LABEL_MAX bytes each. */
static int corpus_domains(const char *dir, const char *split, char names[][MOME_ROUTER_LABEL_MAX], int *n) {
    *n = 0;
    char p[4096];
    snprintf(p, sizeof p, "%s/manifest.json", dir);
    json_error_t jerr;
    json_t *m = access(p, R_OK) == 0 ? json_load_file(p, 0, &jerr) : NULL;
    if (m) {
        json_t *doms = json_object_get(m, "domains");
        size_t i;
        json_t *d;
        json_array_foreach(doms, i, d) {
            const char *name = json_string_value(json_object_get(d, "name"));
            if (!name || strlen(name) >= MOME_ROUTER_LABEL_MAX || *n >= MOME_ROUTER_MAX_CLASSES) {
                json_decref(m);
                return mome_error_set(MOME_EFORMAT, "%s: domain %zu has no usable name", p, i);
            }
            snprintf(names[(*n)++], MOME_ROUTER_LABEL_MAX, "%s", name);
        }
        json_decref(m);
        if (*n > 0) return MOME_OK;
    }
    snprintf(p, sizeof p, "%s/raw", dir);
    DIR *dd = opendir(p);
    if (!dd) return mome_error_set(MOME_EIO, "%s: cannot read the corpus: %s", p, strerror(errno));
    char *found[MOME_ROUTER_MAX_CLASSES];
    int nf = 0;
    struct dirent *de;
    while ((de = readdir(dd)) && nf < MOME_ROUTER_MAX_CLASSES) {
        if (de->d_name[0] == '.' || strlen(de->d_name) >= MOME_ROUTER_LABEL_MAX) continue;
        char t[4096];
        snprintf(t, sizeof t, "%s/raw/%s/%s.jsonl", dir, de->d_name, split);
        if (access(t, R_OK) == 0) found[nf++] = mome_strdup(de->d_name);
    }
    closedir(dd);
    qsort(found, (size_t)nf, sizeof *found, cmp_str);
    for (int k = 0; k < nf; k++) {
        snprintf(names[k], MOME_ROUTER_LABEL_MAX, "%s", found[k]);
        mome_free(found[k]);
    }
    *n = nf;
    if (nf == 0) return mome_error_set(MOME_ENOENT, "%s: no domain with a %s.jsonl (is this a corpus?)", p, split);
    return MOME_OK;
}

/* Reads every {"text": ..., "source": ...} line of path; *hash (if not NULL) is chained over the file's bytes. */
static int read_docs(const char *path, docs_t *out, uint64_t *hash) {
    FILE *f = fopen(path, "rb");
    if (!f) return mome_error_set(MOME_EIO, "%s: cannot open: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    long lineno = 0;
    int rc = MOME_OK;
    while ((got = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (hash) *hash = mome_fnv1a(*hash, line, (size_t)got);
        size_t l = (size_t)got;
        while (l > 0 && (line[l - 1] == '\n' || line[l - 1] == '\r')) l--;
        if (l == 0) continue;
        json_error_t jerr;
        json_t *o = json_loadb(line, l, 0, &jerr);
        json_t *t = o ? json_object_get(o, "text") : NULL;
        if (!o || !json_is_string(t)) {
            rc = mome_error_set(MOME_EFORMAT, "%s:%ld: %s", path, lineno,
                                !o ? jerr.text : "expected an object with a string \"text\"");
            json_decref(o);
            break;
        }
        const char *src = json_string_value(json_object_get(o, "source"));
        if (out->n == out->cap) {
            out->cap = out->cap ? 2 * out->cap : 256;
            out->v = realloc(out->v, out->cap * sizeof *out->v);
            MOME_CHECK(out->v, "out of memory");
        }
        doc_t *d = &out->v[out->n++];
        d->len = json_string_length(t);
        d->text = malloc(d->len + 1);
        MOME_CHECK(d->text, "out of memory");
        memcpy(d->text, json_string_value(t), d->len + 1);
        char fallback[64];
        snprintf(fallback, sizeof fallback, "line %ld", lineno);
        d->source = strdup(src ? src : fallback);
        MOME_CHECK(d->source, "out of memory");
        json_decref(o);
    }
    if (!rc && ferror(f)) rc = mome_error_set(MOME_EIO, "%s: read error", path);
    free(line);
    fclose(f);
    return rc;
}

/* Texts cut from documents: pointers into the documents (which outlive them). */
typedef struct {
    const char *text;
    size_t len;
    int label;
    int is_short;
    const char *source;
} seg_t;

typedef struct {
    seg_t *v;
    size_t n, cap;
    int label;
    const char *source;
} segs_t;

static void seg_collect(const char *text, size_t len, int is_short, void *ctx) {
    segs_t *s = ctx;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 1024;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        MOME_CHECK(s->v, "out of memory");
    }
    s->v[s->n++] = (seg_t){text, len, s->label, is_short, s->source};
}

/* Every domain's split (train or val) of DIR, segmented. docs[k] keep the text the segments point into. */
typedef struct {
    int n_classes;
    char labels[MOME_ROUTER_MAX_CLASSES][MOME_ROUTER_LABEL_MAX];
    docs_t docs[MOME_ROUTER_MAX_CLASSES];
    segs_t segs;
    uint64_t files_hash;
    size_t n_short;
    size_t n_docs;
} corpus_segs;

static void corpus_segs_free(corpus_segs *c) {
    for (int k = 0; k < c->n_classes; k++) docs_free(&c->docs[k]);
    free(c->segs.v);
    memset(c, 0, sizeof *c);
}

/* missing_ok: a domain without this split file is skipped (val.jsonl is optional). */
static int load_split(const char *dir, const char *split, const mome_route_seg_opts *seg, uint64_t seed,
                      int missing_ok, corpus_segs *c) {
    memset(c, 0, sizeof *c);
    int rc = corpus_domains(dir, split, c->labels, &c->n_classes);
    if (rc) return rc;
    c->files_hash = MOME_FNV_OFFSET;
    for (int k = 0; k < c->n_classes; k++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/raw/%s/%s.jsonl", dir, c->labels[k], split);
        if (missing_ok && access(p, R_OK) != 0) continue;
        c->files_hash = mome_fnv1a(c->files_hash, c->labels[k], strlen(c->labels[k]) + 1);
        rc = read_docs(p, &c->docs[k], &c->files_hash);
        if (rc) {
            corpus_segs_free(c);
            return rc;
        }
        c->n_docs += c->docs[k].n;
        c->segs.label = k;
        for (size_t i = 0; i < c->docs[k].n; i++) {
            doc_t *d = &c->docs[k].v[i];
            c->segs.source = d->source;
            mome_route_segment(d->text, d->len, d->source, seed, seg, seg_collect, &c->segs);
        }
    }
    for (size_t i = 0; i < c->segs.n; i++) c->n_short += (size_t)c->segs.v[i].is_short;
    return MOME_OK;
}

/* The tokenizer hash of DIR/tokenizer.h5 into out (16 hex digits), "" when DIR has none. */
static void corpus_tokenizer_hash(const char *dir, char *out, size_t cap) {
    out[0] = 0;
    char p[4096];
    snprintf(p, sizeof p, "%s/tokenizer.h5", dir);
    if (access(p, R_OK) != 0) return;
    mome_h5_quiet();
    hid_t f = mome_h5_open_read(p);
    if (f < 0) return;
    if (mome_h5_attr_get_str(f, "hash", out, cap) != MOME_OK) out[0] = 0;
    H5Fclose(f);
    mome_error_set(MOME_OK, "%s", "");
}

int mome_router_check_corpus(const mome_router *r, const char *data_dir) {
    char names[MOME_ROUTER_MAX_CLASSES][MOME_ROUTER_LABEL_MAX];
    int n = 0;
    int rc = corpus_domains(data_dir, "train", names, &n);
    if (rc) return rc;
    const char *who = r->path[0] ? r->path : "router";
    int same = n == r->n_classes;
    for (int k = 0; same && k < n; k++) same = !strcmp(names[k], r->labels[k]);
    if (!same) {
        char a[1024] = "", b[1024] = "";
        size_t la = 0, lb = 0;
        for (int k = 0; k < r->n_classes; k++)
            la += (size_t)snprintf(a + la, sizeof a - la, "%s%s", k ? "," : "", r->labels[k]);
        for (int k = 0; k < n; k++) lb += (size_t)snprintf(b + lb, sizeof b - lb, "%s%s", k ? "," : "", names[k]);
        return mome_error_set(MOME_EMISMATCH, "%s: classes %s differ from the domains %s of corpus %s", who, a, b,
                              data_dir);
    }
    char tok[32];
    corpus_tokenizer_hash(data_dir, tok, sizeof tok);
    if (r->corpus_tokenizer_hash[0] && tok[0] && strcmp(tok, r->corpus_tokenizer_hash) != 0)
        return mome_error_set(MOME_EMISMATCH, "%s: trained on a corpus with tokenizer %s, %s has tokenizer %s", who,
                              r->corpus_tokenizer_hash, data_dir, tok);
    return MOME_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * Classification. */

/* Class scores of a feature vector (already transformed for the router's kind). */
static void scores_of(const mome_router *r, const mome_route_vec *x, double *s) {
    int K = r->n_classes;
    for (int k = 0; k < K; k++) s[k] = r->bias[k];
    for (size_t j = 0; j < x->n; j++) {
        const float *w = r->weights + (size_t)x->idx[j] * (size_t)K;
        double v = x->val[j];
        for (int k = 0; k < K; k++) s[k] += v * w[k];
    }
}

/* Scores -> probabilities: LR one-vs-rest sigmoids normalised (liblinear's predict_probability), SVM and NB
 * a softmax. Returns the argmax (the first on ties). */
static int probs_of(mome_router_kind kind, const double *s, int K, float *probs) {
    double p[MOME_ROUTER_MAX_CLASSES], sum = 0;
    int best = 0;
    for (int k = 1; k < K; k++)
        if (s[k] > s[best]) best = k;
    if (kind == MOME_ROUTER_LR) {
        for (int k = 0; k < K; k++) sum += p[k] = 1.0 / (1.0 + exp(-s[k]));
    } else {
        for (int k = 0; k < K; k++) sum += p[k] = exp(s[k] - s[best]);
    }
    if (probs)
        for (int k = 0; k < K; k++) probs[k] = (float)(p[k] / sum);
    return best;
}

/* The feature vector the router's kind sees. */
static void features_of(const mome_router *r, const char *text, size_t len, mome_route_vec *x) {
    if (r->kind == MOME_ROUTER_NB) {
        mome_route_counts(&r->hashing, text, len, 0, x);
    } else {
        mome_route_counts(&r->hashing, text, len, 1, x);
        mome_route_tfidf(x, r->idf);
    }
}

int mome_router_classify_features(const mome_router *r, const mome_route_vec *x, float *probs) {
    double s[MOME_ROUTER_MAX_CLASSES];
    scores_of(r, x, s);
    return probs_of(r->kind, s, r->n_classes, probs);
}

int mome_router_classify(const mome_router *r, const char *text, size_t len, float *probs) {
    mome_route_vec x = {0};
    features_of(r, text, len, &x);
    double s[MOME_ROUTER_MAX_CLASSES];
    scores_of(r, &x, s);
    mome_route_vec_free(&x);
    return probs_of(r->kind, s, r->n_classes, probs);
}

/* ---------------------------------------------------------------------------------------------------------
 * Training. */

void mome_route_train_defaults(mome_route_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->kind = MOME_ROUTER_LR;
    mome_route_hashing_defaults(&o->hashing);
    mome_route_seg_defaults(&o->seg);
    o->seed = 1;
    o->clean_folds = 0;
    o->clean_threshold = 0.1;
}

/* liblinear's default C for both linear models (not tuned on held-out data: C from 1 to 30 moved held-out macro F1
 * by less than one point, docs/routing.md); nb: Lidstone smoothing, as add-one over 2^20 buckets would weigh as
 * much as 7% of a class's n-grams. */
static double default_reg(mome_router_kind kind) {
    return kind == MOME_ROUTER_NB ? 0.01 : 1.0;
}

void mome_route_nb_fit(const mome_route_vec *x, const int *y, size_t n, int n_classes, uint32_t buckets,
                       double alpha, float *weights, float *bias) {
    int K = n_classes;
    double *cnt = mome_calloc((size_t)buckets * (size_t)K, sizeof *cnt);
    double tot[MOME_ROUTER_MAX_CLASSES] = {0};
    size_t nk[MOME_ROUTER_MAX_CLASSES] = {0};
    for (size_t i = 0; i < n; i++) {
        int k = y[i];
        nk[k]++;
        for (size_t j = 0; j < x[i].n; j++) {
            cnt[(size_t)x[i].idx[j] * (size_t)K + (size_t)k] += x[i].val[j];
            tot[k] += x[i].val[j];
        }
    }
    for (int k = 0; k < K; k++) {
        double den = log(tot[k] + alpha * (double)buckets);
        /* An empty class gets prior 0 (log -inf); keep it finite and far below the others. */
        bias[k] = nk[k] ? (float)log((double)nk[k] / (double)n) : -1e30f;
        for (uint32_t b = 0; b < buckets; b++) {
            size_t at = (size_t)b * (size_t)K + (size_t)k;
            weights[at] = (float)(log(cnt[at] + alpha) - den);
        }
    }
    mome_free(cnt);
}

static void liblinear_quiet(const char *s) { (void)s; }

/* The training texts as each learner reads them: x (sparse vectors: tf-idf for lr and svm, counts for nb) and,
 * for liblinear, rows (the same vectors as feature_node arrays with the bias feature, built once and shared by
 * every fit of the cleaning pass). */
typedef struct {
    mome_router_kind kind;
    uint32_t buckets;
    int n_classes;
    mome_route_vec *x;         /* nb */
    struct feature_node **rows; /* lr, svm */
    int *y;
    size_t n;
} trainset;

/* Fits the kind's classifier on the texts sel[0..m) into weights (buckets x classes) and bias. */
static int fit(const trainset *t, const size_t *sel, size_t m, double reg, uint64_t seed, int verbose, float *weights,
               float *bias) {
    uint32_t B = t->buckets;
    int K = t->n_classes;
    if (t->kind == MOME_ROUTER_NB) {
        mome_route_vec *xs = mome_malloc(m * sizeof *xs);
        int *ys = mome_malloc(m * sizeof *ys);
        for (size_t i = 0; i < m; i++) {
            xs[i] = t->x[sel[i]]; /* shallow: nb_fit only reads */
            ys[i] = t->y[sel[i]];
        }
        mome_route_nb_fit(xs, ys, m, K, B, reg, weights, bias);
        mome_free(xs);
        mome_free(ys);
        return MOME_OK;
    }
    struct feature_node **rows = mome_malloc(m * sizeof *rows);
    double *yy = mome_malloc(m * sizeof *yy);
    for (size_t i = 0; i < m; i++) {
        rows[i] = t->rows[sel[i]];
        yy[i] = t->y[sel[i]];
    }
    struct problem prob = {.l = (int)m, .n = (int)B + 1, .y = yy, .x = rows, .bias = 1.0};
    struct parameter param;
    memset(&param, 0, sizeof param);
    /* Dual coordinate descent for both: on these many sparse texts it reaches the primal solver's accuracy in a
     * quarter of the time (docs/routing.md). */
    param.solver_type = t->kind == MOME_ROUTER_LR ? L2R_LR_DUAL : L2R_L2LOSS_SVC_DUAL;
    param.eps = 0.1;
    param.C = reg;
    int rc = MOME_OK;
    const char *err = check_parameter(&prob, &param);
    if (err) rc = mome_error_set(MOME_EINVAL, "liblinear: %s", err);
    struct model *md = NULL;
    if (!rc) {
        set_print_string_function(verbose > 1 ? NULL : liblinear_quiet);
        /* The dual solver shuffles with rand(): seed it so training is reproducible. */
        srand((unsigned)seed);
        md = train(&prob, &param);
        if (!md) rc = mome_error_set(MOME_EINVAL, "liblinear: training failed");
    }
    if (!rc) {
        int nr = get_nr_class(md);
        int lab[MOME_ROUTER_MAX_CLASSES];
        get_labels(md, lab);
        if (nr != K) {
            rc = mome_error_set(MOME_EINVAL, "liblinear saw %d classes in the training texts, expected %d", nr, K);
        } else if (K == 2) {
            /* One weight vector w for label[0]: class label[0] scores w.x, the other -w.x, so both read the same
             * way as the one-vs-rest columns (and sigmoid(s)/(sigmoid(s)+sigmoid(-s)) = sigmoid(s)). */
            int c0 = lab[0], c1 = lab[1];
            for (uint32_t b = 0; b < B; b++) {
                float w = (float)md->w[b];
                weights[(size_t)b * 2 + (size_t)c0] = w;
                weights[(size_t)b * 2 + (size_t)c1] = -w;
            }
            bias[c0] = (float)md->w[B];
            bias[c1] = (float)-md->w[B];
        } else {
            /* liblinear: w[feature * nr_class + column], the bias feature last; column c is class label[c]. */
            for (int c = 0; c < K; c++) {
                int k = lab[c];
                for (uint32_t b = 0; b < B; b++)
                    weights[(size_t)b * (size_t)K + (size_t)k] = (float)md->w[(size_t)b * (size_t)K + (size_t)c];
                bias[k] = (float)md->w[(size_t)B * (size_t)K + (size_t)c];
            }
        }
    }
    if (md) free_and_destroy_model(&md);
    mome_free(rows);
    mome_free(yy);
    return rc;
}

/* Class probabilities of training text i under (weights, bias). */
static int predict_train(const trainset *t, size_t i, const float *weights, const float *bias, float *probs) {
    int K = t->n_classes;
    double s[MOME_ROUTER_MAX_CLASSES];
    for (int k = 0; k < K; k++) s[k] = bias[k];
    if (t->kind == MOME_ROUTER_NB) {
        const mome_route_vec *x = &t->x[i];
        for (size_t j = 0; j < x->n; j++)
            for (int k = 0; k < K; k++) s[k] += (double)x->val[j] * weights[(size_t)x->idx[j] * (size_t)K + (size_t)k];
    } else {
        for (const struct feature_node *f = t->rows[i]; f->index != -1; f++) {
            if ((uint32_t)f->index > t->buckets) continue; /* the bias feature */
            for (int k = 0; k < K; k++) s[k] += f->value * weights[(size_t)(f->index - 1) * (size_t)K + (size_t)k];
        }
    }
    return probs_of(t->kind, s, K, probs);
}

/* Label-noise filter: cross-validation over folds of whole documents; a text whose out-of-fold model gives its
 * own class a probability below threshold (and prefers another) is marked in drop[]. Returns how many. */
static size_t clean_pass(const trainset *t, const seg_t *segs, int folds, double threshold, double reg, uint64_t seed,
                         int verbose, unsigned char *drop) {
    int K = t->n_classes;
    size_t n = t->n, dropped = 0;
    int *fold = mome_malloc(n * sizeof *fold);
    for (size_t i = 0; i < n; i++)
        fold[i] = (int)(mome_fnv1a(MOME_FNV_OFFSET ^ seed, segs[i].source, strlen(segs[i].source)) % (uint64_t)folds);
    size_t *sel = mome_malloc(n * sizeof *sel);
    float *w = mome_malloc((size_t)t->buckets * (size_t)K * sizeof *w);
    float bias[MOME_ROUTER_MAX_CLASSES];
    for (int f = 0; f < folds; f++) {
        double t0 = mome_now();
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (fold[i] != f) sel[m++] = i;
        if (fit(t, sel, m, reg, seed + (uint64_t)f + 1, verbose, w, bias) != MOME_OK) continue;
        size_t here = 0;
#pragma omp parallel for schedule(dynamic, 64) reduction(+ : here)
        for (size_t i = 0; i < n; i++) {
            if (fold[i] != f) continue;
            float p[MOME_ROUTER_MAX_CLASSES];
            int best = predict_train(t, i, w, bias, p);
            if (best != t->y[i] && p[t->y[i]] < threshold) {
                drop[i] = 1;
                here++;
            }
        }
        dropped += here;
        if (verbose)
            fprintf(stderr, "route: cleaning fold %d/%d: %zu of %zu held-out texts contradict their label (%.1f s)\n",
                    f + 1, folds, here, n - m, mome_now() - t0);
    }
    mome_free(w);
    mome_free(sel);
    mome_free(fold);
    return dropped;
}

int mome_route_train(const mome_route_train_opts *o, mome_router **out) {
    *out = NULL;
    int rc = mome_route_hashing_check(&o->hashing);
    if (rc) return rc;
    if (o->seg.min_chars < 1 || o->seg.max_chars < o->seg.min_chars || o->seg.short_fraction < 0 ||
        o->seg.short_fraction > 1)
        return mome_error_set(MOME_EINVAL, "segmentation: need 1 <= min_chars <= max_chars, short_fraction in [0, 1]");
    if (o->clean_folds == 1 || o->clean_folds < 0 || o->clean_folds > 20 || o->clean_threshold < 0 ||
        o->clean_threshold > 1)
        return mome_error_set(MOME_EINVAL, "cleaning: folds 0 (off) or 2 to 20, threshold in [0, 1]");
    double t0 = mome_now();
    corpus_segs c;
    rc = load_split(o->data_dir, "train", &o->seg, o->seed, 0, &c);
    if (rc) return rc;
    int K = c.n_classes;
    if (o->verbose) {
        fprintf(stderr, "route: %zu documents of %d domains -> %zu texts (%zu short) in %.1f s\n", c.n_docs, K,
                c.segs.n, c.n_short, mome_now() - t0);
        for (int k = 0; k < K; k++) {
            size_t nn = 0, ns = 0;
            for (size_t i = 0; i < c.segs.n; i++)
                if (c.segs.v[i].label == k) {
                    nn += !c.segs.v[i].is_short;
                    ns += (size_t)c.segs.v[i].is_short;
                }
            fprintf(stderr, "  %-10s %6zu documents  %7zu segments  %6zu short\n", c.labels[k], c.docs[k].n, nn, ns);
        }
    }
    for (int k = 0; k < K; k++) {
        size_t nk = 0;
        for (size_t i = 0; i < c.segs.n; i++) nk += c.segs.v[i].label == k;
        if (nk == 0) {
            rc = mome_error_set(MOME_EINVAL, "%s/raw/%s/train.jsonl: no text to train on", o->data_dir, c.labels[k]);
            corpus_segs_free(&c);
            return rc;
        }
    }
    const char *names[MOME_ROUTER_MAX_CLASSES];
    for (int k = 0; k < K; k++) names[k] = c.labels[k];
    mome_router *r = NULL;
    rc = mome_router_create(&r, o->kind, names, K, &o->hashing);
    if (rc) {
        corpus_segs_free(&c);
        return rc;
    }
    r->reg = o->kind == MOME_ROUTER_NB ? (o->alpha > 0 ? o->alpha : default_reg(o->kind))
                                       : (o->C > 0 ? o->C : default_reg(o->kind));
    r->seed = o->seed;
    r->seg = o->seg;
    r->clean_folds = o->clean_folds;
    r->clean_threshold = o->clean_threshold;
    hex16(c.files_hash, r->corpus_train_hash);
    corpus_tokenizer_hash(o->data_dir, r->corpus_tokenizer_hash, sizeof r->corpus_tokenizer_hash);

    size_t n = c.segs.n;
    uint32_t B = o->hashing.buckets;
    trainset t = {.kind = o->kind, .buckets = B, .n_classes = K, .n = n};
    t.x = mome_calloc(n, sizeof *t.x);
    t.y = mome_malloc(n * sizeof *t.y);
    int is_signed = o->kind != MOME_ROUTER_NB;
    double t1 = mome_now();
#pragma omp parallel for schedule(dynamic, 64)
    for (size_t i = 0; i < n; i++) {
        mome_route_counts(&o->hashing, c.segs.v[i].text, c.segs.v[i].len, is_signed, &t.x[i]);
        t.y[i] = c.segs.v[i].label;
    }
    /* idf from every training text (one document frequency per bucket); naive Bayes stores it too, unused. */
    uint32_t *df = mome_calloc(B, sizeof *df);
    size_t nnz = 0;
    for (size_t i = 0; i < n; i++) {
        nnz += t.x[i].n;
        for (size_t j = 0; j < t.x[i].n; j++) df[t.x[i].idx[j]]++;
    }
    mome_route_idf(df, B, n, r->idf);
    mome_free(df);
    if (o->kind != MOME_ROUTER_NB) {
        /* tf-idf, then the liblinear rows; the vectors are freed as soon as their row exists (memory peak). */
        t.rows = mome_malloc(n * sizeof *t.rows);
#pragma omp parallel for schedule(dynamic, 64)
        for (size_t i = 0; i < n; i++) {
            mome_route_tfidf(&t.x[i], r->idf);
            struct feature_node *row = malloc((t.x[i].n + 2) * sizeof *row);
            MOME_CHECK(row, "out of memory");
            for (size_t j = 0; j < t.x[i].n; j++) {
                row[j].index = (int)t.x[i].idx[j] + 1; /* liblinear counts features from 1 */
                row[j].value = t.x[i].val[j];
            }
            row[t.x[i].n].index = (int)B + 1; /* the bias feature */
            row[t.x[i].n].value = 1.0;
            row[t.x[i].n + 1].index = -1;
            t.rows[i] = row;
            mome_route_vec_free(&t.x[i]);
        }
    }
    if (o->verbose)
        fprintf(stderr, "route: features of %zu texts in %.1f s (%.0f distinct buckets per text)\n", n,
                mome_now() - t1, (double)nnz / (double)n);

    size_t *sel = mome_malloc(n * sizeof *sel);
    size_t m = 0;
    if (o->clean_folds >= 2) {
        unsigned char *drop = mome_calloc(n, 1);
        size_t nd = clean_pass(&t, c.segs.v, o->clean_folds, o->clean_threshold, r->reg, o->seed, o->verbose, drop);
        size_t per[MOME_ROUTER_MAX_CLASSES] = {0};
        for (size_t i = 0; i < n; i++) {
            if (drop[i]) per[t.y[i]]++;
            else sel[m++] = i;
        }
        if (o->verbose) {
            fprintf(stderr, "route: cleaning drops %zu texts (%.2f%%):", nd, 100.0 * (double)nd / (double)n);
            for (int k = 0; k < K; k++) fprintf(stderr, " %s %zu", c.labels[k], per[k]);
            fprintf(stderr, "\n");
        }
        r->n_train_dropped = (int64_t)nd;
        mome_free(drop);
    } else {
        for (size_t i = 0; i < n; i++) sel[m++] = i;
    }
    for (size_t i = 0; i < m; i++) {
        if (c.segs.v[sel[i]].is_short) r->n_train_short++;
        else r->n_train_segments++;
    }
    double t2 = mome_now();
    rc = fit(&t, sel, m, r->reg, o->seed, o->verbose, r->weights, r->bias);
    if (o->verbose && !rc)
        fprintf(stderr, "route: %s (%s %g) trained on %zu texts in %.1f s\n", mome_router_kind_name(o->kind),
                o->kind == MOME_ROUTER_NB ? "alpha" : "C", r->reg, m, mome_now() - t2);
    mome_free(sel);
    for (size_t i = 0; i < n; i++) {
        mome_route_vec_free(&t.x[i]);
        if (t.rows) free(t.rows[i]);
    }
    mome_free(t.rows);
    mome_free(t.x);
    mome_free(t.y);
    corpus_segs_free(&c);
    if (rc) {
        mome_router_free(r);
        return rc;
    }
    *out = r;
    return MOME_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * Metrics. */

void mome_route_metrics_compute(mome_route_metrics *m, const int64_t *confusion, int K) {
    memset(m, 0, sizeof *m);
    m->n_classes = K;
    m->confusion = mome_malloc((size_t)K * (size_t)K * sizeof *m->confusion);
    memcpy(m->confusion, confusion, (size_t)K * (size_t)K * sizeof *m->confusion);
    int64_t correct = 0;
    for (int k = 0; k < K; k++) {
        int64_t tp = confusion[k * K + k], row = 0, col = 0;
        for (int j = 0; j < K; j++) {
            row += confusion[k * K + j];
            col += confusion[j * K + k];
        }
        correct += tp;
        m->support[k] = row;
        m->n += row;
        m->precision[k] = col ? (double)tp / (double)col : 0.0;
        m->recall[k] = row ? (double)tp / (double)row : 0.0;
        double pr = m->precision[k] + m->recall[k];
        m->f1[k] = pr > 0 ? 2 * m->precision[k] * m->recall[k] / pr : 0.0;
    }
    for (int k = 0; k < K; k++) {
        m->macro_p += m->precision[k] / K;
        m->macro_r += m->recall[k] / K;
        m->macro_f1 += m->f1[k] / K;
        if (m->n) {
            double w = (double)m->support[k] / (double)m->n;
            m->weighted_p += w * m->precision[k];
            m->weighted_r += w * m->recall[k];
            m->weighted_f1 += w * m->f1[k];
        }
    }
    m->accuracy = m->n ? (double)correct / (double)m->n : 0.0;
}

void mome_route_metrics_free(mome_route_metrics *m) {
    mome_free(m->confusion);
    m->confusion = NULL;
}

static void print_metrics(FILE *out, const mome_route_metrics *m, char labels[][MOME_ROUTER_LABEL_MAX]) {
    int K = m->n_classes;
    fprintf(out, "%-14s %9s %9s %9s %9s\n", "class", "precision", "recall", "f1", "support");
    for (int k = 0; k < K; k++)
        fprintf(out, "%-14s %9.4f %9.4f %9.4f %9lld\n", labels[k], m->precision[k], m->recall[k], m->f1[k],
                (long long)m->support[k]);
    fprintf(out, "%-14s %9.4f %9.4f %9.4f %9lld\n", "macro avg", m->macro_p, m->macro_r, m->macro_f1,
            (long long)m->n);
    fprintf(out, "%-14s %9.4f %9.4f %9.4f %9lld\n", "weighted avg", m->weighted_p, m->weighted_r, m->weighted_f1,
            (long long)m->n);
    fprintf(out, "%-14s %9s %9s %9.4f %9lld\n", "accuracy", "", "", m->accuracy, (long long)m->n);
    fprintf(out, "confusion matrix (rows: true class, columns: predicted class)\n%-14s", "");
    for (int k = 0; k < K; k++) fprintf(out, " %9s", labels[k]);
    fprintf(out, "\n");
    for (int k = 0; k < K; k++) {
        fprintf(out, "%-14s", labels[k]);
        for (int j = 0; j < K; j++) fprintf(out, " %9lld", (long long)m->confusion[k * K + j]);
        fprintf(out, "\n");
    }
}

static json_t *metrics_json(const mome_route_metrics *m, char labels[][MOME_ROUTER_LABEL_MAX]) {
    int K = m->n_classes;
    json_t *o = json_object(), *cls = json_object(), *lab = json_array(), *conf = json_array();
    for (int k = 0; k < K; k++) {
        json_array_append_new(lab, json_string(labels[k]));
        json_object_set_new(cls, labels[k],
                            json_pack("{s:f, s:f, s:f, s:I}", "precision", m->precision[k], "recall", m->recall[k],
                                      "f1", m->f1[k], "support", (json_int_t)m->support[k]));
        json_t *row = json_array();
        for (int j = 0; j < K; j++) json_array_append_new(row, json_integer(m->confusion[k * K + j]));
        json_array_append_new(conf, row);
    }
    json_object_set_new(o, "labels", lab);
    json_object_set_new(o, "n", json_integer(m->n));
    json_object_set_new(o, "accuracy", json_real(m->accuracy));
    json_object_set_new(o, "classes", cls);
    json_object_set_new(o, "macro", json_pack("{s:f, s:f, s:f}", "precision", m->macro_p, "recall", m->macro_r, "f1",
                                              m->macro_f1));
    json_object_set_new(o, "weighted", json_pack("{s:f, s:f, s:f}", "precision", m->weighted_p, "recall",
                                                 m->weighted_r, "f1", m->weighted_f1));
    json_object_set_new(o, "confusion", conf);
    return o;
}

/* Classifies every text of segs (in parallel) into pred (and probs, n x K, when not NULL). */
static void classify_all(const mome_router *r, const seg_t *segs, size_t n, int *pred, float *probs) {
#pragma omp parallel for schedule(dynamic, 16)
    for (size_t i = 0; i < n; i++)
        pred[i] = mome_router_classify(r, segs[i].text, segs[i].len, probs ? probs + i * (size_t)r->n_classes : NULL);
}

/* ---------------------------------------------------------------------------------------------------------
 * `mome route`. */

static const char *usage_route =
    "usage: mome route train --data DIR --out ROUTER.h5 [--classifier lr|svm|nb] [--ngrams A-B] [--buckets N]\n"
    "                        [--seed S] [--C X] [--alpha X] [--clean-folds F] [--clean-threshold P] [--quiet]\n"
    "       mome route predict ROUTER.h5 [FILE.jsonl] [--skip-invalid]\n"
    "       mome route eval ROUTER.h5 FILE.jsonl [--json] [--errors N]\n"
    "       mome route segment --data DIR [--split train|val] [--short | --all] [--seed S] [--out FILE.jsonl]\n"
    "\n"
    "The router classifier (docs/routing.md): assigns a text to one domain of a corpus (en, fr, de, python for\n"
    "the default corpus). TF-IDF over hashed character n-grams, then logistic regression (liblinear), a linear\n"
    "SVM (liblinear) or multinomial naive Bayes.\n"
    "\n"
    "train    learns from segments of DIR/raw/<domain>/train.jsonl (paragraphs and code blocks of 50-600\n"
    "         characters, and short texts of 20-49), writes ROUTER.h5, then reports held-out precision, recall\n"
    "         and F1 on the segments of DIR/raw/<domain>/val.jsonl when the corpus has them.\n"
    "  --classifier K   lr (default), svm or nb\n"
    "  --ngrams A-B     character n-gram lengths (default 1-5)\n"
    "  --buckets N      hash buckets (default 1048576 = 2^20)\n"
    "  --seed S         hash seed and segmentation draws (default 1)\n"
    "  --C X            inverse regularisation of lr and svm (default 1)\n"
    "  --alpha X        smoothing of nb (default 0.01)\n"
    "  --clean-folds F  label-noise filter (default 0, off): F-fold cross-validation over whole documents; a\n"
    "                   text whose out-of-fold model gives its own domain a probability below P (default 0.1)\n"
    "                   and prefers another is left out of the final training (--clean-threshold P)\n"
    "  --quiet          no progress lines on stderr\n"
    "predict  reads JSON lines with a \"text\" (FILE or stdin) and writes each back with \"label\" and \"probs\"\n"
    "         ({class: probability}) added. An invalid line stops it with an error naming the line\n"
    "         (exit 1), unless --skip-invalid: then it is skipped with a warning. Blank lines are skipped.\n"
    "eval     reads JSON lines with \"text\" and \"label\"; prints precision, recall, F1 and support per class,\n"
    "         their macro and weighted averages, accuracy and the confusion matrix (--json: one JSON object).\n"
    "         --errors N also prints the first N misclassified texts.\n"
    "segment  writes the texts train and eval use, as JSON lines {\"text\", \"label\", \"source\"} (--short: only\n"
    "         the short ones, --all: both), from DIR/raw/<domain>/<split>.jsonl (default val).\n";

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "mome route: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see mome route --help)\n");
    return EXIT_USAGE;
}

static int fail(const char *sub) {
    const char *msg = mome_error_message();
    fprintf(stderr, "mome route %s: error: %s\n", sub, msg[0] ? msg : "failed");
    return EXIT_ERROR;
}

static int parse_u64(const char *s, uint64_t *v) {
    char *end;
    errno = 0;
    if (!*s || *s == '-') return -1;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *v = x;
    return 0;
}

static int parse_pos_double(const char *s, double *v) {
    char *end;
    double x = strtod(s, &end);
    if (!*s || *end || !(x > 0) || !isfinite(x)) return -1;
    *v = x;
    return 0;
}

static int is_help(const char *a) { return !strcmp(a, "--help") || !strcmp(a, "-h"); }

/* Prints held-out metrics of r on the segments of DIR's val split (normal texts, then short ones). */
static void report_heldout(const mome_router *r, const char *dir, const mome_route_seg_opts *seg, uint64_t seed) {
    corpus_segs c;
    if (load_split(dir, "val", seg, seed, 1, &c) != MOME_OK) {
        fprintf(stderr, "route: no held-out evaluation: %s\n", mome_error_message());
        return;
    }
    if (c.segs.n == 0) {
        corpus_segs_free(&c);
        return;
    }
    int *pred = mome_malloc(c.segs.n * sizeof *pred);
    classify_all(r, c.segs.v, c.segs.n, pred, NULL);
    int K = r->n_classes;
    for (int pass = 0; pass < 2; pass++) {
        int64_t *conf = mome_calloc((size_t)K * (size_t)K, sizeof *conf);
        size_t m = 0;
        for (size_t i = 0; i < c.segs.n; i++) {
            if (c.segs.v[i].is_short != pass) continue;
            conf[c.segs.v[i].label * K + pred[i]]++;
            m++;
        }
        if (m) {
            mome_route_metrics mt;
            mome_route_metrics_compute(&mt, conf, K);
            printf("held-out %s (%zu documents of %s/raw/*/val.jsonl): %zu texts\n",
                   pass ? "short texts, 20-49 characters" : "segments, 50-600 characters", c.n_docs, dir, m);
            print_metrics(stdout, &mt, c.labels);
            mome_route_metrics_free(&mt);
        }
        mome_free(conf);
    }
    /* Whole documents (classify reads at most MOME_ROUTER_MAX_TEXT bytes of each), for scale. */
    int64_t *conf = mome_calloc((size_t)K * (size_t)K, sizeof *conf);
    for (int k = 0; k < c.n_classes; k++) {
#pragma omp parallel for schedule(dynamic, 1)
        for (size_t i = 0; i < c.docs[k].n; i++) {
            const doc_t *d = &c.docs[k].v[i];
            int p = mome_router_classify(r, d->text, d->len, NULL);
#pragma omp atomic
            conf[k * K + p]++;
        }
    }
    mome_route_metrics mt;
    mome_route_metrics_compute(&mt, conf, K);
    printf("held-out whole documents: accuracy %.4f, macro F1 %.4f (%lld documents)\n", mt.accuracy, mt.macro_f1,
           (long long)mt.n);
    mome_route_metrics_free(&mt);
    mome_free(conf);
    mome_free(pred);
    corpus_segs_free(&c);
}

static int cmd_train(int argc, char **argv) {
    mome_route_train_opts o;
    mome_route_train_defaults(&o);
    o.verbose = 1;
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (is_help(a)) {
            fputs(usage_route, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "--quiet")) {
            o.verbose = 0;
            continue;
        }
        if (a[0] != '-' || a[1] != '-') return usage_error("train: unexpected argument '%s'", a);
        if (!v) return usage_error("train: %s needs a value", a);
        i++;
        if (!strcmp(a, "--data")) {
            o.data_dir = v;
        } else if (!strcmp(a, "--out")) {
            out = v;
        } else if (!strcmp(a, "--classifier")) {
            int k = mome_router_kind_parse(v);
            if (k < 0) return usage_error("train: --classifier '%s': expected lr, svm or nb", v);
            o.kind = (mome_router_kind)k;
        } else if (!strcmp(a, "--ngrams")) {
            int lo, hi;
            char tail;
            if (sscanf(v, "%d-%d%c", &lo, &hi, &tail) != 2 || lo < 1 || hi < lo || hi > MOME_ROUTER_MAX_NGRAM)
                return usage_error("train: --ngrams '%s': expected A-B with 1 <= A <= B <= 8", v);
            o.hashing.ngram_min = lo;
            o.hashing.ngram_max = hi;
        } else if (!strcmp(a, "--buckets")) {
            uint64_t b;
            if (parse_u64(v, &b) || b < MOME_ROUTER_MIN_BUCKETS || b > MOME_ROUTER_MAX_BUCKETS)
                return usage_error("train: --buckets '%s': expected an integer in [16, 16777216]", v);
            o.hashing.buckets = (uint32_t)b;
        } else if (!strcmp(a, "--seed")) {
            if (parse_u64(v, &o.seed)) return usage_error("train: --seed '%s': expected a non-negative integer", v);
            o.hashing.hash_seed = mome_route_hash_seed(o.seed);
        } else if (!strcmp(a, "--C")) {
            if (parse_pos_double(v, &o.C)) return usage_error("train: --C '%s': expected a positive number", v);
        } else if (!strcmp(a, "--clean-folds")) {
            uint64_t fo;
            if (parse_u64(v, &fo) || fo == 1 || fo > 20)
                return usage_error("train: --clean-folds '%s': expected 0 (off) or 2 to 20", v);
            o.clean_folds = (int)fo;
        } else if (!strcmp(a, "--clean-threshold")) {
            if (parse_pos_double(v, &o.clean_threshold) || o.clean_threshold > 1)
                return usage_error("train: --clean-threshold '%s': expected a number in (0, 1]", v);
        } else if (!strcmp(a, "--alpha")) {
            if (parse_pos_double(v, &o.alpha)) return usage_error("train: --alpha '%s': expected a positive number", v);
        } else {
            return usage_error("train: unknown option '%s'", a);
        }
    }
    if (!o.data_dir) return usage_error("train: %s", "--data DIR is required");
    if (!out) return usage_error("train: %s", "--out ROUTER.h5 is required");
    double t0 = mome_now();
    mome_router *r = NULL;
    int rc = mome_route_train(&o, &r);
    if (!rc) rc = mome_router_save(r, out);
    if (rc) {
        mome_router_free(r);
        return fail("train");
    }
    double secs = mome_now() - t0;
    printf("router written to %s (%s, %d classes, %u buckets, n-grams %d-%d) in %.1f s\n", out,
           mome_router_kind_name(r->kind), r->n_classes, r->hashing.buckets, r->hashing.ngram_min,
           r->hashing.ngram_max, secs);
    fflush(stdout);
    report_heldout(r, o.data_dir, &o.seg, o.seed);
    mome_router_free(r);
    return EXIT_OK;
}

/* One JSON line of predict/eval input. */
typedef struct {
    json_t *obj;
    const char *text;
    size_t len;
    long lineno;
    int label; /* eval: the true class */
    int pred;
    float probs[MOME_ROUTER_MAX_CLASSES];
} rec_t;

/* Reads the next non-blank line; 1 when one was read, 0 at the end, -1 on a read error. */
static int next_line(FILE *f, char **line, size_t *cap, long *lineno, size_t *len) {
    ssize_t got;
    while ((got = getline(line, cap, f)) > 0) {
        (*lineno)++;
        size_t l = (size_t)got;
        while (l > 0 && ((*line)[l - 1] == '\n' || (*line)[l - 1] == '\r')) l--;
        size_t p = 0;
        while (p < l && ((*line)[p] == ' ' || (*line)[p] == '\t')) p++;
        if (p == l) continue;
        *len = l;
        return 1;
    }
    return ferror(f) ? -1 : 0;
}

/* Parses one line into rec (need_label: eval). Returns MOME_OK or an error naming name:lineno. */
static int parse_rec(const mome_router *r, const char *name, char *line, size_t len, long lineno, int need_label,
                     rec_t *rec) {
    json_error_t jerr;
    memset(rec, 0, sizeof *rec);
    rec->lineno = lineno;
    json_t *o = json_loadb(line, len, 0, &jerr);
    if (!o) return mome_error_set(MOME_EFORMAT, "%s:%ld: invalid JSON: %s", name, lineno, jerr.text);
    if (!json_is_object(o)) {
        json_decref(o);
        return mome_error_set(MOME_EFORMAT, "%s:%ld: expected a JSON object", name, lineno);
    }
    json_t *t = json_object_get(o, "text");
    if (!json_is_string(t)) {
        json_decref(o);
        return mome_error_set(MOME_EFORMAT, "%s:%ld: no string \"text\"", name, lineno);
    }
    rec->obj = o;
    rec->text = json_string_value(t);
    rec->len = json_string_length(t);
    if (need_label) {
        const char *l = json_string_value(json_object_get(o, "label"));
        if (!l) {
            json_decref(o);
            return mome_error_set(MOME_EFORMAT, "%s:%ld: no string \"label\"", name, lineno);
        }
        rec->label = mome_router_label_index(r, l);
        if (rec->label < 0) {
            char known[1024] = "";
            size_t n = 0;
            for (int k = 0; k < r->n_classes; k++)
                n += (size_t)snprintf(known + n, sizeof known - n, "%s%s", k ? ", " : "", r->labels[k]);
            int rc = mome_error_set(MOME_EFORMAT, "%s:%ld: label \"%s\" is not a class of %s (%s)", name, lineno, l,
                                    r->path, known);
            json_decref(o);
            return rc;
        }
    }
    return MOME_OK;
}

/* The output line of a classified predict record: its object with "label" and "probs" set (caller frees with
 * free). Releases the record's object. */
static char *predict_output(const mome_router *r, rec_t *rec) {
    json_t *o = rec->obj, *p = json_object();
    for (int k = 0; k < r->n_classes; k++) json_object_set_new(p, r->labels[k], json_real(rec->probs[k]));
    json_object_set_new(o, "label", json_string(r->labels[rec->pred]));
    json_object_set_new(o, "probs", p);
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    MOME_CHECK(s, "json_dumps failed");
    json_decref(o);
    rec->obj = NULL;
    return s;
}

int mome_route_check_lines(const mome_router *r, FILE *f, const char *name, int need_label, size_t *n_ok) {
    char *line = NULL;
    size_t cap = 0, len = 0;
    long lineno = 0;
    int rc = MOME_OK, got;
    *n_ok = 0;
    rec_t *rec = mome_malloc(sizeof *rec);
    while (!rc && (got = next_line(f, &line, &cap, &lineno, &len)) != 0) {
        if (got < 0) {
            rc = mome_error_set(MOME_EIO, "%s: read error after line %ld", name, lineno);
            break;
        }
        rc = parse_rec(r, name, line, len, lineno, need_label, rec);
        if (rc) break;
        rec->pred = mome_router_classify(r, rec->text, rec->len, rec->probs);
        if (need_label) {
            json_decref(rec->obj);
        } else {
            free(predict_output(r, rec));
        }
        (*n_ok)++;
    }
    mome_free(rec);
    free(line);
    return rc;
}

#define BATCH 512

static int cmd_predict(int argc, char **argv) {
    const char *rpath = NULL, *ipath = NULL;
    int skip = 0;
    for (int i = 1; i < argc; i++) {
        if (is_help(argv[i])) {
            fputs(usage_route, stdout);
            return EXIT_OK;
        } else if (!strcmp(argv[i], "--skip-invalid")) {
            skip = 1;
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            return usage_error("predict: unknown option '%s'", argv[i]);
        } else if (!rpath) {
            rpath = argv[i];
        } else if (!ipath) {
            ipath = argv[i];
        } else {
            return usage_error("predict: unexpected argument '%s'", argv[i]);
        }
    }
    if (!rpath) return usage_error("predict: %s", "ROUTER.h5 is required");
    mome_router *r = NULL;
    if (mome_router_open(&r, rpath)) return fail("predict");
    FILE *f = stdin;
    const char *name = "<stdin>";
    if (ipath && strcmp(ipath, "-") != 0) {
        f = fopen(ipath, "rb");
        name = ipath;
        if (!f) {
            mome_error_set(MOME_EIO, "%s: cannot open: %s", ipath, strerror(errno));
            mome_router_free(r);
            return fail("predict");
        }
    }
    rec_t *recs = mome_calloc(BATCH, sizeof *recs);
    char *line = NULL;
    size_t cap = 0, len = 0;
    long lineno = 0, skipped = 0;
    int rc = MOME_OK, eof = 0;
    while (!eof && !rc) {
        size_t n = 0;
        while (n < BATCH) {
            int got = next_line(f, &line, &cap, &lineno, &len);
            if (got < 0) rc = mome_error_set(MOME_EIO, "%s: read error after line %ld", name, lineno);
            if (got <= 0) {
                eof = 1;
                break;
            }
            int prc = parse_rec(r, name, line, len, lineno, 0, &recs[n]);
            if (prc && skip) {
                fprintf(stderr, "mome route predict: warning: skipped %s\n", mome_error_message());
                skipped++;
                continue;
            }
            if (prc) {
                rc = prc;
                break;
            }
            n++;
        }
        /* The lines before a bad one are still written: output stays in step with the input up to the error. */
#pragma omp parallel for schedule(dynamic, 8)
        for (size_t i = 0; i < n; i++) recs[i].pred = mome_router_classify(r, recs[i].text, recs[i].len, recs[i].probs);
        for (size_t i = 0; i < n; i++) {
            char *s = predict_output(r, &recs[i]);
            fputs(s, stdout);
            fputc('\n', stdout);
            free(s);
        }
    }
    fflush(stdout);
    free(line);
    mome_free(recs);
    if (f != stdin) fclose(f);
    mome_router_free(r);
    if (skipped) fprintf(stderr, "mome route predict: %ld invalid lines skipped\n", skipped);
    if (rc) return fail("predict");
    if (ferror(stdout)) {
        mome_error_set(MOME_EIO, "writing to stdout failed");
        return fail("predict");
    }
    return EXIT_OK;
}

static void print_snippet(FILE *out, const char *t, size_t len, size_t max) {
    for (size_t i = 0; i < len && i < max; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c == '\n') fputs("\\n", out);
        else if (c < 0x20 || c == 0x7f) fputc(' ', out);
        else fputc(c, out);
    }
    if (len > max) fputs("...", out);
}

static int cmd_eval(int argc, char **argv) {
    const char *rpath = NULL, *ipath = NULL;
    int as_json = 0;
    uint64_t show_errors = 0;
    for (int i = 1; i < argc; i++) {
        if (is_help(argv[i])) {
            fputs(usage_route, stdout);
            return EXIT_OK;
        } else if (!strcmp(argv[i], "--json")) {
            as_json = 1;
        } else if (!strcmp(argv[i], "--errors")) {
            if (i + 1 >= argc || parse_u64(argv[i + 1], &show_errors))
                return usage_error("eval: %s needs a non-negative integer", "--errors");
            i++;
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            return usage_error("eval: unknown option '%s'", argv[i]);
        } else if (!rpath) {
            rpath = argv[i];
        } else if (!ipath) {
            ipath = argv[i];
        } else {
            return usage_error("eval: unexpected argument '%s'", argv[i]);
        }
    }
    if (!rpath || !ipath) return usage_error("eval: %s", "ROUTER.h5 and FILE.jsonl are required");
    mome_router *r = NULL;
    if (mome_router_open(&r, rpath)) return fail("eval");
    FILE *f = strcmp(ipath, "-") ? fopen(ipath, "rb") : stdin;
    const char *name = f == stdin ? "<stdin>" : ipath;
    if (!f) {
        mome_error_set(MOME_EIO, "%s: cannot open: %s", ipath, strerror(errno));
        mome_router_free(r);
        return fail("eval");
    }
    size_t n = 0, capr = 0;
    rec_t *recs = NULL;
    char *line = NULL;
    size_t cap = 0, len = 0;
    long lineno = 0;
    int rc = MOME_OK, got;
    while (!rc && (got = next_line(f, &line, &cap, &lineno, &len)) != 0) {
        if (got < 0) {
            rc = mome_error_set(MOME_EIO, "%s: read error after line %ld", name, lineno);
            break;
        }
        if (n == capr) {
            capr = capr ? 2 * capr : 1024;
            recs = realloc(recs, capr * sizeof *recs);
            MOME_CHECK(recs, "out of memory");
        }
        rc = parse_rec(r, name, line, len, lineno, 1, &recs[n]);
        if (!rc) n++;
    }
    free(line);
    if (f != stdin) fclose(f);
    if (!rc && n == 0) rc = mome_error_set(MOME_EINVAL, "%s: no labelled lines", name);
    int K = r->n_classes;
    if (!rc) {
        double t0 = mome_now();
#pragma omp parallel for schedule(dynamic, 8)
        for (size_t i = 0; i < n; i++) recs[i].pred = mome_router_classify(r, recs[i].text, recs[i].len, NULL);
        double secs = mome_now() - t0;
        int64_t *conf = mome_calloc((size_t)K * (size_t)K, sizeof *conf);
        for (size_t i = 0; i < n; i++) conf[recs[i].label * K + recs[i].pred]++;
        mome_route_metrics m;
        mome_route_metrics_compute(&m, conf, K);
        mome_free(conf);
        if (as_json) {
            json_t *o = metrics_json(&m, r->labels);
            json_object_set_new(o, "router", json_string(rpath));
            json_object_set_new(o, "classifier", json_string(mome_router_kind_name(r->kind)));
            json_object_set_new(o, "file", json_string(ipath));
            json_object_set_new(o, "seconds", json_real(secs));
            char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
            puts(s);
            free(s);
            json_decref(o);
        } else {
            printf("router %s (%s, %d classes) on %s: %lld texts in %.2f s\n", rpath, mome_router_kind_name(r->kind),
                   K, ipath, (long long)m.n, secs);
            print_metrics(stdout, &m, r->labels);
        }
        uint64_t shown = 0;
        for (size_t i = 0; i < n && shown < show_errors; i++) {
            if (recs[i].pred == recs[i].label) continue;
            FILE *out = as_json ? stderr : stdout;
            fprintf(out, "error: line %ld: %s predicted as %s: ", recs[i].lineno, r->labels[recs[i].label],
                    r->labels[recs[i].pred]);
            print_snippet(out, recs[i].text, recs[i].len, 300);
            fputc('\n', out);
            shown++;
        }
        mome_route_metrics_free(&m);
    }
    for (size_t i = 0; i < n; i++) json_decref(recs[i].obj);
    free(recs);
    mome_router_free(r);
    return rc ? fail("eval") : EXIT_OK;
}

static int cmd_segment(int argc, char **argv) {
    const char *dir = NULL, *split = "val", *out = NULL;
    int which = 0; /* 0 normal, 1 short, 2 all */
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            fputs(usage_route, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "--short")) {
            which = 1;
        } else if (!strcmp(a, "--all")) {
            which = 2;
        } else if (!strcmp(a, "--data") || !strcmp(a, "--split") || !strcmp(a, "--seed") || !strcmp(a, "--out")) {
            if (i + 1 >= argc) return usage_error("segment: %s needs a value", a);
            const char *v = argv[++i];
            if (!strcmp(a, "--data")) dir = v;
            else if (!strcmp(a, "--split")) split = v;
            else if (!strcmp(a, "--out")) out = v;
            else if (parse_u64(v, &seed))
                return usage_error("segment: --seed '%s': expected a non-negative integer", v);
        } else {
            return usage_error("segment: unknown argument '%s'", a);
        }
    }
    if (!dir) return usage_error("segment: %s", "--data DIR is required");
    if (strcmp(split, "train") && strcmp(split, "val"))
        return usage_error("segment: --split '%s': expected train or val", split);
    mome_route_seg_opts seg;
    mome_route_seg_defaults(&seg);
    corpus_segs c;
    if (load_split(dir, split, &seg, seed, 0, &c)) return fail("segment");
    FILE *f = out ? fopen(out, "wb") : stdout;
    if (!f) {
        mome_error_set(MOME_EIO, "%s: cannot create: %s", out, strerror(errno));
        corpus_segs_free(&c);
        return fail("segment");
    }
    size_t written = 0;
    for (size_t i = 0; i < c.segs.n; i++) {
        const seg_t *s = &c.segs.v[i];
        if ((which == 0 && s->is_short) || (which == 1 && !s->is_short)) continue;
        json_t *o = json_object();
        json_object_set_new(o, "text", json_stringn(s->text, s->len));
        json_object_set_new(o, "label", json_string(c.labels[s->label]));
        json_object_set_new(o, "source", json_string(s->source));
        if (s->is_short) json_object_set_new(o, "short", json_true());
        /* Invalid UTF-8 in a document makes json_stringn fail: such a text cannot be written as JSON. */
        if (!json_object_get(o, "text") || !json_object_get(o, "source")) {
            json_decref(o);
            continue;
        }
        char *line = json_dumps(o, JSON_COMPACT);
        fputs(line, f);
        fputc('\n', f);
        free(line);
        json_decref(o);
        written++;
    }
    int bad = ferror(f);
    if (f != stdout) bad |= fclose(f) != 0;
    size_t n_docs = c.n_docs;
    corpus_segs_free(&c);
    if (bad) {
        mome_error_set(MOME_EIO, "%s: write error", out ? out : "<stdout>");
        return fail("segment");
    }
    fprintf(stderr, "mome route segment: %zu texts from %zu documents of %s/raw/*/%s.jsonl\n", written, n_docs, dir,
            split);
    return EXIT_OK;
}

int mome_route_main(int argc, char **argv) {
    if (argc < 2 || is_help(argv[1])) {
        fputs(usage_route, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(sub, "predict")) return cmd_predict(argc - 1, argv + 1);
    if (!strcmp(sub, "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(sub, "segment")) return cmd_segment(argc - 1, argv + 1);
    return usage_error("unknown subcommand '%s' (train, predict, eval, segment)", sub);
}
