/* watchdog.h — ends a rank that makes no progress, so that a hung job ends instead of holding its nodes.
 *
 * A rank blocked in a collective because another rank stopped (a hung process, a data network that drops
 * packets while the launcher's connections stay up) would otherwise wait forever: MPI has no timeout. Each rank
 * runs a watchdog thread from the start of mome_train; the start-up ticks it at each stage (data, model, teacher,
 * each checkpoint tried for resume, monitor) and the training loop at every step, evaluation and checkpoint, so
 * a rank stuck reading a file (a hung network file system) is caught as well. If no tick comes
 * for timeout seconds, the thread prints what the rank was doing and since when, and ends the process with
 * MOME_EXIT_WATCHDOG; the launcher (mpirun, srun) then ends the whole job. The last complete checkpoint is what a
 * restart with train.resume=auto continues from.
 */
#ifndef MOME_WATCHDOG_H
#define MOME_WATCHDOG_H

/* Exit code of a rank ended by its watchdog. */
#define MOME_EXIT_WATCHDOG 77

typedef struct mome_watchdog mome_watchdog;

/* Starts the watchdog of this rank; timeout_s <= 0 gives NULL (off), which the other functions accept. The
 * clock starts now, in phase "start". Returns NULL with the error set if the thread cannot be started. */
mome_watchdog *mome_watchdog_start(double timeout_s, int rank);

/* Progress: the rank is now in `phase` (a string that outlives the watchdog, e.g. a literal) at `step`. */
void mome_watchdog_tick(mome_watchdog *w, long step, const char *phase);

/* Stops the thread and frees the watchdog. */
void mome_watchdog_stop(mome_watchdog *w);

#endif
