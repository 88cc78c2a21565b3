/* test_h5io.c — unit test of the HDF5 helpers (src/h5io.c).
 *
 * Checks: exact round trips of every dataset type, strings and attributes; type conversion on read; the chunk
 * layout policy and the Fletcher32 filter on every dataset; range reads; the error codes and messages for a
 * shape mismatch, a missing object and a missing file; and that a byte flipped inside a dataset's raw data on
 * disk makes the read fail with MOME_ECORRUPT naming the object. Exits non-zero on the first failure.
 */
#include "mome/common.h"
#include "mome/h5io.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"


static char dir[256];

static void path_in(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", dir, name); }

/* Chunk dims and whether the Fletcher32 filter is set. */
static int layout(hid_t f, const char *name, int *nd, hsize_t *chunk) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return -1;
    hid_t dcpl = H5Dget_create_plist(d);
    int fl = -1;
    if (H5Pget_layout(dcpl) == H5D_CHUNKED) {
        *nd = H5Pget_chunk(dcpl, 8, chunk);
        unsigned flags, cfg;
        size_t ne = 0;
        fl = H5Pget_filter_by_id2(dcpl, H5Z_FILTER_FLETCHER32, &flags, &ne, NULL, 0, NULL, &cfg) >= 0;
    }
    H5Pclose(dcpl);
    H5Dclose(d);
    return fl;
}

