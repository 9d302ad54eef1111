/* execbox-launch: the first process of every sandbox, run as root by the supervisor.
 *
 *   execbox-launch PARENT_PID UID CPU_S FSIZE_BYTES NOFILE NPROC AS_BYTES [CGROUP_PROCS_FILE...] -- CMD...
 *
 * Joins the execution's cgroups (so every descendant is born inside), sets rlimits, drops to the
 * instance's unprivileged uid (UID -1: stay as is), arranges to die with the supervisor, then runs CMD
 * (bubblewrap) as its child and exits with CMD's status (128+N for signal N). It is a child subreaper:
 * bubblewrap's pid-1 process, orphaned when bubblewrap exits, is reaped here at once rather than lingering
 * as a zombie of the host's init (counting against the uid's process limit). It replaces a Python
 * preexec_fn, which forces a full fork() of the supervisor and costs milliseconds per run.
 * Any failure exits 126 with a message on stderr, before CMD runs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "execbox-launch: %s: %s\n", what, strerror(errno));
    _exit(126);
}

static void limit(int resource, unsigned long long soft, unsigned long long hard, const char *what) {
    struct rlimit rl = {soft, hard};
    if (setrlimit(resource, &rl) != 0) die(what);
}

int main(int argc, char **argv) {
    if (argc < 10) { fprintf(stderr, "execbox-launch: usage error\n"); return 126; }
    pid_t parent = (pid_t)atol(argv[1]);
    long uid = atol(argv[2]);
    unsigned long long cpu = strtoull(argv[3], NULL, 10), fsize = strtoull(argv[4], NULL, 10);
    unsigned long long nofile = strtoull(argv[5], NULL, 10), nproc = strtoull(argv[6], NULL, 10);
    unsigned long long as = strtoull(argv[7], NULL, 10);
    int i = 8;
    char pid[32];
    snprintf(pid, sizeof pid, "%d", getpid());
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        int fd = open(argv[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, pid, strlen(pid)) < 0) die(argv[i]);
        close(fd);
    }
    if (i + 1 >= argc) { fprintf(stderr, "execbox-launch: no command\n"); return 126; }
    limit(RLIMIT_CPU, cpu, cpu + 1, "RLIMIT_CPU");
    limit(RLIMIT_FSIZE, fsize, fsize, "RLIMIT_FSIZE");
    limit(RLIMIT_NOFILE, nofile, nofile, "RLIMIT_NOFILE");
    limit(RLIMIT_CORE, 0, 0, "RLIMIT_CORE");
    if (as) limit(RLIMIT_AS, as, as, "RLIMIT_AS");
    if (uid >= 0) {
        limit(RLIMIT_NPROC, nproc, nproc, "RLIMIT_NPROC");
        if (setgroups(0, NULL) != 0) die("setgroups");
        if (setresgid((gid_t)uid, (gid_t)uid, (gid_t)uid) != 0) die("setresgid");
        if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) die("setresuid");
    }
    /* after the uid change, which clears it; then make sure the supervisor did not die meanwhile */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) die("prctl");
    if (getppid() != parent) _exit(126);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) die("PR_SET_CHILD_SUBREAPER");
    pid_t self = getpid();
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != self) _exit(126);  /* dies with us */
        execvp(argv[i + 1], &argv[i + 1]);
        die(argv[i + 1]);
    }
    int code = 126, status;
    for (;;) {  /* until no child is left: CMD, then whatever it orphaned */
        pid_t p = waitpid(-1, &status, 0);
        if (p < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (p == child) code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    return code;
}
