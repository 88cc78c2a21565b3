/* test_corpus.c — the corpus builder (corpus.h): HTML to text, the train/val split, the package check, and a
 * complete user-domain build on a generated directory tree.
 *
 * The build check reads back what `mome data build` wrote and verifies, per domain: the shard's attributes
 * (domain, vocab_size, tokenizer_hash equal to tokenizer.h5's), that every document in the shard is BOS ids EOS
 * at its recorded offset, that decode(ids) equals the raw JSONL text byte for byte, that the raw text equals the
 * source file (or a prefix of it for the at most one truncated document per split), that train and val sources
 * are disjoint and each on the side mome_corpus_is_val puts it, and that the train token counts of the domains
 * are within the balance tolerance. A second build of the same tree must give identical shards.
 * Every failed check prints both values, the file and the line; the program exits 1 if any check fails.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mome/common.h"
#include "mome/corpus.h"
#include "mome/h5io.h"
#include "mome/tokenizer.h"

static int failures = 0;
static int checks = 0;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        checks++;                                                           \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
            failures++;                                                     \
        }                                                                   \
    } while (0)

/* Prints a string with control bytes escaped, for messages. */
static const char *esc(const char *s, size_t n) {
    static char buf[4][1024];
    static int which = 0;
    char *o = buf[which++ & 3];
    size_t k = 0;
    for (size_t i = 0; i < n && k + 5 < sizeof buf[0]; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            o[k++] = '\\', o[k++] = 'n';
        else if (c == '\f')
            o[k++] = '\\', o[k++] = 'f';
        else if (c == '\t')
            o[k++] = '\\', o[k++] = 't';
        else if (c < 0x20)
            k += (size_t)snprintf(o + k, 5, "\\x%02x", c);
        else
            o[k++] = (char)c;
    }
    o[k] = 0;
    return o;
}

/* ---- HTML to text ---- */

static void html_case(const char *what, const char *html, int mark, const char *want) {
    size_t n = 0;
    char *got = mome_corpus_html_to_text(html, strlen(html), mark, &n);
    CHECK(n == strlen(got), "%s: reported length %zu, strlen %zu", what, n, strlen(got));
    CHECK(strcmp(got, want) == 0, "%s:\n  got  \"%s\"\n  want \"%s\"", what, esc(got, n), esc(want, strlen(want)));
    mome_free(got);
}