static void test_round_trip(void) {
    char path[512];
    path_in(path, sizeof path, "rt.h5");
    hid_t f = mome_h5_create(path);
    CHECK(f >= 0);
    if (f < 0) return;

    float f32[3 * 5];
    double f64[7];
    uint16_t u16[11];
    uint32_t u32[2 * 3 * 4];
    uint64_t u64[6];
    for (int i = 0; i < 15; i++) f32[i] = (float)i * 0.37f - 2.5f + (i == 3 ? 1e-30f : 0.0f);
    for (int i = 0; i < 7; i++) f64[i] = 1.0 / (i + 1) - 1e300 * (i == 6);
    for (int i = 0; i < 11; i++) u16[i] = (uint16_t)(65535 - i * 1001);
    for (int i = 0; i < 24; i++) u32[i] = 0xfffffff0u - (uint32_t)i * 77777u;
    for (int i = 0; i < 6; i++) u64[i] = 0xffffffffffffffffULL - (uint64_t)i * 0x123456789abULL;
    hsize_t d_f32[2] = {3, 5}, d_f64[1] = {7}, d_u16[1] = {11}, d_u32[3] = {2, 3, 4}, d_u64[1] = {6};
    CHECK_RC(mome_h5_write_f32(f, "model/layer0/w", f32, 2, d_f32), MOME_OK);
    CHECK_RC(mome_h5_write_f64(f, "/kd/window", f64, 1, d_f64), MOME_OK);
    CHECK_RC(mome_h5_write_u16(f, "tokens/train", u16, 1, d_u16), MOME_OK);
    CHECK_RC(mome_h5_write_u32(f, "a/b/c/d/u32", u32, 3, d_u32), MOME_OK);
    CHECK_RC(mome_h5_write_u64(f, "rng/state", u64, 1, d_u64), MOME_OK);
    uint64_t scalar = 123456789012345ULL;
    CHECK_RC(mome_h5_write_u64(f, "step", &scalar, 0, NULL), MOME_OK);
    const char *text = "[model]\nd_model = 64\n# café, Größe, 中文 ✓\n";
    CHECK_RC(mome_h5_write_string(f, "config", text), MOME_OK);
    CHECK_RC(mome_h5_write_string(f, "empty", ""), MOME_OK);
    hsize_t d_zero[2] = {0, 4};
    CHECK_RC(mome_h5_write_u32(f, "tokens/val", u32, 2, d_zero), MOME_OK);
    CHECK_RC(mome_h5_attr_set_str(f, "format", "mome-test"), MOME_OK);
    CHECK_RC(mome_h5_attr_set_i64(f, "format_version", -42), MOME_OK);
    CHECK_RC(mome_h5_attr_set_f64(f, "alpha", 0.125), MOME_OK);
    CHECK_RC(mome_h5_attr_set_str(f, "format", "mome-test2"), MOME_OK); /* overwrite */
    hid_t g = H5Gopen2(f, "model/layer0", H5P_DEFAULT);
    CHECK(g >= 0);
    CHECK_RC(mome_h5_attr_set_str(g, "kind", "dense"), MOME_OK);
    /* Writing relative to a group, then over an existing name with a new shape. */
    CHECK_RC(mome_h5_write_f32(g, "b", f32, 1, d_f64), MOME_OK);
    CHECK_RC(mome_h5_write_f32(g, "b", f32, 1, d_u16), MOME_OK);
    H5Gclose(g);
    CHECK(mome_h5_exists(f, "a/b/c/d/u32") == 1);
    CHECK(mome_h5_exists(f, "/a/b") == 1);
    CHECK(mome_h5_exists(f, "a/x/c") == 0);
    CHECK(mome_h5_exists(f, "nothing") == 0);
    H5Fclose(f);

    f = mome_h5_open_read(path);
    CHECK(f >= 0);
    if (f < 0) return;
    float rf32[15];
    double rf64[7];
    uint32_t ru16[11], ru32[24];
    uint64_t ru64[6], rscalar = 0;
    CHECK_RC(mome_h5_read_f32(f, "model/layer0/w", rf32, 2, d_f32), MOME_OK);
    CHECK(memcmp(rf32, f32, sizeof f32) == 0);
    CHECK_RC(mome_h5_read_f64(f, "kd/window", rf64, 1, d_f64), MOME_OK);
    CHECK(memcmp(rf64, f64, sizeof f64) == 0);
    CHECK_RC(mome_h5_read_u32(f, "tokens/train", ru16, 1, d_u16), MOME_OK);
    for (int i = 0; i < 11; i++) CHECK_EQ_U64(ru16[i], u16[i]);
    CHECK_RC(mome_h5_read_u32(f, "/a/b/c/d/u32", ru32, 3, d_u32), MOME_OK);
    CHECK(memcmp(ru32, u32, sizeof u32) == 0);
    CHECK_RC(mome_h5_read_u64(f, "rng/state", ru64, 1, d_u64), MOME_OK);
    CHECK(memcmp(ru64, u64, sizeof u64) == 0);
    CHECK_RC(mome_h5_read_u64(f, "step", &rscalar, 0, NULL), MOME_OK);
    CHECK_EQ_U64(rscalar, scalar);
    /* Conversion through HDF5 memory types: u16 -> f32, u32 -> u64, f32 -> f64. */
    float cf[11];
    CHECK_RC(mome_h5_read_f32(f, "tokens/train", cf, 1, d_u16), MOME_OK);
    for (int i = 0; i < 11; i++) CHECK(cf[i] == (float)u16[i]);
    uint64_t cu[24];
    CHECK_RC(mome_h5_read_u64(f, "a/b/c/d/u32", cu, 3, d_u32), MOME_OK);
    for (int i = 0; i < 24; i++) CHECK_EQ_U64(cu[i], u32[i]);
    double cd[15];
    CHECK_RC(mome_h5_read_f64(f, "model/layer0/w", cd, 2, d_f32), MOME_OK);
    for (int i = 0; i < 15; i++) CHECK(cd[i] == (double)f32[i]);
    /* Replaced dataset has the new shape. */
    float rb[11];
    CHECK_RC(mome_h5_read_f32(f, "model/layer0/b", rb, 1, d_u16), MOME_OK);
    CHECK(memcmp(rb, f32, sizeof rb) == 0);
    /* Empty dataset. */
    int nd = -1;
    hsize_t sh[8];
    CHECK_RC(mome_h5_shape(f, "tokens/val", &nd, sh), MOME_OK);
    CHECK(nd == 2 && sh[0] == 0 && sh[1] == 4);
    CHECK_RC(mome_h5_read_u32(f, "tokens/val", ru32, 2, d_zero), MOME_OK);
    CHECK_RC(mome_h5_shape(f, "a/b/c/d/u32", &nd, sh), MOME_OK);
    CHECK(nd == 3 && sh[0] == 2 && sh[1] == 3 && sh[2] == 4);
    /* Strings and attributes. */
    char *rt = NULL;
    CHECK_RC(mome_h5_read_string(f, "config", &rt), MOME_OK);
    CHECK(rt && strcmp(rt, text) == 0);
    mome_free(rt);
    CHECK_RC(mome_h5_read_string(f, "empty", &rt), MOME_OK);
    CHECK(rt && rt[0] == 0);
    mome_free(rt);
    char sbuf[64];
    CHECK_RC(mome_h5_attr_get_str(f, "format", sbuf, sizeof sbuf), MOME_OK);
    CHECK(strcmp(sbuf, "mome-test2") == 0);
    CHECK_RC(mome_h5_attr_get_str(f, "format", sbuf, 5), MOME_EINVAL); /* too small a buffer */
    int64_t iv = 0;
    CHECK_RC(mome_h5_attr_get_i64(f, "format_version", &iv), MOME_OK);
    CHECK(iv == -42);
    double dv = 0;
    CHECK_RC(mome_h5_attr_get_f64(f, "alpha", &dv), MOME_OK);
    CHECK(dv == 0.125);
    CHECK_RC(mome_h5_attr_get_i64(f, "alpha", &iv), MOME_OK); /* converted */
    CHECK(iv == 0);
    CHECK_RC(mome_h5_attr_get_i64(f, "format", &iv), MOME_EFORMAT);
    CHECK_RC(mome_h5_attr_get_i64(f, "missing_attr", &iv), MOME_ENOENT);
    CHECK_CONTAINS(mome_error_message(), "missing_attr");
    CHECK_CONTAINS(mome_error_message(), "rt.h5");
    hid_t g2 = H5Gopen2(f, "/model/layer0", H5P_DEFAULT);
    CHECK_RC(mome_h5_attr_get_str(g2, "kind", sbuf, sizeof sbuf), MOME_OK);
    CHECK(strcmp(sbuf, "dense") == 0);
    /* Relative reads from a group name the full path in errors. */
    CHECK_RC(mome_h5_read_f32(g2, "nope", rf32, 1, d_f64), MOME_ENOENT);
    CHECK_CONTAINS(mome_error_message(), "/model/layer0/nope");
    H5Gclose(g2);
    /* Reading a string as numbers is a format error. */
    hsize_t one = 1;
    CHECK_RC(mome_h5_read_f32(f, "config", rf32, 1, &one), MOME_EFORMAT);
    H5Fclose(f);
}

