/* corpus.c — `mome data build` (corpus.h): collects the text of each domain, splits it into train/val by
 * document, trains the BPE (tokenizer.c), balances the domains' token counts and writes raw JSONL, token
 * shards (h5io.c) and a manifest.
 *
 * Pipeline of mome_data_build:
 *   1. collect: every domain becomes a list of "units" (files). Default domains list the files of their Debian
 *      packages with `dpkg-query -L` (so that man pages of other packages are never used) and the *.py files of
 *      the system python3's standard library; a user domain lists every regular file under its directory.
 *      Units are processed in the order of a hash of their path (a deterministic shuffle, so that a byte cap
 *      takes a sample across the whole domain), a few at a time in worker threads (man pages are rendered by
 *      zcat | groff child processes, which is where the time goes), until max_bytes_per_domain is reached.
 *      A unit yields documents: a man page or a file one document, a debian-reference chapter one per section.
 *   2. split: a document is validation when mome_corpus_is_val(source) (a hash of its source name).
 *   3. tokenizer: trained on up to tokenizer_sample_bytes of training text per domain.
 *   4. encode every document; balance: every domain's train stream is cut to the smallest domain's train token
 *      count by keeping whole documents in hash order while they fit, then filling the rest with one truncated
 *      document (its raw text is truncated too, so raw text and tokens always agree). The val stream keeps the
 *      same ratio.
 *   5. write: tokenizer.h5, tokens/<domain>.h5, raw/<domain>/{train,val}.jsonl and manifest.json, each to a
 *      temporary name renamed into place; an earlier manifest is removed first and the new one written last, so
 *      a manifest only stands next to a complete build; shards of domains not in this build are removed (they
 *      would carry another tokenizer's ids).
 *
 * Left to others: the BPE itself (tokenizer.c), HDF5 details (h5io.c), reading the shards (data.c), the
 * command line (cli/main.c).
 */
#include "mome/corpus.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mome/common.h"
#include "mome/data.h"
#include "mome/h5io.h"
#include "mome/tokenizer.h"

#define SYSTEM_PYTHON "/usr/bin/python3"
#define BATCH_UNITS 64       /* units processed between two checks of the byte cap */
#define MAX_WORKERS 4        /* threads waiting on child processes / reading files */
#define MIN_SECTION_BYTES 256 /* html sections shorter than this are merged into the next one */
#define ORDER_SEED 0x6d6f6d65636f7270ULL /* "momecorp": seed of the unit/document order hash */

/* ------------------------------------------------------------------------------------------------------------
 * Growable byte buffer
 * ------------------------------------------------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_reserve(sbuf *b, size_t extra) {
    if (b->n + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    MOME_CHECK(p, "out of memory growing a text buffer to %zu bytes", cap);
    b->p = p;
    b->cap = cap;
}

static void sb_putc(sbuf *b, char c) {
    sb_reserve(b, 1);
    b->p[b->n++] = c;
    b->p[b->n] = 0;
}

static void sb_put(sbuf *b, const char *s, size_t n) {
    sb_reserve(b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_put_utf8(sbuf *b, uint32_t cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp, n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6)), u[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12)), u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18)), u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), u[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
    }
    sb_put(b, u, n);
}

/* Hands the buffer over as a mome_malloc'd string (our strings are freed with mome_free). */
static char *sb_take(sbuf *b, size_t *len) {
    char *s = mome_malloc(b->n + 1);
    if (b->n) memcpy(s, b->p, b->n);
    s[b->n] = 0;
    if (len) *len = b->n;
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
    return s;
}

static char *xstrdup(const char *s) { return mome_strdup(s); }

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    MOME_CHECK(n >= 0, "vsnprintf failed");
    char *s = mome_malloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* "1.23M", "61.2k", "812". */
static const char *human(size_t v, char *buf, size_t cap) {
    if (v >= 1000000)
        snprintf(buf, cap, "%.2fM", (double)v / 1e6);
    else if (v >= 10000)
        snprintf(buf, cap, "%.1fk", (double)v / 1e3);
    else
        snprintf(buf, cap, "%zu", v);
    return buf;
}

/* ------------------------------------------------------------------------------------------------------------
 * HTML to text
 * ------------------------------------------------------------------------------------------------------------ */

static const char *const latin1_names[96] = {
    "nbsp",   "iexcl",  "cent",   "pound",  "curren", "yen",    "brvbar", "sect",   "uml",    "copy",   "ordf",
    "laquo",  "not",    "shy",    "reg",    "macr",   "deg",    "plusmn", "sup2",   "sup3",   "acute",  "micro",
    "para",   "middot", "cedil",  "sup1",   "ordm",   "raquo",  "frac14", "frac12", "frac34", "iquest", "Agrave",
    "Aacute", "Acirc",  "Atilde", "Auml",   "Aring",  "AElig",  "Ccedil", "Egrave", "Eacute", "Ecirc",  "Euml",
    "Igrave", "Iacute", "Icirc",  "Iuml",   "ETH",    "Ntilde", "Ograve", "Oacute", "Ocirc",  "Otilde", "Ouml",
    "times",  "Oslash", "Ugrave", "Uacute", "Ucirc",  "Uuml",   "Yacute", "THORN",  "szlig",  "agrave", "aacute",
    "acirc",  "atilde", "auml",   "aring",  "aelig",  "ccedil", "egrave", "eacute", "ecirc",  "euml",   "igrave",
    "iacute", "icirc",  "iuml",   "eth",    "ntilde", "ograve", "oacute", "ocirc",  "otilde", "ouml",   "divide",
    "oslash", "ugrave", "uacute", "ucirc",  "uuml",   "yacute", "thorn",  "yuml"};

static const struct {
    const char *name;
    uint32_t cp;
} other_entities[] = {
    {"amp", '&'},       {"lt", '<'},         {"gt", '>'},         {"quot", '"'},       {"apos", '\''},
    {"mdash", 0x2014},  {"ndash", 0x2013},   {"hellip", 0x2026},  {"lsquo", 0x2018},  {"rsquo", 0x2019},
    {"ldquo", 0x201C},  {"rdquo", 0x201D},   {"sbquo", 0x201A},   {"bdquo", 0x201E},  {"bull", 0x2022},
    {"euro", 0x20AC},   {"trade", 0x2122},   {"dagger", 0x2020},  {"Dagger", 0x2021}, {"permil", 0x2030},
    {"lsaquo", 0x2039}, {"rsaquo", 0x203A},  {"OElig", 0x152},    {"oelig", 0x153},   {"Scaron", 0x160},
    {"scaron", 0x161},  {"Yuml", 0x178},     {"thinsp", 0x2009},  {"ensp", 0x2002},   {"emsp", 0x2003},
    {"minus", 0x2212},  {"larr", 0x2190},    {"rarr", 0x2192},    {"uarr", 0x2191},   {"darr", 0x2193},
    {"harr", 0x2194},   {"lArr", 0x21D0},    {"rArr", 0x21D2},    {"hArr", 0x21D4},   {"le", 0x2264},
    {"ge", 0x2265},     {"ne", 0x2260},      {"infin", 0x221E},   {"zwnj", 0x200C},   {"zwj", 0x200D},
    {"lrm", 0x200E},    {"rlm", 0x200F},     {"circ", 0x2C6},     {"tilde", 0x2DC},   {"prime", 0x2032},
};

/* Code point of a named entity, or -1. */
static long entity_lookup(const char *name) {
    for (size_t i = 0; i < sizeof other_entities / sizeof other_entities[0]; i++)
        if (strcmp(name, other_entities[i].name) == 0) return (long)other_entities[i].cp;
    for (int i = 0; i < 96; i++)
        if (strcmp(name, latin1_names[i]) == 0) return 160 + i;
    return -1;
}

typedef struct {
    sbuf out;
    int mark_sections;
    int pending_space; /* a collapsed whitespace run */
    int pending_nl;    /* line breaks wanted before the next text (1 or 2) */
    int pending_break; /* a section break wanted before the next text */
    int pre;           /* depth of <pre> */
    int skip_first_nl; /* the newline right after <pre> is not content */
    char skip_name[16]; /* element whose contents are dropped (head, nav blocks), with its nesting depth */
    int skip_depth;
} h2t;

static int out_last(const h2t *h) { return h->out.n ? (unsigned char)h->out.p[h->out.n - 1] : -1; }

static void h2t_flush(h2t *h) {
    if (h->out.n == 0) {
        h->pending_space = h->pending_nl = h->pending_break = 0;
        return;
    }
    if (h->pending_break || h->pending_nl) {
        while (h->out.n && (h->out.p[h->out.n - 1] == ' ' || h->out.p[h->out.n - 1] == '\t')) h->out.n--;
        if (h->pending_break) {
            while (h->out.n && h->out.p[h->out.n - 1] == '\n') h->out.n--;
            if (h->out.n) sb_putc(&h->out, MOME_CORPUS_SECTION_BREAK);
        } else {
            int have = 0;
            for (size_t i = h->out.n; i > 0 && h->out.p[i - 1] == '\n' && have < 2; i--) have++;
            for (int i = have; i < h->pending_nl; i++) sb_putc(&h->out, '\n');
        }
        h->out.p[h->out.n] = 0;
    } else if (h->pending_space) {
        int c = out_last(h);
        if (c != ' ' && c != '\n' && c != '\t' && c != MOME_CORPUS_SECTION_BREAK) sb_putc(&h->out, ' ');
    }
    h->pending_space = h->pending_nl = h->pending_break = 0;
}

