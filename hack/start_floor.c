/* The kernel's share of a container start, for hack/bench_launcher.py: clone a child into the benchmark's
 * namespaces (pid, mount, ipc, uts, network), mount the rootfs with /proc, /dev and /sys, pivot_root, report
 * ready, exec /bin/true on "go", and wait for its exit. No spec, no masks or devices, no runtime: what any
 * runtime pays at least on this machine, timed the same way (create+start+wait).
 *
 * Usage: start_floor <rootfs> <iterations>. Prints the median total in ms (after 3 warm-up runs).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *root;
static int ready[2], go[2];

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int child(void *arg) {
    (void)arg;
    char path[4096], c;
    close(ready[0]);
    close(go[1]);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) || mount(root, root, NULL, MS_BIND | MS_REC, NULL))
        _exit(120);
    snprintf(path, sizeof path, "%s/proc", root);
    if (mount("proc", path, "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV, NULL)) _exit(121);
    snprintf(path, sizeof path, "%s/dev", root);
    if (mount("tmpfs", path, "tmpfs", MS_NOSUID, "mode=755,size=65536k")) _exit(122);
    snprintf(path, sizeof path, "%s/sys", root);
    if (mount("sysfs", path, "sysfs", MS_NOSUID | MS_NOEXEC | MS_NODEV | MS_RDONLY, NULL)) _exit(123);
    if (chdir(root) || syscall(SYS_pivot_root, ".", ".") || umount2(".", MNT_DETACH) || chdir("/")) _exit(124);
    if (write(ready[1], "R", 1) != 1 || read(go[0], &c, 1) != 1) _exit(125);
    char *args[] = {"true", NULL}, *env[] = {NULL};
    execve("/bin/true", args, env);
    _exit(127);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <rootfs> <iterations>\n", argv[0]);
        return 2;
    }
    root = argv[1];
    int n = atoi(argv[2]);
    if (n < 1) return 2;
    double *totals = calloc((size_t)n, sizeof *totals);
    static char stack[1 << 16];
    for (int i = 0; i < n + 3; i++) {
        if (pipe2(ready, O_CLOEXEC) || pipe2(go, O_CLOEXEC)) return 1;
        double t0 = now_ms();
        pid_t pid = clone(child, stack + sizeof stack,
                          CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET | SIGCHLD, NULL);
        if (pid < 0) return 1;
        char c;
        close(ready[1]);
        close(go[0]);
        if (read(ready[0], &c, 1) != 1) return 1;
        if (write(go[1], "G", 1) != 1) return 1;
        close(go[1]);
        while (read(ready[0], &c, 1) > 0) {}  /* close-on-exec: EOF once execve succeeded */
        close(ready[0]);
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
        if (i >= 3) totals[i - 3] = now_ms() - t0;
    }
    qsort(totals, (size_t)n, sizeof *totals, cmp);
    printf("%.3f\n", totals[n / 2]);
    return 0;
}