static void test_html(void) {
    html_case("entities", "<p>a &amp; b &lt;c&gt; &quot;d&quot; &apos;e&apos; &#65;&#x42;&#X43; caf&eacute; "
                          "na&iuml;ve &Uuml;ber &szlig; 1&nbsp;000 &mdash; &hellip;</p>",
              0, "a & b <c> \"d\" 'e' ABC café naïve Über ß 1 000 — …");
    html_case("astral and invalid code points", "<p>&#x1F600; &#0; &#xD800; &#1114112;</p>", 0,
              "\xF0\x9F\x98\x80 \xEF\xBF\xBD \xEF\xBF\xBD \xEF\xBF\xBD");
    html_case("unknown entities and bare ampersands stay literal", "a & b &bogus; c &amp d &#xZZ; e", 0,
              "a & b &bogus; c &amp d &#xZZ; e");
    html_case("nested inline tags and paragraphs",
              "<div><p>Hello <b>bold <i>italic</i></b>   world</p>\n\n\n<p>Second\n line</p></div>", 0,
              "Hello bold italic world\n\nSecond line");
    html_case("head, script and style removed",
              "<html><head><title>Title</title><style>p { color: red }</style></head><body>"
              "<script type=\"text/javascript\">if (a<b && c>d) { x(\"</p>\"); }</script><p>Body</p>"
              "<SCRIPT>var y = '<b>';</SCRIPT><style>.x{}</style>text</body></html>",
              0, "Body\n\ntext");
    html_case("comments, doctype, processing instructions",
              "<?xml version=\"1.0\"?><!DOCTYPE html><p>a<!-- <p>hidden</p> -- still -->b</p>", 0, "ab");
    html_case("pre kept verbatim", "<p>x</p><pre class=\"screen\">\n$ ls  -l\n  a   b\n</pre><p>y  z</p>", 0,
              "x\n\n$ ls  -l\n  a   b\n\ny z");
    html_case("line breaks, lists, tables",
              "a<br/>b<br>c<ul><li>one</li><li>two</li></ul><table><tr><td>r1c1</td><td>r1c2</td></tr>"
              "<tr><th>r2</th></tr></table>",
              0, "a\nb\nc\n\none\ntwo\n\nr1c1 r1c2\nr2");
    html_case("docbook navigation and toc blocks dropped",
              "<div class=\"navheader\"><table><tr><td>Prev</td></tr></table></div><div class=\"chapter\">"
              "<div class=\"toc\"><p>Table of Contents</p><div><a>1. x</a></div></div><p>content</p></div>"
              "<nav>menu</nav><div class=\"navfooter\">Next</div>",
              0, "content");
    html_case("sections marked", "<h1>Title</h1><p>intro</p><h2>One</h2><p>first</p><h3>Two</h3><p>second</p>"
                                 "<h4>minor</h4><p>third</p>",
              1, "Title\n\nintro\fOne\n\nfirst\fTwo\n\nsecond\n\nminor\n\nthird");
    html_case("sections not marked", "<h1>Title</h1><p>intro</p><h2>One</h2><p>first</p>", 0,
              "Title\n\nintro\n\nOne\n\nfirst");
    html_case("attributes with > and quotes", "<a href=\"x>y\" title='a\"b'>link</a> <img alt=\"pic\"/>after", 0,
              "link after");
    html_case("stray < and control bytes", "a < b <3 \x01\x0c c", 0, "a < b <3 c");
    html_case("unterminated tag at end", "text <p class=\"x", 0, "text");

    /* No control bytes other than \n \t \f (marked) in the output of messy input. */
    const char *messy = "<p>\r\n\x0b\x0c\x1f&#7;&#127;&#x85;x</p><pre>\r\na\rb\x0c</pre>";
    size_t n;
    char *t = mome_corpus_html_to_text(messy, strlen(messy), 0, &n);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) bad++;
    }
    CHECK(bad == 0, "messy input: %d control bytes in \"%s\"", bad, esc(t, n));
    mome_free(t);
}

/* ---- split ---- */

static void test_split(void) {
    const int N = 20000;
    int val = 0, val2 = 0, again_differs = 0, all0 = 0;
    char name[64];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "/some/dir/file_%05d.txt", i);
        int v = mome_corpus_is_val(name, 0.05);
        val += v;
        again_differs += v != mome_corpus_is_val(name, 0.05);
        val2 += mome_corpus_is_val(name, 0.2);
        all0 += mome_corpus_is_val(name, 0.0);
        /* a larger fraction only adds documents to val */
        if (v && !mome_corpus_is_val(name, 0.2)) again_differs++;
    }
    CHECK(again_differs == 0, "split not deterministic / not monotone in val_fraction: %d differences", again_differs);
    CHECK(all0 == 0, "val_fraction 0 put %d documents in val", all0);
    double f = (double)val / N, f2 = (double)val2 / N;
    /* binomial sd at 0.05 is 0.0015, at 0.2 is 0.0028: 5 sd tolerances */
    CHECK(f > 0.05 - 0.0077 && f < 0.05 + 0.0077, "val share %.4f for val_fraction 0.05 (tol 0.0077)", f);
    CHECK(f2 > 0.2 - 0.014 && f2 < 0.2 + 0.014, "val share %.4f for val_fraction 0.2 (tol 0.014)", f2);
    /* the definition in corpus.h */
    const char *s = "/usr/share/man/man1/ls.1.gz";
    uint64_t h = mome_fnv1a(MOME_FNV_OFFSET, s, strlen(s));
    CHECK(mome_corpus_is_val(s, 0.37) == (h % 10000 < 3700), "is_val disagrees with fnv1a %% 10000 (h %% 10000 = %llu)",
          (unsigned long long)(h % 10000));
    printf("split: val share %.4f at 0.05, %.4f at 0.20 over %d names\n", f, f2, N);
}

