/* pycri-init: executes a container child plan encoded by runtime/launch/fastinit.py (the Python side plans
 * everything).
 *
 * Usage: pycri-init <base fd>: fd base+0 holds the encoded plan (a memfd), base+1 is p2c (reads "G", "S"),
 * base+2 is c2p (writes "W <text>\n", "R \n", "E <text>\n"; close-on-exec, so EOF means execve succeeded).
 * The plan is a list of operations (see fastinit.py for the encoding), run in order; the first failure sends
 * "E <stage>: <text>" and exits 1, as runtime/launch/process.py's Python child does.
 *
 * Spare mode: pycri-init spare <socket fd>: started ahead of need (initproc.Spare), it waits on a unix socket
 * for one message: a u32 plan length with p2c, c2p and, optionally, the three stdio fds (SCM_RIGHTS), then the
 * plan. It puts those fds at SPARE_BASE + 1.. (stdio from SPARE_BASE + 3, where the plan says they are) and
 * goes on as above. EOF instead of a message (the monitor let it go): exit 0. The plan may end in OP_CONTINUE:
 * the rest follows on the socket (u32 length, operations), sent while this part runs.
 *
 * Factory mode: pycri-init factory <socket fd>: makes spares for the monitor, so that it neither waits for a
 * spawn (posix_spawn returns after the execve) nor makes their pid namespaces itself. Each request on the
 * socket: one byte (1: the spare in a new pid namespace, 0: not) with the spare's end of its socketpair
 * (SCM_RIGHTS). The spare is cloned with CLONE_PARENT: the monitor's child, as a spawned one, that it reaps
 * and whose container's exit it waits for. Answer: the spare's pid, an i32 (-errno if the clone failed).
 * EOF: exit 0.
 *
 * What the container could reach of this process (CVE-2019-5736, CVE-2024-21626): it is made non-dumpable first
 * thing, so that no process of the container can open its /proc/<pid>/exe or fds (its execve of the container's
 * program makes that one dumpable again); every fd but the ones it was given is closed before it joins
 * anything; the monitor runs it from a sealed memfd copy (initproc.py), never from the file on the host; and
 * the working directory it ends in must be inside the container's root.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef MOUNT_ATTR_RDONLY
struct mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; };
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif

enum {
    OP_STAGE = 1, OP_WAIT_G, OP_CGJOIN, OP_JOINNS, OP_UNSHARE, OP_FAIL, OP_MOUNT, OP_RESOLVE, OP_MKDIRS,
    OP_TOUCH, OP_REMOUNT_RO, OP_SETATTR, OP_MKNOD, OP_UMASK, OP_UMASK_RESTORE, OP_SYMLINK, OP_PIVOT,
    OP_WRITEFILE, OP_MASK, OP_ROPATH, OP_HOSTNAME, OP_DOMAINNAME, OP_RLIMIT, OP_OOM, OP_STDIO, OP_FINDEXE,
    OP_CHDIR, OP_READY, OP_SECCOMP, OP_DROP, OP_NNP, OP_EXEC, OP_MKDIRS_PARENT, OP_WARN,
    OP_CONTINUE, OP_FORK,
};

#define PATH_BUF 8192

static int c2p = -1, p2c = -1;
static const char *stage = "";
static char *rootfs;
/* path registers 1 and 2 (0: an absolute path): a path in the container (OP_RESOLVE), resolved under root_fd
 * through fds (open_in_root); fd: its O_PATH fd once OP_MKDIRS / OP_TOUCH made it, what OP_MOUNT mounts on */
static char reg[3][PATH_BUF];
static int regfd[3] = {-1, -1, -1};
static int root_fd = -1;  /* the rootfs, opened at the first OP_RESOLVE (after it is mounted); closed at OP_PIVOT */
static char exe[PATH_BUF];
static mode_t saved_umask;

static unsigned char *buf;
static size_t blen, bpos;

static void write_all(int fd, const char *s, size_t n) {
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;
        }
        s += w; n -= (size_t)w;
    }
}

static void send_msg(char kind, const char *text) {
    size_t n = strlen(text);
    char *out = malloc(n + 4);
    if (!out) _exit(1);
    out[0] = kind; out[1] = ' ';
    for (size_t i = 0; i < n; i++) out[2 + i] = text[i] == '\n' ? ' ' : text[i];
    out[2 + n] = '\n';
    write_all(c2p, out, n + 3);
    free(out);
}

static void __attribute__((noreturn, format(printf, 1, 2))) die(const char *fmt, ...) {
    char msg[PATH_BUF * 3], full[PATH_BUF * 4];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (*stage) snprintf(full, sizeof full, "%s: %s", stage, msg);
    else snprintf(full, sizeof full, "%s", msg);
    send_msg('E', full);
    _exit(1);
}

/* die with "<path>: <strerror>" (a Python OSError with a filename) */
static void __attribute__((noreturn)) die_path(const char *path, int err) {
    die("%s: %s", path, strerror(err));
}

/* Python's repr() of a str (the common cases; None for NULL) */
static const char *pyrepr(const char *s, char *out, size_t size) {
    if (!s) { snprintf(out, size, "None"); return out; }
    int has_sq = strchr(s, '\'') != NULL, has_dq = strchr(s, '"') != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    size_t o = 0;
    out[o++] = q;
    for (const unsigned char *p = (const unsigned char *)s; *p && o + 8 < size; p++) {
        if (*p == '\\') { out[o++] = '\\'; out[o++] = '\\'; }
        else if (*p == (unsigned char)q) { out[o++] = '\\'; out[o++] = q; }
        else if (*p == '\n') { out[o++] = '\\'; out[o++] = 'n'; }
        else if (*p == '\t') { out[o++] = '\\'; out[o++] = 't'; }
        else if (*p == '\r') { out[o++] = '\\'; out[o++] = 'r'; }
        else if (*p < 0x20 || *p == 0x7f) o += (size_t)snprintf(out + o, size - o, "\\x%02x", *p);
        else out[o++] = (char)*p;
    }
    out[o++] = q;
    out[o] = 0;
    return out;
}

