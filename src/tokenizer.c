/* tokenizer.c — byte-level BPE: pre-tokenisation, training, encoding with a cache, decoding, HDF5 storage.
 *
 * Implements tokenizer.h. Ids 0..255 are bytes, 256/257 are BOS/EOS (never produced from text), id
 * MOME_TOK_FIRST_MERGE + r is merge number r (rank r) of two earlier ids.
 *
 * Pre-tokenisation (merges never cross chunk boundaries) splits any byte string into chunks that cover it
 * exactly, each at most MAX_CHUNK bytes (a longer run continues in the next chunk):
 *   - an optional single leading ' ' + a run of letters (ASCII letters and every byte >= 0x80, so UTF-8 words
 *     stay whole), or of digits, or of "punctuation" (every other byte that is not whitespace, NUL included);
 *   - a run of whitespace (' ', \t, \n, \r, \v, \f); when it is followed by a non-space byte and ends in ' ',
 *     that last ' ' is left to start the next chunk (so "\n    return" is "\n   " + " return").
 * The rule is named by PRETOKENIZER and stored in the file; changing it must change that name.
 *
 * Training counts distinct chunks, then learns merges with incremental pair counts: pair -> count and
 * pair -> list of words containing it, and a max-heap (count desc, then (left, right) asc) with lazy
 * invalidation. Deterministic: counts do not depend on hash-map order and ties go to the smaller pair.
 *
 * Encoding applies, per chunk, the lowest-rank merge present until none applies (the same segmentation training
 * produced), with a per-thread cache chunk bytes -> ids (bounded, reset when full); the tokenizer itself is
 * never written by encode, so one tokenizer may encode from many threads.
 *
 * File (HDF5, via h5io): root attrs format="mome-tokenizer", format_version=1, vocab_size, hash, bos_id,
 * eos_id, pretokenizer; dataset `merges` (n_merges, 2) uint32. Hash: FNV-1a over vocab_size (u32 LE) then
 * each merge (left u32 LE, right u32 LE), 16 lowercase hex digits.
 * Left to others: corpus reading and sharding (corpus/data modules).
 */
#include "mome/tokenizer.h"

#include "mome/common.h"
#include "mome/h5io.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_CHUNK 256
#define PRETOKENIZER "mome-bytes-v1"
#define FORMAT_NAME "mome-tokenizer"
#define FORMAT_VERSION 1
#define NO_ID UINT32_MAX

struct mome_tokenizer {
    int vocab_size;       /* MOME_TOK_FIRST_MERGE + n_merges */
    uint32_t n_merges;    /* learned merges */
    uint32_t *merges;     /* (n_merges, 2): merge r makes id FIRST_MERGE + r from (left, right) */
    uint64_t *pair_keys;  /* (pair_mask + 1): open-addressing table (left << 32 | right), 0 = empty slot */
    uint32_t *pair_ids;   /* (pair_mask + 1): the merged id for that key */
    size_t pair_mask;     /* table size - 1 (power of two) */
    uint32_t *tok_off;    /* (vocab_size): offset of each token's bytes in tok_bytes */
    uint32_t *tok_len;    /* (vocab_size): length in bytes (0 for specials) */
    uint8_t *tok_bytes;   /* concatenated token bytes */
    uint64_t serial;      /* unique per tokenizer object: keys the per-thread encode cache */
    char hash[17];        /* 16 lowercase hex digits */
};

static void *grow(void *p, size_t *cap, size_t need, size_t elsize) {
    if (need <= *cap) return p;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(p, c * elsize);
    MOME_CHECK(q != NULL, "out of memory growing a buffer to %zu x %zu bytes", c, elsize);
    *cap = c;
    return q;
}

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static inline uint64_t pair_key(uint32_t a, uint32_t b) { return (uint64_t)a << 32 | b; }
/* Keys in the tokenizer's pair table carry this tag so that 0 can mean an empty slot (ids are < 2^16). */
#define PAIR_TAG (1ULL << 63)

/* ---------------------------------------------------------------------------------------------------------
 * Pre-tokenisation. */

enum { C_LETTER, C_DIGIT, C_PUNCT, C_SPACE, C_WS };