/* One character of text content (a byte of UTF-8, or a decoded code point when cp >= 0x80). */
static void h2t_text(h2t *h, uint32_t cp) {
    if (h->skip_depth > 0) return;
    if (cp == 0xA0) cp = ' ';         /* &nbsp; and U+00A0: a plain space */
    if (cp == 0xAD) return;           /* soft hyphen */
    if (cp < 0x20 && cp != '\n' && cp != '\t' && cp != '\r') cp = ' '; /* \f and other controls */
    if (cp == 0x7F || (cp >= 0x80 && cp < 0xA0)) cp = ' ';
    if (h->pre > 0) {
        if (cp == '\r') return;
        if (h->skip_first_nl) {
            h->skip_first_nl = 0;
            if (cp == '\n') return;
        }
        h2t_flush(h);
        if (cp < 0x80)
            sb_putc(&h->out, (char)cp);
        else
            sb_put_utf8(&h->out, cp);
        return;
    }
    if (cp == ' ' || cp == '\n' || cp == '\t' || cp == '\r') {
        h->pending_space = 1;
        return;
    }
    h2t_flush(h);
    if (cp < 0x80)
        sb_putc(&h->out, (char)cp);
    else
        sb_put_utf8(&h->out, cp);
}

/* A raw input byte >= 0x80 is passed through as is (the input is UTF-8). */
static void h2t_raw_byte(h2t *h, unsigned char c) {
    if (h->skip_depth > 0) return;
    if (h->pre > 0) h->skip_first_nl = 0;
    h2t_flush(h);
    sb_putc(&h->out, (char)c);
}

static void h2t_block(h2t *h, int lines) {
    if (h->pending_nl < lines) h->pending_nl = lines;
}

static int name_in(const char *name, const char *const *list) {
    for (; *list; list++)
        if (strcmp(name, *list) == 0) return 1;
    return 0;
}

static const char *const para_tags[] = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table", "ul", "ol", "dl",
                                        "blockquote", "hr", "section", "article", "figure", "address", "header",
                                        "footer", "center", "fieldset", NULL};
static const char *const line_tags[] = {"br", "li", "tr", "dt", "dd", "div", "caption", "title", "option", "form",
                                        "main", "aside", "body", "html", "figcaption", "legend", "thead", "tbody",
                                        "tfoot", NULL};
static const char *const skip_classes[] = {"navheader", "navfooter", "toc", NULL};

/* Whether the class attribute value contains one of skip_classes as a token. */
static int class_skipped(const char *cls) {
    const char *p = cls;
    while (*p) {
        while (*p && isspace((unsigned char)*p)) p++;
        const char *s = p;
        while (*p && !isspace((unsigned char)*p)) p++;
        for (const char *const *k = skip_classes; *k; k++)
            if ((size_t)(p - s) == strlen(*k) && strncmp(s, *k, (size_t)(p - s)) == 0) return 1;
    }
    return 0;
}

/* Finds `needle` (lowercase ASCII) case-insensitively in s[i..n); returns its index or n. */
static size_t find_ci(const char *s, size_t i, size_t n, const char *needle) {
    size_t m = strlen(needle);
    for (; i + m <= n; i++) {
        size_t k = 0;
        while (k < m && tolower((unsigned char)s[i + k]) == needle[k]) k++;
        if (k == m) return i;
    }
    return n;
}

/* Decodes the entity at s[i] == '&'; returns the number of bytes consumed (0 when it is not an entity). */
static size_t h2t_entity(h2t *h, const char *s, size_t i, size_t n) {
    char name[40];
    size_t j = i + 1, k = 0;
    while (j < n && k < sizeof name - 1 && (isalnum((unsigned char)s[j]) || (k == 0 && s[j] == '#')))
        name[k++] = s[j++];
    name[k] = 0;
    if (k == 0 || j >= n || s[j] != ';') return 0;
    long cp;
    if (name[0] == '#') {
        char *end;
        errno = 0;
        if (name[1] == 'x' || name[1] == 'X')
            cp = name[2] ? strtol(name + 2, &end, 16) : -1;
        else
            cp = name[1] ? strtol(name + 1, &end, 10) : -1;
        if (cp < 0 || *end || errno) return 0;
        if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
    } else {
        cp = entity_lookup(name);
        if (cp < 0) return 0;
    }
    h2t_text(h, (uint32_t)cp);
    return j + 1 - i;
}

/* Parses the tag starting at s[i] == '<' (a letter or '/' follows); returns the index after it. */
static size_t h2t_tag(h2t *h, const char *s, size_t i, size_t n) {
    size_t j = i + 1;
    int closing = 0;
    if (j < n && s[j] == '/') closing = 1, j++;
    char name[16];
    size_t k = 0;
    while (j < n && (isalnum((unsigned char)s[j]) || s[j] == '-' || s[j] == ':')) {
        if (k < sizeof name - 1) name[k++] = (char)tolower((unsigned char)s[j]);
        j++;
    }
    name[k] = 0;
    /* attributes: we only need class */
    char cls[256] = "";
    int self_closing = 0;
    while (j < n && s[j] != '>') {
        if (isspace((unsigned char)s[j])) {
            j++;
            continue;
        }
        if (s[j] == '/') {
            self_closing = 1;
            j++;
            continue;
        }
        self_closing = 0;
        size_t a0 = j;
        while (j < n && !isspace((unsigned char)s[j]) && s[j] != '=' && s[j] != '>' && s[j] != '/') j++;
        size_t a1 = j;
        while (j < n && isspace((unsigned char)s[j])) j++;
        size_t v0 = j, v1 = j;
        if (j < n && s[j] == '=') {
            j++;
            while (j < n && isspace((unsigned char)s[j])) j++;
            if (j < n && (s[j] == '"' || s[j] == '\'')) {
                char q = s[j++];
                v0 = j;
                while (j < n && s[j] != q) j++;
                v1 = j;
                if (j < n) j++;
            } else {
                v0 = j;
                while (j < n && !isspace((unsigned char)s[j]) && s[j] != '>') j++;
                v1 = j;
            }
        }
        if (a1 - a0 == 5 && strncasecmp(s + a0, "class", 5) == 0) {
            size_t m = v1 - v0 < sizeof cls - 1 ? v1 - v0 : sizeof cls - 1;
            memcpy(cls, s + v0, m);
            cls[m] = 0;
        }
        if (a1 == a0 && v1 == v0 && j < n && s[j] != '>') j++; /* stray character: make progress */
    }
    size_t end = j < n ? j + 1 : n;
    if (k == 0) return end;

    if (!closing && !self_closing && (strcmp(name, "script") == 0 || strcmp(name, "style") == 0)) {
        /* raw text element: skip to its end tag */
        char close[16];
        snprintf(close, sizeof close, "</%s", name);
        size_t c = find_ci(s, end, n, close);
        if (c >= n) return n;
        size_t e = c;
        while (e < n && s[e] != '>') e++;
        return e < n ? e + 1 : n;
    }
    if (h->skip_depth > 0) {
        if (strcmp(name, h->skip_name) == 0 && !self_closing) h->skip_depth += closing ? -1 : 1;
        return end;
    }
    if (!closing && !self_closing &&
        (strcmp(name, "head") == 0 || strcmp(name, "nav") == 0 || strcmp(name, "template") == 0 ||
         (cls[0] && class_skipped(cls)))) {
        snprintf(h->skip_name, sizeof h->skip_name, "%s", name);
        h->skip_depth = 1;
        return end;
    }
    if (strcmp(name, "pre") == 0 && !self_closing) {
        if (closing) {
            if (h->pre > 0) h->pre--;
        } else {
            h->pre++;
            h->skip_first_nl = 1;
        }
    }
    const int heading = strcmp(name, "h1") == 0 || strcmp(name, "h2") == 0 || strcmp(name, "h3") == 0;
    if (!closing && h->mark_sections && heading) {
        h->pending_break = 1;
    } else if (name_in(name, para_tags)) {
        h2t_block(h, 2);
    } else if (name_in(name, line_tags)) {
        h2t_block(h, 1);
    } else if (strcmp(name, "td") == 0 || strcmp(name, "th") == 0) {
        h->pending_space = 1;
    }
    return end;
}

char *mome_corpus_html_to_text(const char *s, size_t n, int mark_sections, size_t *out_len) {
    h2t h;
    memset(&h, 0, sizeof h);
    h.mark_sections = mark_sections;
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c == '<' && i + 1 < n) {
            unsigned char d = (unsigned char)s[i + 1];
            if (i + 3 < n && memcmp(s + i, "<!--", 4) == 0) {
                size_t e = i + 4;
                while (e + 2 < n && memcmp(s + e, "-->", 3) != 0) e++;
                i = e + 2 < n ? e + 3 : n;
                continue;
            }
            if (i + 8 < n && memcmp(s + i, "<![CDATA[", 9) == 0) {
                size_t e = i + 9;
                while (e + 2 < n && memcmp(s + e, "]]>", 3) != 0) {
                    if ((unsigned char)s[e] >= 0x80)
                        h2t_raw_byte(&h, (unsigned char)s[e]);
                    else
                        h2t_text(&h, (unsigned char)s[e]);
                    e++;
                }
                i = e + 2 < n ? e + 3 : n;
                continue;
            }
            if (d == '!' || d == '?') {
                size_t e = i + 2;
                while (e < n && s[e] != '>') e++;
                i = e < n ? e + 1 : n;
                continue;
            }
            if (isalpha(d) || (d == '/' && i + 2 < n && isalpha((unsigned char)s[i + 2]))) {
                i = h2t_tag(&h, s, i, n);
                continue;
            }
        }
        if (c == '&') {
            size_t used = h2t_entity(&h, s, i, n);
            if (used) {
                i += used;
                continue;
            }
        }
        if (c >= 0x80)
            h2t_raw_byte(&h, c);
        else
            h2t_text(&h, c);
        i++;
    }
    /* trim trailing whitespace and breaks */
    while (h.out.n && (h.out.p[h.out.n - 1] == ' ' || h.out.p[h.out.n - 1] == '\n' || h.out.p[h.out.n - 1] == '\t' ||
                       h.out.p[h.out.n - 1] == MOME_CORPUS_SECTION_BREAK))
        h.out.n--;
    if (h.out.p) h.out.p[h.out.n] = 0;
    return sb_take(&h.out, out_len);
}

/* ------------------------------------------------------------------------------------------------------------
 * Text cleaning
 * ------------------------------------------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s[i..n), or 0 when it is not valid. */
static size_t utf8_seq(const unsigned char *s, size_t i, size_t n) {
    unsigned char c = s[i];
    if (c < 0x80) return 1;
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, cp = c & 0x07;
    else
        return 0;
    if (i + len > n) return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[i + k] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return len;
}

