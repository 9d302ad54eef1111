/* execbox-agent: pid 1 of a persistent sandbox, run *inside* it by bubblewrap (as waiter.c is for one run).
 *
 *   /proc/self/fd/N CONTROL_FD
 *
 * It runs where the programs run: in the sandbox's namespaces and mounts, as the sandbox's unprivileged uid,
 * under its seccomp filter, with no capabilities and no_new_privs. It writes 'R' on CONTROL_FD (a unix
 * stream socket whose other end is execbox's supervisor) once the sandbox is up, then serves any number of
 * exec messages, possibly overlapping, until the supervisor closes CONTROL_FD (then it exits, and as the pid
 * namespace's init its exit kills everything left in the sandbox). One exec message:
 *
 *   u64 length of the rest of the message (bytes, little-endian as every field)
 *   u64 exec id, RLIMIT_CPU soft, RLIMIT_CPU hard, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_AS (0: unset)
 *   u64 argc, envc
 *   argc + envc + 1 NUL-terminated strings: argv..., "KEY=VALUE"..., then the working directory
 *
 * with descriptors passed alongside the first 8 bytes (SCM_RIGHTS): the program's stdin (read-only), stdout
 * and stderr (write ends of the supervisor's pipes for this exec), then one to three `cgroup.procs` files of
 * the exec's own cgroup (one per cgroup v1 hierarchy), opened for writing by the supervisor on the host. The
 * agent forks a child for the exec; the child writes "0" (itself) into each cgroup.procs file, then sets up
 * its descriptors, rlimits (lowered only: no capability) and directory, closes every other descriptor and
 * executes the program. So the program and every descendant are born inside the exec's cgroup, which the
 * supervisor kills as a whole without touching the sandbox. A cgroup.procs descriptor lets its holder move
 * only processes of its own pid namespace and uid, i.e. of this sandbox, and only into that exec's group;
 * the agent closes its copies at once and the child before exec. The agent reports on CONTROL_FD, 13 bytes
 * each:
 *
 *   'X' u64 exec id, i32 wait status      the exec's program ended
 *   'E' u64 exec id, i32 errno            the exec could not be started (bad message, fork failed)
 *
 * A program that cannot be executed writes "execbox: execvp NAME: REASON" on its stderr and exits 127.
 * The agent reaps every orphan in the sandbox (it is init). It is not dumpable, installs no signal handler
 * (init cannot be signalled from inside its namespace), and its children inherit no descriptor of it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_MESSAGE (64u << 20)
#define HEADER_WORDS 9
#define MAX_FDS 6
#define MIN_FDS 4
#define MAX_EXECS 1024

extern char **environ;
static int control = -1;
static struct { pid_t pid; uint64_t id; } running[MAX_EXECS];

static void report(char kind, uint64_t id, int32_t value) {
    char buf[13];
    buf[0] = kind;
    memcpy(buf + 1, &id, 8);
    memcpy(buf + 9, &value, 4);
    ssize_t n;
    do n = write(control, buf, sizeof buf);
    while (n < 0 && errno == EINTR);
}

static int read_exact(void *dst, size_t len) {
    char *p = dst;
    while (len) {
        ssize_t n = read(control, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void child_fail(const char *what, int err) {
    dprintf(2, "execbox: %s: %s\n", what, strerror(err));
    _exit(127);
}

static void child_limit(int resource, uint64_t soft, uint64_t hard, const char *what) {
    struct rlimit rl = {(rlim_t)soft, (rlim_t)hard};
    if (setrlimit(resource, &rl) != 0) child_fail(what, errno);
}

/* One exec message; returns -1 when the control socket is gone (the agent then exits). */
static int serve_one(void) {
    uint64_t length = 0;
    char cbuf[CMSG_SPACE(MAX_FDS * sizeof(int))];
    struct iovec iov = {&length, sizeof length};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    ssize_t got;
    do got = recvmsg(control, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
    while (got < 0 && errno == EINTR);
    if (got != (ssize_t)sizeof length) return -1;
    int fds[MAX_FDS] = {-1, -1, -1, -1, -1, -1};
    int nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(0)) {
            int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < n; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                if (nfds < MAX_FDS) fds[nfds++] = fd;
                else close(fd);
            }
        }
    if (length < HEADER_WORDS * 8 || length > MAX_MESSAGE) return -1; /* protocol broken: give up */
    char *buf = malloc(length + 1);
    if (!buf || read_exact(buf, length) != 0) return -1;
    buf[length] = 0;
    uint64_t h[HEADER_WORDS];
    memcpy(h, buf, sizeof h);
    uint64_t id = h[0], nargs = h[7], nenv = h[8];
    int err = 0;
    char **args = NULL, **env = NULL, *cwd = NULL;
    if (nfds < MIN_FDS || (msg.msg_flags & MSG_CTRUNC)) err = EPROTO;
    if (!err && (nargs < 1 || nargs > length || nenv > length)) err = EPROTO;
    if (!err) {
        args = calloc(nargs + 1, sizeof(char *));
        env = calloc(nenv + 1, sizeof(char *));
        if (!args || !env) err = ENOMEM;
    }
    char *p = buf + sizeof h, *end = buf + length;
    for (uint64_t i = 0; !err && i < nargs + nenv + 1; i++) {
        char *nul = memchr(p, 0, (size_t)(end - p));
        if (!nul) { err = EPROTO; break; }
        if (i < nargs) args[i] = p;
        else if (i < nargs + nenv) env[i - nargs] = p;
        else cwd = p;
        p = nul + 1;
    }
    if (!err && p != end) err = EPROTO;
    int slot = -1;
    for (int i = 0; !err && i < MAX_EXECS; i++)
        if (running[i].pid == 0) { slot = i; break; }
    if (!err && slot < 0) err = EAGAIN;
    pid_t child = -1;
    if (!err) {
        child = fork();
        if (child < 0) err = errno;
    }
    if (child == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_NAME, "execbox-exec");
        for (int i = 0; i < 3; i++)
            if (dup2(fds[i], i) != i) _exit(126);
        /* into the exec's cgroup before the program runs (exit 126: the supervisor reports a sandbox error) */
        for (int i = 3; i < nfds; i++)
            if (write(fds[i], "0", 1) != 1) {
                dprintf(2, "execbox: joining the exec's cgroup: %s\n", strerror(errno));
                _exit(126);
            }
        /* the program inherits 0, 1 and 2 only (the received descriptors are above 2: 0-2 are always open
         * in the agent, on /dev/null) */
        if (syscall(SYS_close_range, 3u, ~0u, 4u /* CLOSE_RANGE_CLOEXEC */) != 0)
            for (int fd = 3; fd < 65536; fd++) (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
        child_limit(RLIMIT_CPU, h[1], h[2], "RLIMIT_CPU");
        child_limit(RLIMIT_FSIZE, h[3], h[3], "RLIMIT_FSIZE");
        child_limit(RLIMIT_NOFILE, h[4], h[4], "RLIMIT_NOFILE");
        child_limit(RLIMIT_NPROC, h[5], h[5], "RLIMIT_NPROC");
        child_limit(RLIMIT_CORE, 0, 0, "RLIMIT_CORE");
        if (h[6]) child_limit(RLIMIT_AS, h[6], h[6], "RLIMIT_AS");
        if (chdir(cwd) != 0) child_fail(cwd, errno);
        environ = env;
        execvp(args[0], args);
        child_fail(args[0], errno);
    }
    for (int i = 0; i < nfds; i++) close(fds[i]);
    free(args);
    free(env);
    free(buf);
    if (err) report('E', id, err);
    else { running[slot].pid = child; running[slot].id = id; }
    return 0;
}

static void reap(void) {
    int status;
    pid_t p;
    while ((p = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_EXECS; i++) {
            if (running[i].pid == p) {
                report('X', running[i].id, status);
                running[i].pid = 0;
                break;
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 2) return 126;
    control = atoi(argv[1]);
    if (fcntl(control, F_SETFD, FD_CLOEXEC) != 0) return 126;
    prctl(PR_SET_DUMPABLE, 0);
    prctl(PR_SET_NAME, "execbox-agent");
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &chld, NULL) != 0) return 126;
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) return 126;
    /* bubblewrap's stdin/stdout/stderr are not the programs': keep 0-2 open (on /dev/null) so that no
     * descriptor the agent receives lands there */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0) return 126;
    for (int fd = 0; fd <= 2; fd++)
        if (dup3(null, fd, 0) != fd) return 126;
    if (null > 2) close(null);
    if (write(control, "R", 1) != 1) return 126;
    for (;;) {
        struct pollfd pf[2] = {{control, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return 126;
        }
        if (pf[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {}
            reap();
        }
        if (pf[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            if (serve_one() != 0) return 0;
        }
    }
}
