//! errno round-trips exactly: a C program built into the home directory (so on the remote side it exists
//! only at home) makes calls that fail in known ways and prints each call's errno name; the forwarded run
//! must print exactly what the native run prints. Once as root, once as an unprivileged user for
//! EACCES/EPERM (home-agent then runs as that user too: it acts with its own user's rights).

use std::collections::BTreeMap;

use homeward::{skip_unless_root, skip_unless_unprivileged, Compare, Hosts, Run, Times};

const PROBE_C: &str = r#"#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

/* Prints the case's name and "ok" or the errno's name. Successful results are not printed: forwarded file
   descriptors live in another part of the fd table than native ones. */
static void report(const char *name, long ret) {
    if (ret < 0) {
        const char *e = strerrorname_np(errno);
        printf("%s %s\n", name, e ? e : "unknown");
    } else {
        printf("%s ok\n", name);
    }
    fflush(stdout);
}

/* An invalid user pointer the compiler cannot see through. */
static void *bad_pointer(void) {
    volatile uintptr_t p = 1;
    return (void *)p;
}

int main(void) {
    struct stat st;
    struct statx stx;
    char buf[512];
    char longname[400];
    int fd, closed;

    report("open_missing", open("missing", O_RDONLY));
    report("mkdir_existing", mkdir("dir", 0755));
    report("open_through_file", open("file/x", O_RDONLY));
    report("open_dir_for_writing", open("dir", O_WRONLY));
    closed = open("file", O_RDONLY);
    report("open_file", closed);
    report("close_file", close(closed));
    report("read_closed_fd", read(closed, buf, 1));
    report("fstat_closed_fd", fstat(closed, &st));
    report("openat_closed_dirfd", openat(closed, "x", O_RDONLY));
    report("dup2_closed_fd", dup2(closed, 50));
    report("close_closed_fd", close(closed));
    report("rmdir_nonempty", rmdir("dir"));
    report("rename_onto_nonempty_dir", rename("emptydir", "dir"));
    report("open_symlink_loop", open("loop1", O_RDONLY));
    report("stat_through_symlink_loop", stat("loop1/x", &st));
    report("open_nofollow_symlink", open("link", O_RDONLY | O_NOFOLLOW));
    report("stat_bad_path_pointer", stat(bad_pointer(), &st));
    report("open_bad_path_pointer", open(bad_pointer(), O_RDONLY));
    report("stat_bad_buffer_pointer", stat("file", bad_pointer()));
    fd = open("file", O_RDONLY);
    report("read_into_bad_pointer", read(fd, bad_pointer(), 10));
    close(fd);
    report("create_exclusive_existing", open("file", O_CREAT | O_EXCL | O_WRONLY, 0644));
    report("open_directory_flag_on_file", open("file", O_RDONLY | O_DIRECTORY));
    report("open_trailing_slash_file", open("file/", O_RDONLY));
    report("open_create_in_missing_dir", open("missing/f", O_CREAT | O_WRONLY, 0644));
    report("unlink_directory", unlink("dir"));
    report("unlink_missing", unlink("missing"));
    report("rmdir_file", rmdir("file"));
    report("rmdir_missing", rmdir("missing"));
    report("rmdir_dot", rmdir("."));
    report("readlink_regular_file", readlink("file", buf, sizeof buf));
    report("rename_dir_into_itself", rename("dir", "dir/sub/moved"));
    report("rename_missing", rename("missing", "x"));
    report("renameat2_noreplace", renameat2(AT_FDCWD, "file", AT_FDCWD, "file2", RENAME_NOREPLACE));
    report("link_directory", link("dir", "dirlink"));
    report("link_existing", link("file", "file2"));
    report("symlink_existing", symlink("x", "file"));
    report("mkfifo_existing", mkfifo("file", 0644));
    report("mkdir_missing_parent", mkdir("missing/x", 0755));
    report("mkdir_dot_in_dir", mkdir("dir/.", 0755));
    report("truncate_directory", truncate("dir", 0));
    report("chdir_file", chdir("file"));
    report("access_missing", access("missing", F_OK));
    report("utimensat_missing", utimensat(AT_FDCWD, "missing", NULL, 0));
    report("getxattr_missing_attr", getxattr("file", "user.homeward-none", buf, sizeof buf));
    report("statx_conflicting_sync_flags",
           statx(AT_FDCWD, "file", AT_STATX_FORCE_SYNC | AT_STATX_DONT_SYNC, STATX_BASIC_STATS, &stx));
    report("getcwd_small_buffer", getcwd(buf, 1) ? 0 : -1);
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    report("open_name_too_long", open(longname, O_RDONLY));

    fd = open("file", O_RDONLY);
    report("write_readonly_fd", write(fd, "x", 1));
    report("lseek_bad_whence", lseek(fd, 0, 42));
    report("getdents_on_file", syscall(SYS_getdents64, fd, buf, sizeof buf));
    report("fchdir_file", fchdir(fd));
    report("ftruncate_readonly_fd", ftruncate(fd, 0));
    struct flock lock = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    report("write_lock_readonly_fd", fcntl(fd, F_SETLK, &lock));
    close(fd);
    fd = open("dir", O_RDONLY | O_DIRECTORY);
    report("read_directory", read(fd, buf, 1));
    close(fd);

    /* preadv/pwritev take no -1 for "at the offset" (only the 2 forms do): a negative offset. */
    fd = open("file2", O_RDWR);
    struct iovec iov = {buf, 4};
    report("preadv_minus_one", preadv(fd, &iov, 1, -1));
    report("pwritev_minus_one", pwritev(fd, &iov, 1, -1));
    report("preadv2_minus_one", preadv2(fd, &iov, 1, -1, 0));
    close(fd);

    /* Permission checks: EACCES/EPERM as an unprivileged user; as root they succeed (and change things,
       so they come last). */
    report("open_secret", open("secret", O_RDONLY));
    report("access_secret_for_reading", access("secret", R_OK));
    report("stat_in_private_dir", stat("private/inner", &st));
    report("open_in_private_dir", open("private/inner", O_RDONLY));
    report("list_private_dir", open("private", O_RDONLY | O_DIRECTORY));
    report("create_in_readonly_dir", open("readonly-dir/new", O_CREAT | O_WRONLY, 0644));
    report("mkdir_in_readonly_dir", mkdir("readonly-dir/sub", 0755));
    report("unlink_in_readonly_dir", unlink("readonly-dir/existing"));
    report("rename_out_of_readonly_dir", rename("readonly-dir/other", "renamed"));
    report("chmod_not_owner", chmod("file2", 0600));
    struct timespec times[2] = {{1000000000, 0}, {1000000000, 0}};
    report("utimensat_not_owner", utimensat(AT_FDCWD, "file2", times, 0));
    return 0;
}
"#;

