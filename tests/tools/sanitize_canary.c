/* sanitize_canary: commits one deliberate error of the kind named by argv[1], so that tests/sanitize/run can
 * show that a report from a rank under mpirun reaches its log directory (a sanitizer pass that silently
 * caught nothing would otherwise look the same as a clean one).
 *
 *   sanitize_canary heap     write one byte past a heap block      (AddressSanitizer)
 *   sanitize_canary shift    shift a negative value left            (UndefinedBehaviorSanitizer)
 *   sanitize_canary leak     lose the only pointer to a block       (LeakSanitizer)
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile int sink;

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    const char *kind = argc > 1 ? argv[1] : "";
    int rc = 0;
    if (!strcmp(kind, "heap")) {
        char *volatile p = malloc(16);
        p[16] = 1;
        sink = p[0];
        free(p);
    } else if (!strcmp(kind, "shift")) {
        volatile int v = -(argc + 1);
        sink = v << 3;
    } else if (!strcmp(kind, "leak")) {
        void *volatile p = malloc(100);
        sink = p != NULL;
        p = NULL;
    } else {
        fprintf(stderr, "usage: sanitize_canary heap|shift|leak\n");
        rc = 2;
    }
    MPI_Finalize();
    return rc;
}
