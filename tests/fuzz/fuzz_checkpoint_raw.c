/* fuzz_checkpoint_raw.c — the checkpoint, tokenizer and router readers on raw bytes (src/checkpoint.c,
 * src/h5io.c, src/tokenizer.c, src/route.c).
 *
 * The input is written to a file as it is and loaded by every reader: the seeds are the valid files of
 * fuzz_h5.h, so mutations are byte flips, truncations and splices of real HDF5 files. Most of them stop in the
 * HDF5 library's own parser and its metadata checksums (the structure-aware fuzz_checkpoint.c gets past those);
 * this target checks that what does get through, or fails half-way, is refused cleanly. Checks as in
 * fuzz_checkpoint.c.
 *
 * With MOME_FUZZ_WRITE_SEEDS=DIR set, it writes the three valid files into DIR and exits (tests/fuzz/run uses
 * it to make this target's seed corpus, which is not kept in the tree).
 */
#include "fuzz_h5.h"

#include "mome/h5io.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    mome_h5_quiet();
    make_templates();
    const char *dir = getenv("MOME_FUZZ_WRITE_SEEDS");
    if (dir && dir[0]) {
        const char *names[N_KINDS] = {"checkpoint.h5", "tokenizer.h5", "router.h5"};
        for (int k = 0; k < N_KINDS; k++) {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", dir, names[k]);
            FILE *f = fopen(p, "wb");
            if (!f || fwrite(templates[k].image, 1, templates[k].len, f) != templates[k].len || fclose(f) != 0) {
                fprintf(stderr, "cannot write %s\n", p);
                exit(1);
            }
        }
        exit(0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    write_scratch(data, size);
    for (int k = 0; k < N_KINDS; k++) load_scratch(k, size % 2);
    return 0;
}
