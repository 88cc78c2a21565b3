/* fuzz_checkpoint.c — the checkpoint reader (src/checkpoint.c, src/h5io.c), structure-aware: valid HDF5 files
 * with fuzzer-chosen changes to their attributes, datasets and links.
 *
 * Byte-level fuzzing of an HDF5 file mostly exercises the HDF5 library's own parser (and its checksums reject
 * nearly every flip). Here each run opens a valid file written at start (fuzz_h5.h: half the runs a checkpoint,
 * the others a tokenizer or a router file, whose loaders share h5io) in memory with HDF5's core driver, applies
 * up to 8 edits through the HDF5 API, and hands the result to mome's loaders. The edits:
 *   - set an attribute (a known name or any): integer or float of any width and byte order, fixed or
 *     variable-length strings of any content and padding, arrays, empty and null dataspaces, opaque, compound,
 *     enum and bitfield types;
 *   - delete an attribute, a dataset or a group;
 *   - replace a dataset: any of those types, scalar, null or 1-5-D dataspaces with small or huge dimensions,
 *     chunked (with or without Fletcher32), contiguous or compact, data from the input or never written;
 *   - overwrite a dataset's data in place (NaN, infinities, any bit pattern);
 *   - turn a group into a dataset or a dataset into a group; soft (dangling, cyclic), hard and external links
 *     in place of objects; extra datasets in /model; renames.
 * Checks: the loaders refuse with a message naming the file, or load consistent state.
 */
#include "fuzz_h5.h"

#include <hdf5.h>
#include <math.h>

#include "mome/h5io.h"

/* ---- the objects of each kind of file ---- */

static const char *const ckpt_datasets[] = {
    "config", "model/wte", "model/blocks/fc_w", "model/lnf_w", "optimizer/m/wte", "optimizer/m/blocks/fc_w",
    "optimizer/m/lnf_w", "optimizer/v/wte", "optimizer/v/blocks/fc_w", "optimizer/v/lnf_w", "rng/state",
    "data/cursor", "kd/ce_window", "kd/kd_window", "kd/count", "kd/router/gate_w", "kd/router/adam_m",
    "kd/router/adam_v", "kd/router/step", NULL};
static const char *const ckpt_groups[] = {"/", "model", "model/blocks", "optimizer", "optimizer/m", "optimizer/v",
                                          "rng", "data", "kd", "kd/router", NULL};
static const char *const ckpt_attrs[] = {"format", "format_version", "step", "tokens_seen", "world_size",
                                         "git_sha", "tokenizer_hash", "model_kind", NULL};
static const char *const tok_datasets[] = {"merges", NULL};
static const char *const tok_groups[] = {"/", NULL};
static const char *const tok_attrs[] = {"format", "format_version", "vocab_size", "hash", "bos_id", "eos_id",
                                        "pretokenizer", NULL};
static const char *const router_datasets[] = {"labels", "idf", "weights", "bias", NULL};
static const char *const router_groups[] = {"/", NULL};
static const char *const router_attrs[] = {
    "format", "format_version", "classifier", "features", "n_classes", "buckets", "ngram_min", "ngram_max",
    "hash_seed", "content_hash", "corpus_tokenizer_hash", "corpus_train_hash", "C", "alpha", "seed",
    "n_train_segments", "n_train_short", "n_train_dropped", "clean_folds", "clean_threshold", "seg_min_chars",
    "seg_max_chars", "seg_short_fraction", "seg_short_min_chars", "seg_words_per_chars", NULL};

typedef struct {
    const char *const *datasets, *const *groups, *const *attrs;
} layout;

static const layout layouts[N_KINDS] = {{ckpt_datasets, ckpt_groups, ckpt_attrs},
                                        {tok_datasets, tok_groups, tok_attrs},
                                        {router_datasets, router_groups, router_attrs}};

static size_t count(const char *const *list) {
    size_t n = 0;
    while (list[n]) n++;
    return n;
}

static const char *pick(fuzz_in *in, const char *const *list) { return list[fuzz_range(in, 0, count(list) - 1)]; }