static inline int byte_class(uint8_t c) {
    if (c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return C_LETTER;
    if (c >= '0' && c <= '9') return C_DIGIT;
    if (c == ' ') return C_SPACE;
    if (c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') return C_WS;
    return C_PUNCT;
}

/* End of the chunk that starts at s[i] (i < n). */
static size_t chunk_end(const uint8_t *s, size_t n, size_t i) {
    size_t lim = n - i > MAX_CHUNK ? i + MAX_CHUNK : n;
    int c = byte_class(s[i]);
    size_t j = i + 1;
    if (c == C_SPACE && j < lim && byte_class(s[j]) <= C_PUNCT) {
        c = byte_class(s[j]);
        j++;
    }
    if (c <= C_PUNCT) {
        while (j < lim && byte_class(s[j]) == c) j++;
        return j;
    }
    while (j < lim && byte_class(s[j]) >= C_SPACE) j++;
    if (j < n && j - i >= 2 && s[j - 1] == ' ' && byte_class(s[j]) <= C_PUNCT) j--;
    return j;
}

/* ---------------------------------------------------------------------------------------------------------
 * Byte-string hash map (chunk counts in training, the encode cache). */

typedef struct {
    uint64_t hash;
    uint64_t val; /* training: frequency; cache: offset of the ids */
    uint32_t off; /* offset of the bytes in the arena */
    uint32_t len; /* byte length; cache: ids count in aux */
    uint32_t aux;
} sm_entry;

typedef struct {
    uint32_t *slots; /* entry index + 1, 0 = empty */
    size_t mask;
    sm_entry *e;
    size_t n, cap;
    uint8_t *bytes;
    size_t nbytes, capbytes;
} strmap;

static void sm_init(strmap *m, size_t slots) {
    memset(m, 0, sizeof *m);
    m->slots = mome_calloc(slots, sizeof *m->slots);
    m->mask = slots - 1;
}

static void sm_free(strmap *m) {
    mome_free(m->slots);
    free(m->e);
    free(m->bytes);
    memset(m, 0, sizeof *m);
}

static void sm_rehash(strmap *m) {
    size_t ns = (m->mask + 1) * 2;
    mome_free(m->slots);
    m->slots = mome_calloc(ns, sizeof *m->slots);
    m->mask = ns - 1;
    for (size_t k = 0; k < m->n; k++) {
        size_t s = (size_t)m->e[k].hash & m->mask;
        while (m->slots[s]) s = (s + 1) & m->mask;
        m->slots[s] = (uint32_t)(k + 1);
    }
}

/* Entry index of bytes p[0..len) (hash h), inserting it (val 0) when absent; *fresh tells which. */
static size_t sm_get(strmap *m, const uint8_t *p, uint32_t len, uint64_t h, int *fresh) {
    size_t s = (size_t)h & m->mask;
    for (;;) {
        uint32_t k = m->slots[s];
        if (!k) break;
        sm_entry *e = &m->e[k - 1];
        if (e->hash == h && e->len == len && memcmp(m->bytes + e->off, p, len) == 0) {
            *fresh = 0;
            return k - 1;
        }
        s = (s + 1) & m->mask;
    }
    *fresh = 1;
    m->e = grow(m->e, &m->cap, m->n + 1, sizeof *m->e);
    m->bytes = grow(m->bytes, &m->capbytes, m->nbytes + len, 1);
    MOME_CHECK(m->nbytes + len < UINT32_MAX, "tokenizer: more than 4 GiB of distinct chunks");
    memcpy(m->bytes + m->nbytes, p, len);
    sm_entry *e = &m->e[m->n];
    e->hash = h;
    e->val = 0;
    e->off = (uint32_t)m->nbytes;
    e->len = len;
    e->aux = 0;
    m->nbytes += len;
    m->slots[s] = (uint32_t)(m->n + 1);
    size_t idx = m->n++;
    if (2 * m->n > m->mask + 1) sm_rehash(m);
    return idx;
}

static inline uint64_t chunk_hash(const uint8_t *p, size_t len) {
    return mix64(mome_fnv1a(MOME_FNV_OFFSET, p, len) ^ len);
}

/* ---------------------------------------------------------------------------------------------------------
 * Tokenizer construction from a merge list. */

static uint64_t serial_counter = 0;

static void compute_hash(const uint32_t *merges, uint32_t n_merges, int vocab_size, char out[17]) {
    uint8_t b[8];
    uint32_t v = (uint32_t)vocab_size;
    for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i));
    uint64_t h = mome_fnv1a(MOME_FNV_OFFSET, b, 4);
    for (uint32_t r = 0; r < n_merges; r++) {
        for (int i = 0; i < 4; i++) {
            b[i] = (uint8_t)(merges[2 * r] >> (8 * i));
            b[4 + i] = (uint8_t)(merges[2 * r + 1] >> (8 * i));
        }
        h = mome_fnv1a(h, b, 8);
    }
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

static uint32_t pair_lookup(const mome_tokenizer *t, uint32_t a, uint32_t b) {
    uint64_t key = pair_key(a, b) | PAIR_TAG;
    size_t s = (size_t)mix64(key) & t->pair_mask;
    for (;;) {
        uint64_t k = t->pair_keys[s];
        if (k == key) return t->pair_ids[s];
        if (k == 0) return NO_ID;
        s = (s + 1) & t->pair_mask;
    }
}

/* Takes ownership of merges (allocated with realloc/malloc). The merges must already be validated. */
static mome_tokenizer *build(uint32_t *merges, uint32_t n_merges) {
    mome_tokenizer *t = mome_calloc(1, sizeof *t);
    t->n_merges = n_merges;
    t->merges = merges;
    t->vocab_size = MOME_TOK_FIRST_MERGE + (int)n_merges;
    size_t slots = 16;
    while (slots < 2 * (size_t)n_merges + 2) slots *= 2;
    t->pair_keys = mome_calloc(slots, sizeof *t->pair_keys);
    t->pair_ids = mome_calloc(slots, sizeof *t->pair_ids);
    t->pair_mask = slots - 1;
    for (uint32_t r = 0; r < n_merges; r++) {
        uint64_t key = pair_key(merges[2 * r], merges[2 * r + 1]) | PAIR_TAG;
        size_t s = (size_t)mix64(key) & t->pair_mask;
        while (t->pair_keys[s] && t->pair_keys[s] != key) s = (s + 1) & t->pair_mask;
        if (t->pair_keys[s]) continue; /* a repeated pair keeps its first id (load refuses such files) */
        t->pair_keys[s] = key;
        t->pair_ids[s] = MOME_TOK_FIRST_MERGE + r;
    }
    size_t V = (size_t)t->vocab_size;
    t->tok_off = mome_malloc(V * sizeof *t->tok_off);
    t->tok_len = mome_malloc(V * sizeof *t->tok_len);
    size_t total = 256;
    for (int i = 0; i < 256; i++) t->tok_len[i] = 1;
    t->tok_len[MOME_TOK_BOS] = t->tok_len[MOME_TOK_EOS] = 0;
    for (uint32_t r = 0; r < n_merges; r++) {
        uint32_t len = t->tok_len[merges[2 * r]] + t->tok_len[merges[2 * r + 1]];
        t->tok_len[MOME_TOK_FIRST_MERGE + r] = len;
        total += len;
    }
    MOME_CHECK(total < UINT32_MAX, "tokenizer: token bytes exceed 4 GiB");
    t->tok_bytes = mome_malloc(total);
    size_t o = 0;
    for (int i = 0; i < 256; i++) {
        t->tok_off[i] = (uint32_t)o;
        t->tok_bytes[o++] = (uint8_t)i;
    }
    t->tok_off[MOME_TOK_BOS] = t->tok_off[MOME_TOK_EOS] = (uint32_t)o;
    for (uint32_t r = 0; r < n_merges; r++) {
        uint32_t a = merges[2 * r], b = merges[2 * r + 1], z = MOME_TOK_FIRST_MERGE + r;
        t->tok_off[z] = (uint32_t)o;
        memcpy(t->tok_bytes + o, t->tok_bytes + t->tok_off[a], t->tok_len[a]);
        memcpy(t->tok_bytes + o + t->tok_len[a], t->tok_bytes + t->tok_off[b], t->tok_len[b]);
        o += t->tok_len[z];
    }
    compute_hash(merges, n_merges, t->vocab_size, t->hash);
    t->serial = __atomic_add_fetch(&serial_counter, 1, __ATOMIC_RELAXED);
    return t;
}

/* ---------------------------------------------------------------------------------------------------------
 * Training. */

typedef struct {
    uint64_t key;
    int64_t count;
    uint32_t *where; /* indices of words that contained this pair when it was counted (may be stale) */
    uint32_t n_where, cap_where;
    uint32_t stamp; /* last merge step that queued this pair for the heap */
} pair_rec;

typedef struct {
    int64_t count;
    uint64_t key;
} heap_item;

typedef struct {
    /* pair -> record */
    uint32_t *slots; /* record index + 1 */
    size_t mask;
    pair_rec *p;
    size_t n, cap;
    /* max-heap */
    heap_item *h;
    size_t hn, hcap;
} pair_table;

static void pt_rehash(pair_table *pt) {
    size_t ns = (pt->mask + 1) * 2;
    mome_free(pt->slots);
    pt->slots = mome_calloc(ns, sizeof *pt->slots);
    pt->mask = ns - 1;
    for (size_t k = 0; k < pt->n; k++) {
        size_t s = (size_t)mix64(pt->p[k].key) & pt->mask;
        while (pt->slots[s]) s = (s + 1) & pt->mask;
        pt->slots[s] = (uint32_t)(k + 1);
    }
}

static pair_rec *pt_get(pair_table *pt, uint64_t key) {
    size_t s = (size_t)mix64(key) & pt->mask;
    for (;;) {
        uint32_t k = pt->slots[s];
        if (!k) break;
        if (pt->p[k - 1].key == key) return &pt->p[k - 1];
        s = (s + 1) & pt->mask;
    }
    pt->p = grow(pt->p, &pt->cap, pt->n + 1, sizeof *pt->p);
    pair_rec *r = &pt->p[pt->n];
    memset(r, 0, sizeof *r);
    r->key = key;
    r->stamp = UINT32_MAX;
    pt->slots[s] = (uint32_t)(pt->n + 1);
    pt->n++;
    if (2 * pt->n > pt->mask + 1) pt_rehash(pt);
    return &pt->p[pt->n - 1];
}

static inline int heap_above(heap_item x, heap_item y) {
    return x.count > y.count || (x.count == y.count && x.key < y.key);
}

static void heap_push(pair_table *pt, int64_t count, uint64_t key) {
    pt->h = grow(pt->h, &pt->hcap, pt->hn + 1, sizeof *pt->h);
    size_t i = pt->hn++;
    heap_item it = {count, key};
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_above(it, pt->h[parent])) break;
        pt->h[i] = pt->h[parent];
        i = parent;
    }
    pt->h[i] = it;
}