/* Replaces invalid UTF-8 bytes by U+FFFD in place (reallocating when needed); returns the number replaced. */
static size_t utf8_repair(char **text, size_t *len) {
    const unsigned char *s = (const unsigned char *)*text;
    size_t n = *len, bad = 0;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq(s, i, n);
        if (!l) bad++, l = 1;
        i += l;
    }
    if (!bad) return 0;
    sbuf b = {0};
    sb_reserve(&b, n + 2 * bad);
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq(s, i, n);
        if (!l) {
            sb_put_utf8(&b, 0xFFFD);
            i++;
        } else {
            sb_put(&b, (const char *)s + i, l);
            i += l;
        }
    }
    mome_free(*text);
    *text = sb_take(&b, len);
    return bad;
}

/* Cleans rendered man page text in place: removes backspace overstrikes and ESC [ ... sequences (there should
 * be none with grotty -c -b -u -o, this is a guard), other control bytes, trailing spaces, runs of blank lines
 * and leading/trailing blank lines; writes U+2010 as '-'; ends with one '\n'. */
static void clean_rendered(char *t, size_t *len) {
    size_t n = *len, o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c == '\b') {
            if (o > 0) {
                o--;
                while (o > 0 && ((unsigned char)t[o] & 0xC0) == 0x80) o--; /* a whole UTF-8 character */
            }
            continue;
        }
        if (c == 0x1B) {
            if (i + 1 < n && t[i + 1] == '[') {
                i += 2;
                while (i < n && !isalpha((unsigned char)t[i])) i++;
            }
            continue;
        }
        if (c < 0x20 && c != '\n' && c != '\t') continue;
        if (c == 0xE2 && i + 2 < n && (unsigned char)t[i + 1] == 0x80 && (unsigned char)t[i + 2] == 0x90) {
            t[o++] = '-'; /* U+2010 HYPHEN, groff's rendering of a plain '-': the ASCII hyphen */
            i += 2;
            continue;
        }
        t[o++] = (char)c;
    }
    n = o;
    /* trailing spaces, blank-line runs */
    o = 0;
    int blank_run = 0;
    size_t i = 0;
    while (i < n) {
        size_t e = i;
        while (e < n && t[e] != '\n') e++;
        size_t le = e;
        while (le > i && (t[le - 1] == ' ' || t[le - 1] == '\t')) le--;
        if (le == i) {
            blank_run++;
        } else {
            if (o > 0 && blank_run > 0) t[o++] = '\n';
            memmove(t + o, t + i, le - i);
            o += le - i;
            t[o++] = '\n';
            blank_run = 0;
        }
        i = e + 1;
    }
    t[o] = 0;
    *len = o;
}

/* ------------------------------------------------------------------------------------------------------------
 * Child processes
 * ------------------------------------------------------------------------------------------------------------ */

/* 'path' with embedded single quotes escaped, for sh -c. */
static char *shell_quote(const char *s) {
    sbuf b = {0};
    sb_putc(&b, '\'');
    for (; *s; s++) {
        if (*s == '\'')
            sb_puts(&b, "'\\''");
        else
            sb_putc(&b, *s);
    }
    sb_putc(&b, '\'');
    return sb_take(&b, NULL);
}

/* Runs a shell command and captures its standard output; *status is the exit status (-1 when it did not exit
 * normally). Returns MOME_EIO only when the command could not be started. */
static int run_capture(const char *cmd, char **out, size_t *len, int *status) {
    FILE *f = popen(cmd, "r");
    if (!f) return mome_error_set(MOME_EIO, "cannot run '%s': %s", cmd, strerror(errno));
    sbuf b = {0};
    char buf[65536];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, f)) > 0) sb_put(&b, buf, r);
    int st = pclose(f);
    *status = (st != -1 && WIFEXITED(st)) ? WEXITSTATUS(st) : -1;
    *out = sb_take(&b, len);
    return MOME_OK;
}

static int valid_package_name(const char *p) {
    if (!p[0] || !p[1] || (!islower((unsigned char)p[0]) && !isdigit((unsigned char)p[0]))) return 0;
    for (; *p; p++)
        if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p) && *p != '+' && *p != '-' && *p != '.') return 0;
    return 1;
}

/* Installed version of each package (NULL when not installed); versions[i] mome_malloc'd. */
static int package_versions(const char *const *pkgs, size_t n, char **versions) {
    sbuf cmd = {0};
    sb_puts(&cmd, "dpkg-query -W -f='${Package}\\t${db:Status-Status}\\t${Version}\\n'");
    for (size_t i = 0; i < n; i++) {
        versions[i] = NULL;
        if (!valid_package_name(pkgs[i])) {
            free(cmd.p);
            return mome_error_set(MOME_EINVAL, "'%s' is not a valid Debian package name", pkgs[i]);
        }
        sb_putc(&cmd, ' ');
        sb_puts(&cmd, pkgs[i]);
    }
    sb_puts(&cmd, " 2>/dev/null");
    char *out;
    size_t len;
    int st;
    int rc = run_capture(cmd.p, &out, &len, &st);
    free(cmd.p);
    if (rc) return rc;
    (void)st; /* dpkg-query exits 1 when some package is unknown; the lines it printed are still right */
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *t1 = strchr(line, '\t');
        if (!t1) continue;
        *t1 = 0;
        char *t2 = strchr(t1 + 1, '\t');
        if (!t2) continue;
        *t2 = 0;
        char *colon = strchr(line, ':'); /* multi-arch "pkg:amd64" */
        if (colon) *colon = 0;
        if (strcmp(t1 + 1, "installed") != 0) continue;
        for (size_t i = 0; i < n; i++)
            if (!versions[i] && strcmp(line, pkgs[i]) == 0) versions[i] = xstrdup(t2 + 1);
    }
    mome_free(out);
    return MOME_OK;
}

int mome_corpus_check_packages(const char *const *packages, size_t n) {
    char **versions = mome_calloc(n ? n : 1, sizeof *versions);
    int rc = package_versions(packages, n, versions);
    if (rc == MOME_OK) {
        sbuf missing = {0};
        for (size_t i = 0; i < n; i++) {
            if (versions[i]) continue;
            if (missing.n) sb_putc(&missing, ' ');
            sb_puts(&missing, packages[i]);
        }
        if (missing.n)
            rc = mome_error_set(MOME_ENOPKG,
                                "missing Debian package(s) needed for the default corpus: %s; install them with: "
                                "sudo apt-get install %s",
                                missing.p, missing.p);
        free(missing.p);
    }
    for (size_t i = 0; i < n; i++) mome_free(versions[i]);
    mome_free(versions);
    return rc;
}

/* ------------------------------------------------------------------------------------------------------------
 * Split
 * ------------------------------------------------------------------------------------------------------------ */

int mome_corpus_is_val(const char *source, double val_fraction) {
    uint64_t h = mome_fnv1a(MOME_FNV_OFFSET, source, strlen(source));
    uint64_t thr = (uint64_t)llround(val_fraction * 10000.0);
    return h % 10000 < thr;
}

static uint64_t order_hash(const char *s) { return mome_fnv1a(ORDER_SEED, s, strlen(s)); }

/* ------------------------------------------------------------------------------------------------------------
 * Documents and domains
 * ------------------------------------------------------------------------------------------------------------ */

typedef enum { UNIT_MAN, UNIT_HTML, UNIT_FILE, UNIT_PYTHON } unit_kind;

typedef struct {
    char *path;       /* where to read it */
    const char *key;  /* its name in the corpus: the split and the processing order hash it. For user domains
                         the path relative to the domain directory, so moving the directory changes nothing;
                         otherwise the path itself. Points into path. */
    unit_kind kind;
    uint64_t order;
    /* result of processing (worker threads) */
    char *text;
    size_t len;
    int skipped;      /* 1: .so redirect, 2: empty, 3: binary (NUL bytes), 4: generated table */
    int failed;       /* could not be read/rendered */
    char err[256];
} unit;

typedef struct {
    char *source;
    char *text;
    size_t len;
    uint64_t order;
    int val;
    uint32_t *ids; /* (n_ids,) without BOS/EOS, malloc'd by the tokenizer */
    size_t n_ids;
    int kept;
    int truncated;
} cdoc;

typedef struct {
    char name[32];
    const char *dir;   /* user domains */
    unit *units;
    size_t n_units;
    cdoc *docs;
    size_t n_docs, cap_docs;
    size_t bytes;       /* collected text bytes */
    size_t units_used;  /* units processed before the cap */
    size_t n_so, n_empty, n_binary, n_generated, n_failed, n_repaired_bytes;
    int capped;
    json_t *sources;    /* manifest: where the text came from */
    json_t *excluded;   /* manifest: what was left out on purpose */
    /* counts, index 0 train, 1 val */
    size_t tokens_before[2], tokens_after[2], docs_before[2], docs_after[2], bytes_after[2], truncated[2];
} cdomain;

static void domain_free(cdomain *d) {
    for (size_t i = 0; i < d->n_units; i++) {
        mome_free(d->units[i].path);
        mome_free(d->units[i].text);
    }
    mome_free(d->units);
    for (size_t i = 0; i < d->n_docs; i++) {
        mome_free(d->docs[i].source);
        mome_free(d->docs[i].text);
        free(d->docs[i].ids);
    }
    mome_free(d->docs);
    json_decref(d->sources);
    json_decref(d->excluded);
}

static void add_unit(cdomain *d, size_t *cap, const char *path, unit_kind kind) {
    if (d->n_units == *cap) {
        size_t nc = *cap ? 2 * *cap : 256;
        unit *u = mome_calloc(nc, sizeof *u);
        if (d->n_units) memcpy(u, d->units, d->n_units * sizeof *u);
        mome_free(d->units);
        d->units = u;
        *cap = nc;
    }
    unit *u = &d->units[d->n_units++];
    memset(u, 0, sizeof *u);
    u->path = xstrdup(path);
    u->key = u->path;
    size_t nd = d->dir ? strlen(d->dir) : 0;
    if (nd && strncmp(path, d->dir, nd) == 0) {
        u->key = u->path + nd;
        while (*u->key == '/') u->key++;
    }
    u->kind = kind;
    u->order = order_hash(u->key);
}