/* A dataset path: mostly a known one, sometimes a group's, sometimes a new name. */
static const char *pick_path(fuzz_in *in, const layout *l, char *buf, size_t cap) {
    switch (fuzz_range(in, 0, 7)) {
    case 0: return pick(in, l->groups);
    case 1: {
        char *s = fuzz_string(in, 24);
        snprintf(buf, cap, "%s/%s", pick(in, l->groups), s[0] ? s : "x");
        free(s);
        return buf;
    }
    default: return pick(in, l->datasets);
    }
}

/* ---- types and dataspaces ---- */

typedef struct {
    hid_t type;
    int vlen_str; /* variable-length string: data are char pointers */
    int vlen_seq; /* variable-length sequence: never written */
} ftype;

static ftype make_type(fuzz_in *in) {
    ftype t = {-1, 0, 0};
    switch (fuzz_range(in, 0, 19)) {
    case 0: t.type = H5Tcopy(H5T_STD_I64LE); break;
    case 1: t.type = H5Tcopy(H5T_IEEE_F64LE); break;
    case 2: t.type = H5Tcopy(H5T_IEEE_F32LE); break;
    case 3: t.type = H5Tcopy(H5T_STD_U8LE); break;
    case 4: t.type = H5Tcopy(H5T_STD_I8LE); break;
    case 5: t.type = H5Tcopy(H5T_STD_U16BE); break;
    case 6: t.type = H5Tcopy(H5T_STD_U32LE); break;
    case 7: t.type = H5Tcopy(H5T_STD_U64BE); break;
    case 8: t.type = H5Tcopy(H5T_IEEE_F32BE); break;
    case 9: t.type = H5Tcopy(H5T_STD_I32BE); break;
    case 10:
    case 11: {
        static const size_t huge[] = {65536, (size_t)1 << 24, (size_t)1 << 30, ((size_t)1 << 32) - 1};
        t.type = H5Tcopy(H5T_C_S1);
        const uint8_t b = fuzz_u8(in);
        H5Tset_size(t.type, b < 240 ? (size_t)fuzz_range(in, 1, 300) : huge[b % 4]);
        H5Tset_strpad(t.type, (H5T_str_t)fuzz_range(in, 0, 2));
        if (fuzz_u8(in) & 1) H5Tset_cset(t.type, H5T_CSET_UTF8);
        break;
    }
    case 12:
    case 13:
        t.type = H5Tcopy(H5T_C_S1);
        H5Tset_size(t.type, H5T_VARIABLE);
        if (fuzz_u8(in) & 1) H5Tset_cset(t.type, H5T_CSET_UTF8);
        t.vlen_str = 1;
        break;
    case 14: t.type = H5Tcreate(H5T_OPAQUE, (size_t)fuzz_range(in, 1, 16)); break;
    case 15: {
        t.type = H5Tcreate(H5T_COMPOUND, 12);
        H5Tinsert(t.type, "a", 0, H5T_STD_I32LE);
        H5Tinsert(t.type, "b", 4, H5T_IEEE_F64LE);
        break;
    }
    case 16: {
        t.type = H5Tenum_create(H5T_STD_I32LE);
        int v0 = 0, v1 = 1;
        H5Tenum_insert(t.type, "zero", &v0);
        H5Tenum_insert(t.type, "one", &v1);
        break;
    }
    case 17: {
        hsize_t n = fuzz_range(in, 1, 4);
        t.type = H5Tarray_create2(H5T_STD_I64LE, 1, &n);
        break;
    }
    case 18: t.type = H5Tcopy(H5T_STD_B16LE); break;
    default:
        t.type = H5Tvlen_create(H5T_STD_I32LE);
        t.vlen_seq = 1;
        break;
    }
    return t;
}

static hsize_t pick_dim(fuzz_in *in) {
    static const hsize_t big[] = {0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 64, 65536, (hsize_t)1 << 20, (hsize_t)1 << 24,
                                  ((hsize_t)1 << 24) + 1, (hsize_t)1 << 28, ((hsize_t)1 << 28) + 1,
                                  (hsize_t)1 << 30, ((hsize_t)1 << 30) + 1, (hsize_t)1 << 31, (hsize_t)1 << 32,
                                  ((hsize_t)1 << 40) + 3};
    uint8_t b = fuzz_u8(in);
    if (b < 192) return b % 10;
    return big[b % (sizeof big / sizeof big[0])];
}