static void test_errors(void) {
    char path[512];
    path_in(path, sizeof path, "err.h5");
    hid_t f = mome_h5_create(path);
    float x[6] = {1, 2, 3, 4, 5, 6};
    hsize_t dims[2] = {2, 3};
    CHECK_RC(mome_h5_write_f32(f, "model/w", x, 2, dims), MOME_OK);
    H5Fclose(f);
    f = mome_h5_open_read(path);
    CHECK(f >= 0);
    float y[6];
    hsize_t wrong[2] = {3, 2};
    CHECK_RC(mome_h5_read_f32(f, "model/w", y, 2, wrong), MOME_EMISMATCH);
    const char *m = mome_error_message();
    CHECK_CONTAINS(m, "err.h5");
    CHECK_CONTAINS(m, "/model/w");
    CHECK_CONTAINS(m, "[2, 3]");
    CHECK_CONTAINS(m, "[3, 2]");
    hsize_t flat[1] = {6};
    CHECK_RC(mome_h5_read_f32(f, "model/w", y, 1, flat), MOME_EMISMATCH);
    CHECK_CONTAINS(mome_error_message(), "[6]");
    CHECK_RC(mome_h5_read_f32(f, "model/missing", y, 2, dims), MOME_ENOENT);
    CHECK_CONTAINS(mome_error_message(), "err.h5");
    CHECK_CONTAINS(mome_error_message(), "/model/missing");
    CHECK_RC(mome_h5_read_f32(f, "nogroup/sub/w", y, 2, dims), MOME_ENOENT);
    CHECK_CONTAINS(mome_error_message(), "/nogroup/sub/w");
    int nd;
    hsize_t sh[8];
    CHECK_RC(mome_h5_shape(f, "model/missing", &nd, sh), MOME_ENOENT);
    char *s = NULL;
    CHECK_RC(mome_h5_read_string(f, "model/missing", &s), MOME_ENOENT);
    CHECK_RC(mome_h5_read_string(f, "model/w", &s), MOME_EFORMAT);
    CHECK_RC(mome_h5_read_f32(f, "model", y, 2, dims), MOME_EFORMAT); /* a group, not a dataset */
    uint32_t r[4];
    CHECK_RC(mome_h5_read_u32_range(f, "model/w", r, 0, 2), MOME_EMISMATCH); /* not 1-D */
    H5Fclose(f);

    path_in(path, sizeof path, "does_not_exist.h5");
    CHECK(mome_h5_open_read(path) < 0);
    CHECK_CONTAINS(mome_error_message(), "does_not_exist.h5");
    path_in(path, sizeof path, "not_hdf5.h5");
    FILE *fp = fopen(path, "wb");
    fputs("this is not an HDF5 file\n", fp);
    fclose(fp);
    CHECK(mome_h5_open_read(path) < 0);
    CHECK_CONTAINS(mome_error_message(), "not an HDF5 file");
}

