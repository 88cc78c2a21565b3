/* fuzz.h — shared by the libFuzzer targets tests/fuzz/fuzz_*.c.
 *
 * A byte reader that turns the fuzzer's input into choices (the C counterpart of LLVM's FuzzedDataProvider:
 * integers are taken from the front, so the mutator's byte edits map to small, local changes of the choices),
 * and FUZZ_CHECK, which aborts with a message: the fuzzer reports any abort as a crash and saves the input.
 */
#ifndef MOME_FUZZ_H
#define MOME_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mome/common.h"

#define FUZZ_CHECK(cond, ...)                                                    \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "fuzz check failed: %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                        \
            fprintf(stderr, "\n");                                               \
            abort();                                                             \
        }                                                                        \
    } while (0)

typedef struct {
    const uint8_t *p;
    size_t n;
} fuzz_in;

static inline int fuzz_empty(const fuzz_in *in) { return in->n == 0; }

static inline uint8_t fuzz_u8(fuzz_in *in) {
    if (!in->n) return 0;
    in->n--;
    return *in->p++;
}

static inline uint32_t fuzz_u32(fuzz_in *in) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v = v << 8 | fuzz_u8(in);
    return v;
}

static inline uint64_t fuzz_u64(fuzz_in *in) { return (uint64_t)fuzz_u32(in) << 32 | fuzz_u32(in); }

/* A value in [lo, hi] (hi - lo < 2^32). */
static inline uint64_t fuzz_range(fuzz_in *in, uint64_t lo, uint64_t hi) {
    uint64_t span = hi - lo + 1;
    uint64_t v = span <= 256 ? fuzz_u8(in) : span <= 65536 ? (uint64_t)fuzz_u8(in) << 8 | fuzz_u8(in) : fuzz_u32(in);
    return lo + (span ? v % span : v);
}

/* Up to max bytes: a length byte-pair, then that many bytes (fewer at the end of the input). */
static inline const uint8_t *fuzz_bytes(fuzz_in *in, size_t max, size_t *len) {
    size_t want = (size_t)fuzz_range(in, 0, max < 65535 ? max : 65535);
    if (want > in->n) want = in->n;
    const uint8_t *p = in->p;
    in->p += want;
    in->n -= want;
    *len = want;
    return p;
}

/* A NUL-terminated copy of up to max bytes (caller frees). */
static inline char *fuzz_string(fuzz_in *in, size_t max) {
    size_t len;
    const uint8_t *p = fuzz_bytes(in, max, &len);
    char *s = malloc(len + 1);
    if (!s) abort();
    memcpy(s, p, len);
    s[len] = 0;
    return s;
}

/* Silences mome's warnings and the fuzz targets' own stdout (libFuzzer prints to stderr). */
static inline void fuzz_quiet(void) {
    mome_log_set_level(MOME_LOG_ERROR);
    if (!getenv("MOME_FUZZ_VERBOSE")) {
        if (!freopen("/dev/null", "w", stdout)) abort();
    }
}

#endif
