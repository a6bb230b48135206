//! A hostile program: bad pointers at page edges, huge lengths and counts, descriptor exhaustion and two
//! thousand threads at once. It must get the kernel's answers (the forwarded run prints exactly what the
//! native run prints) and the supervisor must keep serving it (the last line proves it).

use homeward::{skip_unless_root, Compare, Hosts};

const HOSTILE_C: &str = r#"#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

static void report(const char *name, long ret) {
    if (ret < 0) {
        const char *e = strerrorname_np(errno);
        printf("%s %s\n", name, e ? e : "unknown");
    } else {
        printf("%s %ld\n", name, ret);
    }
    fflush(stdout);
}

#define THREADS 2000
static int stat_ok[THREADS];

static void *stat_file(void *arg) {
    struct stat st;
    long i = (long)arg;
    stat_ok[i] = stat("file", &st) == 0 && st.st_size == 10;
    return NULL;
}

int main(void) {
    long page = sysconf(_SC_PAGESIZE);
    /* Two pages: the first readable and writable, the second inaccessible. */
    char *area = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED || mprotect(area + page, page, PROT_NONE)) { perror("mmap"); return 1; }
    char *edge = area + page;
    char buf[64];

    /* A path running into the inaccessible page without its NUL. */
    memset(edge - 8, 'a', 8);
    report("open_path_without_nul", open(edge - 8, O_RDONLY));
    strcpy(edge - 5, "file");
    report("open_path_at_page_end", open(edge - 5, O_RDONLY) >= 0 ? 0 : -1);
    char longpath[5000];
    memset(longpath, 'x', sizeof longpath - 1);
    longpath[sizeof longpath - 1] = 0;
    report("open_path_too_long", open(longpath, O_RDONLY));

    int fd = open("file", O_RDONLY);
    report("read_huge_length_small_file", read(fd, buf, SIZE_MAX));
    report("pread_huge_length", pread(fd, buf, SIZE_MAX, 0));
    report("pread_negative_offset", pread(fd, buf, 10, -1));
    report("read_into_guard_page", pread(fd, edge, 10, 0));
    report("read_across_guard_page", pread(fd, edge - 4, 10, 0));
    report("read_zero_into_bad_pointer", read(fd, (void *)1, 0));
    report("lseek_overflow", lseek(fd, LLONG_MAX, SEEK_SET) < 0 ? -1 : lseek(fd, 10, SEEK_CUR));
    struct iovec iov[1100];
    for (int i = 0; i < 1100; i++) { iov[i].iov_base = buf; iov[i].iov_len = 1; }
    report("readv_too_many_iovecs", readv(fd, iov, 1100));
    report("readv_negative_count", readv(fd, iov, -1));
    iov[0].iov_len = SSIZE_MAX; iov[1].iov_len = SSIZE_MAX;
    report("readv_lengths_overflow", preadv(fd, iov, 2, 0));
    close(fd);

    fd = open("out", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    report("write_from_bad_pointer", write(fd, (void *)1, 10));
    report("write_from_guard_page", write(fd, edge, 10));
    memset(area, 'w', page);
    report("write_huge_length_up_to_guard_page", write(fd, edge - 100, SIZE_MAX >> 1));
    report("pwrite_negative_offset", pwrite(fd, buf, 1, -5));
    close(fd);

    int dir = open("dir", O_RDONLY | O_DIRECTORY);
    report("getdents_tiny_buffer", syscall(SYS_getdents64, dir, buf, 1));
    report("getdents_bad_buffer", syscall(SYS_getdents64, dir, (void *)1, 4096));
    close(dir);
    report("readlink_zero_size", readlink("link", buf, 0));
    report("readlink_bad_buffer", readlink("link", (void *)1, 64));

    /* Descriptor exhaustion: open home files until the limit, then everything still works. */
    struct rlimit lim = { 256, 256 };
    setrlimit(RLIMIT_NOFILE, &lim);
    int fds[300], n = 0, err = 0;
    for (;;) {
        int f = open("file", O_RDONLY);
        if (f < 0) { err = errno; break; }
        fds[n++] = f;
        if (n == 300) break;
    }
    printf("exhaustion %s after more than 200: %s\n", strerrorname_np(err), n > 200 ? "yes" : "no");
    for (int i = 0; i < n; i++) close(fds[i]);
    report("open_after_exhaustion", open("file", O_RDONLY) >= 0 ? 0 : -1);

    /* Two thousand threads, each with a forwarded call at once. */
    pthread_t t[THREADS];
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 << 10);
    int started = 0;
    for (long i = 0; i < THREADS; i++) {
        if (pthread_create(&t[i], &attr, stat_file, (void *)i)) break;
        started++;
    }
    int ok = 0;
    for (int i = 0; i < started; i++) { pthread_join(t[i], NULL); ok += stat_ok[i]; }
    printf("threads %d started, %d stats right\n", started, ok);

    report("still_served", access("file", R_OK));
    return 0;
}
"#;

#[test]
fn a_hostile_program_gets_the_kernels_answers_and_cannot_stall_the_supervisor() {
    skip_unless_root!();
    let hosts = Hosts::start();
    hosts.write("file", "0123456789");
    hosts.write("dir/a", "a");
    hosts.symlink("file", "link");
    hosts.mkdir("bin");
    // The calls are wrong on purpose: gcc must not refuse them.
    hosts.gcc(
        HOSTILE_C,
        "bin/hostile",
        &["-pthread", "-Wno-stringop-overflow", "-Wno-stringop-overread", "-Wno-error"],
    );
    let native = hosts.native_copy();
    let both = hosts.cmd(&["bin/hostile"]).check_with(&native, &Compare::new().stderr());
    both.native.assert_success();
    let out = both.native.stdout();
    for line in ["open_path_without_nul EFAULT", "threads 2000 started, 2000 stats right", "still_served 0"] {
        assert!(out.contains(line), "the native run should print {line:?}, so the test is wrong:\n{out}");
    }
}
