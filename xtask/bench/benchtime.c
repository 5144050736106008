/* benchtime OUT CMD [ARGS...]: run CMD, write "start_ns end_ns status" to OUT.
 *
 * The timer runs inside whatever wraps it (roar-node run, roar's tracers),
 * so the time it reports is the workload's own wall time, without the
 * tracer's start-up (loading programs) or tear-down (hashing, writing the
 * record). Both stamps are CLOCK_REALTIME so the caller can also split a
 * wrapper's total wall time into start-up, workload and finish. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: benchtime OUT CMD [ARGS...]\n");
        return 2;
    }
    long long start = now_ns();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        perror(argv[2]);
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) < 0) {
        perror("waitpid");
        return 2;
    }
    long long end = now_ns();
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    FILE *out = fopen(argv[1], "w");
    if (!out) {
        perror(argv[1]);
        return 2;
    }
    fprintf(out, "%lld %lld %d\n", start, end, code);
    fclose(out);
    return code;
}
