/* openclose FILE N: open and close FILE N times (lmbench-style open/close).
 * The same file every time, so a tracer that suppresses repeats in the
 * kernel reports it once; what is measured is the per-syscall probe cost. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: openclose FILE N\n");
        return 2;
    }
    long n = atol(argv[2]);
    for (long i = 0; i < n; i++) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) {
            perror(argv[1]);
            return 1;
        }
        close(fd);
    }
    return 0;
}
