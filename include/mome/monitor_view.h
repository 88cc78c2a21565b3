/* monitor_view.h — `mome monitor`: the subscriber side of a run's record stream (docs/monitoring.md).
 *
 * Watches a run by its directory (runs/<run>: follows monitor.json, so it waits for a run that has not started
 * and follows it across restarts) or by a ZeroMQ endpoint, and shows the messages as a live terminal view, as
 * plain one-line records (stdout not a terminal) or as JSON lines (--json). Also writes CURVE key pairs
 * (--keygen) for a publisher that accepts connections from other hosts.
 */
#ifndef MOME_MONITOR_VIEW_H
#define MOME_MONITOR_VIEW_H

#ifdef __cplusplus
extern "C" {
#endif

/* Exit codes of `mome monitor` besides 0 (the run completed) and 2 (usage). */
#define MOME_MONITOR_EXIT_FAILED 1   /* the run ended with status failed, or the monitor could not run */
#define MOME_MONITOR_EXIT_TIMEOUT 3  /* --timeout: nothing arrived for that long */
#define MOME_MONITOR_EXIT_SIGNAL 130 /* SIGINT or SIGTERM */

/* `mome monitor [options] RUN_DIR|ENDPOINT` and `mome monitor --keygen PREFIX`. argv[0] is "monitor". Prints its
 * own usage on --help (exit 0) and on bad options (exit 2). Returns the process exit code. */
int mome_monitor_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
