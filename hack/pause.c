/*
 * pause: the pycri sandbox (infra) process.
 * Holds the pod's namespaces: waits forever, reaps any children it inherits
 * (it may be PID 1 of a pid namespace), and exits 0 on SIGINT or SIGTERM.
 * `pause -v` prints the version.
 *
 * Written without libc (raw system calls, x86_64 and aarch64): a pod runs one
 * of these for its whole life, and a static glibc binary keeps ~44 KiB of
 * private pages (TLS, stdio, malloc arena, relocated data) where this one
 * keeps a stack page or two. The signals are blocked and taken with
 * rt_sigtimedwait, so there are no handlers (and no sigreturn trampoline);
 * a blocked signal is queued even for a namespace's init, which would
 * otherwise discard signals it has no handler for.
 *
 * Build: gcc -static -nostdlib -Os -s -fno-stack-protector -fno-asynchronous-unwind-tables -o pause pause.c
 */

#define PAUSE_VERSION "pycri-pause 2.0\n"

#define SIGINT 2
#define SIGTERM 15
#define SIGCHLD 17
#define SIG_BLOCK 0
#define WNOHANG 1

#if defined(__x86_64__)
#define NR_write 1
#define NR_getpid 39
#define NR_wait4 61
#define NR_rt_sigprocmask 14
#define NR_rt_sigtimedwait 128
#define NR_exit_group 231

static long sys4(long n, long a, long b, long c, long d)
{
	long ret;
	register long r10 __asm__("r10") = d;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
			 : "rcx", "r11", "memory");
	return ret;
}

__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	xor %rbp, %rbp\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call pause_main\n"
	"	hlt\n");
#elif defined(__aarch64__)
#define NR_write 64
#define NR_getpid 172
#define NR_wait4 260
#define NR_rt_sigprocmask 135
#define NR_rt_sigtimedwait 137
#define NR_exit_group 94

static long sys4(long n, long a, long b, long c, long d)
{
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	register long x3 __asm__("x3") = d;

	__asm__ volatile("svc 0"
			 : "+r"(x0)
			 : "r"(x8), "r"(x1), "r"(x2), "r"(x3)
			 : "memory");
	return x0;
}

__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	mov x0, sp\n"
	"	bl pause_main\n"
	"	brk #0\n");
#else
#error "pause.c: add this architecture's system call numbers and entry point"
#endif

static void say(int fd, const char *s)
{
	long n = 0;

	while (s[n])
		n++;
	sys4(NR_write, fd, (long)s, n, 0);
}

static void reap(void)
{
	while (sys4(NR_wait4, -1, 0, WNOHANG, 0) > 0)
		;
}

__attribute__((noreturn, used)) void pause_main(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	unsigned long mask = (1UL << (SIGINT - 1)) | (1UL << (SIGTERM - 1)) | (1UL << (SIGCHLD - 1));

	if (argc > 1 && argv[1][0] == '-' && argv[1][1] == 'v' && argv[1][2] == 0) {
		say(1, PAUSE_VERSION);
		sys4(NR_exit_group, 0, 0, 0, 0);
	}
	if (sys4(NR_getpid, 0, 0, 0, 0) != 1)
		say(2, "pause: warning: not running as PID 1\n");
	if (sys4(NR_rt_sigprocmask, SIG_BLOCK, (long)&mask, 0, sizeof(mask)) < 0)
		sys4(NR_exit_group, 1, 0, 0, 0);
	reap(); /* children that ended before the signals were blocked */
	for (;;) {
		long sig = sys4(NR_rt_sigtimedwait, (long)&mask, 0, 0, sizeof(mask));

		if (sig == SIGINT || sig == SIGTERM)
			sys4(NR_exit_group, 0, 0, 0, 0);
		if (sig == SIGCHLD)
			reap();
	}
}