/* ---- packages ---- */

static void test_packages(void) {
    const char *ok[] = {"dpkg"};
    int rc = mome_corpus_check_packages(ok, 1);
    CHECK(rc == MOME_OK, "dpkg reported missing: %d %s", rc, mome_error_message());
    const char *some[] = {"dpkg", "mome-no-such-package-a", "coreutils", "mome-no-such-package-b"};
    rc = mome_corpus_check_packages(some, 4);
    const char *msg = mome_error_message();
    CHECK(rc == MOME_ENOPKG, "missing packages gave %d (%s), want MOME_ENOPKG %d", rc, mome_strerror(rc), MOME_ENOPKG);
    CHECK(strstr(msg, "mome-no-such-package-a") && strstr(msg, "mome-no-such-package-b"),
          "message does not name both missing packages: %s", msg);
    CHECK(strstr(msg, "apt-get install") != NULL, "message does not say how to install: %s", msg);
    CHECK(strstr(msg, "coreutils") == NULL && strstr(msg, "dpkg ") == NULL,
          "message names an installed package: %s", msg);
    const char *badname[] = {"x; rm -rf /"};
    rc = mome_corpus_check_packages(badname, 1);
    CHECK(rc == MOME_EINVAL, "invalid package name gave %d, want MOME_EINVAL", rc);
}

/* ---- a user-domain build ---- */

static uint64_t rng_state = 0x243F6A8885A308D3ULL;
static uint32_t rnd(uint32_t n) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

static void write_text(const char *path, const char *text, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    fwrite(text, 1, n, f);
    fclose(f);
}

static const char *words_en[] = {"the", "system", "file", "is", "a", "process", "which", "reads", "data", "from",
                                  "network", "and", "writes", "output", "to", "user", "when", "option", "given",
                                  "command", "returns", "zero", "on", "success"};
static const char *words_fr[] = {"le", "système", "fichier", "est", "un", "processus", "qui", "lit", "les",
                                  "données", "du", "réseau", "et", "écrit", "la", "sortie", "vers", "l'utilisateur",
                                  "quand", "où", "commande", "renvoie", "zéro", "succès", "à", "été"};

/* Makes root/<name>/... with n_files files; kind 0 english, 1 french, 2 python-like code. Some files go in
 * subdirectories. Returns the total bytes written. */
static size_t make_domain(const char *root, const char *name, int n_files, int kind) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/sub", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/sub/deeper", dir);
    mkdir(path, 0755);
    size_t total = 0;
    char *buf = malloc(16384);
    for (int i = 0; i < n_files; i++) {
        size_t n = 0;
        int target = 600 + (int)rnd(2400);
        while ((int)n < target) {
            if (kind == 2) {
                n += (size_t)snprintf(buf + n, 16384 - n, "def f_%u(x, y=%u):\n    return x * %u + y  # %s\n\n",
                                      rnd(1000), rnd(10), rnd(100), words_en[rnd(24)]);
            } else {
                const char **w = kind ? words_fr : words_en;
                int nw = kind ? 26 : 24;
                int len = 5 + (int)rnd(12);
                for (int k = 0; k < len; k++)
                    n += (size_t)snprintf(buf + n, 16384 - n, "%s%s", k ? " " : "", w[rnd((uint32_t)nw)]);
                n += (size_t)snprintf(buf + n, 16384 - n, rnd(4) ? ". " : ".\n\n");
            }
        }
        const char *sub = i % 3 == 0 ? "" : i % 3 == 1 ? "sub/" : "sub/deeper/";
        snprintf(path, sizeof path, "%s/%sdoc_%03d.%s", dir, sub, i, kind == 2 ? "py" : "txt");
        write_text(path, buf, n);
        total += n;
    }
    free(buf);
    /* a binary file: skipped */
    snprintf(path, sizeof path, "%s/blob.bin", dir);
    write_text(path, "ab\0cd", 5);
    return total;
}

typedef struct {
    char **sources;
    char **texts;
    size_t *lens;
    size_t n;
} jsonl_docs;