static void add_doc(cdomain *d, char *source, char *text, size_t len) {
    if (d->n_docs == d->cap_docs) {
        size_t nc = d->cap_docs ? 2 * d->cap_docs : 256;
        cdoc *v = mome_calloc(nc, sizeof *v);
        if (d->n_docs) memcpy(v, d->docs, d->n_docs * sizeof *v);
        mome_free(d->docs);
        d->docs = v;
        d->cap_docs = nc;
    }
    cdoc *c = &d->docs[d->n_docs++];
    memset(c, 0, sizeof *c);
    c->source = source;
    c->text = text;
    c->len = len;
    c->order = order_hash(source);
}

static int cmp_unit(const void *a, const void *b) {
    const unit *x = a, *y = b;
    if (x->order != y->order) return x->order < y->order ? -1 : 1;
    return strcmp(x->path, y->path);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* ------------------------------------------------------------------------------------------------------------
 * Listing sources
 * ------------------------------------------------------------------------------------------------------------ */

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* Adds the regular files (not symlinks) listed by `dpkg-query -L pkg` under prefix and ending in suffix;
 * counts symlinks skipped in *n_links. */
static int list_package(cdomain *d, size_t *cap, const char *pkg, const char *prefix, const char *suffix,
                        unit_kind kind, size_t *n_files, size_t *n_links) {
    char *cmd = xasprintf("dpkg-query -L %s 2>&1", pkg); /* pkg was validated by valid_package_name */
    char *out;
    size_t len;
    int st;
    int rc = run_capture(cmd, &out, &len, &st);
    if (rc) {
        mome_free(cmd);
        return rc;
    }
    if (st != 0) {
        rc = mome_error_set(MOME_ENOPKG,
                            "'%s' failed (exit %d): %.200s; install the package with: sudo apt-get install %s", cmd,
                            st, out, pkg);
        mome_free(cmd);
        mome_free(out);
        return rc;
    }
    mome_free(cmd);
    size_t nl = 0;
    char **lines = mome_malloc((len / 2 + 1) * sizeof *lines);
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        if (starts_with(line, prefix) && ends_with(line, suffix)) lines[nl++] = line;
    qsort(lines, nl, sizeof *lines, cmp_str);
    *n_files = *n_links = 0;
    for (size_t i = 0; i < nl; i++) {
        if (i > 0 && strcmp(lines[i], lines[i - 1]) == 0) continue;
        struct stat sb;
        if (lstat(lines[i], &sb) != 0) continue; /* listed but removed (e.g. diverted): nothing to read */
        if (S_ISLNK(sb.st_mode)) {
            (*n_links)++;
            continue;
        }
        if (!S_ISREG(sb.st_mode)) continue;
        add_unit(d, cap, lines[i], kind);
        (*n_files)++;
    }
    mome_free(lines);
    mome_free(out);
    return MOME_OK;
}

typedef struct {
    const char *const *exclude_dirs; /* directory names not descended into (NULL: none) */
    const char *suffix;              /* only files ending so (NULL: all) */
    unit_kind kind;                  /* UNIT_FILE, or UNIT_PYTHON for the standard library */
} walk_filter;

/* Recursively adds the regular files under dir (sorted names, symlinks to files followed, symlinked
 * directories not descended into). */
static int walk_dir(cdomain *d, size_t *cap, const char *dir, const walk_filter *f, size_t *n_files) {
    DIR *dp = opendir(dir);
    if (!dp) return mome_error_set(MOME_EIO, "cannot read directory %s: %s", dir, strerror(errno));
    size_t n = 0, ncap = 64;
    char **names = mome_malloc(ncap * sizeof *names);
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (n == ncap) {
            char **nn = mome_malloc(2 * ncap * sizeof *nn);
            memcpy(nn, names, n * sizeof *nn);
            mome_free(names);
            names = nn;
            ncap *= 2;
        }
        names[n++] = xstrdup(e->d_name);
    }
    closedir(dp);
    qsort(names, n, sizeof *names, cmp_str);
    int rc = MOME_OK;
    for (size_t i = 0; i < n; i++) {
        char *path = xasprintf("%s/%s", dir, names[i]);
        struct stat lsb, sb;
        if (lstat(path, &lsb) == 0 && stat(path, &sb) == 0) {
            if (S_ISDIR(sb.st_mode)) {
                if (!S_ISLNK(lsb.st_mode) && !(f->exclude_dirs && name_in(names[i], f->exclude_dirs)))
                    rc = walk_dir(d, cap, path, f, n_files);
            } else if (S_ISREG(sb.st_mode) && (!f->suffix || ends_with(names[i], f->suffix))) {
                add_unit(d, cap, path, f->kind);
                (*n_files)++;
            }
        }
        mome_free(path);
        if (rc) break;
    }
    for (size_t i = 0; i < n; i++) mome_free(names[i]);
    mome_free(names);
    return rc;
}

/* The system python3's stdlib directory, version and owning package. */
static int python_stdlib(char *dir, size_t cap, char *version, size_t vcap) {
    char *out;
    size_t len;
    int st;
    int rc = run_capture(SYSTEM_PYTHON " -c 'import sysconfig,platform;print(sysconfig.get_paths()[\"stdlib\"]);"
                                       "print(platform.python_version())' 2>/dev/null",
                         &out, &len, &st);
    if (rc) return rc;
    char *nl = strchr(out, '\n');
    if (st != 0 || !nl || nl == out) {
        mome_free(out);
        return mome_error_set(MOME_ENOPKG,
                              "cannot find the standard library of the system python (%s exited with %d); install "
                              "it with: sudo apt-get install python3",
                              SYSTEM_PYTHON, st);
    }
    *nl = 0;
    snprintf(dir, cap, "%s", out);
    char *v = nl + 1, *nl2 = strchr(v, '\n');
    if (nl2) *nl2 = 0;
    snprintf(version, vcap, "%s", v);
    mome_free(out);
    return MOME_OK;
}

/* ------------------------------------------------------------------------------------------------------------
 * Processing units (worker threads)
 * ------------------------------------------------------------------------------------------------------------ */

/* Whether a man page source is only a `.so other-page` redirect. */
static int is_so_redirect(const char *src, size_t len) {
    size_t i = 0;
    while (i < len) {
        size_t e = i;
        while (e < len && src[e] != '\n') e++;
        const char *l = src + i;
        size_t n = e - i;
        int blank = 1;
        for (size_t k = 0; k < n; k++)
            if (!isspace((unsigned char)l[k])) blank = 0;
        int comment = n >= 3 && (l[0] == '.' || l[0] == '\'') && l[1] == '\\' && l[2] == '"';
        if (!blank && !comment) return n >= 4 && strncmp(l, ".so", 3) == 0 && isspace((unsigned char)l[3]);
        i = e + 1;
    }
    return 0;
}

static void process_man(unit *u) {
    char *q = shell_quote(u->path);
    char *cmd = xasprintf("zcat -- %s 2>/dev/null", q);
    char *src;
    size_t len;
    int st;
    int rc = run_capture(cmd, &src, &len, &st);
    mome_free(cmd);
    if (rc || st != 0) {
        snprintf(u->err, sizeof u->err, "zcat %s failed (exit %d)", u->path, rc ? -1 : st);
        u->failed = 1;
        if (!rc) mome_free(src);
        mome_free(q);
        return;
    }
    int so = is_so_redirect(src, len);
    mome_free(src);
    if (so) {
        u->skipped = 1;
        mome_free(q);
        return;
    }
    /* The prelude makes every .ad request left-adjust (no padding spaces between words, even in pages that
     * restore adjustment themselves) and selects a hyphenation language without patterns (no hyphenation, even
     * in pages that say .hy); -Kutf-8: the input encoding whatever the locale; grotty -c -b -u -o: no SGR
     * escapes, no overstrike. */
    cmd = xasprintf("{ printf '.ad l\\n.rn ad mome-ad\\n.de ad\\n.mome-ad l\\n..\\n.hla xx\\n'; zcat -- %s; } | "
                    "groff -Kutf-8 -mandoc -Tutf8 -rLL=78n -rHY=0 "
                    "-P-c -P-b -P-u -P-o 2>/dev/null",
                    q);
    mome_free(q);
    rc = run_capture(cmd, &u->text, &u->len, &st);
    mome_free(cmd);
    if (rc || st != 0) {
        snprintf(u->err, sizeof u->err, "rendering %s with groff failed (exit %d)", u->path, rc ? -1 : st);
        u->failed = 1;
        if (!rc) {
            mome_free(u->text);
            u->text = NULL;
        }
        return;
    }
    clean_rendered(u->text, &u->len);
    if (u->len == 0) u->skipped = 2;
}

/* The codec tables of encodings/ are data written by a generator (gencodec.py), not code anyone wrote: they
 * would teach the python domain long runs of "LATIN CAPITAL LETTER ...". */
static int is_generated_table(const char *data, size_t len) {
    size_t head = len < 1024 ? len : 1024;
    for (size_t i = 0; i + 11 <= head; i++)
        if (memcmp(data + i, "gencodec.py", 11) == 0) return 1;
    return 0;
}

static void process_unit(unit *u) {
    if (u->kind == UNIT_MAN) {
        process_man(u);
    } else {
        char *data;
        size_t len;
        if (mome_read_file(u->path, &data, &len) != MOME_OK) {
            snprintf(u->err, sizeof u->err, "%s", mome_error_message());
            u->failed = 1;
            return;
        }
        if (u->kind == UNIT_HTML) {
            u->text = mome_corpus_html_to_text(data, len, 1, &u->len);
            mome_free(data);
        } else {
            u->text = data;
            u->len = len;
            if (memchr(data, 0, len)) u->skipped = 3;
            else if (u->kind == UNIT_PYTHON && is_generated_table(data, len)) u->skipped = 4;
        }
        if (u->len == 0) u->skipped = 2;
    }
}

typedef struct {
    unit *units;
    size_t next, end;
    pthread_mutex_t lock;
} work_queue;

