/* execbox-waiter: the first program of a pre-started ("warm") sandbox, run *inside* it by bubblewrap.
 *
 *   /proc/self/fd/N CONTROL_FD      (bubblewrap executes it from a descriptor: nothing is mounted for it)
 *
 * It runs exactly where the request's program would: in the sandbox's namespaces and mounts, as the
 * sandbox's unprivileged uid, under its seccomp filter, with no capabilities and no_new_privs. It writes one
 * byte ('R') on CONTROL_FD (a unix stream socket whose other end is execbox's supervisor) to say the sandbox
 * is set up, then blocks until the supervisor sends one exec message (below), then runs the program as its
 * child and, when it ends, writes 'X' and its wait status (a native int) on CONTROL_FD:
 *
 *   u64 length of the rest of the message (bytes, little-endian as every field)
 *   u64 RLIMIT_CPU soft, RLIMIT_CPU hard, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_AS (0: unset)
 *   u64 argc, envc
 *   argc + envc + 1 NUL-terminated strings: argv..., "KEY=VALUE"..., then the working directory
 *
 * with the program's stdin (a read-only descriptor) passed alongside the first bytes (SCM_RIGHTS).
 * The rlimits can only be lowered here (no capabilities): the sandbox is started with their hard limits at
 * the maxima, and each is set to the request's value, soft and hard, before exec. stdout and stderr are
 * already the supervisor's pipes. Every other descriptor is closed on exec. The waiter is the sandbox's
 * pid 1 (bubblewrap --as-pid-1), so the program is pid 2 with parent 1, as on the cold path.
 *
 * Failures before the program runs exit 126 with "ERRNO message" on CONTROL_FD (the supervisor reports a
 * sandbox error; E2BIG from execve, arguments too large, is the request's). A program that cannot be
 * executed otherwise is reported as bubblewrap reports it on the cold path ("bwrap: execvp NAME: REASON" on
 * stderr, exit 1), so both paths give the same result.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_MESSAGE (64u << 20)
#define HEADER_WORDS 8

extern char **environ;
static int control = -1;

static void fail(const char *what, int err) {
    char buf[512];
    int n = snprintf(buf, sizeof buf, "%d execbox-waiter: %s: %s", err, what, strerror(err));
    if (control >= 0 && n > 0) (void)!write(control, buf, (size_t)n);
    _exit(126);
}

static void read_exact(void *dst, size_t len) {
    char *p = dst;
    while (len) {
        ssize_t n = read(control, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) _exit(126); /* the supervisor went away: nothing to run */
        p += n;
        len -= (size_t)n;
    }
}

static void limit(int resource, uint64_t soft, uint64_t hard, const char *what) {
    struct rlimit rl = {(rlim_t)soft, (rlim_t)hard};
    if (setrlimit(resource, &rl) != 0) fail(what, errno);
}