/* ---- plan decoding ---- */
static void __attribute__((noreturn)) bad_plan(void) {
    stage = "";
    die("pycri-init: malformed plan");
}

static uint8_t get_u8(void) {
    if (bpos + 1 > blen) bad_plan();
    return buf[bpos++];
}

static int64_t get_i64(void) {
    int64_t v;
    if (bpos + 8 > blen) bad_plan();
    memcpy(&v, buf + bpos, 8);
    bpos += 8;
    return v;
}

/* a string: u32 length (0xffffffff: None), the bytes, a NUL (not counted) */
static char *get_str_len(uint32_t *len_out) {
    uint32_t n;
    if (bpos + 4 > blen) bad_plan();
    memcpy(&n, buf + bpos, 4);
    bpos += 4;
    if (n == 0xffffffffu) { if (len_out) *len_out = 0; return NULL; }
    if (bpos + n + 1 > blen || buf[bpos + n] != 0) bad_plan();
    char *s = (char *)buf + bpos;
    bpos += n + 1;
    if (len_out) *len_out = n;
    return s;
}

static char *get_str(void) { return get_str_len(NULL); }

/* a path argument: u8 register (0: an absolute path), then a string appended to the register's path (a path in
 * the container, resolved by open_in_root); the register in *r and that string in *suffix, where asked */
static char *get_path_at(char *out, int *r_out, const char **suffix) {
    uint8_t r = get_u8();
    char *s = get_str();
    if (r > 2 || !s) bad_plan();
    if (snprintf(out, PATH_BUF, "%s%s", r ? reg[r] : "", s) >= PATH_BUF) die("path too long");
    if (r_out) *r_out = r;
    if (suffix) *suffix = s;
    return out;
}

static char *get_path(char *out) { return get_path_at(out, NULL, NULL); }

/* ---- helpers mirroring runtime/launch/rootfs.py ---- */
/* mount(2); an error names the target as shown (a container path where target is an fd's) */
static void mount_as(const char *src, const char *target, const char *shown, const char *fstype,
                     unsigned long flags, const char *data) {
    if (mount(src, target, fstype, flags, data) < 0) {
        int err = errno;
        char a[PATH_BUF], b[PATH_BUF], c[256], d[PATH_BUF];
        die("mount %s on %s (type %s, flags 0x%lx, data %s): %s", pyrepr(src, a, sizeof a),
            pyrepr(shown, b, sizeof b), pyrepr(fstype, c, sizeof c), flags, pyrepr(data, d, sizeof d),
            strerror(err));
    }
}

static void do_mount(const char *src, const char *target, const char *fstype, unsigned long flags,
                     const char *data) {
    mount_as(src, target, target, fstype, flags, data);
}

/* os.path.join(a, b) for a relative b */
static void path_join(char *out, const char *a, const char *b) {
    size_t la = strlen(a);
    if (la && a[la - 1] == '/') snprintf(out, PATH_BUF, "%s%s", a, b);
    else snprintf(out, PATH_BUF, "%s/%s", a, b);
}

/* ---- rootfs.open_in_root: a path of the container resolved under root_fd through fds, never as a string that
 * a process racing on it could redirect (CVE-2021-30465); errors name the container path ---- */
enum { MAKE_NONE, MAKE_DIR, MAKE_FILE };

#ifndef RESOLVE_IN_ROOT
struct open_how { uint64_t flags, mode, resolve; };
#define RESOLVE_NO_MAGICLINKS 0x02
#define RESOLVE_IN_ROOT 0x10
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif

static int dup_fd(int fd) {
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) die("%s", strerror(errno));
    return d;
}

/* the walk (rootfs._walk_in_root): each component opened with O_NOFOLLOW from its parent's fd, a symlink read
 * through its own fd and followed within the root, what is missing made at its parent's fd */
