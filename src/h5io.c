/* h5io.c — the small HDF5 layer every mome file goes through (see h5io.h).
 *
 * Implements: dataset writes (always chunked, always Fletcher32, intermediate groups created, an existing
 * dataset of the same name replaced), typed reads with exact shape checks, 1-D range reads, string datasets,
 * scalar attributes, and opening/creating files with the serial (sec2) driver. Every failure returns a mome
 * status and records a message naming the file and the object ("ckpt.h5:/model/wte: ...").
 *
 * Chunk policy (chunk_dims below), so that later readers get cheap partial reads:
 *  - N-d datasets (ndim >= 2) whose slice along dim 0 is >= 64 KiB: one chunk = one slice along dim 0, so an
 *    expert-stacked tensor [E, ...] has exactly one chunk per expert;
 *  - otherwise a dataset of up to 4 MiB is a single chunk;
 *  - otherwise chunks of about 1 MiB along dim 0.
 *  A chunk never exceeds 256 MiB (dims after the first are split if a single slice is larger).
 *
 * mome_h5_shape, which readers size their buffers by, also refuses a dataset whose file holds fewer bytes than its
 * declared shape needs (check_stored below): a small forged file must not make a reader allocate gigabytes.
 *
 * Strings are stored as fixed-length UTF-8 (NULL-padded) in a 1-element 1-D dataset, so that the checksum
 * covers the text itself (a variable-length string lives in the global heap, outside the filter); h5py reads
 * it with f[name].asstr()[0]. String attributes are variable-length UTF-8 (h5py reads them as str).
 *
 * Left to others: file layout and naming (checkpoint, corpus, tokenizer modules), atomic rename of files.
 */
#include "mome/h5io.h"

#include "mome/common.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MAX_DIMS 8
#define SLICE_CHUNK_MIN ((size_t)64 << 10) /* one slice along dim 0 per chunk from this size on */
#define WHOLE_MAX ((size_t)4 << 20)        /* single-chunk datasets up to this size */
#define CHUNK_TARGET ((size_t)1 << 20)     /* otherwise chunks of about this size */
#define CHUNK_MAX ((size_t)256 << 20)      /* never larger than this (HDF5's hard limit is 4 GiB) */

void mome_h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/* ---------------------------------------------------------------------------------------------------------
 * Naming: "file.h5:/group/name" for messages. */

typedef struct {
    char s[1400];
} objname;

static objname describe(hid_t loc, const char *name) {
    objname o;
    char file[1024] = "?", path[512] = "";
    ssize_t nf = loc >= 0 ? H5Fget_name(loc, file, sizeof file) : -1;
    if (nf < 0) snprintf(file, sizeof file, "?");
    if (name && name[0] == '/') {
        snprintf(o.s, sizeof o.s, "%s:%s", file, name);
        return o;
    }
    ssize_t np = loc >= 0 ? H5Iget_name(loc, path, sizeof path) : -1;
    if (np <= 0) snprintf(path, sizeof path, "/");
    size_t lp = strlen(path);
    const char *sep = (lp > 0 && path[lp - 1] == '/') ? "" : "/";
    if (name && name[0])
        snprintf(o.s, sizeof o.s, "%s:%s%s%s", file, path, sep, name);
    else
        snprintf(o.s, sizeof o.s, "%s:%s", file, path);
    return o;
}

static void format_shape(char *buf, size_t cap, int ndim, const hsize_t *dims) {
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

/* ---------------------------------------------------------------------------------------------------------
 * HDF5 error stack: after a failed call, find the innermost description and whether a checksum failed. */

typedef struct {
    char innermost[256];
    int checksum;
} stack_info;

static herr_t walk_cb(unsigned n, const H5E_error2_t *err, void *data) {
    stack_info *si = data;
    (void)n;
    if (err->desc && err->desc[0]) {
        snprintf(si->innermost, sizeof si->innermost, "%s", err->desc);
        if (strstr(err->desc, "Fletcher32") || strstr(err->desc, "checksum")) si->checksum = 1;
    }
    return 0;
}

static stack_info stack_read(void) {
    stack_info si;
    memset(&si, 0, sizeof si);
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk_cb, &si);
    return si;
}

