/* checkpoint.c — HDF5 checkpoints (see checkpoint.h for the layout): atomic save, the `latest` pointer,
 * keep-last-K, and strict validation on read.
 *
 * Save: everything is written to <dir>/step_XXXXXXXX.h5.tmp through h5io (every dataset chunked with
 * Fletcher32), flushed and closed, fsynced, renamed to its final name, the directory fsynced; only then is
 * <dir>/latest replaced atomically (mome_write_file_atomic) with the file name, and checkpoints beyond `keep`
 * are deleted, oldest step first, never the one just written. A failure before the rename removes the
 * temporary file and leaves everything else as it was; a failure writing `latest` removes the new file unless
 * it replaced one of the same name.
 *
 * Read: the file must be HDF5 with format="mome-checkpoint" (else MOME_EFORMAT) and a supported
 * format_version. Any failure below that (checksum, truncation, missing or malformed objects) is
 * MOME_ECORRUPT naming the file and the object; a model whose tensors differ from the caller's table (a
 * different shape, a missing tensor, or a tensor the table does not have) is MOME_EMISMATCH naming the tensor
 * and both shapes.
 *
 * Left to others: gathering per-rank state (train.c), deciding when to save, what the config text means.
 */
#include "mome/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "mome/common.h"
#include "mome/h5io.h"

#ifndef MOME_GIT_SHA
#define MOME_GIT_SHA "unknown"
#endif

#define PATH_CAP 4096

/* ---------------------------------------------------------------------------------------------------------
 * Small helpers. */

static int join(char *out, size_t cap, const char *dir, const char *name) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        return mome_error_set(MOME_EINVAL, "checkpoint path too long: %s/%s (limit %zu bytes)", dir, name, cap - 1);
    return MOME_OK;
}

/* "(2, 256, 64)" */
static void shape_str(char *buf, size_t cap, int ndim, const hsize_t *dims) {
    size_t n = 0;
    buf[0] = 0;
    n += (size_t)snprintf(buf + n, cap - n, "(");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
    if (n < cap) snprintf(buf + n, cap - n, ")");
}

static void table_dims(const mome_tensor_info *t, hsize_t *dims) {
    for (int d = 0; d < t->ndim; d++) dims[d] = (hsize_t)t->shape[d];
}

/* "step_00001000.h5" -> 1000; -1 for any other name (including the .tmp files). */
static long parse_step_name(const char *name) {
    if (strncmp(name, "step_", 5) != 0) return -1;
    const char *p = name + 5;
    if (*p < '0' || *p > '9') return -1;
    long v = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (LONG_MAX - 9) / 10) return -1;
        v = v * 10 + (*p - '0');
    }
    return strcmp(p, ".h5") == 0 ? v : -1;
}

static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return mome_error_set(MOME_EIO, "%s: cannot open for fsync: %s", path, strerror(errno));
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    if (rc != 0) return mome_error_set(MOME_EIO, "%s: fsync failed: %s", path, strerror(err));
    return MOME_OK;
}

/* Removes a temporary file we may have created; never a directory or anything else that was there. */
static void remove_tmp(const char *path) {
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISREG(st.st_mode)) unlink(path);
}

/* ---------------------------------------------------------------------------------------------------------
 * Save. */