static void test_layout_and_range(void) {
    char path[512];
    path_in(path, sizeof path, "layout.h5");
    hid_t f = mome_h5_create(path);
    /* Experts stacked [8, 256, 64] f32: 64 KiB per expert -> one chunk per expert. */
    size_t n_exp = 8 * 256 * 64;
    float *e = mome_malloc(n_exp * sizeof *e);
    for (size_t i = 0; i < n_exp; i++) e[i] = (float)i;
    hsize_t de[3] = {8, 256, 64};
    CHECK_RC(mome_h5_write_f32(f, "experts", e, 3, de), MOME_OK);
    /* Small slices: [4096, 256] f32 = 4 MiB -> whole dataset is one chunk. */
    hsize_t dw[2] = {4096, 256};
    float *w = mome_calloc(4096 * 256, sizeof *w);
    CHECK_RC(mome_h5_write_f32(f, "wte", w, 2, dw), MOME_OK);
    /* Long 1-D stream (3M u32 = 12 MiB) -> ~1 MiB chunks along dim 0. */
    size_t n_tok = 3u << 20;
    uint32_t *t = mome_malloc(n_tok * sizeof *t);
    for (size_t i = 0; i < n_tok; i++) t[i] = (uint32_t)(i * 2654435761u);
    hsize_t dt[1] = {n_tok};
    CHECK_RC(mome_h5_write_u32(f, "tokens", t, 1, dt), MOME_OK);
    hsize_t ds[1] = {100};
    CHECK_RC(mome_h5_write_u32(f, "small", t, 1, ds), MOME_OK);
    H5Fclose(f);

    f = mome_h5_open_read(path);
    int nd = 0;
    hsize_t ch[8];
    CHECK(layout(f, "experts", &nd, ch) == 1);
    CHECK(nd == 3 && ch[0] == 1 && ch[1] == 256 && ch[2] == 64);
    CHECK(layout(f, "wte", &nd, ch) == 1);
    CHECK(nd == 2 && ch[0] == 4096 && ch[1] == 256);
    CHECK(layout(f, "tokens", &nd, ch) == 1);
    CHECK(nd == 1 && ch[0] == (1u << 18));
    CHECK(layout(f, "small", &nd, ch) == 1);
    CHECK(nd == 1 && ch[0] == 100);
    float *re = mome_malloc(n_exp * sizeof *re);
    CHECK_RC(mome_h5_read_f32(f, "experts", re, 3, de), MOME_OK);
    CHECK(memcmp(re, e, n_exp * sizeof *e) == 0);
    /* Range reads, including across chunk boundaries and the very end. */
    uint32_t *r = mome_malloc(400000 * sizeof *r);
    hsize_t starts[4] = {0, 262100, 1000003, n_tok - 400000};
    for (int k = 0; k < 4; k++) {
        CHECK_RC(mome_h5_read_u32_range(f, "tokens", r, starts[k], 400000), MOME_OK);
        CHECK(memcmp(r, t + starts[k], 400000 * sizeof *r) == 0);
    }
    CHECK_RC(mome_h5_read_u32_range(f, "tokens", r, n_tok, 0), MOME_OK);
    CHECK_RC(mome_h5_read_u32_range(f, "tokens", r, n_tok - 5, 6), MOME_EINVAL);
    CHECK_CONTAINS(mome_error_message(), "/tokens");
    H5Fclose(f);
    mome_free(r);
    mome_free(re);
    mome_free(t);
    mome_free(w);
    mome_free(e);
}