/* ---------------------------------------------------------------------------------------------------------
 * Paths. */

/* 1 if every component of `name` exists as a link below loc, 0 if one is missing, negative on error. */
static int path_exists(hid_t loc, const char *name) {
    char buf[1024];
    size_t len = strlen(name);
    if (len == 0 || len >= sizeof buf) return 0;
    memcpy(buf, name, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (!(i == 1 && buf[0] == '/')) { /* "/" alone always exists */
                htri_t e = H5Lexists(loc, buf, H5P_DEFAULT);
                if (e <= 0) return e < 0 ? -1 : 0;
            }
            buf[i] = c;
        }
    }
    return H5Oexists_by_name(loc, name, H5P_DEFAULT) > 0 ? 1 : 0;
}

int mome_h5_exists(hid_t loc, const char *name) { return path_exists(loc, name) > 0; }

static hid_t open_dataset(hid_t loc, const char *name, int *rc) {
    if (path_exists(loc, name) <= 0) {
        *rc = mome_error_set(MOME_ENOENT, "%s: no such dataset", describe(loc, name).s);
        return -1;
    }
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) {
        stack_info si = stack_read();
        *rc = mome_error_set(MOME_EFORMAT, "%s: cannot open as a dataset (%s)", describe(loc, name).s,
                             si.innermost[0] ? si.innermost : "not a dataset");
        return -1;
    }
    *rc = MOME_OK;
    return d;
}

/* ---------------------------------------------------------------------------------------------------------
 * Writes. */

static void chunk_dims(hsize_t *chunk, int ndim, const hsize_t *dims, size_t elsize) {
    size_t total = elsize, slice = elsize;
    for (int i = 0; i < ndim; i++) {
        hsize_t d = dims[i] ? dims[i] : 1;
        total *= d;
        if (i > 0) slice *= d;
        chunk[i] = d;
    }
    if (ndim >= 2 && slice >= SLICE_CHUNK_MIN) {
        chunk[0] = 1;
    } else if (total > WHOLE_MAX) {
        hsize_t rows = (hsize_t)(CHUNK_TARGET / slice);
        chunk[0] = rows < 1 ? 1 : rows;
    }
    /* Split later dims while a chunk is still too large (only for enormous slices). */
    size_t bytes = elsize;
    for (int i = 0; i < ndim; i++) bytes *= chunk[i];
    for (int i = 1; i < ndim && bytes > CHUNK_MAX; i++) {
        size_t rest = bytes / chunk[i];
        hsize_t keep = (hsize_t)(CHUNK_MAX / rest);
        if (keep < 1) keep = 1;
        if (keep < chunk[i]) chunk[i] = keep;
        bytes = rest * chunk[i];
    }
}

static int write_dataset(hid_t loc, const char *name, hid_t mem_type, hid_t file_type, const void *data, int ndim,
                         const hsize_t *dims_in) {
    hsize_t one = 1;
    const hsize_t *dims = dims_in;
    if (ndim == 0) { /* a scalar is stored as a 1-element 1-D dataset (scalars cannot be chunked) */
        ndim = 1;
        dims = &one;
    }
    if (ndim < 0 || ndim > MAX_DIMS)
        return mome_error_set(MOME_EINVAL, "%s: cannot write a dataset with %d dims (1..%d)", describe(loc, name).s,
                              ndim, MAX_DIMS);
    hsize_t maxdims[MAX_DIMS], chunk[MAX_DIMS];
    size_t elsize = H5Tget_size(file_type);
    for (int i = 0; i < ndim; i++) maxdims[i] = dims[i] ? dims[i] : H5S_UNLIMITED; /* chunk of a 0-dim */
    chunk_dims(chunk, ndim, dims, elsize);

    int rc = MOME_OK;
    hid_t space = -1, dcpl = -1, lcpl = -1, d = -1;
    if (path_exists(loc, name) > 0 && H5Ldelete(loc, name, H5P_DEFAULT) < 0) {
        rc = mome_error_set(MOME_EIO, "%s: cannot replace the existing object", describe(loc, name).s);
        goto done;
    }
    space = H5Screate_simple(ndim, dims, maxdims);
    dcpl = H5Pcreate(H5P_DATASET_CREATE);
    lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (space < 0 || dcpl < 0 || lcpl < 0 || H5Pset_chunk(dcpl, ndim, chunk) < 0 || H5Pset_fletcher32(dcpl) < 0 ||
        H5Pset_create_intermediate_group(lcpl, 1) < 0) {
        rc = mome_error_set(MOME_EIO, "%s: cannot set up the dataset properties", describe(loc, name).s);
        goto done;
    }
    d = H5Dcreate2(loc, name, file_type, space, lcpl, dcpl, H5P_DEFAULT);
    if (d < 0) {
        stack_info si = stack_read();
        rc = mome_error_set(MOME_EIO, "%s: cannot create dataset (%s)", describe(loc, name).s, si.innermost);
        goto done;
    }
    int empty = 0;
    for (int i = 0; i < ndim; i++) empty |= dims[i] == 0;
    if (!empty && H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
        stack_info si = stack_read();
        rc = mome_error_set(MOME_EIO, "%s: write failed (%s)", describe(loc, name).s, si.innermost);
        goto done;
    }
done:
    if (d >= 0) H5Dclose(d);
    if (lcpl >= 0) H5Pclose(lcpl);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return rc;
}

