/* A stand-in for OSMO's /osmo/bin/osmo_exec, for demos and tests. It takes
 * the real one's arguments (src/runtime/pkg/args/exec_args.go: Go flags,
 * `-name value` or `-name=value`, one `-commands` per command word and one
 * `-args` per argument, `-enableRsync` a boolean) and behaves as the real
 * one does where roar-node can see it (src/runtime/cmd/user/user.go):
 *
 * - it waits for osmo-ctrl's go-ahead (the file /osmo/data/socket/start
 *   here; the real one waits for a message on /osmo/data/socket/data.sock)
 *   or its failure (/osmo/data/socket/failed: the real CtrlFailed), on
 *   which it exits 0 without running the command;
 * - with -enableRsync it starts <userBinPath>/rsync as a child first (the
 *   real one keeps rsync running beside the command; this one waits);
 * - it runs commands[0] with commands[1:] + args as a CHILD (osmo_exec
 *   stays PID 1), argv[0] as given;
 * - it tells osmo-ctrl the command is over (/osmo/data/socket/done) and
 *   exits with the command's exit code.
 *
 * Built static: gcc -O2 -static. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_ARGV 1024

static const char *flag_value(char **argv, int argc, int *i, const char *name) {
    const char *a = argv[*i];
    while (*a == '-') a++;
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) return NULL;
    if (a[n] == '=') return a + n + 1;
    if (a[n] != '\0' || *i + 1 >= argc) return NULL;
    *i += 1;
    return argv[*i];
}

int main(int argc, char **argv) {
    char *commands[MAX_ARGV], *args[MAX_ARGV], *run[2 * MAX_ARGV + 1];
    int nc = 0, na = 0, rsync = 0;
    const char *bin = "/osmo/usr/bin";
    struct stat st;
    for (int i = 1; i < argc; i++) {
        const char *v;
        const char *a = argv[i];
        if (a[0] != '-' || strcmp(a, "--") == 0) break;
        while (*a == '-') a++;
        if (strcmp(a, "enableRsync") == 0) { rsync = 1; continue; }
        if ((v = flag_value(argv, argc, &i, "commands"))) {
            if (nc < MAX_ARGV) commands[nc++] = (char *)v;
        } else if ((v = flag_value(argv, argc, &i, "args"))) {
            if (na < MAX_ARGV) args[na++] = (char *)v;
        } else if ((v = flag_value(argv, argc, &i, "userBinPath"))) {
            bin = v;
        } else if (strchr(a, '=') == NULL && i + 1 < argc) {
            i++; /* any other flag takes a value (-socketPath, -checkpoint, ...) */
        }
    }
    if (nc == 0) {
        fprintf(stderr, "osmo_exec: no -commands\n");
        return 2;
    }
    for (int i = 0;; i++) {
        if (stat("/osmo/data/socket/failed", &st) == 0) return 0;
        if (stat("/osmo/data/socket/start", &st) == 0) break;
        if (i > 6000) { fprintf(stderr, "osmo_exec: no start from osmo-ctrl\n"); return 1; }
        usleep(50000);
    }
    if (rsync) {
        char path[4096];
        snprintf(path, sizeof path, "%s/rsync", bin);
        pid_t r = fork();
        if (r == 0) {
            execl(path, path, "--daemon", "--no-detach", (char *)NULL);
            _exit(127);
        }
        if (r > 0) while (waitpid(r, NULL, 0) < 0) {}
    }
    int n = 0;
    for (int i = 0; i < nc; i++) run[n++] = commands[i];
    for (int i = 0; i < na; i++) run[n++] = args[i];
    run[n] = NULL;
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) {
        execvp(run[0], run);
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
