/* smallfiles DIR N SIZE: write N files of SIZE bytes into DIR, then read
 * them all back. DIR must exist and be empty (the caller clears it between
 * runs, outside the timed region). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: smallfiles DIR N SIZE\n");
        return 2;
    }
    long n = atol(argv[2]);
    size_t size = (size_t)atol(argv[3]);
    char *buf = malloc(size);
    char path[4096];
    if (!buf)
        return 1;
    for (long i = 0; i < n; i++) {
        memset(buf, 'a' + (int)(i % 26), size);
        snprintf(path, sizeof path, "%s/f%05ld.dat", argv[1], i);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, buf, size) != (ssize_t)size) {
            perror(path);
            return 1;
        }
        close(fd);
    }
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/f%05ld.dat", argv[1], i);
        int fd = open(path, O_RDONLY);
        if (fd < 0 || read(fd, buf, size) != (ssize_t)size) {
            perror(path);
            return 1;
        }
        close(fd);
    }
    free(buf);
    return 0;
}