int mome_h5_write_f32(hid_t loc, const char *name, const float *data, int ndim, const hsize_t *dims) {
    return write_dataset(loc, name, H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, data, ndim, dims);
}
int mome_h5_write_f64(hid_t loc, const char *name, const double *data, int ndim, const hsize_t *dims) {
    return write_dataset(loc, name, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, data, ndim, dims);
}
int mome_h5_write_u16(hid_t loc, const char *name, const uint16_t *data, int ndim, const hsize_t *dims) {
    return write_dataset(loc, name, H5T_NATIVE_UINT16, H5T_STD_U16LE, data, ndim, dims);
}
int mome_h5_write_u32(hid_t loc, const char *name, const uint32_t *data, int ndim, const hsize_t *dims) {
    return write_dataset(loc, name, H5T_NATIVE_UINT32, H5T_STD_U32LE, data, ndim, dims);
}
int mome_h5_write_u64(hid_t loc, const char *name, const uint64_t *data, int ndim, const hsize_t *dims) {
    return write_dataset(loc, name, H5T_NATIVE_UINT64, H5T_STD_U64LE, data, ndim, dims);
}

int mome_h5_write_string(hid_t loc, const char *name, const char *text) {
    size_t len = strlen(text);
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0 || H5Tset_size(t, len ? len : 1) < 0 || H5Tset_strpad(t, H5T_STR_NULLPAD) < 0 ||
        H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
        if (t >= 0) H5Tclose(t);
        return mome_error_set(MOME_EIO, "%s: cannot make a string type of %zu bytes", describe(loc, name).s, len);
    }
    hsize_t dims[1] = {1};
    const char *src = len ? text : "\0";
    int rc = write_dataset(loc, name, t, t, src, 1, dims);
    H5Tclose(t);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------
 * Reads. */

static int has_fletcher32(hid_t d) {
    hid_t dcpl = H5Dget_create_plist(d);
    if (dcpl < 0) return 0;
    unsigned flags = 0;
    size_t nelmts = 0;
    unsigned filter_config = 0;
    herr_t e = H5Pget_filter_by_id2(dcpl, H5Z_FILTER_FLETCHER32, &flags, &nelmts, NULL, 0, NULL, &filter_config);
    H5Pclose(dcpl);
    return e >= 0;
}

/* Reports a failed H5Dread: checksum failures (or any read failure of a Fletcher32 dataset) are ECORRUPT. */
static int read_failed(hid_t loc, const char *name, hid_t d) {
    stack_info si = stack_read(); /* first: any later HDF5 call clears the stack */
    objname o = describe(loc, name);
    if (si.checksum || has_fletcher32(d))
        return mome_error_set(MOME_ECORRUPT, "%s: read failed, data corrupted (checksum: %s)", o.s,
                              si.innermost[0] ? si.innermost : "unknown");
    return mome_error_set(MOME_EIO, "%s: read failed (%s)", o.s, si.innermost[0] ? si.innermost : "unknown");
}

