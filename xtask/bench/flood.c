/* flood DIR NFILES SECONDS: create NFILES files in DIR, then open+close
 * them in turn as fast as possible for SECONDS. Prints one line:
 * "created=<n> opens=<n> seconds=<s> rate=<opens per second>".
 *
 * The abusive pod of `cargo xtask bench-flood`: more distinct files than
 * the kernel's repeat-suppression map holds, so that every open can be an
 * event. Static, so it runs in the busybox task image. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: flood DIR NFILES SECONDS\n");
        return 2;
    }
    long nfiles = atol(argv[2]);
    double seconds = atof(argv[3]);
    char path[4096];
    for (long i = 0; i < nfiles; i++) {
        snprintf(path, sizeof path, "%s/f%07ld", argv[1], i);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) {
            perror(path);
            return 1;
        }
        close(fd);
    }
    long long opens = 0;
    double start = now_s(), elapsed = 0;
    while ((elapsed = now_s() - start) < seconds) {
        for (int k = 0; k < 256; k++, opens++) {
            snprintf(path, sizeof path, "%s/f%07lld", argv[1], opens % nfiles);
            int fd = open(path, O_RDONLY);
            if (fd < 0) {
                perror(path);
                return 1;
            }
            close(fd);
        }
    }
    printf("created=%ld opens=%lld seconds=%.3f rate=%.0f\n", nfiles, opens, elapsed,
           (double)opens / elapsed);
    return 0;
}
