/* test_tokenizer.c — unit test of the byte-level BPE (src/tokenizer.c).
 *
 * Checks: the fast incremental trainer learns exactly the merges of a naive reference trainer written here
 * (its own pre-tokeniser, full recount per merge); decode(encode(x)) == x on thousands of random byte strings
 * and on real text files; no special id is produced from text; training is deterministic; save/load keeps the
 * hash and the encodings; corrupted files (a merge pointing forward, a wrong hash, a wrong format) are refused
 * with a message naming the file; compression on held-out English text is < 0.5 tokens per byte at vocab
 * 4096. Prints training time and encoding speed. Real text comes from the Debian system (common licenses,
 * python3 standard library, man pages). Exits non-zero on failure.
 */
#include "mome/common.h"
#include "mome/h5io.h"
#include "mome/tokenizer.h"

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"


/* ---- text buffers ---- */

typedef struct {
    char *p;
    size_t n, cap;
} buf;

static void buf_add(buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 1 << 16;
        while (c < b->n + n + 1) c *= 2;
        b->p = realloc(b->p, c);
        if (!b->p) abort();
        b->cap = c;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

/* Appends files matching pattern (at most max_files, until the buffer holds max_bytes). */
static size_t add_files(buf *b, const char *pattern, size_t max_files, size_t max_bytes) {
    glob_t g;
    size_t added = 0;
    if (glob(pattern, 0, NULL, &g) != 0) return 0;
    for (size_t i = 0; i < g.gl_pathc && i < max_files && b->n < max_bytes; i++) {
        char *d;
        size_t n;
        if (mome_read_file(g.gl_pathv[i], &d, &n) == MOME_OK) {
            buf_add(b, d, n);
            added++;
            mome_free(d);
        }
    }
    globfree(&g);
    return added;
}

/* Appends the decompressed text of gzip'd man pages. */
static size_t add_man_pages(buf *b, const char *pattern, size_t max_files, size_t max_bytes) {
    glob_t g;
    size_t added = 0;
    if (glob(pattern, 0, NULL, &g) != 0) return 0;
    for (size_t i = 0; i < g.gl_pathc && i < max_files && b->n < max_bytes; i++) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "zcat '%s' 2>/dev/null", g.gl_pathv[i]);
        FILE *f = popen(cmd, "r");
        if (!f) continue;
        char tmp[65536];
        size_t n;
        while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) buf_add(b, tmp, n);
        pclose(f);
        added++;
    }
    globfree(&g);
    return added;
}

/* ---- naive reference: its own pre-tokeniser and a trainer that recounts every pair for every merge ---- */