/* Flips one byte inside the raw data of `name` (its first chunk) in the file on disk. */
static int flip_byte(const char *path, const char *name, size_t at) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    haddr_t addr = HADDR_UNDEF;
    hsize_t size = 0, off[8];
    unsigned mask = 0;
    hid_t dcpl = H5Dget_create_plist(d);
    if (H5Pget_layout(dcpl) == H5D_CHUNKED) {
        hid_t sp = H5Dget_space(d);
        if (H5Dget_chunk_info(d, sp, 0, off, &mask, &addr, &size) < 0) addr = HADDR_UNDEF;
        H5Sclose(sp);
    } else {
        addr = H5Dget_offset(d);
        size = H5Dget_storage_size(d);
    }
    H5Pclose(dcpl);
    H5Dclose(d);
    H5Fclose(f);
    if (addr == HADDR_UNDEF || at >= size) {
        fprintf(stderr, "%s:%d: cannot locate raw data of %s (addr undefined or size %llu <= %zu)\n", __FILE__,
                __LINE__, name, (unsigned long long)size, at);
        return -1;
    }
    int fd = open(path, O_RDWR);
    unsigned char b;
    if (fd < 0 || pread(fd, &b, 1, (off_t)(addr + at)) != 1) return -1;
    b ^= 0x5a;
    int ok = pwrite(fd, &b, 1, (off_t)(addr + at)) == 1;
    close(fd);
    return ok ? 0 : -1;
}

static void test_corruption(void) {
    char path[512];
    path_in(path, sizeof path, "corrupt.h5");
    hid_t f = mome_h5_create(path);
    float x[1000];
    for (int i = 0; i < 1000; i++) x[i] = (float)i * 0.5f;
    hsize_t d[1] = {1000};
    CHECK_RC(mome_h5_write_f32(f, "model/w", x, 1, d), MOME_OK);
    CHECK_RC(mome_h5_write_f32(f, "model/untouched", x, 1, d), MOME_OK);
    CHECK_RC(mome_h5_write_string(f, "config", "some configuration text that we will corrupt"), MOME_OK);
    H5Fclose(f);
    CHECK(flip_byte(path, "/model/w", 1234) == 0);
    CHECK(flip_byte(path, "/config", 7) == 0);

    f = mome_h5_open_read(path);
    CHECK(f >= 0);
    float y[1000];
    CHECK_RC(mome_h5_read_f32(f, "model/w", y, 1, d), MOME_ECORRUPT);
    CHECK_CONTAINS(mome_error_message(), "corrupt.h5");
    CHECK_CONTAINS(mome_error_message(), "/model/w");
    uint32_t r[10];
    CHECK_RC(mome_h5_read_u32_range(f, "model/w", r, 0, 10), MOME_ECORRUPT);
    char *s = NULL;
    CHECK_RC(mome_h5_read_string(f, "config", &s), MOME_ECORRUPT);
    CHECK_CONTAINS(mome_error_message(), "/config");
    mome_free(s);
    CHECK_RC(mome_h5_read_f32(f, "model/untouched", y, 1, d), MOME_OK);
    CHECK(memcmp(x, y, sizeof x) == 0);
    H5Fclose(f);
}

int main(void) {
    mome_h5_quiet();
    snprintf(dir, sizeof dir, "/tmp/mome_test_h5io_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_errors();
    test_layout_and_range();
    test_corruption();
    if (failures) {
        fprintf(stderr, "test_h5io: %d check(s) failed (files kept in %s)\n", failures, dir);
        return 1;
    }
    const char *names[] = {"rt.h5", "err.h5", "layout.h5", "corrupt.h5", "not_hdf5.h5"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char p[512];
        path_in(p, sizeof p, names[i]);
        unlink(p);
    }
    rmdir(dir);
    printf("test_h5io: all checks passed\n");
    return 0;
}