static void jsonl_free(jsonl_docs *j) {
    for (size_t i = 0; i < j->n; i++) free(j->sources[i]), free(j->texts[i]);
    free(j->sources), free(j->texts), free(j->lens);
    memset(j, 0, sizeof *j);
}

static int read_jsonl(const char *path, jsonl_docs *out) {
    memset(out, 0, sizeof *out);
    char *data;
    size_t len;
    if (mome_read_file(path, &data, &len) != MOME_OK) {
        fprintf(stderr, "%s\n", mome_error_message());
        return -1;
    }
    size_t cap = 0;
    char *save = NULL;
    for (char *line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_error_t err;
        json_t *o = json_loads(line, 0, &err);
        if (!o) {
            fprintf(stderr, "%s: bad JSON line: %s\n", path, err.text);
            mome_free(data);
            return -1;
        }
        if (out->n == cap) {
            cap = cap ? 2 * cap : 64;
            out->sources = realloc(out->sources, cap * sizeof *out->sources);
            out->texts = realloc(out->texts, cap * sizeof *out->texts);
            out->lens = realloc(out->lens, cap * sizeof *out->lens);
        }
        json_t *s = json_object_get(o, "source"), *t = json_object_get(o, "text");
        if (!json_is_string(s) || !json_is_string(t)) {
            fprintf(stderr, "%s: line without source/text strings\n", path);
            json_decref(o);
            mome_free(data);
            return -1;
        }
        out->sources[out->n] = strdup(json_string_value(s));
        out->lens[out->n] = json_string_length(t);
        out->texts[out->n] = malloc(out->lens[out->n] + 1);
        memcpy(out->texts[out->n], json_string_value(t), out->lens[out->n] + 1);
        out->n++;
        json_decref(o);
    }
    mome_free(data);
    return 0;
}

/* Reads a 1-D dataset as uint32/uint64. */
static uint32_t *read_ids(hid_t f, const char *name, size_t *n) {
    int nd;
    hsize_t dims[8];
    if (mome_h5_shape(f, name, &nd, dims) != MOME_OK || nd != 1) return NULL;
    *n = dims[0];
    uint32_t *v = mome_malloc((dims[0] + 1) * sizeof *v);
    if (mome_h5_read_u32(f, name, v, 1, dims) != MOME_OK) {
        mome_free(v);
        return NULL;
    }
    return v;
}

static uint64_t *read_offs(hid_t f, const char *name, size_t *n) {
    int nd;
    hsize_t dims[8];
    if (mome_h5_shape(f, name, &nd, dims) != MOME_OK || nd != 1) return NULL;
    *n = dims[0];
    uint64_t *v = mome_malloc((dims[0] + 1) * sizeof *v);
    if (mome_h5_read_u64(f, name, v, 1, dims) != MOME_OK) {
        mome_free(v);
        return NULL;
    }
    return v;
}