static int write_contents(hid_t f, const mome_ckpt_save_args *a) {
    int rc;
    char name[MOME_TENSOR_NAME_MAX + 32];
    hsize_t dims[MOME_MAX_DIMS];
    if ((rc = mome_h5_attr_set_str(f, "format", MOME_CKPT_FORMAT))) return rc;
    if ((rc = mome_h5_attr_set_i64(f, "format_version", MOME_CKPT_VERSION))) return rc;
    if ((rc = mome_h5_attr_set_i64(f, "step", a->step))) return rc;
    if ((rc = mome_h5_attr_set_i64(f, "tokens_seen", a->tokens_seen))) return rc;
    if ((rc = mome_h5_attr_set_i64(f, "world_size", a->world_size))) return rc;
    if ((rc = mome_h5_attr_set_str(f, "git_sha", MOME_GIT_SHA))) return rc;
    if ((rc = mome_h5_attr_set_str(f, "tokenizer_hash", a->tokenizer_hash ? a->tokenizer_hash : ""))) return rc;
    if ((rc = mome_h5_attr_set_str(f, "model_kind", a->model_kind ? a->model_kind : ""))) return rc;
    if ((rc = mome_h5_write_string(f, "config", a->config_text))) return rc;

    const mome_tensor_table *tab = a->table;
    for (int i = 0; i < tab->n; i++) {
        const mome_tensor_info *t = &tab->t[i];
        table_dims(t, dims);
        snprintf(name, sizeof name, "model/%s", t->name);
        if ((rc = mome_h5_write_f32(f, name, a->params + t->offset, t->ndim, dims))) return rc;
        if (a->adam_m) {
            snprintf(name, sizeof name, "optimizer/m/%s", t->name);
            if ((rc = mome_h5_write_f32(f, name, a->adam_m + t->offset, t->ndim, dims))) return rc;
            snprintf(name, sizeof name, "optimizer/v/%s", t->name);
            if ((rc = mome_h5_write_f32(f, name, a->adam_v + t->offset, t->ndim, dims))) return rc;
        }
    }
    /* /optimizer always exists and carries the step; the moments only when given. */
    if (!mome_h5_exists(f, "optimizer")) {
        hid_t g = H5Gcreate2(f, "optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (g < 0) return mome_error_set(MOME_EIO, "cannot create group /optimizer");
        H5Gclose(g);
    }
    hid_t g = H5Gopen2(f, "optimizer", H5P_DEFAULT);
    if (g < 0) return mome_error_set(MOME_EIO, "cannot open group /optimizer");
    rc = mome_h5_attr_set_i64(g, "step", a->adam_step);
    H5Gclose(g);
    if (rc) return rc;

    hsize_t rd[2] = {(hsize_t)a->n_streams, 4};
    if ((rc = mome_h5_write_u64(f, "rng/state", a->rng_states, 2, rd))) return rc;
    if ((rc = mome_h5_write_u64(f, "data/cursor", a->data_cursors, 1, rd))) return rc;
    if (a->kd_window > 0) {
        hsize_t kd[1] = {(hsize_t)a->kd_window}, one[1] = {1};
        uint64_t count = a->kd_count;
        if ((rc = mome_h5_write_f64(f, "kd/ce_window", a->kd_ce, 1, kd))) return rc;
        if ((rc = mome_h5_write_f64(f, "kd/kd_window", a->kd_kd, 1, kd))) return rc;
        if ((rc = mome_h5_write_u64(f, "kd/count", &count, 1, one))) return rc;
    }
    if (a->router_n > 0) { /* the teacher's router as trained by the student-aware router (distill.h) */
        hsize_t n[1] = {(hsize_t)a->router_n}, one[1] = {1};
        const uint64_t step = (uint64_t)a->router_step;
        if ((rc = mome_h5_write_f32(f, "kd/router/gate_w", a->router_gate, 1, n))) return rc;
        if ((rc = mome_h5_write_f32(f, "kd/router/adam_m", a->router_m, 1, n))) return rc;
        if ((rc = mome_h5_write_f32(f, "kd/router/adam_v", a->router_v, 1, n))) return rc;
        if ((rc = mome_h5_write_u64(f, "kd/router/step", &step, 1, one))) return rc;
    }
    return MOME_OK;
}

/* An upper bound of the file's size: the data, 6 KiB of metadata per dataset (3.5 KiB measured), and a margin
 * for the chunk indexes and checksums. */
static unsigned long long estimate_bytes(const mome_ckpt_save_args *a) {
    const int moments = a->adam_m ? 3 : 1;
    unsigned long long raw = 4ull * a->table->total * (unsigned long long)moments;
    raw += 40ull * (unsigned long long)a->n_streams + 16ull * a->kd_window + 12ull * a->router_n;
    raw += strlen(a->config_text);
    const unsigned long long datasets = (unsigned long long)a->table->n * (unsigned long long)moments + 16;
    return raw + raw / 256 + datasets * 6144ull + (256ull << 10);
}

/* HDF5 only says that a write or a flush failed; a full file system is the usual cause, so it is named, with
 * the space left. */
static int explain_write_failure(int rc, const char *dir) {
    struct statvfs sv;
    if (statvfs(dir, &sv) != 0) return rc;
    const unsigned long long avail = (unsigned long long)sv.f_bavail * (unsigned long long)sv.f_frsize;
    if (avail >= (1ull << 20)) return rc;
    return mome_error_wrap(rc, "no space left on device: the file system of %s has %llu bytes free", dir, avail);
}

static int file_fd(hid_t f) {
    hid_t fapl = H5Fget_access_plist(f);
    void *handle = NULL;
    int fd = -1;
    if (fapl >= 0 && H5Fget_vfd_handle(f, fapl, &handle) >= 0 && handle) fd = *(int *)handle;
    if (fapl >= 0) H5Pclose(fapl);
    return fd;
}

/* Reserves the file's blocks before HDF5 writes anything, so that a full disk fails here, cleanly: inside
 * HDF5, a write that fails leaves dirty data that H5Fclose fails to write again, and a handle whose close
 * failed crashes HDF5 1.10 when it closes it once more at exit (MPI_Finalize), turning a full disk into a
 * segfault. File systems without fallocate are left to the write itself (EINVAL, EOPNOTSUPP). */
static int reserve_blocks(hid_t f, const char *tmp, const char *dir, unsigned long long bytes) {
    const int fd = file_fd(f);
    if (fd < 0) return MOME_OK;
    const int err = posix_fallocate(fd, 0, (off_t)bytes);
    if (err == 0 || err == EINVAL || err == EOPNOTSUPP) return MOME_OK;
    struct statvfs sv;
    if (statvfs(dir, &sv) != 0) sv.f_bavail = 0, sv.f_frsize = 0;
    return mome_error_set(MOME_EIO, "%s: %s: the checkpoint needs up to %llu bytes, the file system of %s has %llu "
                          "free", tmp, strerror(err), bytes, dir,
                          (unsigned long long)sv.f_bavail * (unsigned long long)sv.f_frsize);
}

/* Gives the blocks of a file whose write failed back to the file system (the file is deleted afterwards), so
 * that H5Fclose finds room for the little it still writes. */
static void release_blocks(hid_t f) {
    const int fd = file_fd(f);
    if (fd >= 0 && ftruncate(fd, 0) != 0)
        mome_warn("checkpoint: cannot release the space of a failed write: %s", strerror(errno));
}

/* Checkpoints are written in the HDF5 1.10 file format (superblock v3, v2 object headers, v2 B-tree chunk
 * indexes), whose metadata carries checksums: a flipped byte in an attribute (the step counters), a datatype, a
 * dataspace or a chunk index is then caught on reading, as Fletcher32 catches one in the data. The library's
 * default, the earliest format, has none: a flipped bit in the /optimizer step attribute resumed silently with
 * the wrong bias correction (tests/faults/corrupt_ckpt.py). Reading needs HDF5 1.10 or later. */
static hid_t create_checksummed(const char *path) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    hid_t f = -1;
    if (fapl >= 0 && H5Pset_fapl_sec2(fapl) >= 0 &&
        H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_LATEST) >= 0)
        f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    const int err = errno;
    if (fapl >= 0) H5Pclose(fapl);
    if (f < 0) mome_error_set(MOME_EIO, "%s: cannot create HDF5 file (%s)", path, strerror(err));
    return f;
}