/* Scalar, null or simple; *n gets the element count (saturated). */
static hid_t make_space(fuzz_in *in, int *ndim, hsize_t *dims, hsize_t *n) {
    const int kind = (int)fuzz_range(in, 0, 9);
    *n = 1;
    if (kind == 0) {
        *ndim = 0;
        return H5Screate(H5S_SCALAR);
    }
    if (kind == 1) {
        *ndim = -1;
        *n = 0;
        return H5Screate(H5S_NULL);
    }
    *ndim = (int)fuzz_range(in, 1, 5);
    for (int i = 0; i < *ndim; i++) {
        dims[i] = pick_dim(in);
        *n = dims[i] && *n > UINT64_MAX / dims[i] ? UINT64_MAX : *n * dims[i];
    }
    return H5Screate_simple(*ndim, dims, NULL);
}

/* Data for n elements of t from the input (the input's bytes repeated), NULL when too large to write. */
static void *make_data(fuzz_in *in, const ftype *t, hsize_t n, char ***strings) {
    *strings = NULL;
    if (t->vlen_seq || n > 4096) return NULL;
    if (t->vlen_str) {
        char **p = calloc(n ? n : 1, sizeof *p);
        if (!p) abort();
        for (hsize_t i = 0; i < n; i++) p[i] = fuzz_string(in, 64);
        *strings = p;
        return p;
    }
    const size_t size = H5Tget_size(t->type);
    if (!size || n * size > 1 << 16) return NULL;
    size_t len;
    const uint8_t *src = fuzz_bytes(in, 256, &len);
    uint8_t *buf = malloc(n * size + 1);
    if (!buf) abort();
    for (size_t i = 0; i < n * size; i++) buf[i] = len ? src[i % len] : (uint8_t)i;
    return buf;
}

static void free_data(void *data, char **strings, hsize_t n) {
    if (strings)
        for (hsize_t i = 0; i < n; i++) free(strings[i]);
    free(data);
}

/* ---- edits ---- */

static void remove_link(hid_t f, const char *path) {
    if (strcmp(path, "/") != 0 && H5Lexists(f, path, H5P_DEFAULT) > 0) H5Ldelete(f, path, H5P_DEFAULT);
}

