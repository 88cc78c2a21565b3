/* prof.h — optional kernel timing (private to libmome): MOME_TIMED(prof, cat, call) runs call and, when prof is
 * not NULL, adds its wall time to prof[cat] (categories MOME_PROF_* in model.h; `mome bench --profile`). Kernels
 * return when all their threads are done, so the time covers every thread's work. */
#ifndef MOME_PROF_H
#define MOME_PROF_H

#include "mome/common.h"

#define MOME_TIMED(prof, cat, call)                           \
    do {                                                      \
        const double t0_ = (prof) ? mome_now() : 0.0;         \
        call;                                                 \
        if (prof) (prof)[cat] += mome_now() - t0_;            \
    } while (0)

#endif