static void *worker_main(void *arg) {
    work_queue *q = arg;
    for (;;) {
        pthread_mutex_lock(&q->lock);
        size_t i = q->next < q->end ? q->next++ : q->end;
        pthread_mutex_unlock(&q->lock);
        if (i >= q->end) return NULL;
        process_unit(&q->units[i]);
    }
}

/* Processes units [begin, end) with n_workers threads. */
static void process_batch(unit *units, size_t begin, size_t end, int n_workers) {
    work_queue q;
    q.units = units;
    q.next = begin;
    q.end = end;
    pthread_mutex_init(&q.lock, NULL);
    pthread_t th[MAX_WORKERS];
    int started = 0;
    for (int t = 1; t < n_workers; t++)
        if (pthread_create(&th[started], NULL, worker_main, &q) == 0) started++;
    worker_main(&q);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    pthread_mutex_destroy(&q.lock);
}

static int n_workers_default(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    n *= 2; /* workers mostly wait on zcat/groff */
    return n > MAX_WORKERS ? MAX_WORKERS : (int)n;
}

/* Turns a processed unit into documents; returns 1 when the byte cap stops the domain. */
static int unit_to_docs(cdomain *d, unit *u, size_t cap_bytes) {
    if (u->skipped == 1) {
        d->n_so++;
        return 0;
    }
    if (u->skipped == 2) {
        d->n_empty++;
        return 0;
    }
    if (u->skipped == 4) {
        d->n_generated++;
        return 0;
    }
    if (u->skipped == 3) {
        d->n_binary++;
        mome_warn("%s: skipping %s: binary file (contains NUL bytes)", d->name, u->path);
        return 0;
    }
    d->n_repaired_bytes += utf8_repair(&u->text, &u->len);
    /* the documents of this unit */
    size_t n_parts = 0;
    size_t starts[4096], ends[4096];
    if (u->kind == UNIT_HTML) {
        size_t i = 0;
        while (i < u->len && n_parts < 4096) {
            size_t e = i;
            while (e < u->len && u->text[e] != MOME_CORPUS_SECTION_BREAK) e++;
            if (n_parts > 0 && ends[n_parts - 1] - starts[n_parts - 1] < MIN_SECTION_BYTES) {
                /* a heading-only section: merged with this one (the break becomes a blank line) */
                u->text[ends[n_parts - 1]] = '\n';
                ends[n_parts - 1] = e;
            } else {
                starts[n_parts] = i, ends[n_parts] = e;
                n_parts++;
            }
            i = e + 1;
        }
        if (n_parts > 0 && ends[n_parts - 1] < u->len) ends[n_parts - 1] = u->len; /* > 4096 sections */
        for (size_t p = 0; p < n_parts; p++)
            for (size_t k = starts[p]; k < ends[p]; k++)
                if (u->text[k] == MOME_CORPUS_SECTION_BREAK) u->text[k] = '\n';
    } else {
        starts[0] = 0, ends[0] = u->len, n_parts = 1;
    }
    for (size_t p = 0; p < n_parts; p++) {
        size_t len = ends[p] - starts[p];
        if (len == 0) continue;
        if (cap_bytes && d->bytes > 0 && d->bytes + len > cap_bytes) {
            d->capped = 1;
            return 1;
        }
        char *text = mome_malloc(len + 1);
        memcpy(text, u->text + starts[p], len);
        text[len] = 0;
        char *source = u->kind == UNIT_HTML ? xasprintf("%s#section-%zu", u->key, p + 1) : xstrdup(u->key);
        add_doc(d, source, text, len);
        d->bytes += len;
    }
    return 0;
}

/* Processes the domain's units in hash order until the byte cap; fills d->docs. */
static int collect_domain(cdomain *d, size_t cap_bytes, int n_workers) {
    qsort(d->units, d->n_units, sizeof *d->units, cmp_unit);
    double t0 = mome_now();
    size_t i = 0;
    int stop = 0;
    while (i < d->n_units && !stop) {
        size_t end = i + BATCH_UNITS < d->n_units ? i + BATCH_UNITS : d->n_units;
        process_batch(d->units, i, end, n_workers);
        for (size_t k = i; k < end; k++) {
            unit *u = &d->units[k];
            if (!stop) {
                if (u->failed) {
                    if (d->dir) {
                        int rc = mome_error_set(MOME_EIO, "domain %s: %s", d->name, u->err);
                        return rc;
                    }
                    mome_warn("%s: skipping %s", d->name, u->err);
                    d->n_failed++;
                } else {
                    stop = unit_to_docs(d, u, cap_bytes);
                    if (!stop) d->units_used++;
                }
            }
            mome_free(u->text);
            u->text = NULL;
        }
        i = end;
    }
    char b[32];
    mome_info("  %s: %zu documents, %s bytes from %zu of %zu files%s in %.1f s", d->name, d->n_docs,
              human(d->bytes, b, sizeof b), d->units_used, d->n_units, d->capped ? " (byte cap reached)" : "",
              mome_now() - t0);
    if (d->n_so) mome_info("  %s: skipped %zu man pages that are only .so redirects", d->name, d->n_so);
    if (d->n_generated) mome_info("  %s: skipped %zu generated codec tables", d->name, d->n_generated);
    if (d->n_repaired_bytes)
        mome_warn("%s: replaced %zu invalid UTF-8 bytes by U+FFFD", d->name, d->n_repaired_bytes);
    return MOME_OK;
}

/* ------------------------------------------------------------------------------------------------------------
 * Default corpus sources
 * ------------------------------------------------------------------------------------------------------------ */

typedef struct {
    const char *domain;
    const char *man_pkg;
    const char *ref_pkg;
    const char *ref_suffix;
} default_domain;

static const default_domain default_domains[] = {
    {"en", "manpages", "debian-reference-en", ".en.html"},
    {"fr", "manpages-fr", "debian-reference-fr", ".fr.html"},
    {"de", "manpages-de", "debian-reference-de", ".de.html"},
    {"python", NULL, NULL, NULL},
};
#define N_DEFAULT_DOMAINS 4

static const char *const python_excluded_dirs[] = {"site-packages", "dist-packages", "test", "tests",
                                                   "idle_test", "__pycache__", NULL};

static json_t *source_json(const char *pkg, const char *version, const char *kind, const char *pattern, size_t files,
                           size_t links) {
    return json_pack("{s:s, s:s, s:s, s:s, s:I, s:I}", "package", pkg, "version", version ? version : "", "kind", kind,
                     "files", pattern, "n_files", (json_int_t)files, "n_symlinks_skipped", (json_int_t)links);
}

static int list_default_domain(cdomain *d, const default_domain *dd, char **versions) {
    size_t cap = 0, nf = 0, nl = 0;
    d->sources = json_array();
    d->excluded = json_array();
    if (dd->man_pkg) {
        int rc = list_package(d, &cap, dd->man_pkg, "/usr/share/man/", ".gz", UNIT_MAN, &nf, &nl);
        if (rc) return rc;
        json_array_append_new(d->sources,
                              source_json(dd->man_pkg, versions[0], "man", "/usr/share/man/**/*.gz", nf, nl));
        size_t nman = nf, nman_links = nl;
        char pattern[128];
        snprintf(pattern, sizeof pattern, "/usr/share/debian-reference/*%s", dd->ref_suffix);
        rc = list_package(d, &cap, dd->ref_pkg, "/usr/share/debian-reference/", dd->ref_suffix, UNIT_HTML, &nf, &nl);
        if (rc) return rc;
        json_array_append_new(d->sources, source_json(dd->ref_pkg, versions[1], "html", pattern, nf, nl));
        json_array_append_new(d->excluded,
                              json_string("man pages that are symlinks or only .so redirects to another page"));
        mome_info("collecting %s: %zu man pages (%zu symlinks skipped) from %s, %zu reference chapters from %s",
                  d->name, nman, nman_links, dd->man_pkg, nf, dd->ref_pkg);
        return MOME_OK;
    }
    char dir[1024], version[64];
    int rc = python_stdlib(dir, sizeof dir, version, sizeof version);
    if (rc) return rc;
    walk_filter f = {python_excluded_dirs, ".py", UNIT_PYTHON};
    rc = walk_dir(d, &cap, dir, &f, &nf);
    if (rc) return rc;
    /* the Debian package that ships the stdlib, for the manifest */
    char owner[256] = "";
    char *q = xasprintf("%s/os.py", dir), *qq = shell_quote(q);
    char *cmd = xasprintf("dpkg-query -S %s 2>/dev/null", qq);
    char *out;
    size_t len;
    int st;
    if (run_capture(cmd, &out, &len, &st) == MOME_OK) {
        char *colon = strstr(out, ": ");
        if (st == 0 && colon) {
            *colon = 0;
            snprintf(owner, sizeof owner, "%s", out);
        }
        mome_free(out);
    }
    mome_free(cmd);
    mome_free(qq);
    mome_free(q);
    char pattern[1100];
    snprintf(pattern, sizeof pattern, "%s/**/*.py", dir);
    json_array_append_new(d->sources, json_pack("{s:s, s:s, s:s, s:s, s:s, s:I}", "package", owner, "python",
                                                SYSTEM_PYTHON, "python_version", version, "kind", "python",
                                                "files", pattern, "n_files", (json_int_t)nf));
    for (const char *const *x = python_excluded_dirs; *x; x++)
        json_array_append_new(d->excluded, json_sprintf("directories named %s/", *x));
    json_array_append_new(d->excluded, json_string("generated codec tables (files made by gencodec.py)"));
    mome_info("collecting %s: %zu standard library files under %s (python %s; excluding site-packages, "
              "dist-packages, test, tests, idle_test)",
              d->name, nf, dir, version);
    return MOME_OK;
}

/* ------------------------------------------------------------------------------------------------------------
 * Tokenising and balancing
 * ------------------------------------------------------------------------------------------------------------ */

typedef struct {
    const mome_tokenizer *tok;
    cdomain *domains;
    size_t n_domains;
    size_t next_dom, next_doc;
    pthread_mutex_t lock;
    int rc;
    char err[512];
} encode_queue;

