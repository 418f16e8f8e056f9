/* enter_race: run inside a container, it races to open what every other process that appears in its pid
 * namespace holds (the first step of the CVE-2019-5736 and CVE-2024-21626 exploits): /proc/<pid>/exe, and each
 * /proc/<pid>/fd/<n> that is a regular file or a directory. For <seconds>; prints each distinct file it got an
 * fd to, "exe <st_dev> <st_ino> <link>" or "fd <st_dev> <st_ino> <link>", and each mount namespace other than
 * its own that it found a process of its pid namespace in, "mntns <link>" (readable with CAP_SYS_PTRACE: one in
 * the host's is a process it could take over before it reached the container), then "tries <n>". Read-only: it
 * never writes or keeps what it opens.
 *
 *     enter_race <seconds>
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_SEEN 4096

static struct { dev_t dev; ino_t ino; } seen[MAX_SEEN];
static int nseen;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* report what fd is, once per file */
static void report(const char *kind, int fd) {
    struct stat st;
    char path[64], link[4096];
    if (fstat(fd, &st) < 0) return;
    if (!strcmp(kind, "fd") && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) return;
    for (int i = 0; i < nseen; i++)
        if (seen[i].dev == st.st_dev && seen[i].ino == st.st_ino) return;
    if (nseen == MAX_SEEN) return;
    seen[nseen].dev = st.st_dev;
    seen[nseen].ino = st.st_ino;
    nseen++;
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    link[n < 0 ? 0 : n] = 0;
    printf("%s %lu %lu %s\n", kind, (unsigned long)st.st_dev, (unsigned long)st.st_ino, link);
}

static char mnt_seen[64][64];
static int nmnt;

/* report pid's mount namespace, once per namespace, if it is not ours */
static void report_mntns(int pid, const char *own) {
    char path[64], link[64];
    snprintf(path, sizeof path, "/proc/%d/ns/mnt", pid);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n <= 0) return;
    link[n] = 0;
    if (!strcmp(link, own)) return;
    for (int i = 0; i < nmnt; i++)
        if (!strcmp(mnt_seen[i], link)) return;
    if (nmnt < 64) strcpy(mnt_seen[nmnt++], link);
    printf("mntns %s\n", link);
}

int main(int argc, char **argv) {
    double until = now() + (argc > 1 ? atof(argv[1]) : 5);
    int self = getpid();
    long tries = 0;
    char path[96];
    char own_mnt[64];
    ssize_t own_n = readlink("/proc/self/ns/mnt", own_mnt, sizeof own_mnt - 1);
    own_mnt[own_n < 0 ? 0 : own_n] = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (now() < until) {
        DIR *d = opendir("/proc");
        if (!d) return 2;
        struct dirent *e;
        while ((e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid <= 1 || pid == self) continue;
            tries++;
            report_mntns(pid, own_mnt);
            snprintf(path, sizeof path, "/proc/%d/exe", pid);
            int fd = open(path, O_PATH | O_CLOEXEC);
            if (fd >= 0) {
                report("exe", fd);
                close(fd);
            }
            snprintf(path, sizeof path, "/proc/%d/fd", pid);
            DIR *fds = opendir(path);
            if (!fds) continue;
            struct dirent *f;
            while ((f = readdir(fds))) {
                if (f->d_name[0] == '.') continue;
                snprintf(path, sizeof path, "/proc/%d/fd/%s", pid, f->d_name);
                fd = open(path, O_PATH | O_CLOEXEC);
                if (fd >= 0) {
                    report("fd", fd);
                    close(fd);
                }
            }
            closedir(fds);
        }
        closedir(d);
    }
    printf("tries %ld\n", tries);
    return 0;
}