/* Stored shape of an open dataset: ndim 0 for scalars. */
static int dataset_shape(hid_t loc, const char *name, hid_t d, int *ndim, hsize_t *dims) {
    hid_t sp = H5Dget_space(d);
    int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    if (nd < 0 || nd > MAX_DIMS) {
        if (sp >= 0) H5Sclose(sp);
        return mome_error_set(MOME_EFORMAT, "%s: unsupported dataspace (%d dims, at most %d)", describe(loc, name).s,
                              nd, MAX_DIMS);
    }
    H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sclose(sp);
    *ndim = nd;
    return MOME_OK;
}

static int read_dataset(hid_t loc, const char *name, hid_t mem_type, void *data, int ndim, const hsize_t *dims) {
    int rc;
    hid_t d = open_dataset(loc, name, &rc);
    if (d < 0) return rc;
    int snd = 0;
    hsize_t sdims[MAX_DIMS];
    rc = dataset_shape(loc, name, d, &snd, sdims);
    if (rc) goto done;
    /* A written scalar is a 1-element 1-D dataset: ndim 0 matches [1] or a true scalar. */
    int match;
    if (ndim == 0)
        match = snd == 0 || (snd == 1 && sdims[0] == 1);
    else {
        match = snd == ndim;
        for (int i = 0; match && i < ndim; i++) match = sdims[i] == dims[i];
    }
    if (!match) {
        char want[256], got[256];
        format_shape(want, sizeof want, ndim, dims);
        format_shape(got, sizeof got, snd, sdims);
        rc = mome_error_set(MOME_EMISMATCH, "%s: shape mismatch: stored %s, expected %s", describe(loc, name).s, got,
                            want);
        goto done;
    }
    hsize_t n = 1;
    for (int i = 0; i < snd; i++) n *= sdims[i];
    if (n == 0) goto done;
    hid_t ft = H5Dget_type(d);
    H5T_class_t cls = ft >= 0 ? H5Tget_class(ft) : H5T_NO_CLASS;
    if (ft >= 0) H5Tclose(ft);
    if (cls != H5T_INTEGER && cls != H5T_FLOAT) {
        rc = mome_error_set(MOME_EFORMAT, "%s: stored type is not numeric (class %d)", describe(loc, name).s,
                            (int)cls);
        goto done;
    }
    if (H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) rc = read_failed(loc, name, d);
done:
    H5Dclose(d);
    return rc;
}

int mome_h5_read_f32(hid_t loc, const char *name, float *data, int ndim, const hsize_t *dims) {
    return read_dataset(loc, name, H5T_NATIVE_FLOAT, data, ndim, dims);
}
int mome_h5_read_f64(hid_t loc, const char *name, double *data, int ndim, const hsize_t *dims) {
    return read_dataset(loc, name, H5T_NATIVE_DOUBLE, data, ndim, dims);
}
int mome_h5_read_u32(hid_t loc, const char *name, uint32_t *data, int ndim, const hsize_t *dims) {
    return read_dataset(loc, name, H5T_NATIVE_UINT32, data, ndim, dims);
}
int mome_h5_read_u64(hid_t loc, const char *name, uint64_t *data, int ndim, const hsize_t *dims) {
    return read_dataset(loc, name, H5T_NATIVE_UINT64, data, ndim, dims);
}

/* 1 when the dataset's only filter, if any, is Fletcher32 (its stored size can then be measured). */
static int unfiltered(hid_t d) {
    hid_t dcpl = H5Dget_create_plist(d);
    if (dcpl < 0) return 0;
    int n = H5Pget_nfilters(dcpl), ok = n >= 0;
    for (int i = 0; ok && i < n; i++) {
        unsigned flags = 0, config = 0;
        size_t nelmts = 0;
        ok = H5Pget_filter2(dcpl, (unsigned)i, &flags, &nelmts, NULL, 0, NULL, &config) == H5Z_FILTER_FLETCHER32;
    }
    H5Pclose(dcpl);
    return ok;
}