static int is_letter(unsigned c) { return c >= 0x80 || (c | 32) - 'a' < 26; }
static int is_digit(unsigned c) { return c - '0' < 10; }
static int is_ws(unsigned c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
static int kind(unsigned c) { return is_letter(c) ? 1 : is_digit(c) ? 2 : is_ws(c) ? 0 : 3; }

static size_t ref_chunk_end(const unsigned char *s, size_t n, size_t i) {
    size_t max_end = i + 256 < n ? i + 256 : n;
    size_t j = i;
    if (!is_ws(s[i]) || (s[i] == ' ' && i + 1 < max_end && !is_ws(s[i + 1]))) {
        if (s[i] == ' ') j++;
        int k = kind(s[j]);
        while (j < max_end && kind(s[j]) == k) j++;
        return j;
    }
    while (j < max_end && is_ws(s[j])) j++;
    /* leave a final space to the word that follows */
    if (j < n && !is_ws(s[j]) && s[j - 1] == ' ' && j - i > 1) j--;
    return j;
}

typedef struct {
    const unsigned char *p;
    size_t len;
} span;

static int cmp_span(const void *x, const void *y) {
    const span *a = x, *b = y;
    size_t m = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->p, b->p, m);
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

/* Learns up to n_merges merges; returns the count and fills merges (n, 2). */
static size_t ref_train(const char *text, size_t n, size_t n_merges, uint32_t *merges) {
    const unsigned char *s = (const unsigned char *)text;
    span *sp = malloc((n + 1) * sizeof *sp);
    size_t ns = 0;
    for (size_t i = 0; i < n;) {
        size_t j = ref_chunk_end(s, n, i);
        sp[ns++] = (span){s + i, j - i};
        i = j;
    }
    qsort(sp, ns, sizeof *sp, cmp_span);
    /* distinct words with frequencies */
    uint32_t **w = malloc((ns + 1) * sizeof *w);
    size_t *wl = malloc((ns + 1) * sizeof *wl);
    long *wf = malloc((ns + 1) * sizeof *wf);
    size_t nw = 0;
    for (size_t i = 0; i < ns; i++) {
        if (nw && cmp_span(&sp[i], &sp[i - 1]) == 0) {
            wf[nw - 1]++;
            continue;
        }
        w[nw] = malloc((sp[i].len + 1) * sizeof **w);
        for (size_t k = 0; k < sp[i].len; k++) w[nw][k] = sp[i].p[k];
        wl[nw] = sp[i].len;
        wf[nw] = 1;
        nw++;
    }
    size_t V = 258 + n_merges;
    long *cnt = malloc(V * V * sizeof *cnt);
    size_t m = 0;
    for (; m < n_merges; m++) {
        memset(cnt, 0, V * V * sizeof *cnt);
        for (size_t k = 0; k < nw; k++)
            for (size_t i = 0; i + 1 < wl[k]; i++) cnt[w[k][i] * V + w[k][i + 1]] += wf[k];
        long best = 0;
        size_t ba = 0, bb = 0;
        for (size_t a = 0; a < V; a++)
            for (size_t b = 0; b < V; b++)
                if (cnt[a * V + b] > best) {
                    best = cnt[a * V + b];
                    ba = a;
                    bb = b;
                }
        if (best == 0) break;
        uint32_t z = (uint32_t)(258 + m);
        merges[2 * m] = (uint32_t)ba;
        merges[2 * m + 1] = (uint32_t)bb;
        for (size_t k = 0; k < nw; k++) {
            size_t o = 0;
            for (size_t i = 0; i < wl[k];) {
                if (i + 1 < wl[k] && w[k][i] == ba && w[k][i + 1] == bb) {
                    w[k][o++] = z;
                    i += 2;
                } else {
                    w[k][o++] = w[k][i++];
                }
            }
            wl[k] = o;
        }
    }
    for (size_t k = 0; k < nw; k++) free(w[k]);
    free(w);
    free(wl);
    free(wf);
    free(cnt);
    free(sp);
    return m;
}

/* ---- helpers ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* decode(encode(x)) == x; no special ids; all ids in range. Returns the token count. */
static size_t round_trip(const mome_tokenizer *tok, const char *x, size_t n, const char *what) {
    uint32_t *ids = NULL;
    size_t nid = 0, cap = 0;
    int rc = mome_tokenizer_encode(tok, x, n, &ids, &nid, &cap);
    if (rc) {
        fprintf(stderr, "%s:%d: encode of %s failed: %s\n", __FILE__, __LINE__, what, mome_error_message());
        failures++;
        free(ids);
        return 0;
    }
    for (size_t i = 0; i < nid; i++)
        if (ids[i] == MOME_TOK_BOS || ids[i] == MOME_TOK_EOS || ids[i] >= (uint32_t)mome_tokenizer_vocab_size(tok)) {
            fprintf(stderr, "%s:%d: %s: id %u at %zu is special or out of range\n", __FILE__, __LINE__, what, ids[i],
                    i);
            failures++;
            break;
        }
    size_t need = mome_tokenizer_decode(tok, ids, nid, NULL, 0);
    char *out = malloc(n + 1);
    size_t got = mome_tokenizer_decode(tok, ids, nid, out, n);
    if (need != n || got != n || memcmp(out, x, n) != 0) {
        size_t at = 0;
        while (at < n && at < got && out[at] == x[at]) at++;
        fprintf(stderr, "%s:%d: %s: round trip differs: %zu bytes in, %zu (%zu) out, first difference at %zu\n",
                __FILE__, __LINE__, what, n, need, got, at);
        failures++;
    }
    free(out);
    free(ids);
    return nid;
}

static int same_encoding(const mome_tokenizer *a, const mome_tokenizer *b, const char *x, size_t n) {
    uint32_t *ia = NULL, *ib = NULL;
    size_t na = 0, ca = 0, nb = 0, cb = 0;
    mome_tokenizer_encode(a, x, n, &ia, &na, &ca);
    mome_tokenizer_encode(b, x, n, &ib, &nb, &cb);
    int same = na == nb && (na == 0 || memcmp(ia, ib, na * sizeof *ia) == 0);
    free(ia);
    free(ib);
    return same;
}

static char dir[256];

/* Writes a tokenizer file by hand (for corruption tests); hash NULL = compute the correct one. */
static void write_tok_file(const char *path, const uint32_t *merges, size_t n_merges, int64_t vocab,
                           const char *format, const char *hash) {
    char h[17];
    if (!hash) {
        uint8_t b[8];
        uint32_t v = (uint32_t)vocab;
        for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i));
        uint64_t x = mome_fnv1a(MOME_FNV_OFFSET, b, 4);
        for (size_t r = 0; r < n_merges; r++) {
            for (int i = 0; i < 4; i++) {
                b[i] = (uint8_t)(merges[2 * r] >> (8 * i));
                b[4 + i] = (uint8_t)(merges[2 * r + 1] >> (8 * i));
            }
            x = mome_fnv1a(x, b, 8);
        }
        snprintf(h, sizeof h, "%016llx", (unsigned long long)x);
        hash = h;
    }
    hid_t f = mome_h5_create(path);
    CHECK(f >= 0);
    mome_h5_attr_set_str(f, "format", format);
    mome_h5_attr_set_i64(f, "format_version", 1);
    mome_h5_attr_set_i64(f, "vocab_size", vocab);
    mome_h5_attr_set_str(f, "hash", hash);
    mome_h5_attr_set_i64(f, "bos_id", MOME_TOK_BOS);
    mome_h5_attr_set_i64(f, "eos_id", MOME_TOK_EOS);
    hsize_t dims[2] = {n_merges, 2};
    CHECK_RC(mome_h5_write_u32(f, "merges", merges, 2, dims), MOME_OK);
    H5Fclose(f);
}