static heap_item heap_pop(pair_table *pt) {
    heap_item top = pt->h[0], last = pt->h[--pt->hn];
    size_t i = 0, n = pt->hn;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_above(pt->h[c + 1], pt->h[c])) c++;
        if (!heap_above(pt->h[c], last)) break;
        pt->h[i] = pt->h[c];
        i = c;
    }
    if (n) pt->h[i] = last;
    return top;
}

static void add_where(pair_rec *r, uint32_t w) {
    if (r->n_where && r->where[r->n_where - 1] == w) return;
    if (r->n_where == r->cap_where) {
        size_t cap = r->cap_where;
        r->where = grow(r->where, &cap, (size_t)r->n_where + 1, sizeof *r->where);
        r->cap_where = (uint32_t)cap;
    }
    r->where[r->n_where++] = w;
}

typedef struct {
    uint32_t *sym;   /* all words' symbols, word w at sym[off[w] .. off[w] + len[w]) */
    size_t *off;     /* (n_words) */
    uint32_t *len;   /* (n_words) current length */
    int64_t *freq;   /* (n_words) */
    uint32_t *stamp; /* (n_words) last merge step that rewrote the word */
    size_t n_words;
} words;

/* Counts distinct chunks of all texts into words (symbols = bytes). */
static void count_chunks(words *W, const char *const *texts, const size_t *lens, size_t n_texts) {
    strmap m;
    sm_init(&m, 1 << 16);
    for (size_t t = 0; t < n_texts; t++) {
        const uint8_t *s = (const uint8_t *)texts[t];
        size_t n = lens[t];
        for (size_t i = 0; i < n;) {
            size_t j = chunk_end(s, n, i);
            int fresh;
            size_t k = sm_get(&m, s + i, (uint32_t)(j - i), chunk_hash(s + i, j - i), &fresh);
            m.e[k].val++;
            i = j;
        }
    }
    W->n_words = m.n;
    W->sym = mome_malloc((m.nbytes + 1) * sizeof *W->sym);
    W->off = mome_malloc((m.n + 1) * sizeof *W->off);
    W->len = mome_malloc((m.n + 1) * sizeof *W->len);
    W->freq = mome_malloc((m.n + 1) * sizeof *W->freq);
    W->stamp = mome_malloc((m.n + 1) * sizeof *W->stamp);
    for (size_t k = 0; k < m.n; k++) {
        W->off[k] = m.e[k].off;
        W->len[k] = m.e[k].len;
        W->freq[k] = (int64_t)m.e[k].val;
        W->stamp[k] = UINT32_MAX;
        for (uint32_t i = 0; i < m.e[k].len; i++) W->sym[m.e[k].off + i] = m.bytes[m.e[k].off + i];
    }
    sm_free(&m);
}