/* Checks one domain's shard and raw files; returns its train token count. */
/* dir: the domain's source directory; documents name their files relative to it. */
static size_t check_domain(const char *out, const char *name, const char *dir, const mome_tokenizer *tok,
                           int *n_truncated_total) {
    char path[700];
    snprintf(path, sizeof path, "%s/tokens/%s.h5", out, name);
    hid_t f = mome_h5_open_read(path);
    CHECK(f >= 0, "cannot open %s: %s", path, mome_error_message());
    if (f < 0) return 0;
    char attr[64] = "";
    int64_t vocab = -1;
    CHECK(mome_h5_attr_get_str(f, "domain", attr, sizeof attr) == MOME_OK && strcmp(attr, name) == 0,
          "%s: attr domain \"%s\", want \"%s\"", path, attr, name);
    CHECK(mome_h5_attr_get_i64(f, "vocab_size", &vocab) == MOME_OK && vocab == mome_tokenizer_vocab_size(tok),
          "%s: attr vocab_size %lld, want %d", path, (long long)vocab, mome_tokenizer_vocab_size(tok));
    attr[0] = 0;
    CHECK(mome_h5_attr_get_str(f, "tokenizer_hash", attr, sizeof attr) == MOME_OK &&
              strcmp(attr, mome_tokenizer_hash(tok)) == 0,
          "%s: attr tokenizer_hash \"%s\", want \"%s\"", path, attr, mome_tokenizer_hash(tok));
    H5T_class_t cls = H5T_NO_CLASS;
    size_t tsize = 0;
    hid_t ds = H5Dopen2(f, "train", H5P_DEFAULT);
    if (ds >= 0) {
        hid_t ty = H5Dget_type(ds);
        cls = H5Tget_class(ty);
        tsize = H5Tget_size(ty);
        H5Tclose(ty);
        H5Dclose(ds);
    }
    CHECK(cls == H5T_INTEGER && tsize == 2, "%s: train is class %d size %zu, want uint16", path, (int)cls, tsize);

    size_t train_tokens = 0;
    char *seen_train[4096];
    size_t n_seen_train = 0;
    for (int s = 0; s < 2; s++) {
        const char *split = s ? "val" : "train";
        char dname[16];
        snprintf(dname, sizeof dname, "%s_docs", split);
        size_t n_ids = 0, n_docs = 0;
        uint32_t *ids = read_ids(f, split, &n_ids);
        uint64_t *offs = read_offs(f, dname, &n_docs);
        CHECK(ids && offs, "%s: cannot read %s / %s: %s", path, split, dname, mome_error_message());
        if (!ids || !offs) continue;
        if (!s) train_tokens = n_ids;
        char jpath[700];
        snprintf(jpath, sizeof jpath, "%s/raw/%s/%s.jsonl", out, name, split);
        jsonl_docs j;
        CHECK(read_jsonl(jpath, &j) == 0, "cannot read %s", jpath);
        CHECK(j.n == n_docs, "%s: %zu documents in %s, %zu in %s", name, j.n, jpath, n_docs, dname);
        CHECK(s == 1 || n_docs > 0, "%s: no training documents", name);
        int mismatched = 0, not_original = 0, truncated = 0, wrong_side = 0, in_both = 0, bad_frame = 0;
        for (size_t d = 0; d < n_docs && d < j.n; d++) {
            size_t a = offs[d], b = d + 1 < n_docs ? offs[d + 1] : n_ids;
            if (!(a < b && b <= n_ids && b - a >= 2 && ids[a] == MOME_TOK_BOS && ids[b - 1] == MOME_TOK_EOS)) {
                bad_frame++;
                continue;
            }
            for (size_t k = a + 1; k + 1 < b; k++)
                if (ids[k] == MOME_TOK_BOS || ids[k] == MOME_TOK_EOS) bad_frame++;
            size_t need = mome_tokenizer_decode(tok, ids + a + 1, b - a - 2, NULL, 0);
            char *dec = mome_malloc(need + 1);
            size_t got = mome_tokenizer_decode(tok, ids + a + 1, b - a - 2, dec, need + 1);
            if (got != j.lens[d] || memcmp(dec, j.texts[d], got) != 0) {
                if (mismatched++ == 0)
                    fprintf(stderr, "%s %s doc %zu (%s): decoded %zu bytes \"%.60s\", raw text %zu bytes \"%.60s\"\n",
                            name, split, d, j.sources[d], got, esc(dec, got < 60 ? got : 60), j.lens[d],
                            esc(j.texts[d], j.lens[d] < 60 ? j.lens[d] : 60));
            }
            mome_free(dec);
            /* raw text against the source file */
            char *orig;
            size_t olen;
            char src_path[2048];
            snprintf(src_path, sizeof src_path, "%s/%s", dir, j.sources[d]);
            CHECK(j.sources[d][0] != '/', "%s %s doc %zu: source %s should be relative to the domain directory", name,
                  split, d, j.sources[d]);
            if (mome_read_file(src_path, &orig, &olen) == MOME_OK) {
                if (olen == j.lens[d] && memcmp(orig, j.texts[d], olen) == 0) {
                } else if (j.lens[d] < olen && memcmp(orig, j.texts[d], j.lens[d]) == 0) {
                    truncated++;
                } else {
                    not_original++;
                }
                mome_free(orig);
            } else {
                not_original++;
            }
            if (mome_corpus_is_val(j.sources[d], 0.2) != s) wrong_side++;
            if (!s && n_seen_train < 4096) seen_train[n_seen_train++] = j.sources[d];
            if (s)
                for (size_t k = 0; k < n_seen_train; k++)
                    if (strcmp(seen_train[k], j.sources[d]) == 0) in_both++;
        }
        CHECK(bad_frame == 0, "%s %s: %d documents not framed as BOS ids EOS at their offsets", name, split, bad_frame);
        CHECK(mismatched == 0, "%s %s: decode(tokens) differs from the raw text for %d of %zu documents", name, split,
              mismatched, n_docs);
        CHECK(not_original == 0, "%s %s: raw text is neither the source file nor a prefix of it for %d documents",
              name, split, not_original);
        CHECK(truncated <= 1, "%s %s: %d truncated documents, at most 1 expected", name, split, truncated);
        CHECK(wrong_side == 0, "%s %s: %d documents on the wrong side of the split", name, split, wrong_side);
        CHECK(in_both == 0, "%s: %d documents both in train and val", name, in_both);
        *n_truncated_total += truncated;
        printf("  %-6s %-5s %5zu docs %7zu tokens (%d truncated)\n", name, split, n_docs, n_ids, truncated);
        if (s) {
            /* train kept the original text of its sources too: free the strings only now */
            jsonl_free(&j);
        } else {
            /* keep the train sources for the disjointness check: steal the pointers */
            for (size_t k = 0; k < j.n; k++) free(j.texts[k]);
            free(j.texts), free(j.lens);
            free(j.sources); /* the strings stay alive in seen_train (freed below) */
        }
        mome_free(ids);
        mome_free(offs);
    }
    for (size_t k = 0; k < n_seen_train; k++) free(seen_train[k]);
    H5Fclose(f);
    return train_tokens;
}