static int walk_in_root(int root, const char *unsafe, int make) {
    static char work[PATH_BUF * 4];
    int stack[256], depth = 0, links = 0, retries = 0;
    stack[depth++] = dup_fd(root);
    snprintf(work, sizeof work, "%s", unsafe);
    char *p = work;
    for (;;) {
        while (*p == '/') p++;
        if (!*p) break;
        char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char part[PATH_BUF];
        if (n >= sizeof part) die_path(unsafe, ENAMETOOLONG);
        memcpy(part, p, n); part[n] = 0;
        char *start = p;
        p += n;
        if (!strcmp(part, ".")) continue;
        if (!strcmp(part, "..")) {
            if (depth > 1) close(stack[--depth]);
            continue;
        }
        int parent = stack[depth - 1];
        int fd = openat(parent, part, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
            if (errno != ENOENT || make == MAKE_NONE) die_path(unsafe, errno);
            if (++retries > 100) die_path(unsafe, EAGAIN);
            const char *rest = p;
            while (*rest == '/') rest++;
            if (make == MAKE_FILE && !*rest) {  /* O_EXCL: never opens what appeared meanwhile (a fifo) */
                int f = openat(parent, part, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY |
                               O_CLOEXEC, 0644);
                if (f < 0 && errno != EEXIST) die_path(unsafe, errno);
                if (f >= 0) close(f);
            } else if (mkdirat(parent, part, 0755) < 0 && errno != EEXIST) {
                die_path(unsafe, errno);
            }
            p = start;  /* once more, now that it exists: opened and looked at as any other */
            continue;
        }
        struct stat st;
        if (fstat(fd, &st) < 0) die_path(unsafe, errno);
        if (S_ISLNK(st.st_mode)) {
            char target[PATH_BUF], tmp[PATH_BUF * 4];
            ssize_t tl = readlinkat(fd, "", target, sizeof target - 1);
            close(fd);
            if (tl < 0) die_path(unsafe, errno);
            if (++links > 255) die_path(unsafe, ELOOP);
            target[tl] = 0;
            if (target[0] == '/')
                while (depth > 1) close(stack[--depth]);
            if ((size_t)tl + 1 + strlen(p) + 1 > sizeof work) die_path(unsafe, ENAMETOOLONG);
            snprintf(tmp, sizeof tmp, "%s/%s", target, p);
            snprintf(work, sizeof work, "%s", tmp);
            p = work;
            continue;
        }
        const char *rest = p;
        while (*rest == '/') rest++;
        if (!S_ISDIR(st.st_mode) && *rest) {
            close(fd);
            die_path(unsafe, ENOTDIR);
        }
        if (depth == (int)(sizeof stack / sizeof stack[0])) die_path(unsafe, ENAMETOOLONG);
        stack[depth++] = fd;
    }
    int out = stack[--depth];
    while (depth) close(stack[--depth]);
    return out;
}

static int open_in_root(int root, const char *unsafe, int make) {
    const char *rel = unsafe;
    while (*rel == '/') rel++;
    struct open_how how = {O_PATH | O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    for (int tries = 0;; tries++) {  /* EAGAIN: a rename raced a ".." (the kernel's answer: try again) */
        int fd = (int)syscall(SYS_openat2, root, *rel ? rel : ".", &how, sizeof how);
        if (fd >= 0) return fd;
        if (errno != EAGAIN || tries == 16) break;
    }
    if (errno == ENOSYS || errno == EPERM || errno == EAGAIN || (errno == ENOENT && make != MAKE_NONE))
        return walk_in_root(root, unsafe, make);
    die_path(unsafe, errno);
}

static void fd_path(int fd, char *out) { snprintf(out, 64, "/proc/self/fd/%d", fd); }

static int mnt_id(int fd) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "re");
    int id = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "mnt_id:", 7)) id = atoi(line + 7);
    fclose(f);
    return id;
}

/* the parent mount's id of the mount whose id is id (from /proc/self/mountinfo), or -1 */
static int parent_mnt_id(int id) {
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char *line = NULL;
    size_t cap = 0;
    int found = -1, mid, parent;
    if (!f) return -1;
    while (found < 0 && getline(&line, &cap, f) > 0)  /* (whole lines: an overlay's can be long) */
        if (sscanf(line, "%d %d", &mid, &parent) == 2 && mid == id) found = parent;
    free(line);
    fclose(f);
    return found;
}

/* rootfs.reopen_mounted: an fd of the mount just made on `under`, for what acts on the mount itself */
static int reopen_mounted(const char *unsafe, int under) {
    int over = open_in_root(root_fd, unsafe, MAKE_NONE);
    char a[64], b[64], la[PATH_BUF], lb[PATH_BUF];
    static const char deleted[] = " (deleted)";
    fd_path(over, a);
    fd_path(under, b);
    ssize_t na = readlink(a, la, sizeof la - 1), nb = readlink(b, lb, sizeof lb - 1);
    int over_id = mnt_id(over), under_id = mnt_id(under);
    if (na < 0 || nb < 0 || na != nb || memcmp(la, lb, (size_t)na) || over_id == under_id ||
            ((size_t)na >= sizeof deleted - 1 && !memcmp(la + na - (sizeof deleted - 1), deleted, sizeof deleted - 1))
            || parent_mnt_id(over_id) != under_id) {
        char r[PATH_BUF];
        die("mount destination %s changed while it was set up", pyrepr(unsafe, r, sizeof r));
    }
    return over;
}

/* an O_PATH fd of a register path argument: the register's own (made by OP_MKDIRS / OP_TOUCH) when it names the
 * register's path, else resolved now (a path below it); *own says which (an own fd is not to be closed) */
static int target_fd(int r, const char *suffix, const char *path, int *own) {
    *own = !suffix[0] && regfd[r] >= 0;
    return *own ? regfd[r] : open_in_root(root_fd, path, MAKE_NONE);
}

static void set_regfd(int r, int fd) {
    if (regfd[r] >= 0) close(regfd[r]);
    regfd[r] = fd;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* os.makedirs(path, 0o755, exist_ok=True) */
static void mkdirs(const char *path) {
    char tmp[PATH_BUF];
    snprintf(tmp, sizeof tmp, "%s", path);
    size_t n = strlen(tmp);
    while (n > 1 && tmp[n - 1] == '/') tmp[--n] = 0;
    if (mkdir(tmp, 0755) == 0) return;
    int err = errno;
    if (err == EEXIST) {
        if (is_dir(tmp)) return;
        die_path(tmp, EEXIST);
    }
    if (err != ENOENT) die_path(tmp, err);
    char *slash = strrchr(tmp, '/');
    if (slash && slash != tmp) {
        *slash = 0;
        mkdirs(tmp);
        *slash = '/';
    }
    if (mkdir(tmp, 0755) < 0 && !(errno == EEXIST && is_dir(tmp))) die_path(tmp, errno);
}

static void dirname_of(const char *path, char *out) {
    snprintf(out, PATH_BUF, "%s", path);
    char *slash = strrchr(out, '/');
    if (!slash) { out[0] = 0; return; }
    char *s = slash;
    while (s > out && *(s - 1) == '/') s--;  /* os.path.dirname strips trailing slashes of the head */
    if (s == out) out[1] = 0; else *s = 0;
}

static void touch(const char *path) {
    char dir[PATH_BUF];
    dirname_of(path, dir);
    if (dir[0]) mkdirs(dir);
    struct stat st;
    if (stat(path, &st) == 0) return;
    int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) die_path(path, errno);
    close(fd);
}