/* Adds delta to the count of (a, b); on increase records word w and queues the pair for a heap push. */
static void bump(pair_table *pt, uint32_t a, uint32_t b, int64_t delta, uint32_t w, uint32_t step, uint64_t **touched,
                 size_t *n_touched, size_t *cap_touched) {
    pair_rec *r = pt_get(pt, pair_key(a, b));
    r->count += delta;
    if (delta > 0) {
        add_where(r, w);
        if (r->stamp != step) {
            r->stamp = step;
            *touched = grow(*touched, cap_touched, *n_touched + 1, sizeof **touched);
            (*touched)[(*n_touched)++] = r->key;
        }
    }
}

int mome_tokenizer_train(mome_tokenizer **out, const char *const *texts, const size_t *lens, size_t n_texts,
                         int vocab_size) {
    *out = NULL;
    if (vocab_size < MOME_TOK_FIRST_MERGE || vocab_size > 65536)
        return mome_error_set(MOME_EINVAL, "tokenizer: vocab_size %d outside [%d, 65536]", vocab_size,
                              MOME_TOK_FIRST_MERGE);
    uint32_t target = (uint32_t)(vocab_size - MOME_TOK_FIRST_MERGE);
    words W;
    count_chunks(&W, texts, lens, n_texts);

    pair_table pt;
    memset(&pt, 0, sizeof pt);
    pt.slots = mome_calloc(1 << 16, sizeof *pt.slots);
    pt.mask = (1 << 16) - 1;
    for (size_t w = 0; w < W.n_words; w++) {
        const uint32_t *s = W.sym + W.off[w];
        for (uint32_t i = 0; i + 1 < W.len[w]; i++) {
            pair_rec *r = pt_get(&pt, pair_key(s[i], s[i + 1]));
            r->count += W.freq[w];
            add_where(r, (uint32_t)w);
        }
    }
    for (size_t k = 0; k < pt.n; k++) heap_push(&pt, pt.p[k].count, pt.p[k].key);

    uint32_t *merges = mome_malloc(2 * (size_t)(target ? target : 1) * sizeof *merges);
    uint32_t n_merges = 0;
    uint64_t *touched = NULL;
    size_t n_touched = 0, cap_touched = 0;
    while (n_merges < target && pt.hn > 0) {
        heap_item top = heap_pop(&pt);
        pair_rec *r = pt_get(&pt, top.key);
        if (r->count <= 0) continue;
        if (r->count != top.count) { /* stale: re-queue with the current count */
            heap_push(&pt, r->count, top.key);
            continue;
        }
        uint32_t a = (uint32_t)(top.key >> 32), b = (uint32_t)top.key, z = MOME_TOK_FIRST_MERGE + n_merges;
        uint32_t step = n_merges;
        merges[2 * n_merges] = a;
        merges[2 * n_merges + 1] = b;
        n_merges++;
        /* Take the word list; pt_get below may move the records, so never hold r across it. */
        uint32_t *where = r->where, n_where = r->n_where;
        r->where = NULL;
        r->n_where = r->cap_where = 0;
        r->count = 0;
        n_touched = 0;
        for (uint32_t k = 0; k < n_where; k++) {
            uint32_t w = where[k];
            if (W.stamp[w] == step) continue;
            W.stamp[w] = step;
            uint32_t *s = W.sym + W.off[w];
            uint32_t L = W.len[w], o = 0, i = 0;
            int64_t f = W.freq[w];
            while (i < L) {
                if (i + 1 < L && s[i] == a && s[i + 1] == b) {
                    if (o > 0) {
                        bump(&pt, s[o - 1], a, -f, w, step, &touched, &n_touched, &cap_touched);
                        bump(&pt, s[o - 1], z, f, w, step, &touched, &n_touched, &cap_touched);
                    }
                    if (i + 2 < L) {
                        bump(&pt, b, s[i + 2], -f, w, step, &touched, &n_touched, &cap_touched);
                        bump(&pt, z, s[i + 2], f, w, step, &touched, &n_touched, &cap_touched);
                    }
                    s[o++] = z;
                    i += 2;
                } else {
                    s[o++] = s[i++];
                }
            }
            W.len[w] = o;
        }
        free(where);
        pt_get(&pt, pair_key(a, b))->count = 0; /* every occurrence was merged */
        for (size_t k = 0; k < n_touched; k++) {
            pair_rec *q = pt_get(&pt, touched[k]);
            if (q->count > 0) heap_push(&pt, q->count, q->key);
        }
    }
    free(touched);
    for (size_t k = 0; k < pt.n; k++) free(pt.p[k].where);
    free(pt.p);
    free(pt.h);
    mome_free(pt.slots);
    mome_free(W.sym);
    mome_free(W.off);
    mome_free(W.len);
    mome_free(W.freq);
    mome_free(W.stamp);
    if (n_merges < target)
        mome_warn("tokenizer: the training text only supports %u merges; vocabulary is %u, not %d", n_merges,
                  MOME_TOK_FIRST_MERGE + n_merges, vocab_size);
    *out = build(merges, n_merges);
    return MOME_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * Encoding, with a per-thread cache chunk bytes -> ids. */

#define CACHE_MAX_ENTRIES (1u << 18)
#define CACHE_MAX_BYTES ((size_t)16 << 20)
#define CACHE_MAX_CHUNK 64

typedef struct {
    uint64_t serial; /* tokenizer the cache belongs to (0: none) */
    strmap map;
    uint32_t *ids;
    size_t n_ids, cap_ids;
} encode_cache;

/* Per thread, freed when the thread ends (corpus builds encode on short-lived worker threads). */
static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
static int cache_key_rc;

static void cache_reset(encode_cache *c, uint64_t serial) {
    if (c->serial) sm_free(&c->map);
    free(c->ids);
    memset(c, 0, sizeof *c);
    if (serial) {
        c->serial = serial;
        sm_init(&c->map, 1 << 12);
    }
}

static void cache_destroy(void *p) {
    cache_reset(p, 0);
    free(p);
}

static void cache_key_init(void) { cache_key_rc = pthread_key_create(&cache_key, cache_destroy); }

/* This thread's cache, NULL when it has none yet. */
static encode_cache *thread_cache_peek(void) {
    pthread_once(&cache_once, cache_key_init);
    return cache_key_rc ? NULL : pthread_getspecific(cache_key);
}

static encode_cache *thread_cache(void) {
    encode_cache *c = thread_cache_peek();
    if (cache_key_rc) return NULL;
    if (!c) {
        c = calloc(1, sizeof *c);
        if (c && pthread_setspecific(cache_key, c)) {
            free(c);
            c = NULL;
        }
    }
    return c;
}

/* BPE of one chunk: ids into sym (capacity len), returns the count. */
static uint32_t bpe_chunk(const mome_tokenizer *t, const uint8_t *p, uint32_t len, uint32_t *sym) {
    uint32_t n = len;
    for (uint32_t i = 0; i < len; i++) sym[i] = p[i];
    while (n >= 2) {
        uint32_t best = NO_ID;
        uint32_t ba = 0, bb = 0;
        for (uint32_t i = 0; i + 1 < n; i++) {
            uint32_t z = pair_lookup(t, sym[i], sym[i + 1]);
            if (z < best) {
                best = z;
                ba = sym[i];
                bb = sym[i + 1];
            }
        }
        if (best == NO_ID) break;
        uint32_t o = 0, i = 0;
        while (i < n) {
            if (i + 1 < n && sym[i] == ba && sym[i + 1] == bb) {
                sym[o++] = best;
                i += 2;
            } else {
                sym[o++] = sym[i++];
            }
        }
        n = o;
    }
    return n;
}

int mome_tokenizer_encode(const mome_tokenizer *tok, const char *text, size_t len, uint32_t **ids, size_t *n,
                          size_t *cap) {
    if (!tok || (!text && len)) return mome_error_set(MOME_EINVAL, "tokenizer_encode: NULL tokenizer or text");
    encode_cache *c = thread_cache();
    if (!c) return mome_error_set(MOME_ENOMEM, "tokenizer_encode: no memory for the thread's encode cache");
    if (c->serial != tok->serial) cache_reset(c, tok->serial);
    const uint8_t *s = (const uint8_t *)text;
    uint32_t sym[MAX_CHUNK];
    for (size_t i = 0; i < len;) {
        size_t j = chunk_end(s, len, i);
        uint32_t cl = (uint32_t)(j - i), m;
        const uint32_t *src;
        if (cl <= CACHE_MAX_CHUNK) {
            if (c->map.n >= CACHE_MAX_ENTRIES || c->map.nbytes + CACHE_MAX_CHUNK > CACHE_MAX_BYTES)
                cache_reset(c, tok->serial);
            int fresh;
            size_t k = sm_get(&c->map, s + i, cl, chunk_hash(s + i, cl), &fresh);
            if (fresh) {
                m = bpe_chunk(tok, s + i, cl, sym);
                c->ids = grow(c->ids, &c->cap_ids, c->n_ids + m, sizeof *c->ids);
                memcpy(c->ids + c->n_ids, sym, m * sizeof *sym);
                c->map.e[k].val = c->n_ids;
                c->map.e[k].aux = m;
                c->n_ids += m;
            }
            m = c->map.e[k].aux;
            src = c->ids + c->map.e[k].val;
        } else {
            m = bpe_chunk(tok, s + i, cl, sym);
            src = sym;
        }
        *ids = grow(*ids, cap, *n + m, sizeof **ids);
        memcpy(*ids + *n, src, m * sizeof *src);
        *n += m;
        i = j;
    }
    return MOME_OK;
}

size_t mome_tokenizer_decode(const mome_tokenizer *tok, const uint32_t *ids, size_t n, char *out, size_t cap) {
    size_t need = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= (uint32_t)tok->vocab_size) {
            mome_error_set(MOME_EINVAL, "tokenizer_decode: id %u at position %zu is outside the vocabulary of %d",
                           ids[i], i, tok->vocab_size);
            return (size_t)-1;
        }
        uint32_t l = tok->tok_len[ids[i]];
        if (out && need + l <= cap) memcpy(out + need, tok->tok_bytes + tok->tok_off[ids[i]], l);
        else if (out && need < cap) memcpy(out + need, tok->tok_bytes + tok->tok_off[ids[i]], cap - need);
        need += l;
    }
    return need;
}