static void *encode_main(void *arg) {
    encode_queue *q = arg;
    for (;;) {
        pthread_mutex_lock(&q->lock);
        while (q->next_dom < q->n_domains && q->next_doc >= q->domains[q->next_dom].n_docs)
            q->next_dom++, q->next_doc = 0;
        cdoc *c = NULL;
        if (q->next_dom < q->n_domains && q->rc == MOME_OK) c = &q->domains[q->next_dom].docs[q->next_doc++];
        pthread_mutex_unlock(&q->lock);
        if (!c) return NULL;
        size_t cap = 0;
        c->n_ids = 0;
        int rc = mome_tokenizer_encode(q->tok, c->text, c->len, &c->ids, &c->n_ids, &cap);
        if (rc) {
            pthread_mutex_lock(&q->lock);
            if (q->rc == MOME_OK) {
                q->rc = rc;
                snprintf(q->err, sizeof q->err, "encoding %s: %s", c->source, mome_error_message());
            }
            pthread_mutex_unlock(&q->lock);
            return NULL;
        }
    }
}

static int encode_all(const mome_tokenizer *tok, cdomain *domains, size_t n, int n_workers) {
    encode_queue q;
    memset(&q, 0, sizeof q);
    q.tok = tok;
    q.domains = domains;
    q.n_domains = n;
    pthread_mutex_init(&q.lock, NULL);
    pthread_t th[MAX_WORKERS];
    int started = 0;
    for (int t = 1; t < n_workers; t++)
        if (pthread_create(&th[started], NULL, encode_main, &q) == 0) started++;
    encode_main(&q);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    pthread_mutex_destroy(&q.lock);
    if (q.rc) return mome_error_set(q.rc, "%s", q.err);
    return MOME_OK;
}

static size_t doc_tokens(const cdoc *c) { return c->n_ids + 2; } /* BOS ids EOS */

static const cdoc *sort_docs_base;
static int cmp_doc_idx(const void *a, const void *b) {
    const cdoc *x = &sort_docs_base[*(const size_t *)a], *y = &sort_docs_base[*(const size_t *)b];
    if (x->order != y->order) return x->order < y->order ? -1 : 1;
    return strcmp(x->source, y->source);
}

/* Truncates document c so that it has at most max_tokens tokens (with BOS/EOS), cutting its text at a line (or
 * at least UTF-8 character) boundary and re-encoding it. Returns 1 when the result is non-empty. */
static int truncate_doc(const mome_tokenizer *tok, cdoc *c, size_t max_tokens) {
    if (max_tokens < 3) return 0;
    size_t keep = max_tokens - 2;
    if (keep > c->n_ids) keep = c->n_ids;
    size_t bytes = 0;
    for (size_t i = 0; i < keep; i++) {
        size_t l = 0;
        mome_tokenizer_token_bytes(tok, c->ids[i], &l);
        bytes += l;
    }
    if (bytes > c->len) bytes = c->len;
    for (int attempt = 0; attempt < 64 && bytes > 0; attempt++) {
        size_t cut = bytes;
        size_t nl = cut;
        while (nl > 0 && c->text[nl - 1] != '\n') nl--;
        if (nl >= cut / 2 && nl > 0)
            cut = nl;
        else
            while (cut > 0 && ((unsigned char)c->text[cut] & 0xC0) == 0x80) cut--;
        uint32_t *ids = NULL;
        size_t n = 0, cap = 0;
        if (mome_tokenizer_encode(tok, c->text, cut, &ids, &n, &cap) != MOME_OK) {
            free(ids);
            return 0;
        }
        if (n + 2 <= max_tokens && cut > 0) {
            free(c->ids);
            c->ids = ids;
            c->n_ids = n;
            c->len = cut;
            c->text[cut] = 0;
            c->truncated = 1;
            return 1;
        }
        free(ids);
        bytes = cut - cut / 10 - 1 < cut ? cut - cut / 10 - 1 : 0;
        if (cut <= 1) break;
    }
    return 0;
}

/* Keeps the documents of one split (val = 0/1) whose tokens fit in `target`: whole documents in hash order
 * while they fit, then one truncated document filling the rest. */
static void trim_split(const mome_tokenizer *tok, cdomain *d, int val, size_t target) {
    size_t *idx = mome_malloc((d->n_docs + 1) * sizeof *idx), n = 0;
    for (size_t i = 0; i < d->n_docs; i++)
        if (d->docs[i].val == val) idx[n++] = i;
    sort_docs_base = d->docs;
    qsort(idx, n, sizeof *idx, cmp_doc_idx);
    size_t total = 0;
    long first_skipped = -1;
    for (size_t k = 0; k < n; k++) {
        cdoc *c = &d->docs[idx[k]];
        if (total + doc_tokens(c) <= target) {
            c->kept = 1;
            total += doc_tokens(c);
        } else {
            c->kept = 0;
            if (first_skipped < 0) first_skipped = (long)idx[k];
        }
    }
    if (first_skipped >= 0 && total < target) {
        cdoc *c = &d->docs[first_skipped];
        if (truncate_doc(tok, c, target - total)) {
            c->kept = 1;
            total += doc_tokens(c);
            d->truncated[val]++;
        }
    }
    mome_free(idx);
}

/* ------------------------------------------------------------------------------------------------------------
 * Writing
 * ------------------------------------------------------------------------------------------------------------ */

static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return mome_error_set(MOME_EIO, "%s: %s", path, strerror(errno));
    int r = fsync(fd);
    close(fd);
    if (r != 0) return mome_error_set(MOME_EIO, "fsync %s: %s", path, strerror(errno));
    return MOME_OK;
}

/* rename tmp -> path, then fsync the directory of path. */
static int commit_file(const char *tmp, const char *path, const char *dir) {
    int rc = fsync_path(tmp);
    if (rc) return rc;
    if (rename(tmp, path) != 0) return mome_error_set(MOME_EIO, "rename %s -> %s: %s", tmp, path, strerror(errno));
    return mome_fsync_dir(dir);
}

/* A JSON string of s, with invalid UTF-8 bytes (possible in user file names) replaced by U+FFFD. */
static json_t *json_string_lossy(const char *s) {
    json_t *j = json_string(s);
    if (j) return j;
    size_t len = strlen(s);
    char *t = mome_malloc(len + 1);
    memcpy(t, s, len + 1);
    utf8_repair(&t, &len);
    j = json_stringn(t, len);
    mome_free(t);
    return j;
}

static int write_jsonl(const cdomain *d, int val, const char *out_dir) {
    sbuf b = {0};
    for (size_t i = 0; i < d->n_docs; i++) {
        const cdoc *c = &d->docs[i];
        if (!c->kept || c->val != val) continue;
        json_t *o = json_object();
        json_object_set_new(o, "source", json_string_lossy(c->source));
        json_t *t = json_stringn(c->text, c->len);
        if (!t) {
            json_decref(o);
            free(b.p);
            return mome_error_set(MOME_EINVAL, "%s: text is not valid UTF-8", c->source);
        }
        json_object_set_new(o, "text", t);
        char *line = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        MOME_CHECK(line, "json_dumps failed for %s", c->source);
        sb_puts(&b, line);
        sb_putc(&b, '\n');
        free(line);
    }
    char *dir = xasprintf("%s/raw/%s", out_dir, d->name);
    int rc = mome_mkdirs(dir);
    if (rc == MOME_OK) {
        char *path = xasprintf("%s/%s.jsonl", dir, val ? "val" : "train");
        rc = mome_write_file_atomic(path, b.p ? b.p : "", b.n);
        mome_free(path);
    }
    mome_free(dir);
    free(b.p);
    return rc;
}

/* The kept documents of one split as BOS ids EOS ...; returns the stream and the document start offsets. */
static void build_stream(const cdomain *d, int val, uint32_t **ids, size_t *n, uint64_t **offs, size_t *n_docs) {
    size_t total = 0, nd = 0;
    for (size_t i = 0; i < d->n_docs; i++)
        if (d->docs[i].kept && d->docs[i].val == val) total += doc_tokens(&d->docs[i]), nd++;
    uint32_t *s = mome_malloc((total + 1) * sizeof *s);
    uint64_t *o = mome_malloc((nd + 1) * sizeof *o);
    size_t p = 0, k = 0;
    for (size_t i = 0; i < d->n_docs; i++) {
        const cdoc *c = &d->docs[i];
        if (!c->kept || c->val != val) continue;
        o[k++] = p;
        s[p++] = MOME_TOK_BOS;
        if (c->n_ids) memcpy(s + p, c->ids, c->n_ids * sizeof *s);
        p += c->n_ids;
        s[p++] = MOME_TOK_EOS;
    }
    *ids = s, *n = total, *offs = o, *n_docs = nd;
}