#define ST_KEEP (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)

static void remount_ro_as(const char *path, const char *shown, unsigned long extra) {
    struct statvfs sv;
    if (statvfs(path, &sv) < 0) die_path(shown, errno);
    unsigned long keep = sv.f_flag & ST_KEEP;
    if (sv.f_flag & 4096) keep |= MS_RELATIME;
    mount_as(NULL, path, shown, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | keep | extra, NULL);
}

static void remount_ro(const char *path, unsigned long extra) { remount_ro_as(path, path, extra); }

static void wait_byte(char want) {
    char b;
    for (;;) {
        ssize_t r = read(p2c, &b, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r == 1 && b == want) return;
        _exit(1);
    }
}

static void write_file(const char *path, const char *data, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) die_path(path, errno);
    while (n) {
        ssize_t w = write(fd, data, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            die("%s", strerror(errno));
        }
        data += w; n -= (size_t)w;
    }
    close(fd);
}

static void pivot(const char *root) {
    int old = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (old < 0) die_path("/", errno);
    int new = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (new < 0) die_path(root, errno);
    if (fchdir(new) < 0) die("%s", strerror(errno));
    if (syscall(SYS_pivot_root, ".", ".") < 0) die("pivot_root: %s", strerror(errno));
    if (fchdir(old) < 0) die("%s", strerror(errno));
    do_mount(NULL, ".", NULL, MS_SLAVE | MS_REC, NULL);
    if (umount2(".", MNT_DETACH) < 0) die("umount '.': %s", strerror(errno));
    close(old);
    close(new);
    if (chdir("/") < 0) die_path("/", errno);
}

/* close fds lo..hi: close_range, or (before Linux 5.9) each fd /proc/self/fd lists in that range */
static void close_fds(unsigned lo, unsigned hi) {
    if (lo > hi || syscall(SYS_close_range, lo, hi, 0) == 0) return;
    int found[1024], n;
    do {  /* a batch at a time: closing changes the listing */
        n = 0;
        DIR *d = opendir("/proc/self/fd");
        if (!d) die("closing fds: /proc/self/fd: %s", strerror(errno));  /* none may be left open */
        int own = dirfd(d);
        struct dirent *e;
        while ((e = readdir(d)) && n < (int)(sizeof found / sizeof found[0])) {
            char *end;
            long fd = strtol(e->d_name, &end, 10);
            if (*end || e->d_name[0] == '.' || fd == own || fd < (long)lo || (unsigned long)fd > hi) continue;
            found[n++] = (int)fd;
        }
        closedir(d);
        for (int i = 0; i < n; i++) close(found[i]);
    } while (n == (int)(sizeof found / sizeof found[0]));
}

/* close every fd but those in keep[0..n) (sorted), and put /dev/null on 0-2 unless kept */
static void close_all_but(const int *keep, int n) {
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd < 3; fd++) {
        int kept = 0;
        for (int i = 0; i < n; i++) kept |= keep[i] == fd;
        if (!kept && null >= 0 && dup2(null, fd) < 0) _exit(1);
    }
    int from = 3;
    for (int i = 0; i < n; i++) {
        if (keep[i] < from) continue;
        if (keep[i] > from) close_fds((unsigned)from, (unsigned)keep[i] - 1);
        from = keep[i] + 1;
    }
    close_fds((unsigned)from, ~0U);
}

/* OP_CHDIR: the working directory must be inside the container's root (a cwd reached through an fd of the host,
 * "/proc/self/fd/<n>", is outside it: the kernel's getcwd then starts with "(unreachable)") */
static void chdir_inside(const char *dir) {
    char cwd[PATH_BUF];
    if (chdir(dir) < 0) die_path(dir, errno);
    long n = syscall(SYS_getcwd, cwd, sizeof cwd);
    if (n < 0) die("getcwd: %s", strerror(errno));
    if (cwd[0] != '/') {
        char r[PATH_BUF];
        die("the working directory %s is outside the container", pyrepr(dir, r, sizeof r));
    }
}

static void find_exe(const char *arg0, const char *path_var) {
    struct stat st;
    if (strchr(arg0, '/')) {
        if (stat(arg0, &st) < 0) die("exec: \"%s\": no such file or directory", arg0);
        if (access(arg0, X_OK) < 0 || S_ISDIR(st.st_mode)) die("exec: \"%s\": permission denied", arg0);
        snprintf(exe, sizeof exe, "%s", arg0);
        return;
    }
    const char *p = path_var;
    for (;;) {
        const char *end = strchr(p, ':');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char dir[PATH_BUF];
        if (n == 0) snprintf(dir, sizeof dir, ".");
        else snprintf(dir, sizeof dir, "%.*s", (int)n, p);
        char cand[PATH_BUF];
        path_join(cand, dir, arg0);
        if (stat(cand, &st) == 0 && S_ISREG(st.st_mode) && access(cand, X_OK) == 0) {
            snprintf(exe, sizeof exe, "%s", cand);
            return;
        }
        if (!end) break;
        p = end + 1;
    }
    die("exec: \"%s\": executable file not found in $PATH", arg0);
}