const uint8_t *mome_tokenizer_token_bytes(const mome_tokenizer *tok, uint32_t id, size_t *len) {
    if (id >= (uint32_t)tok->vocab_size || tok->tok_len[id] == 0) {
        *len = 0;
        return NULL;
    }
    *len = tok->tok_len[id];
    return tok->tok_bytes + tok->tok_off[id];
}

int mome_tokenizer_merge(const mome_tokenizer *tok, uint32_t id, uint32_t *left, uint32_t *right) {
    if (id < MOME_TOK_FIRST_MERGE || id >= (uint32_t)tok->vocab_size)
        return mome_error_set(MOME_EINVAL, "tokenizer: id %u is not a merge (merges are %d..%d)", id,
                              MOME_TOK_FIRST_MERGE, tok->vocab_size - 1);
    *left = tok->merges[2 * (id - MOME_TOK_FIRST_MERGE)];
    *right = tok->merges[2 * (id - MOME_TOK_FIRST_MERGE) + 1];
    return MOME_OK;
}

int mome_tokenizer_vocab_size(const mome_tokenizer *tok) { return tok->vocab_size; }

const char *mome_tokenizer_hash(const mome_tokenizer *tok) { return tok->hash; }

void mome_tokenizer_free(mome_tokenizer *tok) {
    if (!tok) return;
    encode_cache *c = thread_cache_peek();
    if (c && c->serial == tok->serial) cache_reset(c, 0);
    free(tok->merges);
    mome_free(tok->pair_keys);
    mome_free(tok->pair_ids);
    mome_free(tok->tok_off);
    mome_free(tok->tok_len);
    mome_free(tok->tok_bytes);
    mome_free(tok);
}