/* ---- tests ---- */

/* sample: English, Python, man page text and random bytes (NUL, invalid UTF-8, long runs). */
static void test_against_reference(const buf *english, const buf *python, const buf *man) {
    buf mix = {0};
    buf_add(&mix, english->p, english->n < 30000 ? english->n : 30000);
    buf_add(&mix, python->p, python->n < 60000 ? python->n : 60000);
    if (man->n) buf_add(&mix, man->p, man->n < 30000 ? man->n : 30000);
    char junk[6000];
    for (size_t i = 0; i < sizeof junk; i++) {
        uint64_t r = rnd();
        junk[i] = (char)(i < 2000 ? (int)(r & 0xff) : i < 4000 ? "\0\0 \n\xc3\xa9" "ab"[r % 8] : 'x'); /* then a 2000-byte run */
    }
    buf_add(&mix, junk, sizeof junk);
    const buf *sample = &mix;
    size_t n = sample->n;
    const size_t want = 600;
    uint32_t *ref = malloc(2 * want * sizeof *ref);
    size_t got = ref_train(sample->p, n, want, ref);
    const char *texts[1] = {sample->p};
    size_t lens[1] = {n};
    mome_tokenizer *tok = NULL;
    CHECK_RC(mome_tokenizer_train(&tok, texts, lens, 1, (int)(MOME_TOK_FIRST_MERGE + want)), MOME_OK);
    if (!tok) return;
    CHECK((size_t)mome_tokenizer_vocab_size(tok) == MOME_TOK_FIRST_MERGE + got);
    size_t agree = 0;
    for (size_t r = 0; r < got; r++) {
        uint32_t a = 0, b = 0;
        if (mome_tokenizer_merge(tok, (uint32_t)(MOME_TOK_FIRST_MERGE + r), &a, &b) != MOME_OK) break;
        if (a != ref[2 * r] || b != ref[2 * r + 1]) {
            fprintf(stderr, "%s:%d: merge %zu is (%u, %u), reference trainer has (%u, %u)\n", __FILE__, __LINE__, r,
                    a, b, ref[2 * r], ref[2 * r + 1]);
            failures++;
            break;
        }
        agree++;
    }
    printf("reference check: %zu of %zu merges identical to the naive trainer (on %zu bytes)\n", agree, got, n);
    uint32_t l, rr;
    CHECK_RC(mome_tokenizer_merge(tok, 100, &l, &rr), MOME_EINVAL);
    CHECK_RC(mome_tokenizer_merge(tok, MOME_TOK_BOS, &l, &rr), MOME_EINVAL);
    mome_tokenizer_free(tok);
    free(ref);
    free(mix.p);
}