static void prctl_or_die(int option, unsigned long arg2, int two_args) {
    if (prctl(option, arg2, 0UL, 0UL, 0UL) < 0) {
        int err = errno;
        if (two_args) die("prctl(%d, %lu): %s", option, arg2, strerror(err));
        die("prctl(%d): %s", option, strerror(err));
    }
}

struct cap_hdr { uint32_t version; int pid; };
struct cap_data { uint32_t effective, permitted, inheritable; };

static void drop_privileges(void) {
    int have_caps = get_u8();
    int64_t ndrop = get_i64();
    for (int64_t i = 0; i < ndrop; i++) {
        int64_t c = get_i64();
        prctl_or_die(PR_CAPBSET_DROP, (unsigned long)c, 1);
    }
    int64_t ngids = get_i64();
    if (ngids < 0 || ngids > 65536) bad_plan();
    gid_t *gids = malloc(sizeof(gid_t) * (size_t)(ngids ? ngids : 1));
    for (int64_t i = 0; i < ngids; i++) gids[i] = (gid_t)get_i64();
    gid_t gid = (gid_t)get_i64();
    uid_t uid = (uid_t)get_i64();
    uint64_t eff = (uint64_t)get_i64(), prm = (uint64_t)get_i64(), inh = (uint64_t)get_i64();
    int64_t namb = get_i64();
    prctl_or_die(PR_SET_KEEPCAPS, 1, 0);
    if (setgroups((size_t)ngids, gids) < 0) die("%s", strerror(errno));
    if (setresgid(gid, gid, gid) < 0) die("%s", strerror(errno));
    if (setresuid(uid, uid, uid) < 0) die("%s", strerror(errno));
    prctl_or_die(PR_SET_KEEPCAPS, 0, 0);
    if (have_caps) {
        struct cap_hdr hdr = {0x20080522, 0};
        struct cap_data data[2];
        for (int i = 0; i < 2; i++) {
            data[i].effective = (uint32_t)(eff >> (32 * i));
            data[i].permitted = (uint32_t)(prm >> (32 * i));
            data[i].inheritable = (uint32_t)(inh >> (32 * i));
        }
        if (syscall(SYS_capset, &hdr, data) < 0) die("capset: %s", strerror(errno));
        prctl_or_die(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0);
    }
    for (int64_t i = 0; i < namb; i++) {
        int64_t c = get_i64();
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, (unsigned long)c, 0UL, 0UL) < 0)
            die("prctl(%d, %d): %s", PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, strerror(errno));
    }
    free(gids);
}

static char **get_strv(void) {
    int64_t n = get_i64();
    if (n < 0 || n > 1 << 20) bad_plan();
    char **v = calloc((size_t)n + 1, sizeof(char *));
    if (!v) _exit(1);
    for (int64_t i = 0; i < n; i++) {
        v[i] = get_str();
        if (!v[i]) bad_plan();
    }
    return v;
}

#define SPARE_BASE 10

static void read_full(int fd, unsigned char *to, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, to + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) _exit(1);
        got += (size_t)r;
    }
}

static int plan_sock = -1;  /* spare mode: where OP_CONTINUE reads the rest of the plan */

/* OP_CONTINUE: the next part of the plan replaces the buffer (the old one stays: stage and rootfs point in it) */
static void next_part(void) {
    uint32_t n;
    if (plan_sock < 0) bad_plan();
    read_full(plan_sock, (unsigned char *)&n, sizeof n);
    buf = malloc((size_t)n + 1);
    if (!buf) _exit(1);
    read_full(plan_sock, buf, n);
    blen = n;
    bpos = 0;
    close(plan_sock);  /* the whole plan is here */
    plan_sock = -1;
}

/* recvmsg of len bytes (flags as recvmsg's) with up to 5 fds (SCM_RIGHTS, close-on-exec) into fds: the number
 * of fds, or -1 on EOF; exits on an error or a message without fds */
static int recv_with_fds(int sock, void *data, size_t len, int flags, int fds[5]) {
    union { char buf[CMSG_SPACE(5 * sizeof(int))]; struct cmsghdr align; } u;
    struct iovec iov = {data, len};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof u.buf;
    ssize_t r;
    do r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags); while (r < 0 && errno == EINTR);
    if (r == 0) return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (r != (ssize_t)len || !c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
        (msg.msg_flags & MSG_CTRUNC)) _exit(1);
    size_t nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    memcpy(fds, CMSG_DATA(c), nfds * sizeof(int));
    return (int)nfds;
}

/* spare mode: the message that assigns this process its container (see the top); returns the number of fds */
static int receive_plan(int sock) {
    uint32_t n = 0;
    int fds[5];
    int got = recv_with_fds(sock, &n, sizeof n, MSG_WAITALL, fds);
    if (got < 0) _exit(0);
    size_t nfds = (size_t)got;
    if (nfds != 2 && nfds != 5) _exit(1);
    /* received fds take the lowest free numbers, below SPARE_BASE: dup each to its place, then close it */
    for (size_t i = 0; i < nfds; i++) {
        if (fcntl(fds[i], F_DUPFD_CLOEXEC, SPARE_BASE + 1 + (int)i) != SPARE_BASE + 1 + (int)i) _exit(1);
    }
    for (size_t i = 0; i < nfds; i++) close(fds[i]);
    /* stdio fds are dup2'd onto 0-2 by OP_STDIO; they need not be close-on-exec until then, but are
     * anyway (OP_EXEC closes every fd but c2p) */
    blen = n;
    buf = malloc(blen + 1);
    if (!buf) _exit(1);
    read_full(sock, buf, blen);
    plan_sock = sock;  /* close-on-exec; OP_EXEC closes it anyway */
    return (int)nfds;
}