/* A dataset that declares more elements than the file stores (chunks never written, which read as the fill
 * value, or a forged shape) is refused here, where callers learn the size of the buffers they allocate: a file
 * of a few kilobytes could otherwise make a reader allocate and fill gigabytes. mome writes every element of every
 * dataset, uncompressed; a dataset with another filter than Fletcher32 (h5repack -f GZIP) cannot be measured
 * this way and passes. */
static int check_stored(hid_t loc, const char *name, hid_t d) {
    hid_t sp = H5Dget_space(d), ft = H5Dget_type(d);
    const hssize_t npts = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    const size_t size = ft >= 0 ? H5Tget_size(ft) : 0;
    if (sp >= 0) H5Sclose(sp);
    if (ft >= 0) H5Tclose(ft);
    if (npts <= 0 || size == 0 || !unfiltered(d)) return MOME_OK;
    const hsize_t stored = H5Dget_storage_size(d);
    if (stored / size >= (hsize_t)npts) return MOME_OK;
    return mome_error_set(MOME_ECORRUPT,
                          "%s: declares %lld elements of %zu bytes but stores %llu bytes (chunks never written, or a "
                          "forged shape)",
                          describe(loc, name).s, (long long)npts, size, (unsigned long long)stored);
}

int mome_h5_shape(hid_t loc, const char *name, int *ndim, hsize_t *dims) {
    int rc;
    hid_t d = open_dataset(loc, name, &rc);
    if (d < 0) return rc;
    rc = dataset_shape(loc, name, d, ndim, dims);
    if (!rc) rc = check_stored(loc, name, d);
    H5Dclose(d);
    return rc;
}

int mome_h5_read_u32_range(hid_t loc, const char *name, uint32_t *data, hsize_t start, hsize_t count) {
    int rc;
    hid_t d = open_dataset(loc, name, &rc);
    if (d < 0) return rc;
    hid_t fs = -1, ms = -1;
    int snd = 0;
    hsize_t sdims[MAX_DIMS];
    rc = dataset_shape(loc, name, d, &snd, sdims);
    if (rc) goto done;
    if (snd != 1) {
        rc = mome_error_set(MOME_EMISMATCH, "%s: range read needs a 1-D dataset, stored one has %d dims",
                            describe(loc, name).s, snd);
        goto done;
    }
    if (start > sdims[0] || count > sdims[0] - start) {
        rc = mome_error_set(MOME_EINVAL, "%s: range [%llu, %llu) outside the dataset of %llu elements",
                            describe(loc, name).s, (unsigned long long)start, (unsigned long long)(start + count),
                            (unsigned long long)sdims[0]);
        goto done;
    }
    if (count == 0) goto done;
    fs = H5Dget_space(d);
    ms = H5Screate_simple(1, &count, NULL);
    if (fs < 0 || ms < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &count, NULL) < 0) {
        rc = mome_error_set(MOME_EIO, "%s: cannot select range", describe(loc, name).s);
        goto done;
    }
    if (H5Dread(d, H5T_NATIVE_UINT32, ms, fs, H5P_DEFAULT, data) < 0) rc = read_failed(loc, name, d);
done:
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    H5Dclose(d);
    return rc;
}