static void test_random_round_trips(const mome_tokenizer *tok) {
    const char *pieces[] = {"<|bos|>", "<|eos|>", "<|endoftext|>", "\n    ", "def ", " the", "é", "\xff\xfe",
                            "\0\0", "  \n\t", "123", "::", "ß", "\xe2\x82"};
    size_t np = sizeof pieces / sizeof *pieces;
    char *x = malloc(2200);
    size_t total = 0;
    for (int t = 0; t < 4000; t++) {
        size_t len = (size_t)(rnd() % 2001);
        int mode = t % 4;
        size_t i = 0;
        while (i < len) {
            if (mode == 3 && rnd() % 8 == 0) { /* special-looking and tricky pieces */
                const char *p = pieces[rnd() % np];
                size_t pl = (p[0] == 0) ? 2 : strlen(p);
                for (size_t k = 0; k < pl && i < len; k++) x[i++] = p[k];
                continue;
            }
            uint64_t r = rnd();
            if (mode == 0) /* uniform bytes */
                x[i++] = (char)(r & 0xff);
            else if (mode == 1) /* text-like */
                x[i++] = "etaoin shrdlu\n  ETAOIN.,()0123456789"[r % 37];
            else /* whitespace and NUL heavy */
                x[i++] = " \t\n\0a\x80"[r % 6];
        }
        char what[64];
        snprintf(what, sizeof what, "random string %d (mode %d, %zu bytes)", t, mode, len);
        round_trip(tok, x, len, what);
        total += len;
    }
    /* Growing an existing buffer and appending to it. */
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    CHECK_RC(mome_tokenizer_encode(tok, "hello", 5, &ids, &n, &cap), MOME_OK);
    size_t n1 = n;
    CHECK_RC(mome_tokenizer_encode(tok, " world", 6, &ids, &n, &cap), MOME_OK);
    CHECK(n > n1 && cap >= n);
    char out[16];
    size_t need = mome_tokenizer_decode(tok, ids, n, out, sizeof out);
    CHECK(need == 11 && memcmp(out, "hello world", 11) == 0);
    /* Short output buffer: returns the full size, writes only cap bytes. */
    memset(out, '#', sizeof out);
    need = mome_tokenizer_decode(tok, ids, n, out, 4);
    CHECK(need == 11 && memcmp(out, "hell#", 5) == 0);
    CHECK_RC(mome_tokenizer_encode(tok, "", 0, &ids, &n, &cap), MOME_OK);
    free(ids);
    /* Specials decode to nothing; out-of-range ids are errors. */
    uint32_t sp[3] = {MOME_TOK_BOS, 'A', MOME_TOK_EOS};
    CHECK(mome_tokenizer_decode(tok, sp, 3, out, sizeof out) == 1 && out[0] == 'A');
    uint32_t bad[2] = {'A', (uint32_t)mome_tokenizer_vocab_size(tok)};
    CHECK(mome_tokenizer_decode(tok, bad, 2, out, sizeof out) == (size_t)-1);
    size_t bl = 99;
    CHECK(mome_tokenizer_token_bytes(tok, MOME_TOK_BOS, &bl) == NULL && bl == 0);
    CHECK(mome_tokenizer_token_bytes(tok, 'z', &bl)[0] == 'z' && bl == 1);
    printf("random round trips: 4000 strings, %zu bytes, all identical\n", total);
    free(x);
}