static void set_attribute(fuzz_in *in, hid_t f, const layout *l) {
    const char *objpath = fuzz_u8(in) < 200 ? "/" : pick(in, fuzz_u8(in) & 1 ? l->groups : l->datasets);
    char *own = NULL;
    const char *name = fuzz_u8(in) < 240 ? pick(in, l->attrs) : (own = fuzz_string(in, 16));
    if (!name[0]) name = "x";
    if (strcmp(objpath, "/") != 0 && fuzz_u8(in) < 64) name = "step"; /* /optimizer's */
    hid_t obj = H5Oopen(f, objpath, H5P_DEFAULT);
    if (obj >= 0) {
        if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
        ftype t = make_type(in);
        int ndim;
        hsize_t dims[8], n;
        hid_t sp = fuzz_u8(in) < 160 ? H5Screate(H5S_SCALAR) : make_space(in, &ndim, dims, &n);
        if (H5Sget_simple_extent_type(sp) == H5S_SCALAR) n = 1;
        else if (H5Sget_simple_extent_type(sp) == H5S_NULL) n = 0;
        /* HDF5 allocates an attribute's whole value when it creates one: a 1 GiB string times a large dataspace
         * would exhaust this process, not test mome. Attributes stay under 64 KiB: beyond that, files in the
         * HDF5 1.10 format (mome's checkpoints) move attributes to dense storage, whose insertion asks for
         * allocations the sanitizer refuses. */
        const size_t tsize = t.type >= 0 ? H5Tget_size(t.type) : 0;
        const int fits = tsize > 0 && n <= ((hsize_t)1 << 16) / tsize;
        hid_t a = fits && sp >= 0 ? H5Acreate2(obj, name, t.type, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
        if (a >= 0) {
            char **strings;
            void *data = n > 0 ? make_data(in, &t, n, &strings) : NULL;
            if (data) H5Awrite(a, t.type, data);
            if (data) free_data(data, strings, n);
            H5Aclose(a);
        }
        if (sp >= 0) H5Sclose(sp);
        if (t.type >= 0) H5Tclose(t.type);
        H5Oclose(obj);
    }
    free(own);
}

static void delete_attribute(fuzz_in *in, hid_t f, const layout *l) {
    const char *objpath = fuzz_u8(in) < 220 ? "/" : pick(in, l->groups);
    hid_t obj = H5Oopen(f, objpath, H5P_DEFAULT);
    if (obj < 0) return;
    const char *name = strcmp(objpath, "/") ? "step" : pick(in, l->attrs);
    if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
    H5Oclose(obj);
}

static void replace_dataset(fuzz_in *in, hid_t f, const char *path) {
    remove_link(f, path);
    ftype t = make_type(in);
    int ndim;
    hsize_t dims[8], n;
    hid_t sp = make_space(in, &ndim, dims, &n);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    const int layout_kind = (int)fuzz_range(in, 0, 3);
    if (layout_kind <= 1 && ndim > 0) { /* chunked: chunks within the dims, under HDF5's 4 GiB */
        hsize_t chunk[8];
        for (int i = 0; i < ndim; i++) chunk[i] = dims[i] == 0 ? 1 : dims[i] < 16 ? dims[i] : 16;
        hsize_t maxdims[8];
        for (int i = 0; i < ndim; i++) maxdims[i] = dims[i] ? dims[i] : H5S_UNLIMITED;
        H5Sset_extent_simple(sp, ndim, dims, maxdims);
        H5Pset_chunk(dcpl, ndim, chunk);
        if (layout_kind == 0) H5Pset_fletcher32(dcpl);
    } else if (layout_kind == 2) {
        H5Pset_layout(dcpl, H5D_COMPACT);
    }
    if (fuzz_u8(in) < 32 && !t.vlen_str && !t.vlen_seq) { /* a fill value for what is never written */
        uint8_t fill[512] = {0};
        size_t len;
        const uint8_t *src = fuzz_bytes(in, sizeof fill, &len);
        memcpy(fill, src, len);
        if (H5Tget_size(t.type) <= sizeof fill) H5Pset_fill_value(dcpl, t.type, fill);
    }
    hid_t d = t.type >= 0 && sp >= 0 ? H5Dcreate2(f, path, t.type, sp, lcpl, dcpl, H5P_DEFAULT) : -1;
    if (d >= 0) {
        char **strings;
        void *data = n > 0 && fuzz_u8(in) < 224 ? make_data(in, &t, n, &strings) : NULL;
        if (data) H5Dwrite(d, t.type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
        if (data) free_data(data, strings, n);
        H5Dclose(d);
    }
    H5Pclose(dcpl);
    H5Pclose(lcpl);
    if (sp >= 0) H5Sclose(sp);
    if (t.type >= 0) H5Tclose(t.type);
}

/* New bytes for an existing dataset of a fixed-size type, same shape and type. */
static void overwrite_data(fuzz_in *in, hid_t f, const char *path) {
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    if (d < 0) return;
    hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
    hssize_t n = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    ftype ft = {t, 0, 0};
    if (t >= 0 && n > 0 && H5Tis_variable_str(t) <= 0 && H5Tget_class(t) != H5T_VLEN) {
        char **strings;
        void *data = make_data(in, &ft, (hsize_t)n, &strings);
        if (data) {
            /* Mostly whole elements from the input; sometimes one value of interest everywhere. */
            const H5T_class_t cls = H5Tget_class(t);
            const size_t size = H5Tget_size(t);
            const int special = fuzz_u8(in);
            if (cls == H5T_FLOAT && size == 4 && special < 96) {
                const float v[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1e-45f, 3.4e38f, 1.0f};
                for (hssize_t i = 0; i < n; i++) ((float *)data)[i] = v[(special + i) % 8];
                H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
            } else {
                H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
            }
            free_data(data, strings, (hsize_t)n);
        }
    }
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    H5Dclose(d);
}

static void replace_with_link(fuzz_in *in, hid_t f, const layout *l, const char *path) {
    if (strcmp(path, "/") == 0) return;
    remove_link(f, path);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    switch (fuzz_range(in, 0, 4)) {
    case 0: H5Lcreate_soft(pick(in, l->datasets), f, path, lcpl, H5P_DEFAULT); break;
    case 1: H5Lcreate_soft("/no/such/object", f, path, lcpl, H5P_DEFAULT); break;
    case 2: H5Lcreate_soft(path, f, path, lcpl, H5P_DEFAULT); break; /* itself */
    case 3: H5Lcreate_hard(f, pick(in, fuzz_u8(in) & 1 ? l->groups : l->datasets), f, path, lcpl, H5P_DEFAULT); break;
    default: H5Lcreate_external("mome-fuzz-no-such-file.h5", "/x", f, path, lcpl, H5P_DEFAULT); break;
    }
    H5Pclose(lcpl);
}

static void replace_with_group(hid_t f, const char *path) {
    if (strcmp(path, "/") == 0) return;
    remove_link(f, path);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t g = H5Gcreate2(f, path, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (g >= 0) H5Gclose(g);
    H5Pclose(lcpl);
}

static void edit(fuzz_in *in, hid_t f, int kind) {
    const layout *l = &layouts[kind];
    char buf[128];
    switch (fuzz_range(in, 0, 9)) {
    case 0:
    case 1: set_attribute(in, f, l); break;
    case 2: delete_attribute(in, f, l); break;
    case 3: remove_link(f, pick_path(in, l, buf, sizeof buf)); break;
    case 4:
    case 5: replace_dataset(in, f, pick_path(in, l, buf, sizeof buf)); break;
    case 6: overwrite_data(in, f, pick(in, l->datasets)); break;
    case 7: replace_with_link(in, f, l, pick_path(in, l, buf, sizeof buf)); break;
    case 8: replace_with_group(f, pick_path(in, l, buf, sizeof buf)); break;
    default: { /* rename, or an extra tensor in /model */
        const char *from = pick(in, l->datasets);
        const char *to = pick_path(in, l, buf, sizeof buf);
        if (fuzz_u8(in) & 1) {
            if (strcmp(from, to) != 0 && strcmp(to, "/") != 0) {
                remove_link(f, to);
                H5Lmove(f, from, f, to, H5P_DEFAULT, H5P_DEFAULT);
            }
        } else if (kind == KIND_CKPT) {
            char *s = fuzz_string(in, 16);
            snprintf(buf, sizeof buf, "model/%s", s[0] ? s : "extra");
            free(s);
            const float x[2] = {1, 2};
            const hsize_t dims[1] = {2};
            mome_h5_write_f32(f, buf, x, 1, dims);
        }
        break;
    }
    }
}

/* ---- the target ---- */

static hid_t image_fapl;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    mome_h5_quiet();
    /* HDF5 keeps up to 64 MiB of its freed blocks for reuse: fresh pages for every file opened would be most of
     * a run's time under ASan, which does not reuse freed memory at once (only mome's allocations need checking). */
    H5set_free_list_limits(64 << 20, 16 << 20, 64 << 20, 16 << 20, 64 << 20, 16 << 20);
    make_templates();
    image_fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_core(image_fapl, 1 << 16, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    const uint8_t sel = fuzz_u8(&in);
    const int k = sel % 4, kind = k < 2 ? KIND_CKPT : k == 2 ? KIND_TOKENIZER : KIND_ROUTER;
    const h5_template *t = &templates[kind];
    hid_t fapl = H5Pcopy(image_fapl);
    H5Pset_file_image(fapl, t->image, t->len);
    hid_t f = H5Fopen("mome-fuzz-image.h5", H5F_ACC_RDWR, fapl);
    H5Pclose(fapl);
    if (f < 0) abort();
    const int n_edits = (int)fuzz_range(&in, 0, 8);
    for (int i = 0; i < n_edits && !fuzz_empty(&in); i++) edit(&in, f, kind);
    H5Fflush(f, H5F_SCOPE_GLOBAL);
    ssize_t len = H5Fget_file_image(f, NULL, 0);
    if (len <= 0) abort();
    uint8_t *image = malloc((size_t)len);
    if (!image || H5Fget_file_image(f, image, (size_t)len) != len) abort();
    H5Fclose(f);
    write_scratch(image, (size_t)len);
    free(image);
    load_scratch(kind, !(sel & 4));
    return 0;
}