/* ---------------------------------------------------------------------------------------------------------
 * Storage. */

int mome_tokenizer_save(const mome_tokenizer *tok, const char *path) {
    char tmp[4096];
    int np = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (np < 0 || (size_t)np >= sizeof tmp) return mome_error_set(MOME_EINVAL, "%s: path too long", path);
    mome_h5_quiet();
    hid_t f = mome_h5_create(tmp);
    if (f < 0) return mome_error_wrap(MOME_EIO, "saving tokenizer %s", path);
    int rc = mome_h5_attr_set_str(f, "format", FORMAT_NAME);
    if (!rc) rc = mome_h5_attr_set_i64(f, "format_version", FORMAT_VERSION);
    if (!rc) rc = mome_h5_attr_set_i64(f, "vocab_size", tok->vocab_size);
    if (!rc) rc = mome_h5_attr_set_str(f, "hash", tok->hash);
    if (!rc) rc = mome_h5_attr_set_i64(f, "bos_id", MOME_TOK_BOS);
    if (!rc) rc = mome_h5_attr_set_i64(f, "eos_id", MOME_TOK_EOS);
    if (!rc) rc = mome_h5_attr_set_str(f, "pretokenizer", PRETOKENIZER);
    hsize_t dims[2] = {tok->n_merges, 2};
    if (!rc) rc = mome_h5_write_u32(f, "merges", tok->merges, 2, dims);
    rc = mome_h5_close_into_place(f, tmp, path, rc);
    return rc ? mome_error_wrap(rc, "saving tokenizer %s", path) : MOME_OK;
}