static void test_save_load(const mome_tokenizer *tok, const buf *text) {
    char path[512], bad[512];
    snprintf(path, sizeof path, "%s/tokenizer.h5", dir);
    CHECK_RC(mome_tokenizer_save(tok, path), MOME_OK);
    mome_tokenizer *t2 = NULL;
    CHECK_RC(mome_tokenizer_load(&t2, path), MOME_OK);
    if (!t2) return;
    CHECK(strcmp(mome_tokenizer_hash(t2), mome_tokenizer_hash(tok)) == 0);
    CHECK(mome_tokenizer_vocab_size(t2) == mome_tokenizer_vocab_size(tok));
    CHECK(same_encoding(tok, t2, text->p, text->n));
    /* The file layout other tools rely on. */
    hid_t f = mome_h5_open_read(path);
    char s[64];
    int64_t v = 0;
    CHECK_RC(mome_h5_attr_get_str(f, "format", s, sizeof s), MOME_OK);
    CHECK(strcmp(s, "mome-tokenizer") == 0);
    CHECK_RC(mome_h5_attr_get_i64(f, "format_version", &v), MOME_OK);
    CHECK(v == 1);
    CHECK_RC(mome_h5_attr_get_i64(f, "vocab_size", &v), MOME_OK);
    CHECK(v == mome_tokenizer_vocab_size(tok));
    CHECK_RC(mome_h5_attr_get_str(f, "hash", s, sizeof s), MOME_OK);
    CHECK(strcmp(s, mome_tokenizer_hash(tok)) == 0 && strlen(s) == 16 && strspn(s, "0123456789abcdef") == 16);
    int nd = 0;
    hsize_t dims[8];
    CHECK_RC(mome_h5_shape(f, "merges", &nd, dims), MOME_OK);
    CHECK(nd == 2 && dims[0] == (hsize_t)(v - MOME_TOK_FIRST_MERGE) && dims[1] == 2);
    size_t nm = (size_t)dims[0];
    uint32_t *m = malloc(2 * (nm + 1) * sizeof *m);
    CHECK_RC(mome_h5_read_u32(f, "merges", m, 2, dims), MOME_OK);
    H5Fclose(f);

    mome_tokenizer *t3 = NULL;
    snprintf(bad, sizeof bad, "%s/bad.h5", dir);
    /* A merge pointing forward (with a hash that matches, so the merge check itself must refuse it). */
    uint32_t keep = m[2 * 10 + 1];
    m[2 * 10 + 1] = MOME_TOK_FIRST_MERGE + 500;
    write_tok_file(bad, m, nm, (int64_t)v, "mome-tokenizer", NULL);
    CHECK_RC(mome_tokenizer_load(&t3, bad), MOME_ECORRUPT);
    CHECK_CONTAINS(mome_error_message(), "bad.h5");
    CHECK_CONTAINS(mome_error_message(), "merge 10");
    CHECK(t3 == NULL);
    m[2 * 10 + 1] = keep;
    /* A merge using a special id. */
    keep = m[2 * 3];
    m[2 * 3] = MOME_TOK_EOS;
    write_tok_file(bad, m, nm, (int64_t)v, "mome-tokenizer", NULL);
    CHECK_RC(mome_tokenizer_load(&t3, bad), MOME_ECORRUPT);
    CHECK_CONTAINS(mome_error_message(), "merge 3");
    m[2 * 3] = keep;
    /* A valid but different merge list with the original hash. */
    uint32_t k0 = m[0];
    m[0] = m[0] == 'q' ? 'x' : 'q';
    write_tok_file(bad, m, nm, (int64_t)v, "mome-tokenizer", mome_tokenizer_hash(tok));
    CHECK_RC(mome_tokenizer_load(&t3, bad), MOME_ECORRUPT);
    CHECK_CONTAINS(mome_error_message(), "hash");
    CHECK_CONTAINS(mome_error_message(), "bad.h5");
    m[0] = k0;
    /* A repeated pair. */
    if (nm > 20) {
        uint32_t s0 = m[2 * 20], s1 = m[2 * 20 + 1];
        m[2 * 20] = m[0];
        m[2 * 20 + 1] = m[1];
        write_tok_file(bad, m, nm, (int64_t)v, "mome-tokenizer", NULL);
        CHECK_RC(mome_tokenizer_load(&t3, bad), MOME_ECORRUPT);
        CHECK_CONTAINS(mome_error_message(), "repeats");
        m[2 * 20] = s0;
        m[2 * 20 + 1] = s1;
    }
    /* Vocabulary size inconsistent with the merges. */
    write_tok_file(bad, m, nm, (int64_t)v + 1, "mome-tokenizer", NULL);
    CHECK_RC(mome_tokenizer_load(&t3, bad), MOME_EFORMAT);
    CHECK_CONTAINS(mome_error_message(), "bad.h5");
    /* Wrong format name. */
    write_tok_file(bad, m, nm, (int64_t)v, "mome-checkpoint", NULL);
    CHECK_RC(mome_tokenizer_load(&t3, bad), MOME_EFORMAT);
    CHECK_CONTAINS(mome_error_message(), "format");
    /* The unmodified list written by hand loads and matches. */
    write_tok_file(bad, m, nm, (int64_t)v, "mome-tokenizer", NULL);
    CHECK_RC(mome_tokenizer_load(&t3, bad), MOME_OK);
    if (t3) CHECK(strcmp(mome_tokenizer_hash(t3), mome_tokenizer_hash(tok)) == 0);
    mome_tokenizer_free(t3);
    unlink(bad);
    /* Missing file. */
    snprintf(bad, sizeof bad, "%s/missing.h5", dir);
    CHECK(mome_tokenizer_load(&t3, bad) != MOME_OK);
    CHECK_CONTAINS(mome_error_message(), "missing.h5");
    free(m);
    mome_tokenizer_free(t2);
    unlink(path);
}

