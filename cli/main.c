/* main.c — the `mome` command line: dispatches verbs to libmome. */
#include <stdio.h>
int main(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "mome: not yet\n"); return 1; }
