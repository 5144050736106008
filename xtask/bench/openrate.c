/* openrate DIR NFILES RATE SECONDS: open+close DIR/f<i>.dat (i cycling over
 * NFILES pre-created files) at RATE opens per second for SECONDS, paced
 * against the clock; RATE 0 means as fast as possible. Prints one line:
 * "opens=<n> seconds=<s> rate=<achieved per second>".
 *
 * Run it under `roar-node run --no-suppress` so every open is an event:
 * this is how the loss test controls the event rate. */
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
    if (argc != 5) {
        fprintf(stderr, "usage: openrate DIR NFILES RATE SECONDS\n");
        return 2;
    }
    long nfiles = atol(argv[2]);
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    char (*paths)[4096] = malloc((size_t)nfiles * 4096);
    if (!paths)
        return 1;
    for (long i = 0; i < nfiles; i++)
        snprintf(paths[i], 4096, "%s/f%05ld.dat", argv[1], i);

    long long opens = 0;
    double start = now_s(), elapsed = 0;
    struct timespec nap = {0, 100000}; /* 100 us */
    while ((elapsed = now_s() - start) < seconds) {
        /* Open in bursts of up to 64, then check the clock again. */
        long long due = rate > 0 ? (long long)(rate * elapsed) : opens + 64;
        if (opens >= due) {
            nanosleep(&nap, NULL);
            continue;
        }
        for (int k = 0; k < 64 && opens < due; k++, opens++) {
            int fd = open(paths[opens % nfiles], O_RDONLY);
            if (fd < 0) {
                perror(paths[opens % nfiles]);
                return 1;
            }
            close(fd);
        }
    }
    printf("opens=%lld seconds=%.6f rate=%.0f\n", opens, elapsed, (double)opens / elapsed);
    return 0;
}