static void test_small_cases(void) {
    mome_tokenizer *t = NULL;
    const char *texts[2] = {"aaaa bbb aaaa", "\0\0\0\0"};
    size_t lens[2] = {13, 4};
    CHECK_RC(mome_tokenizer_train(&t, texts, lens, 2, 100), MOME_EINVAL);
    CHECK_RC(mome_tokenizer_train(&t, texts, lens, 2, 65537), MOME_EINVAL);
    /* vocab 258: no merges, ids are the bytes. */
    CHECK_RC(mome_tokenizer_train(&t, texts, lens, 2, MOME_TOK_FIRST_MERGE), MOME_OK);
    if (t) {
        uint32_t *ids = NULL;
        size_t n = 0, cap = 0;
        mome_tokenizer_encode(t, "ab\xff", 3, &ids, &n, &cap);
        CHECK(n == 3 && ids[0] == 'a' && ids[1] == 'b' && ids[2] == 0xff);
        free(ids);
        mome_tokenizer_free(t);
    }
    /* More merges asked than the text supports: a smaller vocabulary, still valid. NUL pairs merge too. */
    mome_log_set_level(MOME_LOG_ERROR);
    CHECK_RC(mome_tokenizer_train(&t, texts, lens, 2, 1000), MOME_OK);
    mome_log_set_level(MOME_LOG_INFO);
    if (t) {
        int V = mome_tokenizer_vocab_size(t);
        CHECK(V > MOME_TOK_FIRST_MERGE && V < 1000);
        uint32_t *ids = NULL;
        size_t n = 0, cap = 0;
        mome_tokenizer_encode(t, "aaaa", 4, &ids, &n, &cap);
        CHECK(n == 1);
        n = 0;
        mome_tokenizer_encode(t, "\0\0\0\0", 4, &ids, &n, &cap);
        CHECK(n == 1);
        free(ids);
        round_trip(t, "\0\0\0\0aaaa bbb\0", 13, "small");
        char path[512];
        snprintf(path, sizeof path, "%s/small.h5", dir);
        CHECK_RC(mome_tokenizer_save(t, path), MOME_OK);
        mome_tokenizer *t2 = NULL;
        CHECK_RC(mome_tokenizer_load(&t2, path), MOME_OK);
        if (t2) CHECK(same_encoding(t, t2, "\0\0\0\0aaaa bbb aaaa", 17));
        mome_tokenizer_free(t2);
        mome_tokenizer_free(t);
        unlink(path);
    }
    /* Empty training set. */
    mome_log_set_level(MOME_LOG_ERROR);
    CHECK_RC(mome_tokenizer_train(&t, NULL, NULL, 0, 300), MOME_OK);
    mome_log_set_level(MOME_LOG_INFO);
    if (t) CHECK(mome_tokenizer_vocab_size(t) == MOME_TOK_FIRST_MERGE);
    mome_tokenizer_free(t);
}

