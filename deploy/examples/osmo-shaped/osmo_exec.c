/* A stand-in for OSMO's /osmo/bin/osmo_exec, for demos and tests: it waits
 * for osmo-ctrl's go-ahead (the file /osmo/data/socket/start here; the real
 * one waits for a message on /osmo/data/socket/data.sock), runs the user
 * command as a CHILD (osmo_exec stays PID 1, as the real one does), tells
 * osmo-ctrl the command is over (/osmo/data/socket/done) and exits with the
 * command's exit code.
 *
 * usage: osmo_exec CMD [ARGS...]   (built static: gcc -O2 -static) */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct stat st;
    if (argc < 2) {
        fprintf(stderr, "usage: osmo_exec CMD [ARGS...]\n");
        return 2;
    }
    for (int i = 0; stat("/osmo/data/socket/start", &st) != 0; i++) {
        if (i > 6000) { fprintf(stderr, "osmo_exec: no start from osmo-ctrl\n"); return 1; }
        usleep(50000);
    }
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) {
        execvp(argv[1], argv + 1);
        perror("exec");
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {}
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    FILE *f = fopen("/osmo/data/socket/done", "w");
    if (f) { fprintf(f, "%d\n", code); fclose(f); }
    return code;
}
