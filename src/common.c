/* common.c — errors, fatal checks, logging, allocation and small file utilities (see common.h). */
#include "mome/common.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char error_message[2048];

const char *mome_strerror(int status) {
    switch (status) {
#define MOME_ERRNO_CASE(name, value, desc) \
    case MOME_##name:                      \
        return desc;
        MOME_ERRNO_MAP(MOME_ERRNO_CASE)
#undef MOME_ERRNO_CASE
    }
    return "unknown error";
}

int mome_error_set(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return status;
}

const char *mome_error_message(void) { return error_message; }

int mome_error_wrap(int status, const char *fmt, ...) {
    char prefix[1024];
    char old[sizeof error_message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, error_message, sizeof old);
    const char *rest = old[0] ? old : mome_strerror(status);
    size_t np = strlen(prefix);
    if (np > sizeof error_message - 3) np = sizeof error_message - 3;
    memcpy(error_message, prefix, np);
    memcpy(error_message + np, ": ", 2);
    size_t nr = strlen(rest);
    if (nr > sizeof error_message - np - 3) nr = sizeof error_message - np - 3;
    memcpy(error_message + np + 2, rest, nr);
    error_message[np + 2 + nr] = 0;
    return status;
}

void mome_fatal_at(const char *file, int line, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "mome: fatal: %s:%d: %s\n", file, line, msg);
    fflush(stderr);
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, 70);
    exit(70);
}

void *mome_malloc_at(size_t size, const char *file, int line) {
    void *p = NULL;
    if (size == 0) size = 1;
    size_t rounded = (size + 63) & ~(size_t)63;
    p = aligned_alloc(64, rounded);
    if (!p) mome_fatal_at(file, line, "out of memory allocating %zu bytes", size);
    return p;
}

void *mome_calloc_at(size_t count, size_t size, const char *file, int line) {
    if (size && count > SIZE_MAX / size) mome_fatal_at(file, line, "allocation size overflow (%zu x %zu)", count, size);
    void *p = mome_malloc_at(count * size, file, line);
    memset(p, 0, count * size > 0 ? count * size : 1);
    return p;
}

void mome_free(void *ptr) { free(ptr); }

float *mome_reserve_floats(float **buf, size_t *cap, size_t need) {
    if (need > *cap) {
        mome_free(*buf);
        *buf = mome_malloc(need * sizeof **buf);
        *cap = need;
    }
    return *buf;
}

char *mome_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = mome_malloc(n);
    memcpy(d, s, n);
    return d;
}

static int log_rank = 0, log_world = 1;
static mome_log_level log_level = MOME_LOG_INFO;

void mome_log_set_rank(int rank, int world_size) {
    log_rank = rank;
    log_world = world_size;
}

void mome_log_set_level(mome_log_level level) { log_level = level; }

static mome_log_hook log_hook = NULL;
static void *log_hook_ctx = NULL;

void mome_log_set_hook(mome_log_hook hook, void *ctx) {
    log_hook = hook;
    log_hook_ctx = ctx;
}

void mome_log(mome_log_level level, const char *fmt, ...) {
    if (level < log_level) return;
    if (level <= MOME_LOG_INFO && log_rank != 0) return;
    FILE *out = level >= MOME_LOG_WARN ? stderr : stdout;
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *tag = level == MOME_LOG_WARN ? "warning: " : level == MOME_LOG_ERROR ? "error: " : "";
    if (log_world > 1 && level >= MOME_LOG_WARN)
        fprintf(out, "mome[%d]: %s%s\n", log_rank, tag, msg);
    else if (level >= MOME_LOG_WARN)
        fprintf(out, "mome: %s%s\n", tag, msg);
    else
        fprintf(out, "%s\n", msg);
    fflush(out);
    if (log_hook) {
        mome_log_hook hook = log_hook;
        log_hook = NULL; /* no recursion if the hook logs */
        hook(level, msg, log_hook_ctx);
        log_hook = hook;
    }
}

double mome_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint64_t mome_fnv1a(uint64_t seed, const void *data, size_t len) {
    const unsigned char *p = data;
    uint64_t h = seed;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

int mome_read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return mome_error_set(errno == ENOENT ? MOME_ENOENT : MOME_EIO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = mome_malloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return mome_error_set(MOME_ENOMEM, "%s: out of memory reading file", path);
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return mome_error_set(MOME_EIO, "%s: read error", path);
    }
    buf[n] = 0;
    *data = buf;
    if (len) *len = n;
    return MOME_OK;
}

int mome_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return mome_error_set(MOME_EIO, "%s: cannot open directory: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    if (rc != 0 && err != EINVAL) return mome_error_set(MOME_EIO, "%s: fsync failed: %s", dir, strerror(err));
    return MOME_OK;
}

int mome_write_file_atomic(const char *path, const void *data, size_t len) {
    size_t plen = strlen(path);
    char *tmp = mome_malloc(plen + 32);
    snprintf(tmp, plen + 32, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        int rc = mome_error_set(MOME_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        mome_free(tmp);
        return rc;
    }
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int rc = mome_error_set(MOME_EIO, "%s: write failed: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            mome_free(tmp);
            return rc;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        int rc = mome_error_set(MOME_EIO, "%s: fsync/close failed: %s", tmp, strerror(errno));
        unlink(tmp);
        mome_free(tmp);
        return rc;
    }
    if (rename(tmp, path) != 0) {
        int rc = mome_error_set(MOME_EIO, "%s: rename to %s failed: %s", tmp, path, strerror(errno));
        unlink(tmp);
        mome_free(tmp);
        return rc;
    }
    mome_free(tmp);
    return mome_fsync_parent(path);
}

int mome_fsync_parent(const char *path) {
    char *dcopy = mome_strdup(path);
    int rc = mome_fsync_dir(dirname(dcopy));
    mome_free(dcopy);
    return rc;
}

int mome_mkdirs(const char *path) {
    char *buf = mome_strdup(path);
    size_t n = strlen(buf);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
                int rc = mome_error_set(MOME_EIO, "%s: cannot create directory: %s", buf, strerror(errno));
                mome_free(buf);
                return rc;
            }
            buf[i] = c;
        }
    }
    mome_free(buf);
    return MOME_OK;
}