/// The home directory the probe expects, and the probe itself at `bin/errno-probe`.
fn errno_home(hosts: &Hosts) {
    hosts.write("file", "content\n");
    hosts.write("file2", "other\n");
    hosts.write("dir/inner", "inner\n");
    hosts.mkdir("dir/sub");
    hosts.mkdir("emptydir");
    hosts.symlink("loop2", "loop1");
    hosts.symlink("loop1", "loop2");
    hosts.symlink("file", "link");
    hosts.write_mode("secret", "secret\n", 0o600);
    hosts.write("private/inner", "private\n");
    hosts.chmod("private", 0o700);
    hosts.write("readonly-dir/existing", "x\n");
    hosts.write("readonly-dir/other", "y\n");
    hosts.chmod("readonly-dir", 0o555);
    hosts.mkdir("bin");
    hosts.gcc(PROBE_C, "bin/errno-probe", &[]);
}

/// Case name -> errno name (or "ok") from the probe's output.
fn parse(run: &Run) -> BTreeMap<String, String> {
    run.stdout()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, result)| (name.to_string(), result.to_string()))
        .collect()
}

/// The native run must itself produce the errno each case is about, or the comparison proves nothing.
#[track_caller]
fn expect_native(native: &Run, expected: &[(&str, &str)]) {
    let got = parse(native);
    for (case, errno) in expected {
        assert_eq!(
            got.get(*case).map(String::as_str),
            Some(*errno),
            "the native run does not produce {errno} for {case}, so the test setup is wrong:\n{native}"
        );
    }
}

#[test]
fn errnos_match_native_as_root() {
    skip_unless_root!();
    let hosts = Hosts::start();
    errno_home(&hosts);
    let native = hosts.native_copy();
    let both = hosts.cmd(&["bin/errno-probe"]).check_with(&native, &Compare::new().stderr());
    both.native.assert_success();
    expect_native(
        &both.native,
        &[
            ("open_missing", "ENOENT"),
            ("mkdir_existing", "EEXIST"),
            ("open_through_file", "ENOTDIR"),
            ("open_dir_for_writing", "EISDIR"),
            ("read_closed_fd", "EBADF"),
            ("rmdir_nonempty", "ENOTEMPTY"),
            ("open_symlink_loop", "ELOOP"),
            ("stat_bad_path_pointer", "EFAULT"),
            ("stat_bad_buffer_pointer", "EFAULT"),
            ("read_into_bad_pointer", "EFAULT"),
            ("open_secret", "ok"),
        ],
    );
    hosts.assert_home_matches(&native, Times::Ignore);
}

#[test]
fn eacces_and_eperm_match_native_as_an_unprivileged_user() {
    skip_unless_root!();
    skip_unless_unprivileged!("needs setpriv or runuser to drop privileges for EACCES");
    let hosts = Hosts::builder().unprivileged().start();
    errno_home(&hosts);
    let native = hosts.native_copy();
    let both = hosts.cmd(&["bin/errno-probe"]).check_with(&native, &Compare::new().stderr());
    both.native.assert_success();
    expect_native(
        &both.native,
        &[
            ("open_missing", "ENOENT"),
            ("read_closed_fd", "EBADF"),
            ("open_secret", "EACCES"),
            ("access_secret_for_reading", "EACCES"),
            ("stat_in_private_dir", "EACCES"),
            ("create_in_readonly_dir", "EACCES"),
            ("unlink_in_readonly_dir", "EACCES"),
            ("chmod_not_owner", "EPERM"),
        ],
    );
    hosts.assert_home_matches(&native, Times::Ignore);
}