int main(void) {
    mome_h5_quiet();
    snprintf(dir, sizeof dir, "/tmp/mome_test_tokenizer_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    /* Real text from the system: English licenses (GPL texts held out), python stdlib, man pages. */
    buf english = {0}, heldout = {0}, python = {0}, man = {0}, train = {0};
    add_files(&english, "/usr/share/common-licenses/[ABCM]*", 20, 1 << 20);
    add_files(&english, "/usr/share/common-licenses/GFDL-1.3", 1, 1 << 20);
    add_files(&heldout, "/usr/share/common-licenses/GPL-3", 1, 1 << 20);
    add_files(&python, "/usr/lib/python3*/[a-m]*.py", 200, 1500000);
    add_man_pages(&man, "/usr/share/man/man1/[a-m]*.gz", 400, 1000000);
    printf("text: english %zu, held-out english %zu, python %zu, man %zu bytes\n", english.n, heldout.n, python.n,
           man.n);
    if (english.n < 50000 || heldout.n < 10000 || python.n < 100000) {
        fprintf(stderr, "%s:%d: the test needs the Debian texts under /usr/share/common-licenses and the python3 "
                        "standard library (found %zu + %zu + %zu bytes)\n",
                __FILE__, __LINE__, english.n, heldout.n, python.n);
        return 1;
    }
    buf_add(&train, english.p, english.n);
    buf_add(&train, python.p, python.n);
    if (man.n) buf_add(&train, man.p, man.n);

    test_small_cases();
    test_against_reference(&english, &python, &man);

    const char *texts[3] = {english.p, python.p, man.p ? man.p : ""};
    size_t lens[3] = {english.n, python.n, man.n};
    mome_tokenizer *tok = NULL, *again = NULL;
    double t0 = mome_now();
    CHECK_RC(mome_tokenizer_train(&tok, texts, lens, 3, 4096), MOME_OK);
    double t_train = mome_now() - t0;
    if (!tok) return 1;
    printf("trained vocab %d on %.2f MB in %.3f s, hash %s\n", mome_tokenizer_vocab_size(tok), train.n / 1e6, t_train,
           mome_tokenizer_hash(tok));
    CHECK(mome_tokenizer_vocab_size(tok) == 4096);
    CHECK_RC(mome_tokenizer_train(&again, texts, lens, 3, 4096), MOME_OK);
    if (again) {
        CHECK(strcmp(mome_tokenizer_hash(again), mome_tokenizer_hash(tok)) == 0);
        if (strcmp(mome_tokenizer_hash(again), mome_tokenizer_hash(tok)) != 0)
            fprintf(stderr, "hashes: %s vs %s\n", mome_tokenizer_hash(again), mome_tokenizer_hash(tok));
    }
    mome_tokenizer_free(again);

    /* Round trips on real text, and speed. */
    t0 = mome_now();
    size_t n_ids = round_trip(tok, train.p, train.n, "training text");
    double t_enc = mome_now() - t0;
    printf("encode+decode of the training text: %.1f MB/s, %.3f tokens/byte\n", train.n / 1e6 / t_enc,
           (double)n_ids / (double)train.n);
    size_t n_held = round_trip(tok, heldout.p, heldout.n, "GPL-3");
    double tpb = (double)n_held / (double)heldout.n;
    printf("held-out English (GPL-3): %.3f tokens/byte (must be < 0.5)\n", tpb);
    if (!(tpb < 0.5)) {
        fprintf(stderr, "%s:%d: tokens per byte on English %.3f, expected < 0.5\n", __FILE__, __LINE__, tpb);
        failures++;
    }
    buf py2 = {0};
    add_files(&py2, "/usr/lib/python3*/[n-z]*.py", 20, 400000);
    if (py2.n) {
        size_t n_py = round_trip(tok, py2.p, py2.n, "held-out python");
        printf("held-out python: %.3f tokens/byte\n", (double)n_py / (double)py2.n);
    }

#ifdef _OPENMP
    /* Encoding from several threads at once (per-thread caches) gives the same ids as one thread. */
    {
        size_t parts = 16, step = train.n / parts;
        int bad = 0;
#pragma omp parallel for num_threads(4) reduction(+ : bad)
        for (size_t k = 0; k < parts; k++) {
            size_t len = k + 1 < parts ? step : train.n - k * step;
            bad += !same_encoding(tok, tok, train.p + k * step, len);
        }
        mome_tokenizer *t2 = NULL;
        const char *tx[1] = {heldout.p};
        size_t tl[1] = {heldout.n};
        mome_tokenizer_train(&t2, tx, tl, 1, 600); /* a second tokenizer must not share caches with the first */
#pragma omp parallel for num_threads(4) reduction(+ : bad)
        for (size_t k = 0; k < parts; k++) {
            uint32_t *ia = NULL;
            size_t na = 0, ca = 0;
            mome_tokenizer_encode(k % 2 ? tok : t2, heldout.p, heldout.n, &ia, &na, &ca);
            size_t need = mome_tokenizer_decode(k % 2 ? tok : t2, ia, na, NULL, 0);
            bad += need != heldout.n;
            bad += !same_encoding(tok, tok, heldout.p, heldout.n);
            free(ia);
        }
        mome_tokenizer_free(t2);
        CHECK(bad == 0);
        printf("threaded encoding: %d differences\n", bad);
    }
#endif
    test_random_round_trips(tok);
    test_save_load(tok, &train);
    mome_tokenizer_free(tok);
    free(english.p);
    free(heldout.p);
    free(python.p);
    free(man.p);
    free(train.p);
    free(py2.p);
    rmdir(dir);
    return check_summary("test_tokenizer");
}
