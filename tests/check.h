/* check.h — assertion macros, numerical comparisons and finite differences shared by the unit tests. Each test is
 * one translation unit: a failed check prints the file, the line, both values and the expectation, counts itself in
 * `failures`, and the test goes on; main returns non-zero when failures > 0 (check_summary). */
#ifndef MOME_TEST_CHECK_H
#define MOME_TEST_CHECK_H

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "mome/common.h"
#include "mome/rng.h"

static int failures = 0;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                              \
        }                                                                            \
    } while (0)
/* A call that returns a mome status; on mismatch also prints the recorded error message. */
#define CHECK_RC(expr, want)                                                                                     \
    do {                                                                                                         \
        int got_ = (expr);                                                                                       \
        if (got_ != (want)) {                                                                                    \
            fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d (%s); message: %s\n", __FILE__, __LINE__,   \
                    #expr, got_, mome_strerror(got_), (int)(want), mome_strerror(want), mome_error_message()); \
            failures++;                                                                                          \
        }                                                                                                        \
    } while (0)
#define CHECK_CONTAINS(hay, needle)                                                                             \
    do {                                                                                                        \
        if (!strstr((hay), (needle))) {                                                                         \
            fprintf(stderr, "%s:%d: message \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__, (hay),       \
                    (needle));                                                                                  \
            failures++;                                                                                         \
        }                                                                                                       \
    } while (0)
#define CHECK_EQ_I(a, b)                                                                                   \
    do {                                                                                                   \
        long long a_ = (long long)(a), b_ = (long long)(b);                                                \
        if (a_ != b_) {                                                                                    \
            fprintf(stderr, "%s:%d: %s = %lld, expected %s = %lld\n", __FILE__, __LINE__, #a, a_, #b, b_); \
            failures++;                                                                                    \
        }                                                                                                  \
    } while (0)
#define CHECK_EQ_U64(a, b)                                                                                      \
    do {                                                                                                        \
        unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);                          \
        if (a_ != b_) {                                                                                         \
            fprintf(stderr, "%s:%d: %s = %llu, expected %s = %llu\n", __FILE__, __LINE__, #a, a_, #b, b_);      \
            failures++;                                                                                         \
        }                                                                                                       \
    } while (0)
/* Floats that must be equal bit for bit: tolerance 0. */
#define CHECK_EQ_F(a, b)                                                                                  \
    do {                                                                                                  \
        float a_ = (a), b_ = (b);                                                                         \
        if (memcmp(&a_, &b_, sizeof a_) != 0) {                                                           \
            fprintf(stderr, "%s:%d: %s = %.9g, expected %s = %.9g (bit-exact)\n", __FILE__, __LINE__, #a, \
                    (double)a_, #b, (double)b_);                                                          \
            failures++;                                                                                   \
        }                                                                                                 \
    } while (0)
#define CHECK_EQ_S(a, b)                                                                                \
    do {                                                                                                \
        if (strcmp((a), (b)) != 0) {                                                                    \
            fprintf(stderr, "%s:%d: %s = \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a, (a), (b)); \
            failures++;                                                                                 \
        }                                                                                               \
    } while (0)

/* Numerical comparisons: the error err_abs relative to scale against a tolerance, printed as one line per check
 * (so a log shows the measured margins), counted in `failures` when it exceeds the tolerance or is not finite. */
static inline void check_report(const char *what, double err_abs, double scale, double tol, const char *file,
                                int line) {
    const double rel = err_abs / (scale > 1e-30 ? scale : 1e-30);
    const int ok = rel <= tol && isfinite(rel);
    printf("%-64s max abs err %.3e  scale %.3e  rel %.3e  tol %.1e  %s\n", what, err_abs, scale, rel, tol,
           ok ? "ok" : "FAIL");
    if (!ok) {
        fprintf(stderr, "%s:%d: %s: relative error %.3e exceeds tolerance %.1e\n", file, line, what, rel, tol);
        failures++;
    }
}
#define REPORT(what, err, scale, tol) check_report(what, err, scale, tol, __FILE__, __LINE__)

static inline double max_abs(const float *a, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i]));
    return m;
}

/* Largest |a - b| (infinite when a difference is NaN). */
static inline double max_diff(const float *a, const float *b, size_t n) {
    double err = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - (double)b[i]);
        err = isnan(d) ? INFINITY : fmax(err, d);
    }
    return err;
}
/* a against b, relative to the largest |b|. */
#define COMPARE(what, a, b, n, tol) REPORT(what, max_diff(a, b, n), max_abs(b, n), tol)

/* Finite differences: the central difference (S(x + h) - S(x - h)) / 2h of a scalar S = s(ctx) against the analytic
 * gradient ana of n entries of x, every entry when n <= max_checks, else max_checks drawn from rng (x is restored
 * after each). With skip non-NULL, *skip is cleared before each entry and an entry whose evaluations set it is
 * skipped and counted: S is not differentiable there (a routing change). */
typedef double (*fd_scalar_fn)(void *ctx);
typedef struct {
    size_t checks;  /* entries evaluated */
    size_t skipped; /* of those, skipped */
    double err;     /* max |num - ana| over the others (infinite when one is NaN) */
} fd_result;

static inline fd_result fd_central(fd_scalar_fn s, void *ctx, float *x, const float *ana, size_t n, float h,
                                   size_t max_checks, mome_rng *rng, int *skip) {
    fd_result r = {n < max_checks ? n : max_checks, 0, 0.0};
    for (size_t c = 0; c < r.checks; c++) {
        const size_t i = n <= max_checks ? c : (size_t)mome_rng_below(rng, n);
        const float x0 = x[i];
        if (skip) *skip = 0;
        x[i] = x0 + h;
        const double sp = s(ctx);
        x[i] = x0 - h;
        const double sm = s(ctx);
        x[i] = x0;
        if (skip && *skip) {
            r.skipped++;
            continue;
        }
        const double num = (sp - sm) / (2.0 * (double)h);
        const double d = fabs(num - ana[i]);
        r.err = isnan(d) ? INFINITY : fmax(r.err, d);
    }
    return r;
}

/* The end of main: the count of failed checks and exit status 1, or a line saying all passed and 0. */
static inline int check_summary(const char *test) {
    if (failures) {
        fprintf(stderr, "%s: %d check(s) FAILED\n", test, failures);
        return 1;
    }
    printf("%s: all checks passed\n", test);
    return 0;
}

#endif