/* Writes the whole checkpoint to `tmp` (in `dir`) and closes it; the caller removes `tmp` on failure. */
static int write_file(const char *dir, const char *tmp, const mome_ckpt_save_args *a) {
    hid_t f = create_checksummed(tmp);
    if (f < 0) return explain_write_failure(MOME_EIO, dir);
    int rc = reserve_blocks(f, tmp, dir, estimate_bytes(a));
    const int reserved = rc == MOME_OK; /* else the message already says what is free */
    if (rc == MOME_OK) rc = write_contents(f, a);
    if (rc == MOME_OK && H5Fflush(f, H5F_SCOPE_LOCAL) < 0) rc = mome_error_set(MOME_EIO, "%s: H5Fflush failed", tmp);
    hsize_t size = 0; /* HDF5's end of file: the reservation beyond it is given back after the close */
    if (rc == MOME_OK && H5Fget_filesize(f, &size) < 0) size = 0;
    if (rc != MOME_OK) {
        if (reserved) rc = explain_write_failure(rc, dir); /* before release_blocks frees the space */
        release_blocks(f);
    }
    if (H5Fclose(f) < 0 && rc == MOME_OK)
        rc = explain_write_failure(mome_error_set(MOME_EIO, "%s: H5Fclose failed", tmp), dir);
    struct stat st;
    if (rc == MOME_OK && size > 0 && stat(tmp, &st) == 0 && (hsize_t)st.st_size > size && truncate(tmp, (off_t)size))
        rc = mome_error_set(MOME_EIO, "%s: cannot trim the reserved space to %llu bytes: %s", tmp,
                            (unsigned long long)size, strerror(errno));
    return rc;
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* Deletes the oldest step_*.h5 files so that at most `keep` remain, never `current`. Failures only warn: the
 * new checkpoint is already safe. */
static void prune(const char *dir, int keep, long current) {
    if (keep <= 0) return;
    DIR *d = opendir(dir);
    if (!d) {
        mome_warn("checkpoint: cannot list %s to delete old checkpoints: %s", dir, strerror(errno));
        return;
    }
    size_t n = 0, cap = 64;
    long *steps = mome_malloc(cap * sizeof *steps);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        long s = parse_step_name(e->d_name);
        if (s < 0) continue;
        if (n == cap) {
            long *bigger = mome_malloc(2 * cap * sizeof *bigger);
            memcpy(bigger, steps, n * sizeof *steps);
            mome_free(steps);
            steps = bigger;
            cap *= 2;
        }
        steps[n++] = s;
    }
    closedir(d);
    qsort(steps, n, sizeof *steps, cmp_long);
    size_t excess = n > (size_t)keep ? n - (size_t)keep : 0;
    int removed = 0;
    for (size_t i = 0; i < n && excess > 0; i++) {
        if (steps[i] == current) continue;
        char name[64], path[PATH_CAP];
        snprintf(name, sizeof name, "step_%08ld.h5", steps[i]);
        if (join(path, sizeof path, dir, name) != MOME_OK) continue;
        if (unlink(path) != 0)
            mome_warn("checkpoint: cannot delete old checkpoint %s: %s", path, strerror(errno));
        else
            removed++;
        excess--;
    }
    mome_free(steps);
    if (removed && mome_fsync_dir(dir) != MOME_OK) mome_warn("checkpoint: %s", mome_error_message());
}

