/* bigread FILE CHUNK: read FILE to the end in CHUNK-byte reads. The file is
 * kept warm in the page cache by the caller (nothing is dropped), so this
 * measures per-read syscall cost, not the disk. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: bigread FILE CHUNK\n");
        return 2;
    }
    size_t chunk = (size_t)atol(argv[2]);
    char *buf = malloc(chunk);
    int fd = open(argv[1], O_RDONLY);
    if (!buf || fd < 0) {
        perror(argv[1]);
        return 1;
    }
    unsigned long long total = 0, sum = 0;
    ssize_t got;
    while ((got = read(fd, buf, chunk)) > 0) {
        total += (unsigned long long)got;
        sum += (unsigned char)buf[0]; /* touch the data */
    }
    if (got < 0) {
        perror("read");
        return 1;
    }
    close(fd);
    free(buf);
    return sum == 0xffffffffffffffffULL; /* keeps `sum` live */
}