static void read_plan(int fd) {
    struct stat st;
    if (fstat(fd, &st) < 0) _exit(1);
    blen = (size_t)st.st_size;
    buf = malloc(blen + 1);
    if (!buf) _exit(1);
    size_t got = 0;
    while (got < blen) {
        ssize_t r = pread(fd, buf + got, blen - got, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) _exit(1);
        got += (size_t)r;
    }
    close(fd);
}

/* factory mode (see the top): returns only in each spare made, with its socket */
static int factory(int ctl, char *mode_arg) {
    for (;;) {
        unsigned char new_pidns = 0;
        int fds[5];
        int got = recv_with_fds(ctl, &new_pidns, 1, 0, fds);
        if (got < 0) _exit(0);
        if (got != 1) _exit(1);
        int sock = fds[0];
        struct clone_args args = {0};
        args.flags = CLONE_PARENT | (new_pidns ? CLONE_NEWPID : 0);  /* exit_signal 0: the monitor's SIGCHLD */
        long pid = syscall(SYS_clone3, &args, sizeof args);
        if (pid == 0) {
            /* what ps and /proc/<pid>/cmdline show ("factory" has 8 bytes). Done here, in the spare, so that the
             * factory never shows as one; the spare shows as a factory until it first runs. */
            memcpy(mode_arg, "spare\0\0", 8);
            close(ctl);
            return sock;
        }
        int32_t answer = pid < 0 ? -errno : (int32_t)pid;
        close(sock);
        write_all(ctl, (const char *)&answer, sizeof answer);
    }
}