/* Reads one string element (fixed or variable length) of dataset or attribute `obj` into a new buffer. */
static int read_string_value(hid_t loc, const char *name, hid_t obj, int is_attr, char **text) {
    hid_t ft = is_attr ? H5Aget_type(obj) : H5Dget_type(obj);
    hid_t sp = is_attr ? H5Aget_space(obj) : H5Dget_space(obj);
    hid_t mt = -1;
    int rc = MOME_OK;
    *text = NULL;
    if (ft < 0 || sp < 0 || H5Tget_class(ft) != H5T_STRING) {
        rc = mome_error_set(MOME_EFORMAT, "%s: not a string", describe(loc, name).s);
        goto done;
    }
    hssize_t npts = H5Sget_simple_extent_npoints(sp);
    if (npts != 1) {
        rc = mome_error_set(MOME_EFORMAT, "%s: expected one string, found %lld elements", describe(loc, name).s,
                            (long long)npts);
        goto done;
    }
    /* A fixed-length string type may declare gigabytes that the file does not hold: measured before allocating. */
    if (!is_attr && (rc = check_stored(loc, name, obj)) != MOME_OK) goto done;
    mt = H5Tcopy(H5T_C_S1);
    H5Tset_cset(mt, H5Tget_cset(ft));
    if (H5Tis_variable_str(ft) > 0) {
        H5Tset_size(mt, H5T_VARIABLE);
        char *s = NULL;
        herr_t e = is_attr ? H5Aread(obj, mt, &s) : H5Dread(obj, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, &s);
        if (e < 0) {
            rc = is_attr ? mome_error_set(MOME_EIO, "%s: read failed", describe(loc, name).s)
                         : read_failed(loc, name, obj);
            goto done;
        }
        *text = mome_strdup(s ? s : "");
        if (s) H5free_memory(s);
    } else {
        size_t size = H5Tget_size(ft);
        H5Tset_size(mt, size);
        H5Tset_strpad(mt, H5T_STR_NULLPAD);
        char *buf = mome_malloc(size + 1);
        herr_t e = is_attr ? H5Aread(obj, mt, buf) : H5Dread(obj, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
        if (e < 0) {
            rc = is_attr ? mome_error_set(MOME_EIO, "%s: read failed", describe(loc, name).s)
                         : read_failed(loc, name, obj);
            mome_free(buf);
            goto done;
        }
        buf[size] = 0;
        *text = buf;
    }
done:
    if (mt >= 0) H5Tclose(mt);
    if (sp >= 0) H5Sclose(sp);
    if (ft >= 0) H5Tclose(ft);
    return rc;
}

int mome_h5_read_string(hid_t loc, const char *name, char **text) {
    int rc;
    *text = NULL;
    hid_t d = open_dataset(loc, name, &rc);
    if (d < 0) return rc;
    rc = read_string_value(loc, name, d, 0, text);
    H5Dclose(d);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------
 * Attributes (scalar). */

static int attr_write(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, const void *value) {
    int rc = MOME_OK;
    htri_t ex = H5Aexists(loc, name);
    if (ex > 0 && H5Adelete(loc, name) < 0)
        return mome_error_set(MOME_EIO, "%s: cannot replace attribute '%s'", describe(loc, NULL).s, name);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = sp >= 0 ? H5Acreate2(loc, name, file_type, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
    if (a < 0 || H5Awrite(a, mem_type, value) < 0) {
        stack_info si = stack_read();
        rc = mome_error_set(MOME_EIO, "%s: cannot write attribute '%s' (%s)", describe(loc, NULL).s, name,
                            si.innermost);
    }
    if (a >= 0) H5Aclose(a);
    if (sp >= 0) H5Sclose(sp);
    return rc;
}

int mome_h5_attr_set_str(hid_t loc, const char *name, const char *value) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    int rc = attr_write(loc, name, t, t, &value);
    H5Tclose(t);
    return rc;
}

int mome_h5_attr_set_i64(hid_t loc, const char *name, int64_t value) {
    return attr_write(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

int mome_h5_attr_set_f64(hid_t loc, const char *name, double value) {
    return attr_write(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

static hid_t attr_open(hid_t loc, const char *name, int *rc) {
    htri_t ex = H5Aexists(loc, name);
    if (ex <= 0) {
        *rc = mome_error_set(MOME_ENOENT, "%s: no attribute '%s'", describe(loc, NULL).s, name);
        return -1;
    }
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) *rc = mome_error_set(MOME_EIO, "%s: cannot open attribute '%s'", describe(loc, NULL).s, name);
    return a;
}

int mome_h5_attr_get_str(hid_t loc, const char *name, char *value, size_t cap) {
    int rc = MOME_OK;
    hid_t a = attr_open(loc, name, &rc);
    if (a < 0) return rc;
    char label[600];
    snprintf(label, sizeof label, "@%s", name);
    char *s = NULL;
    rc = read_string_value(loc, label, a, 1, &s);
    H5Aclose(a);
    if (rc) return rc;
    size_t len = strlen(s);
    if (len + 1 > cap) {
        rc = mome_error_set(MOME_EINVAL, "%s: attribute '%s' is %zu bytes long, buffer holds %zu",
                            describe(loc, NULL).s, name, len, cap ? cap - 1 : 0);
    } else {
        memcpy(value, s, len + 1);
    }
    mome_free(s);
    return rc;
}

static int attr_get_num(hid_t loc, const char *name, hid_t mem_type, void *value) {
    int rc = MOME_OK;
    hid_t a = attr_open(loc, name, &rc);
    if (a < 0) return rc;
    hid_t ft = H5Aget_type(a), sp = H5Aget_space(a);
    H5T_class_t cls = ft >= 0 ? H5Tget_class(ft) : H5T_NO_CLASS;
    if (cls != H5T_INTEGER && cls != H5T_FLOAT)
        rc = mome_error_set(MOME_EFORMAT, "%s: attribute '%s' is not a number", describe(loc, NULL).s, name);
    else if (H5Sget_simple_extent_npoints(sp) != 1)
        rc = mome_error_set(MOME_EFORMAT, "%s: attribute '%s' is not a single value", describe(loc, NULL).s, name);
    else if (H5Aread(a, mem_type, value) < 0)
        rc = mome_error_set(MOME_EIO, "%s: cannot read attribute '%s'", describe(loc, NULL).s, name);
    if (sp >= 0) H5Sclose(sp);
    if (ft >= 0) H5Tclose(ft);
    H5Aclose(a);
    return rc;
}

int mome_h5_attr_get_i64(hid_t loc, const char *name, int64_t *value) {
    return attr_get_num(loc, name, H5T_NATIVE_INT64, value);
}

int mome_h5_attr_get_f64(hid_t loc, const char *name, double *value) {
    return attr_get_num(loc, name, H5T_NATIVE_DOUBLE, value);
}

/* ---------------------------------------------------------------------------------------------------------
 * Files. */

static hid_t sec2_fapl(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0) H5Pset_fapl_sec2(fapl);
    return fapl;
}

hid_t mome_h5_open_read(const char *path) {
    if (access(path, R_OK) != 0) {
        mome_error_set(MOME_ENOENT, "%s: cannot open for reading (no such file or not readable)", path);
        return -1;
    }
    hid_t fapl = sec2_fapl();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    if (f < 0) {
        stack_info si = stack_read();
        htri_t is = H5Fis_hdf5(path);
        if (is <= 0)
            mome_error_set(MOME_EFORMAT, "%s: not an HDF5 file", path);
        else
            mome_error_set(MOME_EIO, "%s: cannot open HDF5 file (%s)", path, si.innermost);
    }
    H5Pclose(fapl);
    return f;
}

hid_t mome_h5_create(const char *path) {
    hid_t fapl = sec2_fapl();
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (f < 0) {
        stack_info si = stack_read();
        mome_error_set(MOME_EIO, "%s: cannot create HDF5 file (%s)", path, si.innermost);
    }
    H5Pclose(fapl);
    return f;
}

int mome_h5_close_into_place(hid_t f, const char *tmp, const char *path, int rc) {
    if (f >= 0 && H5Fclose(f) < 0 && rc == MOME_OK) rc = mome_error_set(MOME_EIO, "%s: closing the file failed", tmp);
    if (rc == MOME_OK && rename(tmp, path) != 0)
        rc = mome_error_set(MOME_EIO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    if (rc) {
        unlink(tmp);
        return rc;
    }
    mome_fsync_parent(path);
    return MOME_OK;
}

int mome_h5_check_format(hid_t f, const char *path, const char *name, int64_t version) {
    char fmt[64] = "";
    int64_t v = 0;
    int rc = mome_h5_attr_get_str(f, "format", fmt, sizeof fmt);
    if (!rc && strcmp(fmt, name) != 0)
        rc = mome_error_set(MOME_EFORMAT, "%s: format is \"%s\", expected \"%s\"", path, fmt, name);
    if (!rc) rc = mome_h5_attr_get_i64(f, "format_version", &v);
    if (!rc && v != version)
        rc = mome_error_set(MOME_EFORMAT, "%s: format_version %lld, this build reads %lld", path, (long long)v,
                            (long long)version);
    return rc;
}