static int files_equal(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    if (mome_read_file(a, &x, &nx) != MOME_OK) return 0;
    if (mome_read_file(b, &y, &ny) != MOME_OK) {
        mome_free(x);
        return 0;
    }
    int eq = nx == ny && memcmp(x, y, nx) == 0;
    mome_free(x), mome_free(y);
    return eq;
}

static void test_user_build(const char *root) {
    const char *names[3] = {"alpha", "beta", "code"};
    size_t bytes[3];
    bytes[0] = make_domain(root, names[0], 80, 0);
    bytes[1] = make_domain(root, names[1], 120, 1);
    bytes[2] = make_domain(root, names[2], 160, 2);
    printf("generated domains: %zu, %zu, %zu bytes\n", bytes[0], bytes[1], bytes[2]);

    mome_domain_spec specs[3];
    char dirs[3][600];
    for (int i = 0; i < 3; i++) {
        snprintf(specs[i].name, sizeof specs[i].name, "%s", names[i]);
        snprintf(dirs[i], sizeof dirs[i], "%s/%s", root, names[i]);
        specs[i].path = dirs[i];
    }
    char out[600], out2[600];
    snprintf(out, sizeof out, "%s/out", root);
    snprintf(out2, sizeof out2, "%s/out2", root);
    mome_data_build_opts o;
    mome_data_build_defaults(&o);
    o.out_dir = out;
    o.vocab_size = 512;
    o.domains = specs;
    o.n_domains = 3;
    o.val_fraction = 0.2;
    o.tokenizer_sample_bytes = 100000;
    o.max_bytes_per_domain = 0;
    double t0 = mome_now();
    int rc = mome_data_build(&o);
    CHECK(rc == MOME_OK, "user build failed: %d %s", rc, mome_error_message());
    if (rc != MOME_OK) return;
    printf("user build: %.2f s\n", mome_now() - t0);

    char path[700];
    snprintf(path, sizeof path, "%s/tokenizer.h5", out);
    mome_tokenizer *tok = NULL;
    rc = mome_tokenizer_load(&tok, path);
    CHECK(rc == MOME_OK, "cannot load %s: %s", path, mome_error_message());
    if (rc != MOME_OK) return;
    size_t train_tokens[3];
    int truncated = 0;
    for (int i = 0; i < 3; i++) train_tokens[i] = check_domain(out, names[i], dirs[i], tok, &truncated);
    size_t mx = 0, mn = SIZE_MAX;
    for (int i = 0; i < 3; i++) {
        if (train_tokens[i] > mx) mx = train_tokens[i];
        if (train_tokens[i] < mn) mn = train_tokens[i];
    }
    double spread = mx ? (double)(mx - mn) / (double)mx : 1.0;
    printf("balance: train tokens %zu %zu %zu, spread %.4f (tol 0.05)\n", train_tokens[0], train_tokens[1],
           train_tokens[2], spread);
    CHECK(mn > 0 && spread <= 0.05, "train token counts %zu..%zu spread %.4f > tolerance 0.05", mn, mx, spread);
    CHECK(truncated > 0, "the larger domains should have been trimmed (got %d truncated documents)", truncated);

    /* manifest */
    snprintf(path, sizeof path, "%s/manifest.json", out);
    json_error_t jerr;
    json_t *m = json_load_file(path, 0, &jerr);
    CHECK(m != NULL, "cannot parse %s: %s", path, jerr.text);
    if (m) {
        json_t *doms = json_object_get(m, "domains");
        CHECK(json_array_size(doms) == 3, "manifest has %zu domains, want 3", json_array_size(doms));
        for (size_t i = 0; i < json_array_size(doms) && i < 3; i++) {
            json_t *d = json_array_get(doms, i);
            json_int_t t = json_integer_value(json_object_get(json_object_get(d, "tokens"), "train"));
            CHECK((size_t)t == train_tokens[i], "manifest %s train tokens %lld, shard has %zu", names[i], (long long)t,
                  train_tokens[i]);
            json_int_t nb = json_integer_value(json_object_get(json_object_get(d, "skipped"), "binary"));
            CHECK(nb == 1, "manifest %s: %lld binary files skipped, want 1", names[i], (long long)nb);
        }
        CHECK(strcmp(json_string_value(json_object_get(m, "tokenizer_hash")), mome_tokenizer_hash(tok)) == 0,
              "manifest tokenizer hash differs from tokenizer.h5");
        json_decref(m);
    }

    /* determinism: a second build of the same tree gives the same files */
    o.out_dir = out2;
    rc = mome_data_build(&o);
    CHECK(rc == MOME_OK, "second build failed: %s", mome_error_message());
    for (int i = 0; i < 3 && rc == MOME_OK; i++) {
        char a[700], b[700];
        snprintf(a, sizeof a, "%s/raw/%s/train.jsonl", out, names[i]);
        snprintf(b, sizeof b, "%s/raw/%s/train.jsonl", out2, names[i]);
        CHECK(files_equal(a, b), "%s and %s differ between two builds of the same tree", a, b);
        size_t n1, n2;
        snprintf(a, sizeof a, "%s/tokens/%s.h5", out, names[i]);
        snprintf(b, sizeof b, "%s/tokens/%s.h5", out2, names[i]);
        hid_t f1 = mome_h5_open_read(a), f2 = mome_h5_open_read(b);
        uint32_t *x = f1 >= 0 ? read_ids(f1, "train", &n1) : NULL, *y = f2 >= 0 ? read_ids(f2, "train", &n2) : NULL;
        CHECK(x && y && n1 == n2 && memcmp(x, y, n1 * sizeof *x) == 0, "%s train tokens differ between two builds",
              names[i]);
        mome_free(x), mome_free(y);
        if (f1 >= 0) H5Fclose(f1);
        if (f2 >= 0) H5Fclose(f2);
    }
    mome_tokenizer_free(tok);

    /* a byte cap and no validation split: the cap holds, val datasets are empty */
    char out3[600];
    snprintf(out3, sizeof out3, "%s/out3", root);
    o.out_dir = out3;
    o.max_bytes_per_domain = 60000;
    o.val_fraction = 0.0;
    rc = mome_data_build(&o);
    CHECK(rc == MOME_OK, "capped build failed: %s", mome_error_message());
    snprintf(path, sizeof path, "%s/manifest.json", out3);
    m = rc == MOME_OK ? json_load_file(path, 0, &jerr) : NULL;
    CHECK(m != NULL, "cannot parse %s", path);
    for (size_t i = 0; m && i < 3; i++) {
        json_t *d = json_array_get(json_object_get(m, "domains"), i);
        json_int_t b = json_integer_value(json_object_get(d, "bytes_collected"));
        CHECK(b > 0 && b <= 60000, "%s: %lld bytes collected with a cap of 60000", names[i], (long long)b);
        CHECK(json_is_true(json_object_get(d, "byte_cap_reached")), "%s: cap of 60000 bytes not reported as reached",
              names[i]);
        char a[700];
        snprintf(a, sizeof a, "%s/tokens/%s.h5", out3, names[i]);
        hid_t f = mome_h5_open_read(a);
        int nd = 0;
        hsize_t dims[8] = {1};
        CHECK(f >= 0 && mome_h5_shape(f, "val", &nd, dims) == MOME_OK && nd == 1 && dims[0] == 0,
              "%s: val should be empty with val_fraction 0 (ndim %d, %llu tokens)", a, nd, (unsigned long long)dims[0]);
        if (f >= 0) H5Fclose(f);
    }
    json_decref(m);
    /* rebuilding the same directory with fewer domains removes the other domains' shards (stale tokenizer) */
    o.n_domains = 2;
    rc = mome_data_build(&o);
    CHECK(rc == MOME_OK, "two-domain rebuild failed: %s", mome_error_message());
    snprintf(path, sizeof path, "%s/tokens/code.h5", out3);
    CHECK(access(path, F_OK) != 0, "stale shard %s left after a rebuild without that domain", path);
    snprintf(path, sizeof path, "%s/tokens/beta.h5", out3);
    CHECK(access(path, F_OK) == 0, "shard %s missing after the rebuild", path);
    o.n_domains = 3;
    o.val_fraction = 0.2;
    o.max_bytes_per_domain = 0;

    /* no temporary files left behind */
    snprintf(path, sizeof path, "%s/tokens/.alpha.h5.tmp", out);
    CHECK(access(path, F_OK) != 0, "temporary file %s left behind", path);

    /* errors: a missing directory, a bad name */
    mome_domain_spec bad[2];
    snprintf(bad[0].name, sizeof bad[0].name, "alpha");
    bad[0].path = dirs[0];
    snprintf(bad[1].name, sizeof bad[1].name, "nope");
    snprintf(path, sizeof path, "%s/does-not-exist", root);
    bad[1].path = path;
    o.domains = bad;
    o.n_domains = 2;
    rc = mome_data_build(&o);
    CHECK(rc == MOME_ENOENT && strstr(mome_error_message(), "does-not-exist"),
          "missing directory gave %d (%s), want MOME_ENOENT naming it", rc, mome_error_message());
    snprintf(bad[1].name, sizeof bad[1].name, "Bad Name");
    bad[1].path = dirs[1];
    rc = mome_data_build(&o);
    CHECK(rc == MOME_EINVAL, "bad domain name gave %d (%s), want MOME_EINVAL", rc, mome_error_message());
}

int main(void) {
    mome_h5_quiet();
    test_html();
    test_split();
    test_packages();
    char tmpl[] = "/tmp/mome_test_corpus_XXXXXX";
    const char *tmpdir = getenv("TMPDIR");
    char root[512];
    if (tmpdir && tmpdir[0]) {
        snprintf(root, sizeof root, "%s/mome_test_corpus_XXXXXX", tmpdir);
    } else {
        snprintf(root, sizeof root, "%s", tmpl);
    }
    if (!mkdtemp(root)) {
        fprintf(stderr, "mkdtemp %s: %s\n", root, strerror(errno));
        return 1;
    }
    test_user_build(root);
    if (failures == 0) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
    } else {
        fprintf(stderr, "test files kept in %s\n", root);
    }
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
