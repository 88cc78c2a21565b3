/* fuzz_tokenizer.c — byte-level BPE encode and decode (src/tokenizer.c).
 *
 * A tokenizer is trained at start on a fixed text (prose, code, UTF-8, digits: ~500 merges). The first input byte
 * picks what the rest is:
 *   0: text: encode, then decode must give the text back byte for byte (also through a short output buffer),
 *      no id may be special or out of range, and encoding the text again (the per-thread cache now warm) must
 *      give the same ids;
 *   1: ids (little-endian u16, some beyond the vocabulary): decode must refuse exactly the inputs with an id out
 *      of range, and otherwise measure the sum of the token lengths; token_bytes and merge on every id;
 *   2: training text: a tokenizer of up to 64 merges is trained on it (adversarial chunk and pair statistics),
 *      then the text is encoded and decoded with it as in 0.
 */
#include "fuzz.h"

#include "mome/tokenizer.h"

static mome_tokenizer *tok;

static const char train_text[] =
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away, quickly and quietly.\n"
    "def tokenize(text):\n    return [t for t in text.split() if t]\n\n"
    "for (int i = 0; i < n; i++) { sum += x[i] * 2; }\n"
    "Zürich, Genève, Köln — naïve café, 東京, Москва, αβγδε. 1234567890 3.14159 2025-01-01 12:34:56\n"
    "<|bos|> <|eos|> \t\t tabs\r\nCRLF lines\r\n  indented    spaces   \n\n\n"
    "The the THE tHe; quick quicker quickest; jump jumps jumped jumping.\n";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    /* Repeated so that pair counts grow and many merges are learned. */
    enum { REPS = 8 };
    const char *texts[REPS];
    size_t lens[REPS];
    for (int i = 0; i < REPS; i++) {
        texts[i] = train_text;
        lens[i] = sizeof train_text - 1;
    }
    if (mome_tokenizer_train(&tok, texts, lens, REPS, 800) != MOME_OK) abort();
    return 0;
}

static void round_trip(const mome_tokenizer *t, const uint8_t *s, size_t n, size_t short_cap) {
    uint32_t *ids = NULL;
    size_t nid = 0, cap = 0;
    FUZZ_CHECK(mome_tokenizer_encode(t, (const char *)s, n, &ids, &nid, &cap) == MOME_OK, "encode failed: %s",
               mome_error_message());
    FUZZ_CHECK(nid <= n, "%zu ids for %zu bytes", nid, n);
    const uint32_t V = (uint32_t)mome_tokenizer_vocab_size(t);
    for (size_t i = 0; i < nid; i++)
        FUZZ_CHECK(ids[i] < V && ids[i] != MOME_TOK_BOS && ids[i] != MOME_TOK_EOS, "id %u at %zu (vocabulary %u)",
                   ids[i], i, V);
    char *out = malloc(n + 1);
    if (!out) abort();
    size_t need = mome_tokenizer_decode(t, ids, nid, out, n);
    FUZZ_CHECK(need == n, "decode needs %zu bytes for a text of %zu", need, n);
    FUZZ_CHECK(memcmp(out, s, n) == 0, "decode(encode(x)) != x (%zu bytes)", n);
    /* A short buffer gets the first short_cap bytes and the same measure. */
    if (short_cap > n) short_cap = n;
    memset(out, 0, n + 1);
    need = mome_tokenizer_decode(t, ids, nid, out, short_cap);
    FUZZ_CHECK(need == n && memcmp(out, s, short_cap) == 0 && out[short_cap] == 0,
               "decode with cap %zu: need %zu, or wrote past the cap", short_cap, need);
    FUZZ_CHECK(mome_tokenizer_decode(t, ids, nid, NULL, 0) == n, "measuring decode differs");
    /* Again, with the cache warm. */
    uint32_t *again = NULL;
    size_t n2 = 0, cap2 = 0;
    FUZZ_CHECK(mome_tokenizer_encode(t, (const char *)s, n, &again, &n2, &cap2) == MOME_OK, "second encode failed");
    FUZZ_CHECK(n2 == nid && (nid == 0 || memcmp(again, ids, nid * sizeof *ids) == 0), "encode not deterministic");
    free(again);
    free(out);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const int mode = data[0] % 3;
    const size_t cap_hint = size > 1 ? data[1] : 0;
    data++, size--;
    if (mode == 0) {
        round_trip(tok, data, size, cap_hint * size / 255);
    } else if (mode == 1) {
        const uint32_t V = (uint32_t)mome_tokenizer_vocab_size(tok);
        const size_t n = size / 2;
        uint32_t *ids = malloc((n + 1) * sizeof *ids);
        if (!ids) abort();
        size_t want = 0;
        int bad = 0;
        for (size_t i = 0; i < n; i++) {
            ids[i] = (uint32_t)data[2 * i] | (uint32_t)data[2 * i + 1] << 8;
            if (ids[i] > V + 64) ids[i] %= V + 64; /* mostly in range, a few just past the end */
            if (ids[i] >= V) {
                bad = 1;
                continue;
            }
            size_t len;
            const uint8_t *b = mome_tokenizer_token_bytes(tok, ids[i], &len);
            FUZZ_CHECK((b == NULL) == (len == 0), "token_bytes of %u: %p with length %zu", ids[i], (const void *)b,
                       len);
            want += len;
            uint32_t l, r;
            int rc = mome_tokenizer_merge(tok, ids[i], &l, &r);
            FUZZ_CHECK((rc == MOME_OK) == (ids[i] >= MOME_TOK_FIRST_MERGE), "merge of %u: %d", ids[i], rc);
            FUZZ_CHECK(rc != MOME_OK || (l < ids[i] && r < ids[i]), "merge %u = (%u, %u)", ids[i], l, r);
        }
        char *out = malloc(want + 1);
        if (!out) abort();
        size_t need = mome_tokenizer_decode(tok, ids, n, out, want);
        if (bad)
            FUZZ_CHECK(need == (size_t)-1, "an id out of range was decoded");
        else
            FUZZ_CHECK(need == want, "decode measured %zu bytes, the tokens hold %zu", need, want);
        free(out);
        free(ids);
    } else {
        if (size > 1024) size = 1024; /* training allocates ~1 MB of tables per call: keep the runs fast */
        const char *texts[1] = {(const char *)data};
        const size_t lens[1] = {size};
        mome_tokenizer *t = NULL;
        FUZZ_CHECK(mome_tokenizer_train(&t, texts, lens, 1, MOME_TOK_FIRST_MERGE + (int)(cap_hint % 65)) == MOME_OK,
                   "train failed: %s", mome_error_message());
        const int V = mome_tokenizer_vocab_size(t);
        FUZZ_CHECK(V >= MOME_TOK_FIRST_MERGE && V <= MOME_TOK_FIRST_MERGE + 64, "vocabulary %d", V);
        for (uint32_t id = MOME_TOK_FIRST_MERGE; id < (uint32_t)V; id++) {
            uint32_t l, r;
            FUZZ_CHECK(mome_tokenizer_merge(t, id, &l, &r) == MOME_OK && l < id && r < id && l != MOME_TOK_BOS &&
                           l != MOME_TOK_EOS && r != MOME_TOK_BOS && r != MOME_TOK_EOS,
                       "merge %u = (%u, %u)", id, l, r);
        }
        round_trip(t, data, size, cap_hint * size / 255);
        mome_tokenizer_free(t);
    }
    return 0;
}