static int write_shard(const cdomain *d, const char *out_dir, const mome_tokenizer *tok) {
    char *dir = xasprintf("%s/tokens", out_dir);
    char *path = xasprintf("%s/%s.h5", dir, d->name);
    char *tmp = xasprintf("%s/.%s.h5.tmp", dir, d->name);
    int rc = mome_mkdirs(dir);
    hid_t f = -1;
    uint32_t *ids[2] = {NULL, NULL};
    uint64_t *offs[2] = {NULL, NULL};
    size_t n[2] = {0, 0}, nd[2] = {0, 0};
    if (rc) goto done;
    f = mome_h5_create(tmp);
    if (f < 0) {
        rc = mome_error_wrap(MOME_EIO, "creating %s", tmp);
        goto done;
    }
    const int vocab = mome_tokenizer_vocab_size(tok);
    for (int s = 0; s < 2 && rc == MOME_OK; s++) {
        const char *name = s ? "val" : "train";
        char docs_name[16];
        snprintf(docs_name, sizeof docs_name, "%s_docs", name);
        build_stream(d, s, &ids[s], &n[s], &offs[s], &nd[s]);
        hsize_t dims[1] = {n[s]};
        if (vocab <= 65536) {
            uint16_t *v = mome_malloc((n[s] + 1) * sizeof *v);
            for (size_t i = 0; i < n[s]; i++) v[i] = (uint16_t)ids[s][i];
            rc = mome_h5_write_u16(f, name, v, 1, dims);
            mome_free(v);
        } else {
            rc = mome_h5_write_u32(f, name, ids[s], 1, dims);
        }
        if (rc == MOME_OK) {
            hsize_t ddims[1] = {nd[s]};
            rc = mome_h5_write_u64(f, docs_name, offs[s], 1, ddims);
        }
    }
    if (rc == MOME_OK) rc = mome_h5_attr_set_str(f, "domain", d->name);
    if (rc == MOME_OK) rc = mome_h5_attr_set_i64(f, "vocab_size", vocab);
    if (rc == MOME_OK) rc = mome_h5_attr_set_str(f, "tokenizer_hash", mome_tokenizer_hash(tok));
    if (rc == MOME_OK) rc = mome_h5_attr_set_i64(f, "n_docs", (int64_t)(nd[0] + nd[1]));
    if (rc == MOME_OK) rc = mome_h5_attr_set_i64(f, "n_train_docs", (int64_t)nd[0]);
    if (rc == MOME_OK) rc = mome_h5_attr_set_i64(f, "n_val_docs", (int64_t)nd[1]);
    if (rc == MOME_OK) rc = mome_h5_attr_set_str(f, "format", "mome-tokens");
    if (H5Fclose(f) < 0 && rc == MOME_OK) rc = mome_error_set(MOME_EIO, "%s: closing the HDF5 file failed", tmp);
    f = -1;
    if (rc == MOME_OK) rc = commit_file(tmp, path, dir);
done:
    if (rc != MOME_OK) {
        rc = mome_error_wrap(rc, "writing %s", path);
        unlink(tmp);
    }
    for (int s = 0; s < 2; s++) {
        mome_free(ids[s]);
        mome_free(offs[s]);
    }
    mome_free(tmp);
    mome_free(path);
    mome_free(dir);
    return rc;
}

static int write_tokenizer(const mome_tokenizer *tok, const char *out_dir) {
    char *path = xasprintf("%s/tokenizer.h5", out_dir);
    char *tmp = xasprintf("%s/.tokenizer.h5.tmp", out_dir);
    int rc = mome_tokenizer_save(tok, tmp);
    if (rc == MOME_OK) rc = commit_file(tmp, path, out_dir);
    if (rc) {
        rc = mome_error_wrap(rc, "writing %s", path);
        unlink(tmp);
    }
    mome_free(tmp);
    mome_free(path);
    return rc;
}

/* Removes tokens/<x>.h5 of domains not in this build (they would carry another tokenizer's ids) and leftover
 * temporary files. */
static void remove_stale_shards(const char *out_dir, const cdomain *domains, size_t n) {
    char *dir = xasprintf("%s/tokens", out_dir);
    DIR *dp = opendir(dir);
    if (dp) {
        struct dirent *e;
        while ((e = readdir(dp)) != NULL) {
            size_t l = strlen(e->d_name);
            int ours = 0, tmp = e->d_name[0] == '.' && ends_with(e->d_name, ".h5.tmp");
            if (!tmp && !(l > 3 && ends_with(e->d_name, ".h5"))) continue;
            for (size_t i = 0; i < n && !tmp; i++) {
                char want[64];
                snprintf(want, sizeof want, "%s.h5", domains[i].name);
                if (strcmp(want, e->d_name) == 0) ours = 1;
            }
            if (ours) continue;
            char *p = xasprintf("%s/%s", dir, e->d_name);
            if (!tmp) mome_warn("removing %s: a shard of an earlier build, not one of this build's domains", p);
            unlink(p);
            mome_free(p);
        }
        closedir(dp);
    }
    mome_free(dir);
}

static json_t *split_json(const size_t v[2]) {
    return json_pack("{s:I, s:I}", "train", (json_int_t)v[0], "val", (json_int_t)v[1]);
}

static int write_manifest(const mome_data_build_opts *o, const cdomain *domains, size_t n,
                          const mome_tokenizer *tok, double seconds, double balance_spread, size_t sample_bytes) {
    json_t *m = json_object();
    json_object_set_new(m, "format", json_string("mome-corpus"));
    json_object_set_new(m, "format_version", json_integer(1));
    json_object_set_new(m, "corpus", json_string(o->domains && o->n_domains ? "user" : "default"));
    json_object_set_new(m, "vocab_size", json_integer(mome_tokenizer_vocab_size(tok)));
    json_object_set_new(m, "tokenizer_hash", json_string(mome_tokenizer_hash(tok)));
    json_object_set_new(m, "token_dtype", json_string(mome_tokenizer_vocab_size(tok) <= 65536 ? "uint16" : "uint32"));
    json_object_set_new(m, "val_fraction", json_real(o->val_fraction));
    json_object_set_new(m, "split",
                        json_string("a document is val when fnv1a64(source) % 10000 < val_fraction * 10000"));
    json_object_set_new(m, "max_bytes_per_domain", json_integer((json_int_t)o->max_bytes_per_domain));
    json_object_set_new(m, "tokenizer_sample_bytes_per_domain", json_integer((json_int_t)sample_bytes));
    json_object_set_new(m, "balance_tolerance", json_real(o->balance_tolerance));
    json_object_set_new(m, "balance_spread", json_real(balance_spread));
    json_object_set_new(m, "build_seconds", json_real(round(seconds * 100.0) / 100.0));
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        const cdomain *d = &domains[i];
        json_t *x = json_object();
        json_object_set_new(x, "name", json_string(d->name));
        json_object_set(x, "sources", d->sources);
        json_object_set(x, "excluded", d->excluded);
        json_object_set_new(x, "files_listed", json_integer((json_int_t)d->n_units));
        json_object_set_new(x, "files_used", json_integer((json_int_t)d->units_used));
        json_object_set_new(x, "skipped",
                            json_pack("{s:I, s:I, s:I, s:I, s:I}", "so_redirects", (json_int_t)d->n_so, "empty",
                                      (json_int_t)d->n_empty, "binary", (json_int_t)d->n_binary, "generated_tables",
                                      (json_int_t)d->n_generated, "failed", (json_int_t)d->n_failed));
        json_object_set_new(x, "invalid_utf8_bytes_replaced", json_integer((json_int_t)d->n_repaired_bytes));
        json_object_set_new(x, "byte_cap_reached", json_boolean(d->capped));
        json_object_set_new(x, "bytes_collected", json_integer((json_int_t)d->bytes));
        json_object_set_new(x, "documents_before_balance", split_json(d->docs_before));
        json_object_set_new(x, "tokens_before_balance", split_json(d->tokens_before));
        json_object_set_new(x, "documents", split_json(d->docs_after));
        json_object_set_new(x, "bytes", split_json(d->bytes_after));
        json_object_set_new(x, "tokens", split_json(d->tokens_after));
        json_object_set_new(x, "truncated_documents", split_json(d->truncated));
        char shard[64], tr[64], va[64];
        snprintf(shard, sizeof shard, "tokens/%s.h5", d->name);
        snprintf(tr, sizeof tr, "raw/%s/train.jsonl", d->name);
        snprintf(va, sizeof va, "raw/%s/val.jsonl", d->name);
        json_object_set_new(x, "files", json_pack("{s:s, s:s, s:s}", "tokens", shard, "train", tr, "val", va));
        json_array_append_new(arr, x);
    }
    json_object_set_new(m, "domains", arr);
    char *text = json_dumps(m, JSON_INDENT(2));
    json_decref(m);
    MOME_CHECK(text, "json_dumps failed for the manifest");
    char *path = xasprintf("%s/manifest.json", o->out_dir);
    size_t tl = strlen(text);
    char *withnl = mome_malloc(tl + 2);
    memcpy(withnl, text, tl);
    withnl[tl] = '\n';
    int rc = mome_write_file_atomic(path, withnl, tl + 1);
    mome_free(withnl);
    free(text);
    mome_free(path);
    return rc;
}

/* ------------------------------------------------------------------------------------------------------------
 * The build
 * ------------------------------------------------------------------------------------------------------------ */

void mome_data_build_defaults(mome_data_build_opts *o) {
    memset(o, 0, sizeof *o);
    o->out_dir = "data/default";
    o->vocab_size = 4096;
    o->domains = NULL;
    o->n_domains = 0;
    o->val_fraction = 0.05;
    /* The smallest default domain (en) has ~4 MB of text; 6 MiB per domain leaves room for the others to reach
     * en's token count after balancing while keeping the build to a few minutes. */
    o->max_bytes_per_domain = (size_t)6 << 20;
    o->tokenizer_sample_bytes = (size_t)1 << 20;
    o->balance_tolerance = 0.05;
}

static int valid_domain_name(const char *s) {
    if (!s[0]) return 0;
    for (; *s; s++)
        if (!islower((unsigned char)*s) && !isdigit((unsigned char)*s) && *s != '_' && *s != '-') return 0;
    return 1;
}

static int check_opts(const mome_data_build_opts *o) {
    if (!o->out_dir || !o->out_dir[0]) return mome_error_set(MOME_EINVAL, "out_dir is empty");
    if (o->vocab_size < MOME_TOK_FIRST_MERGE || o->vocab_size > 65536)
        return mome_error_set(MOME_EINVAL, "vocab_size %d outside [%d, 65536]", o->vocab_size,
                              MOME_TOK_FIRST_MERGE);
    if (!(o->val_fraction >= 0.0 && o->val_fraction < 0.5))
        return mome_error_set(MOME_EINVAL, "val_fraction %g outside [0, 0.5)", o->val_fraction);
    if (!(o->balance_tolerance > 0.0 && o->balance_tolerance < 1.0))
        return mome_error_set(MOME_EINVAL, "balance_tolerance %g outside (0, 1)", o->balance_tolerance);
    if (o->n_domains > MOME_MAX_DOMAINS)
        return mome_error_set(MOME_EINVAL, "%zu domains, at most %d", o->n_domains, MOME_MAX_DOMAINS);
    for (size_t i = 0; o->domains && i < o->n_domains; i++) {
        const mome_domain_spec *s = &o->domains[i];
        if (strnlen(s->name, sizeof s->name) >= sizeof s->name || !valid_domain_name(s->name))
            return mome_error_set(MOME_EINVAL, "domain name '%.32s' must match [a-z0-9_-]+ (at most 31 "
                                  "characters)", s->name);
        if (!s->path || !s->path[0])
            return mome_error_set(MOME_EINVAL, "domain %s has no directory", s->name);
        for (size_t j = 0; j < i; j++)
            if (strcmp(o->domains[j].name, s->name) == 0)
                return mome_error_set(MOME_EINVAL, "domain %s is given twice", s->name);
        struct stat sb;
        if (stat(s->path, &sb) != 0 || !S_ISDIR(sb.st_mode))
            return mome_error_set(MOME_ENOENT, "domain %s: %s is not a directory", s->name, s->path);
    }
    return MOME_OK;
}