int mome_ckpt_save(const char *dir, const mome_ckpt_save_args *a, int keep, char *out_path, size_t cap) {
    if (!a || !a->table || !a->params || !a->config_text || a->n_streams < 1 || !a->rng_states ||
        !a->data_cursors || (!a->adam_m) != (!a->adam_v) || a->step < 0)
        return mome_error_set(MOME_EINVAL,
                              "mome_ckpt_save(%s): needs a table, params, config text, n_streams >= 1 with rng "
                              "states and data cursors, both moments or neither, and step >= 0",
                              dir);
    mome_h5_quiet();
    char name[64], final_path[PATH_CAP], tmp[PATH_CAP], latest[PATH_CAP];
    snprintf(name, sizeof name, "step_%08ld.h5", (long)a->step);
    int rc = join(final_path, sizeof final_path, dir, name);
    if (rc == MOME_OK) rc = join(latest, sizeof latest, dir, "latest");
    if (rc == MOME_OK && (size_t)snprintf(tmp, sizeof tmp, "%s.tmp", final_path) >= sizeof tmp)
        rc = mome_error_set(MOME_EINVAL, "checkpoint path too long: %s.tmp", final_path);
    if (rc) return rc;
    if ((rc = mome_mkdirs(dir)) != MOME_OK) return mome_error_wrap(rc, "cannot save checkpoint %s", final_path);

    int existed = access(final_path, F_OK) == 0;
    rc = write_file(dir, tmp, a);
    if (rc == MOME_OK) rc = fsync_path(tmp);
    if (rc == MOME_OK && rename(tmp, final_path) != 0)
        rc = mome_error_set(MOME_EIO, "rename %s -> %s failed: %s", tmp, final_path, strerror(errno));
    if (rc != MOME_OK) {
        remove_tmp(tmp);
        return mome_error_wrap(rc, "cannot save checkpoint %s (nothing changed, %s is untouched)", final_path,
                               latest);
    }
    if ((rc = mome_fsync_dir(dir)) != MOME_OK) return mome_error_wrap(rc, "checkpoint %s written, but", final_path);

    char text[80];
    snprintf(text, sizeof text, "%s\n", name);
    rc = mome_write_file_atomic(latest, text, strlen(text));
    if (rc != MOME_OK) {
        if (!existed) unlink(final_path); /* `latest` still names the previous one: keep the directory as it was */
        return mome_error_wrap(rc, "cannot save checkpoint %s: updating %s failed", final_path, latest);
    }
    prune(dir, keep, (long)a->step);
    if (out_path && cap) snprintf(out_path, cap, "%s", final_path);
    return MOME_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * latest. */

/* At most 80 bytes of a file's text, printable: a damaged `latest` must not put binary bytes in the log. */
static void printable(char *out, size_t cap, const char *s) {
    size_t i = 0;
    for (; s[i] && i < 80 && i + 1 < cap; i++) {
        const unsigned char c = (unsigned char)s[i];
        out[i] = c < 0x20 || c >= 0x7f ? '?' : s[i];
    }
    out[i] = 0;
}

int mome_ckpt_latest(const char *dir, char *path, size_t cap) {
    char lp[PATH_CAP];
    int rc = join(lp, sizeof lp, dir, "latest");
    if (rc) return rc;
    char *text = NULL;
    rc = mome_read_file(lp, &text, NULL);
    if (rc == MOME_ENOENT) return mome_error_set(MOME_ENOENT, "%s: no checkpoint yet (no 'latest' file)", dir);
    if (rc) return rc;
    char *s = text;
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) s[--n] = 0;
    char shown[96];
    printable(shown, sizeof shown, s);
    int control = 0;
    for (size_t i = 0; i < n; i++) control |= (unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f;
    if (n == 0 || strchr(s, '/') || control) {
        rc = mome_error_set(MOME_ECORRUPT, "%s: expected one checkpoint file name, found '%s'", lp, shown);
        mome_free(text);
        return rc;
    }
    char full[PATH_CAP];
    rc = join(full, sizeof full, dir, s);
    if (rc == MOME_OK && access(full, F_OK) != 0)
        rc = mome_error_set(MOME_ECORRUPT, "%s names %s, which does not exist (%s)", lp, shown, strerror(errno));
    if (rc == MOME_OK && (size_t)snprintf(path, cap, "%s", full) >= cap)
        rc = mome_error_set(MOME_EINVAL, "%s: path longer than the caller's buffer (%zu bytes)", full, cap);
    mome_free(text);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------
 * Read. */

/* Any failure inside a file that is a mome checkpoint: MOME_ECORRUPT, keeping h5io's message (file:object). */
static int damaged(int rc, const char *path, const char *what) {
    if (rc == MOME_ENOMEM) return rc;
    return mome_error_wrap(MOME_ECORRUPT, "%s: damaged or truncated checkpoint (reading %s)", path, what);
}

/* Opens a checkpoint and checks format and version. Returns the file or -1 with *rc set. */
static hid_t open_checked(const char *path, int *rc) {
    mome_h5_quiet();
    if (access(path, F_OK) != 0) {
        *rc = mome_error_set(MOME_ENOENT, "%s: no such checkpoint: %s", path, strerror(errno));
        return -1;
    }
    hid_t f = mome_h5_open_read(path);
    if (f < 0) {
        if (H5Fis_hdf5(path) > 0) /* an HDF5 signature, but the file does not open: truncated or damaged */
            *rc = damaged(MOME_EIO, path, "the file structure");
        else
            *rc = mome_error_set(MOME_EFORMAT, "%s: not a mome checkpoint (not an HDF5 file)", path);
        return -1;
    }
    char fmt[64];
    int r = mome_h5_attr_get_str(f, "format", fmt, sizeof fmt);
    if (r == MOME_ENOENT || r == MOME_EINVAL || r == MOME_EFORMAT || (r == MOME_OK && strcmp(fmt, MOME_CKPT_FORMAT))) {
        *rc = mome_error_set(MOME_EFORMAT, "%s: not a mome checkpoint (attribute format is %s, expected \"%s\")", path,
                             r == MOME_OK ? fmt : "missing or not a short string", MOME_CKPT_FORMAT);
        H5Fclose(f);
        return -1;
    }
    if (r != MOME_OK) {
        *rc = damaged(r, path, "attribute format");
        H5Fclose(f);
        return -1;
    }
    int64_t version = 0;
    r = mome_h5_attr_get_i64(f, "format_version", &version);
    if (r != MOME_OK) {
        *rc = damaged(r, path, "attribute format_version");
        H5Fclose(f);
        return -1;
    }
    if (version != MOME_CKPT_VERSION) {
        *rc = mome_error_set(MOME_EFORMAT, "%s: checkpoint format_version %lld is not supported (this build reads %d)",
                             path, (long long)version, MOME_CKPT_VERSION);
        H5Fclose(f);
        return -1;
    }
    *rc = MOME_OK;
    return f;
}

void mome_ckpt_info_free(mome_ckpt_info *info) {
    if (!info) return;
    mome_free(info->config_text);
    mome_free(info->rng_states);
    mome_free(info->data_cursors);
    mome_free(info->kd_ce);
    mome_free(info->kd_kd);
    mome_free(info->router_gate);
    mome_free(info->router_m);
    mome_free(info->router_v);
    info->config_text = NULL;
    info->rng_states = NULL;
    info->data_cursors = NULL;
    info->kd_ce = info->kd_kd = NULL;
    info->router_gate = info->router_m = info->router_v = NULL;
}

int mome_ckpt_read_info(const char *path, mome_ckpt_info *info) {
    memset(info, 0, sizeof *info);
    int rc;
    hid_t f = open_checked(path, &rc);
    if (f < 0) return rc;
    int64_t ws = 0;
    const char *what = "";
    int nd = 0;
    hsize_t dims[8];
    what = "attribute step";
    if ((rc = mome_h5_attr_get_i64(f, "step", &info->step))) goto fail;
    what = "attribute tokens_seen";
    if ((rc = mome_h5_attr_get_i64(f, "tokens_seen", &info->tokens_seen))) goto fail;
    what = "attribute world_size";
    if ((rc = mome_h5_attr_get_i64(f, "world_size", &ws))) goto fail;
    info->world_size = (int)ws;
    what = "attribute git_sha";
    if ((rc = mome_h5_attr_get_str(f, "git_sha", info->git_sha, sizeof info->git_sha))) goto fail;
    what = "attribute tokenizer_hash";
    if ((rc = mome_h5_attr_get_str(f, "tokenizer_hash", info->tokenizer_hash, sizeof info->tokenizer_hash))) goto fail;
    what = "attribute model_kind";
    if ((rc = mome_h5_attr_get_str(f, "model_kind", info->model_kind, sizeof info->model_kind))) goto fail;
    what = "/config";
    if ((rc = mome_h5_read_string(f, "config", &info->config_text))) goto fail;
    what = "/optimizer";
    hid_t g = H5Gopen2(f, "optimizer", H5P_DEFAULT);
    if (g < 0) {
        rc = mome_error_set(MOME_ENOENT, "%s:/optimizer: cannot open group", path);
        goto fail;
    }
    rc = mome_h5_attr_get_i64(g, "step", &info->adam_step);
    H5Gclose(g);
    if (rc) goto fail;

    what = "/rng/state";
    if ((rc = mome_h5_shape(f, "rng/state", &nd, dims))) goto fail;
    if (nd != 2 || dims[1] != 4 || dims[0] < 1 || dims[0] > 1u << 24) {
        char s[96];
        shape_str(s, sizeof s, nd, dims);
        rc = mome_error_set(MOME_EFORMAT, "%s:/rng/state has shape %s, expected (world_size, 4)", path, s);
        goto fail;
    }
    info->n_streams = (int)dims[0];
    info->rng_states = mome_malloc(dims[0] * 4 * sizeof(uint64_t));
    info->data_cursors = mome_malloc(dims[0] * sizeof(uint64_t));
    if ((rc = mome_h5_read_u64(f, "rng/state", info->rng_states, 2, dims))) goto fail;
    what = "/data/cursor";
    if ((rc = mome_h5_read_u64(f, "data/cursor", info->data_cursors, 1, dims))) goto fail;
    if (mome_h5_exists(f, "kd/count")) {
        what = "/kd";
        hsize_t one[1] = {1};
        if ((rc = mome_h5_shape(f, "kd/ce_window", &nd, dims))) goto fail;
        if (nd != 1 || dims[0] < 1 || dims[0] > 1u << 28) {
            rc = mome_error_set(MOME_EFORMAT, "%s:/kd/ce_window must be a non-empty vector", path);
            goto fail;
        }
        info->kd_window = (size_t)dims[0];
        info->kd_ce = mome_malloc(dims[0] * sizeof(double));
        info->kd_kd = mome_malloc(dims[0] * sizeof(double));
        if ((rc = mome_h5_read_f64(f, "kd/ce_window", info->kd_ce, 1, dims))) goto fail;
        if ((rc = mome_h5_read_f64(f, "kd/kd_window", info->kd_kd, 1, dims))) goto fail;
        if ((rc = mome_h5_read_u64(f, "kd/count", &info->kd_count, 1, one))) goto fail;
    }
    if (mome_h5_exists(f, "kd/router")) {
        what = "/kd/router";
        hsize_t one[1] = {1};
        uint64_t step = 0;
        if ((rc = mome_h5_shape(f, "kd/router/gate_w", &nd, dims))) goto fail;
        if (nd != 1 || dims[0] < 1 || dims[0] > 1u << 30) {
            rc = mome_error_set(MOME_EFORMAT, "%s:/kd/router/gate_w must be a non-empty vector", path);
            goto fail;
        }
        info->router_n = (size_t)dims[0];
        info->router_gate = mome_malloc(dims[0] * sizeof(float));
        info->router_m = mome_malloc(dims[0] * sizeof(float));
        info->router_v = mome_malloc(dims[0] * sizeof(float));
        if ((rc = mome_h5_read_f32(f, "kd/router/gate_w", info->router_gate, 1, dims))) goto fail;
        if ((rc = mome_h5_read_f32(f, "kd/router/adam_m", info->router_m, 1, dims))) goto fail;
        if ((rc = mome_h5_read_f32(f, "kd/router/adam_v", info->router_v, 1, dims))) goto fail;
        if ((rc = mome_h5_read_u64(f, "kd/router/step", &step, 1, one))) goto fail;
        info->router_step = (int64_t)step;
    }
    H5Fclose(f);
    return MOME_OK;
fail:
    H5Fclose(f);
    mome_ckpt_info_free(info);
    return damaged(rc, path, what);
}

/* ---- read_tensors ---- */

typedef struct {
    const mome_tensor_table *table;
    char extra[256]; /* first dataset below /model that the table does not have */
} visit_ctx;

static herr_t visit_model(hid_t group, const char *name, const H5L_info_t *linfo, void *data) {
    visit_ctx *v = data;
    (void)linfo;
    hid_t o = H5Oopen(group, name, H5P_DEFAULT);
    if (o < 0) return -1;
    int is_dataset = H5Iget_type(o) == H5I_DATASET;
    H5Oclose(o);
    if (is_dataset && mome_tensor_table_find(v->table, name) < 0) {
        snprintf(v->extra, sizeof v->extra, "%s", name);
        return 1; /* stop */
    }
    return 0;
}

/* The stored shape of /model/<name> must equal the table's. */
static int check_shape(hid_t f, const char *path, const mome_tensor_info *t) {
    char name[MOME_TENSOR_NAME_MAX + 16], want[128], got[128];
    hsize_t dims[MOME_MAX_DIMS], sdims[8];
    int nd = 0;
    table_dims(t, dims);
    shape_str(want, sizeof want, t->ndim, dims);
    snprintf(name, sizeof name, "model/%s", t->name);
    int rc = mome_h5_shape(f, name, &nd, sdims);
    if (rc == MOME_ENOENT)
        return mome_error_set(MOME_EMISMATCH,
                              "%s: has no tensor /model/%s; the config expects one of shape %s (a different model?)",
                              path, t->name, want);
    if (rc) return damaged(rc, path, name);
    int same = nd == t->ndim;
    for (int d = 0; same && d < nd; d++) same = sdims[d] == dims[d];
    if (!same) {
        shape_str(got, sizeof got, nd, sdims);
        return mome_error_set(MOME_EMISMATCH, "%s: /model/%s has shape %s, the config expects %s", path, t->name, got,
                              want);
    }
    return MOME_OK;
}

static int read_one(hid_t f, const char *path, const char *prefix, const mome_tensor_info *t, float *buf) {
    char name[MOME_TENSOR_NAME_MAX + 32];
    hsize_t dims[MOME_MAX_DIMS];
    table_dims(t, dims);
    snprintf(name, sizeof name, "%s/%s", prefix, t->name);
    int rc = mome_h5_read_f32(f, name, buf + t->offset, t->ndim, dims);
    if (rc == MOME_OK || rc == MOME_EMISMATCH) return rc; /* h5io names both shapes */
    if (rc == MOME_ECORRUPT) return mome_error_wrap(rc, "%s: corrupted checkpoint", path);
    return damaged(rc, path, name);
}

int mome_ckpt_read_tensors(const char *path, const mome_tensor_table *table, float *params, float *adam_m,
                           float *adam_v) {
    MOME_CHECK(table && params, "mome_ckpt_read_tensors: table and params are required");
    int rc;
    hid_t f = open_checked(path, &rc);
    if (f < 0) return rc;
    for (int i = 0; i < table->n && rc == MOME_OK; i++) rc = check_shape(f, path, &table->t[i]);
    if (rc == MOME_OK) {
        visit_ctx v = {.table = table, .extra = ""};
        hid_t g = H5Gopen2(f, "model", H5P_DEFAULT);
        herr_t e = g >= 0 ? H5Lvisit(g, H5_INDEX_NAME, H5_ITER_INC, visit_model, &v) : -1;
        if (g >= 0) H5Gclose(g);
        if (e < 0)
            rc = damaged(mome_error_set(MOME_EIO, "%s:/model: cannot list the tensors", path), path, "/model");
        else if (v.extra[0])
            rc = mome_error_set(MOME_EMISMATCH,
                                "%s: holds tensor /model/%s, which the config's model does not have (a different "
                                "architecture)",
                                path, v.extra);
    }
    for (int pass = 0; pass < 3 && rc == MOME_OK; pass++) {
        const char *prefix = pass == 0 ? "model" : pass == 1 ? "optimizer/m" : "optimizer/v";
        float *buf = pass == 0 ? params : pass == 1 ? adam_m : adam_v;
        if (!buf) continue;
        if (pass > 0 && !mome_h5_exists(f, prefix)) {
            rc = mome_error_set(MOME_EMISMATCH, "%s: holds no optimizer state (/%s), which was asked for", path,
                                prefix);
            break;
        }
        for (int i = 0; i < table->n && rc == MOME_OK; i++) rc = read_one(f, path, prefix, &table->t[i], buf);
    }
    H5Fclose(f);
    return rc;
}