int mome_tokenizer_load(mome_tokenizer **out, const char *path) {
    *out = NULL;
    mome_h5_quiet();
    hid_t f = mome_h5_open_read(path);
    if (f < 0) return mome_error_wrap(MOME_EIO, "loading tokenizer");
    char hash[32] = "", pre[64] = "";
    int64_t vocab = 0, bos = -1, eos = -1;
    uint32_t *merges = NULL;
    int rc = mome_h5_check_format(f, path, FORMAT_NAME, FORMAT_VERSION);
    if (!rc) rc = mome_h5_attr_get_i64(f, "vocab_size", &vocab);
    if (!rc && (vocab < MOME_TOK_FIRST_MERGE || vocab > 65536))
        rc = mome_error_set(MOME_EFORMAT, "%s: vocab_size %lld outside [%d, 65536]", path, (long long)vocab,
                            MOME_TOK_FIRST_MERGE);
    if (!rc) rc = mome_h5_attr_get_str(f, "hash", hash, sizeof hash);
    if (!rc) rc = mome_h5_attr_get_i64(f, "bos_id", &bos);
    if (!rc) rc = mome_h5_attr_get_i64(f, "eos_id", &eos);
    if (!rc && (bos != MOME_TOK_BOS || eos != MOME_TOK_EOS))
        rc = mome_error_set(MOME_EFORMAT, "%s: bos_id/eos_id are %lld/%lld, expected %d/%d", path, (long long)bos,
                            (long long)eos, MOME_TOK_BOS, MOME_TOK_EOS);
    if (!rc && mome_h5_attr_get_str(f, "pretokenizer", pre, sizeof pre) == MOME_OK && strcmp(pre, PRETOKENIZER))
        rc = mome_error_set(MOME_EFORMAT, "%s: pretokenizer \"%s\", this build implements \"%s\"", path, pre,
                            PRETOKENIZER);
    int nd = 0;
    hsize_t dims[8] = {0};
    if (!rc) rc = mome_h5_shape(f, "merges", &nd, dims);
    if (!rc && (nd != 2 || dims[1] != 2 || dims[0] != (hsize_t)(vocab - MOME_TOK_FIRST_MERGE)))
        rc = mome_error_set(MOME_EFORMAT,
                            "%s: merges dataset has shape [%llu, %llu] (%d dims), expected [%lld, 2] for vocab_size "
                            "%lld",
                            path, (unsigned long long)dims[0], (unsigned long long)(nd > 1 ? dims[1] : 0), nd,
                            (long long)(vocab - MOME_TOK_FIRST_MERGE), (long long)vocab);
    uint32_t n_merges = rc ? 0 : (uint32_t)dims[0];
    if (!rc) {
        merges = malloc(2 * ((size_t)n_merges + 1) * sizeof *merges);
        MOME_CHECK(merges != NULL, "out of memory");
        rc = mome_h5_read_u32(f, "merges", merges, 2, dims);
    }
    H5Fclose(f);
    for (uint32_t r = 0; !rc && r < n_merges; r++) {
        uint32_t z = MOME_TOK_FIRST_MERGE + r, a = merges[2 * r], b = merges[2 * r + 1];
        if (a >= z || b >= z || a == MOME_TOK_BOS || a == MOME_TOK_EOS || b == MOME_TOK_BOS || b == MOME_TOK_EOS)
            rc = mome_error_set(MOME_ECORRUPT,
                                "%s: merge %u (id %u) = (%u, %u) must refer to earlier non-special ids", path, r, z, a,
                                b);
    }
    if (rc) {
        free(merges);
        return rc;
    }
    mome_tokenizer *t = build(merges, n_merges);
    if (strcmp(t->hash, hash) != 0) {
        rc = mome_error_set(MOME_ECORRUPT, "%s: stored hash %s differs from the hash of its merges %s", path, hash,
                            t->hash);
        mome_tokenizer_free(t);
        return rc;
    }
    /* A repeated pair would make encoding ambiguous; the pair table keeps the first, so detect it there. */
    for (uint32_t r = 0; r < n_merges; r++) {
        if (pair_lookup(t, merges[2 * r], merges[2 * r + 1]) != MOME_TOK_FIRST_MERGE + r) {
            rc = mome_error_set(MOME_ECORRUPT, "%s: merge %u repeats the pair (%u, %u) of an earlier merge", path, r,
                                merges[2 * r], merges[2 * r + 1]);
            mome_tokenizer_free(t);
            return rc;
        }
    }
    *out = t;
    return MOME_OK;
}