int main(int argc, char **argv) {
    if (argc != 2) return 126;
    control = atoi(argv[1]);
    if (fcntl(control, F_SETFD, FD_CLOEXEC) != 0) return 126;
    if (write(control, "R", 1) != 1) return 126;

    /* the length and the stdin descriptor arrive in the first message */
    uint64_t length = 0;
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {&length, sizeof length};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    ssize_t got;
    do got = recvmsg(control, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
    while (got < 0 && errno == EINTR);
    if (got != (ssize_t)sizeof length) _exit(126);
    int stdin_fd = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int)))
            memcpy(&stdin_fd, CMSG_DATA(c), sizeof(int));
    if (stdin_fd < 0 || (msg.msg_flags & MSG_CTRUNC)) fail("no stdin descriptor", EPROTO);
    if (length < HEADER_WORDS * 8 || length > MAX_MESSAGE) fail("bad message length", EPROTO);

    char *buf = malloc(length + 1);
    if (!buf) fail("malloc", errno);
    read_exact(buf, length);
    buf[length] = 0;
    uint64_t h[HEADER_WORDS];
    memcpy(h, buf, sizeof h);
    uint64_t nargs = h[6], nenv = h[7];
    if (nargs < 1 || nargs > length || nenv > length) fail("bad message counts", EPROTO);

    char **args = calloc(nargs + 1, sizeof(char *)), **env = calloc(nenv + 1, sizeof(char *));
    if (!args || !env) fail("calloc", errno);
    char *p = buf + sizeof h, *end = buf + length;
    char *cwd = NULL;
    for (uint64_t i = 0; i < nargs + nenv + 1; i++) {
        char *nul = memchr(p, 0, (size_t)(end - p));
        if (!nul) fail("truncated message", EPROTO);
        if (i < nargs) args[i] = p;
        else if (i < nargs + nenv) env[i - nargs] = p;
        else cwd = p;
        p = nul + 1;
    }
    if (p != end) fail("trailing bytes in message", EPROTO);

    if (dup2(stdin_fd, 0) != 0) fail("dup2 stdin", errno);
    /* the program inherits 0, 1 and 2 only (bubblewrap's own descriptors, the control socket: closed) */
    if (syscall(SYS_close_range, 3u, ~0u, 4u /* CLOSE_RANGE_CLOEXEC */) != 0) {
        for (int fd = 3; fd < 65536; fd++) (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    limit(RLIMIT_CPU, h[0], h[1], "RLIMIT_CPU");
    limit(RLIMIT_FSIZE, h[2], h[2], "RLIMIT_FSIZE");
    limit(RLIMIT_NOFILE, h[3], h[3], "RLIMIT_NOFILE");
    limit(RLIMIT_NPROC, h[4], h[4], "RLIMIT_NPROC");
    limit(RLIMIT_CORE, 0, 0, "RLIMIT_CORE");
    if (h[5]) limit(RLIMIT_AS, h[5], h[5], "RLIMIT_AS");
    if (chdir(cwd) != 0) fail(cwd, errno);

    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int errpipe[2];
    if (pipe2(errpipe, O_CLOEXEC) != 0) fail("pipe2", errno);
    pid_t child = fork();
    if (child < 0) fail("fork", errno);
    if (child == 0) {
        environ = env; /* execvp searches the program's PATH, as bubblewrap's execvp does on the cold path */
        execvp(args[0], args);
        int err = errno;
        (void)!write(errpipe[1], &err, sizeof err);
        if (err != E2BIG) fprintf(stderr, "bwrap: execvp %s: %s\n", args[0], strerror(err));
        _exit(1);
    }
    /* The waiter stays as the sandbox's init (pid 1, in the place of bubblewrap's): it reaps whatever the
     * program orphans, and tells the supervisor how the program ended the moment it does (waiting for the
     * sandbox's namespaces to be torn down costs milliseconds); its own exit then kills what is left in
     * the sandbox, as bubblewrap's init does. As init it cannot be signalled from inside the sandbox (it
     * installs no handler), and the program cannot read or write its memory: it is not dumpable, and
     * ptrace is denied by seccomp. */
    prctl(PR_SET_DUMPABLE, 0);
    prctl(PR_SET_NAME, "execbox-waiter"); /* not "15", the descriptor bubblewrap executed it from */
    close(errpipe[1]);
    for (int fd = 0; fd <= 2; fd++) close(fd);
    int err = 0;
    ssize_t n;
    do n = read(errpipe[0], &err, sizeof err);
    while (n < 0 && errno == EINTR);
    int status;
    for (;;) {
        pid_t p = waitpid(-1, &status, 0);
        if (p == child) break;
        if (p < 0 && errno != EINTR) fail("waitpid", errno);
    }
    if (n == (ssize_t)sizeof err && err == E2BIG) fail("execvp", err);
    char report[1 + sizeof status] = {'X'};
    memcpy(report + 1, &status, sizeof status);
    (void)!write(control, report, sizeof report);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status); /* bubblewrap's convention */
    return WEXITSTATUS(status);
}
