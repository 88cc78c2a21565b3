/* common.h — error codes, error messages, fatal checks, logging and allocation shared by every module.
 *
 * Two tiers of errors (see STYLE):
 *  - recoverable errors return a negative mome status code; the function that detects the problem records a
 *    message saying what and where (file, line, key, expected vs got) with mome_error_set(), and callers
 *    print it with mome_error_message();
 *  - fatal errors (broken invariants, out of memory) go through MOME_CHECK / MOME_FATAL, which print file and
 *    line and end the whole job with MPI_Abort when MPI is up, so that no rank is left waiting.
 */
#ifndef MOME_COMMON_H
#define MOME_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, value, description) */
#define MOME_ERRNO_MAP(X)                                   \
    X(OK, 0, "success")                                     \
    X(EINVAL, -1, "invalid argument")                       \
    X(EIO, -2, "input/output error")                        \
    X(ENOMEM, -3, "out of memory")                          \
    X(ENOENT, -4, "not found")                              \
    X(ECONFIG, -5, "configuration error")                   \
    X(EFORMAT, -6, "bad file format")                       \
    X(ECORRUPT, -7, "corrupted data")                       \
    X(EMISMATCH, -8, "mismatch")                            \
    X(EMPI, -9, "MPI error")                                \
    X(ENOPKG, -10, "required package missing")              \
    X(ESTOP, -11, "stopped on request")                     \
    X(ENONFINITE, -12, "non-finite value")

typedef enum {
#define MOME_ERRNO_ENUM(name, value, desc) MOME_##name = (value),
    MOME_ERRNO_MAP(MOME_ERRNO_ENUM)
#undef MOME_ERRNO_ENUM
} mome_status;

/* Short description of a status code ("invalid argument"). Never NULL. */
const char *mome_strerror(int status);

/* Records a formatted message for the current thread and returns `status`, so a caller can write
 * `return mome_error_set(MOME_EINVAL, "%s:%d: ...", file, line);`. */
int mome_error_set(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The message recorded last on this thread, or "" when none. */
const char *mome_error_message(void);
/* Prefixes the recorded message with more context: "ctx: <old message>". Returns `status`. */
int mome_error_wrap(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Fatal path: prints "mome: fatal: file:line: message" and aborts every rank. */
void mome_fatal_at(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
#define MOME_FATAL(...) mome_fatal_at(__FILE__, __LINE__, __VA_ARGS__)
/* Stays on in release builds: for shapes and invariants at kernel entry. */
#define MOME_CHECK(cond, ...)                                    \
    do {                                                         \
        if (!(cond)) mome_fatal_at(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#define MOME_ASSERT(cond) MOME_CHECK(cond, "assertion failed: %s", #cond)

/* Allocation that cannot fail: aborts the job with the size and call site on failure. Memory is 64-byte
 * aligned and must be released with mome_free (which accepts NULL). */
void *mome_malloc_at(size_t size, const char *file, int line);
void *mome_calloc_at(size_t count, size_t size, const char *file, int line);
#define mome_malloc(size) mome_malloc_at((size), __FILE__, __LINE__)
#define mome_calloc(count, size) mome_calloc_at((count), (size), __FILE__, __LINE__)
void mome_free(void *ptr);
/* Scratch kept between calls (often one per thread): *buf (from mome_malloc, or NULL with *cap 0) grown to hold at
 * least `need` floats, its old contents dropped; returns *buf. Only calls that need more than before allocate. */
float *mome_reserve_floats(float **buf, size_t *cap, size_t need);
/* strdup that aborts on failure. */
char *mome_strdup(const char *s);

/* Logging: only the rank set with mome_log_set_rank(0) prints info; warnings and errors print on every rank,
 * prefixed with the rank when the world has more than one. */
typedef enum { MOME_LOG_DEBUG = 0, MOME_LOG_INFO = 1, MOME_LOG_WARN = 2, MOME_LOG_ERROR = 3 } mome_log_level;
void mome_log_set_rank(int rank, int world_size);
void mome_log_set_level(mome_log_level level);
void mome_log(mome_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A function that also receives every message this rank prints (the monitor stream's mome.log); NULL: none.
 * The hook must not log itself. */
typedef void (*mome_log_hook)(mome_log_level level, const char *message, void *ctx);
void mome_log_set_hook(mome_log_hook hook, void *ctx);
#define mome_info(...) mome_log(MOME_LOG_INFO, __VA_ARGS__)
#define mome_warn(...) mome_log(MOME_LOG_WARN, __VA_ARGS__)
#define mome_debug(...) mome_log(MOME_LOG_DEBUG, __VA_ARGS__)

/* Wall-clock seconds from a monotonic clock. */
double mome_now(void);

/* 64-bit FNV-1a, for content hashes (tokenizer, configs, checkpoints). Chain with `seed` = previous hash;
 * start with MOME_FNV_OFFSET. */
#define MOME_FNV_OFFSET 0xcbf29ce484222325ULL
uint64_t mome_fnv1a(uint64_t seed, const void *data, size_t len);

/* Reads a whole file into a NUL-terminated buffer (caller frees with mome_free). */
int mome_read_file(const char *path, char **data, size_t *len);
/* Writes a file atomically: temp name in the same directory, fsync, rename, fsync of the directory. */
int mome_write_file_atomic(const char *path, const void *data, size_t len);
/* mkdir -p. */
int mome_mkdirs(const char *path);
/* fsync a directory (after a rename into it). */
int mome_fsync_dir(const char *dir);
/* fsync the directory that holds path ("." for a bare name), so a rename into it survives a crash. */
int mome_fsync_parent(const char *path);

#ifdef __cplusplus
}
#endif
#endif