int main(int argc, char **argv) {
    int spare_sock = -1;
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) _exit(1);
    if (argc == 3 && strcmp(argv[1], "spare") == 0)
        spare_sock = atoi(argv[2]);
    else if (argc == 3 && strcmp(argv[1], "factory") == 0)
        spare_sock = factory(atoi(argv[2]), argv[1]);
    int nfds, first;  /* what was given: first .. first + nfds - 1 (p2c, c2p, then the stdio, if any) */
    if (spare_sock >= 0) {
        int sock = spare_sock;
        if (fcntl(sock, F_SETFD, FD_CLOEXEC) < 0) _exit(1);
        nfds = receive_plan(sock);
        p2c = SPARE_BASE + 1;
        c2p = SPARE_BASE + 2;
        first = p2c;
    } else if (argc == 2) {
        int base = atoi(argv[1]);
        p2c = base + 1;
        c2p = base + 2;
        if (fcntl(c2p, F_SETFD, FD_CLOEXEC) < 0 || fcntl(p2c, F_SETFD, FD_CLOEXEC) < 0) _exit(1);
        read_plan(base);
        first = p2c;
        nfds = 5;  /* p2c, c2p and three stdio fds where the plan has them (closed ones stay closed) */
    } else {
        fprintf(stderr, "pycri-init is started by the pycri monitor only\n");
        return 2;
    }
    {
        int keep[6], n = 0;
        if (plan_sock >= 0) keep[n++] = plan_sock;
        for (int i = 0; i < nfds; i++) keep[n++] = first + i;
        for (int i = 1; i < n; i++) {  /* insertion sort: plan_sock may be below the others */
            for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
                int t = keep[j];
                keep[j] = keep[j - 1];
                keep[j - 1] = t;
            }
        }
        close_all_but(keep, n);
    }
    {
        int sigs[] = {SIGPIPE, SIGXFSZ, SIGINT, SIGTERM, SIGCHLD, SIGHUP};
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], SIG_DFL);
        sigset_t empty;
        sigemptyset(&empty);
        sigprocmask(SIG_SETMASK, &empty, NULL);
    }
    if (get_u8() != 'P' || get_u8() != 1) bad_plan();
    rootfs = get_str();
    char pa[PATH_BUF], pb[PATH_BUF];
    for (;;) {
        uint8_t op = get_u8();
        switch (op) {
        case OP_STAGE:
            stage = get_str();
            if (!stage) stage = "";
            break;
        case OP_WAIT_G:
            wait_byte('G');
            break;
        case OP_CGJOIN: {
            char *path = get_str();
            int fd = open(path, O_WRONLY | O_CLOEXEC);
            if (fd < 0) die_path(path, errno);
            if (write(fd, "0", 1) < 0) die("%s", strerror(errno));
            close(fd);
            break;
        }
        case OP_JOINNS: {
            int64_t n = get_i64();
            if (n < 0 || n > 16) bad_plan();
            int fds[16], types[16];
            for (int64_t i = 0; i < n; i++) {
                char *path = get_str();
                types[i] = (int)get_i64();
                fds[i] = open(path, O_RDONLY | O_CLOEXEC);
                if (fds[i] < 0) die_path(path, errno);
            }
            for (int64_t i = 0; i < n; i++) {
                if (setns(fds[i], types[i]) < 0) die("setns: %s", strerror(errno));
                close(fds[i]);
            }
            break;
        }
        case OP_UNSHARE: {
            int64_t flags = get_i64();
            if (unshare((int)flags) < 0) die("unshare: %s", strerror(errno));
            break;
        }
        case OP_FORK: {  /* into the pid namespace joined: only the child is in it, in all the others already */
            pid_t child = fork();
            if (child < 0) die("fork: %s", strerror(errno));
            if (child > 0) {
                char num[32];
                snprintf(num, sizeof num, "%d", (int)child);
                send_msg('P', num);
                _exit(0);
            }
            break;
        }
        case OP_FAIL:
            die("%s", get_str());
        case OP_CONTINUE:
            next_part();
            break;
        case OP_WARN:
            send_msg('W', get_str());
            break;
        case OP_MOUNT: {
            char *src = get_str();
            int r;
            const char *suffix;
            get_path_at(pa, &r, &suffix);
            char *fstype = get_str();
            unsigned long flags = (unsigned long)get_i64();
            char *data = get_str();
            if (!r) {
                do_mount(src, pa, fstype, flags, data);
                break;
            }
            int own, under = target_fd(r, suffix, pa, &own);
            char fdp[64];
            if ((flags & MS_REMOUNT) || (!src && !fstype)) {  /* acts on the mount made there */
                int over = reopen_mounted(pa, under);
                fd_path(over, fdp);
                mount_as(src, fdp, pa, fstype, flags, data);
                close(over);
            } else {
                fd_path(under, fdp);
                mount_as(src, fdp, pa, fstype, flags, data);
            }
            if (!own) close(under);
            break;
        }
        case OP_RESOLVE: {
            uint8_t r = get_u8();
            char *rel = get_str();
            if (r < 1 || r > 2 || !rel) bad_plan();
            if (root_fd < 0) {
                root_fd = open(rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
                if (root_fd < 0) die_path(rootfs, errno);
            }
            if (snprintf(reg[r], PATH_BUF, "%s", rel) >= PATH_BUF) die("path too long");
            set_regfd(r, -1);
            break;
        }
        case OP_MKDIRS: {
            int r;
            const char *suffix;
            get_path_at(pa, &r, &suffix);
            if (!r) {
                mkdirs(pa);
                break;
            }
            int fd = open_in_root(root_fd, pa, MAKE_DIR);
            if (suffix[0]) close(fd);
            else set_regfd(r, fd);
            break;
        }
        case OP_MKDIRS_PARENT: {
            int r;
            dirname_of(get_path_at(pa, &r, NULL), pb);
            if (!pb[0]) break;
            if (r) close(open_in_root(root_fd, pb, MAKE_DIR));
            else mkdirs(pb);
            break;
        }
        case OP_TOUCH: {
            int r;
            const char *suffix;
            get_path_at(pa, &r, &suffix);
            if (!r) {
                touch(pa);
                break;
            }
            int fd = open_in_root(root_fd, pa, MAKE_FILE);
            if (suffix[0]) close(fd);
            else set_regfd(r, fd);
            break;
        }
        case OP_REMOUNT_RO: {
            int r;
            const char *suffix;
            get_path_at(pa, &r, &suffix);
            unsigned long extra = (unsigned long)get_i64();
            if (!r) {
                remount_ro(pa, extra);
                break;
            }
            int own, under = target_fd(r, suffix, pa, &own);
            int over = reopen_mounted(pa, under);
            char fdp[64];
            fd_path(over, fdp);
            remount_ro_as(fdp, pa, extra);
            close(over);
            if (!own) close(under);
            break;
        }
        case OP_SETATTR: {
            int r;
            const char *suffix;
            get_path_at(pa, &r, &suffix);
            struct mount_attr attr = {0};
            attr.attr_set = (uint64_t)get_i64();
            attr.attr_clr = (uint64_t)get_i64();
            int over = -1, own = 1, under = -1;
            char fdp[64];
            if (r) {
                under = target_fd(r, suffix, pa, &own);
                over = reopen_mounted(pa, under);
                fd_path(over, fdp);
            } else {
                snprintf(fdp, sizeof fdp, "%s", pa);
            }
            if (syscall(SYS_mount_setattr, AT_FDCWD, fdp, AT_RECURSIVE, &attr, sizeof attr) < 0) {
                int err = errno;
                char rr[PATH_BUF];
                if (err == ENOSYS)
                    die("recursive mount options (rro) on %s need mount_setattr(2), Linux 5.12 or later",
                        pyrepr(pa, rr, sizeof rr));
                die("mount_setattr %s: %s", pyrepr(pa, rr, sizeof rr), strerror(err));
            }
            if (over >= 0) close(over);
            if (!own) close(under);
            break;
        }
        case OP_MKNOD: {
            int r;
            get_path_at(pa, &r, NULL);
            mode_t mode = (mode_t)get_i64();
            unsigned maj = (unsigned)get_i64(), min = (unsigned)get_i64();
            int64_t uid = get_i64(), gid = get_i64();
            struct stat st;
            if (!r) {
                if (lstat(pa, &st) == 0 && unlink(pa) < 0) die_path(pa, errno);
                if (mknod(pa, mode, makedev(maj, min)) < 0) die_path(pa, errno);
                if (uid >= 0 && chown(pa, (uid_t)uid, (gid_t)gid) < 0) die_path(pa, errno);
                break;
            }
            /* at the fd of its directory (rootfs.create_devices) */
            dirname_of(pa, pb);
            const char *name = strrchr(pa, '/') ? strrchr(pa, '/') + 1 : pa;
            int dir = open_in_root(root_fd, pb[0] ? pb : "/", MAKE_DIR);
            if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && unlinkat(dir, name, 0) < 0) die_path(pa, errno);
            if (mknodat(dir, name, mode, makedev(maj, min)) < 0) die_path(pa, errno);
            if (uid >= 0 && fchownat(dir, name, (uid_t)uid, (gid_t)gid, AT_SYMLINK_NOFOLLOW) < 0) die_path(pa, errno);
            close(dir);
            break;
        }
        case OP_UMASK:
            saved_umask = umask((mode_t)get_i64());
            break;
        case OP_UMASK_RESTORE:
            umask(saved_umask);
            break;
        case OP_SYMLINK: {
            char *target = get_str();
            int r;
            get_path_at(pa, &r, NULL);
            struct stat st;
            if (!r) {
                if (lstat(pa, &st) < 0 && symlink(target, pa) < 0) die_path(target, errno);
                break;
            }
            dirname_of(pa, pb);
            const char *name = strrchr(pa, '/') ? strrchr(pa, '/') + 1 : pa;
            int dir = open_in_root(root_fd, pb[0] ? pb : "/", MAKE_DIR);
            if (symlinkat(target, dir, name) < 0 && errno != EEXIST) die_path(target, errno);
            close(dir);
            break;
        }
        case OP_PIVOT:
            for (int r = 1; r < 3; r++) set_regfd(r, -1);
            if (root_fd >= 0) close(root_fd);
            root_fd = -1;
            pivot(rootfs);
            break;
        case OP_WRITEFILE: {
            get_path(pa);
            uint32_t n;
            char *data = get_str_len(&n);
            write_file(pa, data, n);
            break;
        }
        case OP_MASK: {
            get_path(pa);
            struct stat st, lst;
            int dir = stat(pa, &st) == 0 && S_ISDIR(st.st_mode) && lstat(pa, &lst) == 0 && !S_ISLNK(lst.st_mode);
            const char *src = dir ? "tmpfs" : "/dev/null", *fstype = dir ? "tmpfs" : NULL;
            unsigned long flags = dir ? MS_RDONLY : MS_BIND;
            if (mount(src, pa, fstype, flags, NULL) < 0 && errno != ENOENT) do_mount(src, pa, fstype, flags, NULL);
            break;
        }
        case OP_ROPATH: {
            get_path(pa);
            struct stat st;
            if (stat(pa, &st) < 0) break;
            do_mount(pa, pa, NULL, MS_BIND | MS_REC, NULL);
            remount_ro(pa, 0);
            break;
        }
        case OP_HOSTNAME: {
            uint32_t n;
            char *s = get_str_len(&n);
            if (sethostname(s, n) < 0) die("sethostname: %s", strerror(errno));
            break;
        }
        case OP_DOMAINNAME: {
            uint32_t n;
            char *s = get_str_len(&n);
            if (setdomainname(s, n) < 0) die("setdomainname: %s", strerror(errno));
            break;
        }
        case OP_RLIMIT: {
            int res = (int)get_i64();
            struct rlimit rl;
            rl.rlim_cur = (rlim_t)get_i64();
            rl.rlim_max = (rlim_t)get_i64();
            if (setrlimit(res, &rl) < 0) {
                if (errno == EINVAL) die("current limit exceeds maximum limit");
                if (errno == EPERM) die("not allowed to raise maximum limit");
                die("%s", strerror(errno));
            }
            break;
        }
        case OP_OOM: {
            uint32_t n;
            char *val = get_str_len(&n);
            char *warn = get_str();
            int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
            int err = 0;
            if (fd < 0) err = errno;
            else if (write(fd, val, n) < 0) err = errno;
            if (fd >= 0) close(fd);
            if (err == EPERM || err == EACCES) {
                char w[PATH_BUF];
                snprintf(w, sizeof w, "%s%s", warn, strerror(err));
                send_msg('W', w);
            } else if (err) {
                if (fd < 0) die_path("/proc/self/oom_score_adj", err);
                die("%s", strerror(err));
            }
            break;
        }
        case OP_STDIO: {
            int fds[3];
            for (int i = 0; i < 3; i++) fds[i] = (int)get_i64();
            for (int i = 0; i < 3; i++)
                if (dup2(fds[i], i) < 0) die("%s", strerror(errno));
            for (int i = 0; i < 3; i++)  /* from here on only 0-2 and the pipes to the monitor are open */
                if (fds[i] > 2) close(fds[i]);
            break;
        }
        case OP_FINDEXE: {
            char *arg0 = get_str();
            char *pathv = get_str();
            find_exe(arg0, pathv);
            break;
        }
        case OP_CHDIR:
            chdir_inside(get_str());
            break;
        case OP_READY:
            write_all(c2p, "R \n", 3);
            wait_byte('S');
            break;
        case OP_SECCOMP: {
            uint32_t n;
            char *prog = get_str_len(&n);
            struct sock_fprog fprog = {(unsigned short)(n / sizeof(struct sock_filter)),
                                       (struct sock_filter *)prog};
            if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog, 0UL, 0UL) < 0)
                die("prctl(PR_SET_SECCOMP): %s", strerror(errno));
            break;
        }
        case OP_DROP:
            drop_privileges();
            break;
        case OP_NNP:
            prctl_or_die(PR_SET_NO_NEW_PRIVS, 1, 0);
            break;
        case OP_EXEC: {
            char **args = get_strv();
            char **env = get_strv();
            /* only c2p stays (close-on-exec): EOF tells the parent execve succeeded */
            if (c2p > 3) close_fds(3, (unsigned)c2p - 1);
            close_fds((unsigned)c2p + 1, ~0U);
            execve(exe, args, env);
            die_path(exe, errno);
        }
        default:
            bad_plan();
        }
    }
}