static int build(const mome_data_build_opts *o, cdomain *domains, size_t n, double t_start) {
    int rc;
    const int workers = n_workers_default();
    /* 1. collect */
    mome_info("collecting text (%d worker threads, cap %zu bytes per domain)...", workers, o->max_bytes_per_domain);
    for (size_t i = 0; i < n; i++) {
        rc = collect_domain(&domains[i], o->max_bytes_per_domain, workers);
        if (rc) return rc;
    }
    /* 2. split */
    for (size_t i = 0; i < n; i++) {
        cdomain *d = &domains[i];
        for (size_t k = 0; k < d->n_docs; k++) {
            d->docs[k].val = mome_corpus_is_val(d->docs[k].source, o->val_fraction);
            d->docs_before[d->docs[k].val]++;
        }
        if (d->docs_before[0] == 0)
            return mome_error_set(MOME_EINVAL, "domain %s: no training documents (%zu documents collected)", d->name,
                                  d->n_docs);
        if (d->docs_before[1] == 0 && o->val_fraction > 0)
            mome_warn("%s: no document fell into the validation split (%zu documents, val_fraction %g)", d->name,
                      d->n_docs, o->val_fraction);
    }
    /* 3. tokenizer */
    size_t n_texts = 0, sample_total = 0;
    for (size_t i = 0; i < n; i++) n_texts += domains[i].n_docs;
    const char **texts = mome_malloc((n_texts + 1) * sizeof *texts);
    size_t *lens = mome_malloc((n_texts + 1) * sizeof *lens);
    n_texts = 0;
    for (size_t i = 0; i < n; i++) {
        size_t used = 0;
        for (size_t k = 0; k < domains[i].n_docs && used < o->tokenizer_sample_bytes; k++) {
            const cdoc *c = &domains[i].docs[k];
            if (c->val) continue;
            size_t l = c->len < o->tokenizer_sample_bytes - used ? c->len : o->tokenizer_sample_bytes - used;
            texts[n_texts] = c->text;
            lens[n_texts++] = l;
            used += l;
        }
        sample_total += used;
    }
    char b1[32], b2[32];
    mome_info("training tokenizer: vocab %d on %s bytes of training text (%s per domain at most)...", o->vocab_size,
              human(sample_total, b1, sizeof b1), human(o->tokenizer_sample_bytes, b2, sizeof b2));
    double t0 = mome_now();
    mome_tokenizer *tok = NULL;
    rc = mome_tokenizer_train(&tok, texts, lens, n_texts, o->vocab_size);
    mome_free(texts);
    mome_free(lens);
    if (rc) return mome_error_wrap(rc, "training the tokenizer");
    mome_info("  tokenizer %s trained in %.1f s", mome_tokenizer_hash(tok), mome_now() - t0);
    /* 4. encode and balance */
    t0 = mome_now();
    mome_info("encoding documents...");
    rc = encode_all(tok, domains, n, workers);
    if (rc) goto out;
    size_t min_train = SIZE_MAX;
    const char *min_name = "";
    for (size_t i = 0; i < n; i++) {
        cdomain *d = &domains[i];
        for (size_t k = 0; k < d->n_docs; k++) d->tokens_before[d->docs[k].val] += doc_tokens(&d->docs[k]);
        if (d->tokens_before[0] < min_train) min_train = d->tokens_before[0], min_name = d->name;
        mome_info("  %s: %s train tokens, %s val tokens before balancing", d->name,
                  human(d->tokens_before[0], b1, sizeof b1), human(d->tokens_before[1], b2, sizeof b2));
    }
    mome_info("  encoded in %.1f s; balancing every domain to %s's %s train tokens", mome_now() - t0, min_name,
              human(min_train, b1, sizeof b1));
    size_t max_after = 0, min_after = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        cdomain *d = &domains[i];
        double ratio = (double)min_train / (double)d->tokens_before[0];
        trim_split(tok, d, 0, min_train);
        trim_split(tok, d, 1, (size_t)llround(ratio * (double)d->tokens_before[1]));
        for (size_t k = 0; k < d->n_docs; k++) {
            const cdoc *c = &d->docs[k];
            if (!c->kept) continue;
            d->tokens_after[c->val] += doc_tokens(c);
            d->docs_after[c->val]++;
            d->bytes_after[c->val] += c->len;
        }
        if (d->tokens_after[0] > max_after) max_after = d->tokens_after[0];
        if (d->tokens_after[0] < min_after) min_after = d->tokens_after[0];
        mome_info("%s: %s train tokens (%zu docs), %s val tokens (%zu docs)", d->name,
                  human(d->tokens_after[0], b1, sizeof b1), d->docs_after[0], human(d->tokens_after[1], b2, sizeof b2),
                  d->docs_after[1]);
    }
    double spread = max_after ? (double)(max_after - min_after) / (double)max_after : 0.0;
    if (!(spread <= o->balance_tolerance)) {
        rc = mome_error_set(MOME_EINVAL,
                            "balancing failed: train token counts range from %zu to %zu (spread %.3f > tolerance %.3f)",
                            min_after, max_after, spread, o->balance_tolerance);
        goto out;
    }
    /* 5. write */
    mome_info("writing %s ...", o->out_dir);
    rc = mome_mkdirs(o->out_dir);
    if (rc == MOME_OK) {
        /* an earlier build's manifest goes first: a manifest is only ever next to a complete build */
        char *mpath = xasprintf("%s/manifest.json", o->out_dir);
        if (unlink(mpath) != 0 && errno != ENOENT)
            rc = mome_error_set(MOME_EIO, "cannot remove the old %s: %s", mpath, strerror(errno));
        mome_free(mpath);
    }
    if (rc == MOME_OK) rc = write_tokenizer(tok, o->out_dir);
    for (size_t i = 0; i < n && rc == MOME_OK; i++) {
        rc = write_jsonl(&domains[i], 0, o->out_dir);
        if (rc == MOME_OK) rc = write_jsonl(&domains[i], 1, o->out_dir);
        if (rc == MOME_OK) rc = write_shard(&domains[i], o->out_dir, tok);
    }
    if (rc == MOME_OK) remove_stale_shards(o->out_dir, domains, n);
    if (rc == MOME_OK) {
        double secs = mome_now() - t_start;
        rc = write_manifest(o, domains, n, tok, secs, spread, o->tokenizer_sample_bytes);
        if (rc == MOME_OK)
            mome_info("corpus written to %s in %.1f s (%zu domains, vocab %d, train token spread %.2f%%)", o->out_dir,
                      secs, n, mome_tokenizer_vocab_size(tok), 100.0 * spread);
    }
out:
    mome_tokenizer_free(tok);
    return rc;
}

int mome_data_build(const mome_data_build_opts *opts) {
    double t_start = mome_now();
    int rc = check_opts(opts);
    if (rc) return rc;
    mome_h5_quiet();
    const int user = opts->domains && opts->n_domains > 0;
    size_t n = user ? opts->n_domains : N_DEFAULT_DOMAINS;
    cdomain *domains = mome_calloc(n, sizeof *domains);
    if (user) {
        for (size_t i = 0; i < n && rc == MOME_OK; i++) {
            cdomain *d = &domains[i];
            snprintf(d->name, sizeof d->name, "%s", opts->domains[i].name);
            d->dir = opts->domains[i].path;
            size_t cap = 0, nf = 0;
            walk_filter f = {NULL, NULL, UNIT_FILE};
            rc = walk_dir(d, &cap, d->dir, &f, &nf);
            d->sources = json_array();
            d->excluded = json_array();
            json_array_append_new(d->sources, json_pack("{s:s, s:s, s:I}", "kind", "directory", "dir", d->dir,
                                                        "n_files", (json_int_t)nf));
            if (rc == MOME_OK && nf == 0)
                rc = mome_error_set(MOME_ENOENT, "domain %s: no regular file under %s", d->name, d->dir);
            if (rc == MOME_OK) mome_info("collecting %s: %zu files under %s", d->name, nf, d->dir);
        }
    } else {
        /* every package first, so that one message names all that are missing */
        const char *pkgs[2 * N_DEFAULT_DOMAINS + 1];
        size_t np = 0;
        for (size_t i = 0; i < N_DEFAULT_DOMAINS; i++) {
            if (!default_domains[i].man_pkg) continue;
            pkgs[np++] = default_domains[i].man_pkg;
            pkgs[np++] = default_domains[i].ref_pkg;
        }
        pkgs[np++] = "groff-base";
        char *versions[2 * N_DEFAULT_DOMAINS + 1];
        rc = package_versions(pkgs, np, versions);
        if (rc == MOME_OK) {
            rc = mome_corpus_check_packages(pkgs, np);
            for (size_t i = 0, p = 0; i < N_DEFAULT_DOMAINS && rc == MOME_OK; i++) {
                cdomain *d = &domains[i];
                snprintf(d->name, sizeof d->name, "%s", default_domains[i].domain);
                rc = list_default_domain(d, &default_domains[i], versions + p);
                if (default_domains[i].man_pkg) p += 2;
            }
            for (size_t i = 0; i < np; i++) mome_free(versions[i]);
        }
    }
    if (rc == MOME_OK) rc = build(opts, domains, n, t_start);
    for (size_t i = 0; i < n; i++) domain_free(&domains[i]);
    mome_free(domains);
    return rc;
}
