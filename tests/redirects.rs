//! Home files moved below the reserved range by `dup2`: a shell's `< file`, `dd if=`, a subprocess's
//! `stdin=`. A read-only file there is the file to the program (regular, its size, seekable), read by the
//! kernel from its copy and kept in step with the job's own changes; a directory there keeps serving its
//! `*at` calls however long it is held.

use homeward::{require_tools, skip_unless_root, Hosts};

/// What programs learn of a redirected standard input: its type, size, permissions, times and offsets (the
/// shell reads a `while read` loop's lines in blocks and seeks back, `tail` seeks to the end, `wc -c` asks
/// the size); what the job appends meanwhile, and what it writes through `/dev/stdin` opened for writing
/// (the file, reopened: it once wrote into the local copy).
const REDIRECTED: &str = r#"
python3 -c 'import os, stat, sys
s = os.fstat(0)
print(stat.S_ISREG(s.st_mode), s.st_size, os.lseek(0, 0, os.SEEK_CUR))
print(sys.stdin.readline().strip(), os.lseek(0, 0, os.SEEK_CUR) > 0, os.lseek(0, -6, os.SEEK_END))
print(os.read(0, 100))' < lines.txt
python3 -c 'import os; s = os.fstat(0); print(oct(s.st_mode), s.st_mtime_ns)' < lines.txt > attributes.txt
python3 -c 'import os, sys; print(os.lseek(1, 2, 0), os.read(1, 3), file=sys.stderr)' 1< lines.txt 2> seeked.txt
tail -c 6 < lines.txt
wc -c < lines.txt
n=0; while read -r line; do n=$((n + 1)); last=$line; done < lines.txt; echo "$n lines, last: $last"
dd if=lines.txt bs=7 skip=1 count=2 2>/dev/null; echo
sha256sum < mid.bin
python3 -c 'import os, stat; print(stat.S_ISREG(os.fstat(0).st_mode), len(os.read(0, 1 << 30)))' < mid.bin
{ read -r first; echo "first: $first"; echo appended >> lines.txt; cat; } < lines.txt
python3 -c 'import sys
with open("/dev/stdin", "r+") as f:
    f.write("ALPHA")
print(sys.stdin.read(11))' < lines.txt
"#;

#[test]
fn a_file_redirected_into_a_program_is_the_file() {
    skip_unless_root!();
    require_tools!("python3", "sha256sum", "dd", "tail", "wc");
    let hosts = Hosts::start();
    hosts.write("script.sh", REDIRECTED);
    hosts.write("lines.txt", "alpha\nbeta\ngamma\ndelta\nomega\n");
    // Larger than a small copy, and read ahead in chunks before it moves.
    let mid: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    hosts.write("mid.bin", mid);
    let native = hosts.native_copy();
    let both = hosts.cmd(&["sh", "script.sh"]).check(&native);
    assert!(
        both.remote
            .stdout()
            .starts_with("True 29 0\nalpha True 23\nb'omega\\n'\nomega\n29\n5 lines, last: omega\n"),
        "{}",
        both.remote
    );
    assert!(
        both.remote.stdout().ends_with("first: alpha\nbeta\ngamma\ndelta\nomega\nappended\nALPHA\nbeta\n\n"),
        "{}",
        both.remote
    );
    // Standard output moved onto a read-only copy: its seek is notified there, and moves the copy's offset.
    assert_eq!(String::from_utf8_lossy(&hosts.read("seeked.txt")), "2 b'pha'\n");
    // Permission bits and times are home's (the native run's file is a copy with the same).
    let native_attributes =
        std::fs::read(native.join("attributes.txt")).expect("the native run's attributes");
    assert_eq!(
        String::from_utf8_lossy(&hosts.read("attributes.txt")),
        String::from_utf8_lossy(&native_attributes)
    );
}

/// A directory descriptor moved below the range outlives the collector's scans (which once closed its
/// home handle after about a second: `ENOTDIR` from then on).
const DIRECTORY_BELOW: &str = r#"
import os, time
fd = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
os.dup2(fd, 5)
os.close(fd)
print(os.stat("f.txt", dir_fd=5).st_size)
time.sleep(1.5)
print(os.stat("f.txt", dir_fd=5).st_size)
with open("g.txt", "w", opener=lambda p, f: os.open(p, f, dir_fd=5)) as g:
    g.write("made through the directory\n")
print(open("sub/g.txt").read(), end="")
"#;

#[test]
fn a_directory_moved_below_the_range_stays_home() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("script.py", DIRECTORY_BELOW);
    hosts.write("sub/f.txt", "twelve bytes");
    let native = hosts.native_copy();
    let both = hosts.cmd(&["python3", "script.py"]).check(&native);
    assert_eq!(both.remote.stdout(), "12\n12\nmade through the directory\n", "{}", both.remote);
    assert_eq!(hosts.read("sub/g.txt"), b"made through the directory\n");
}

/// `/proc/self/fd/N` (and `/dev/fd/N`, `/proc/PID/fd/N`) of a home file's descriptor reads as the file's
/// path at home (it was `ENOENT`), `lstat` shows the link itself, and `realpath` follows it, as the
/// kernel's links do; a removed file's link says so.
const PROC_LINKS: &str = r#"
import os, stat
f = os.open("data.txt", os.O_RDONLY)
print(os.readlink(f"/proc/self/fd/{f}"), os.readlink(f"/dev/fd/{f}"), os.readlink(f"/proc/{os.getpid()}/fd/{f}"))
print(stat.S_ISLNK(os.lstat(f"/proc/self/fd/{f}").st_mode), stat.S_ISREG(os.stat(f"/proc/self/fd/{f}").st_mode))
os.dup2(f, 0)
print(os.readlink("/proc/self/fd/0"), os.path.realpath("/dev/stdin"))
d = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
print(os.readlink(f"/proc/self/fd/{d}"))
g = os.open("gone.txt", os.O_RDONLY)
os.unlink("gone.txt")
print(os.readlink(f"/proc/self/fd/{g}"))
"#;

#[test]
fn a_descriptors_proc_link_names_its_home_file() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("script.py", PROC_LINKS);
    hosts.write("data.txt", "data\n");
    hosts.write("gone.txt", "soon gone\n");
    hosts.write("sub/f.txt", "f\n");
    let native = hosts.native_copy();
    let both = hosts.cmd(&["python3", "script.py"]).check(&native);
    let home = hosts.home().to_str().expect("UTF-8").to_string();
    assert!(both.remote.stdout().starts_with(&format!("{home}/data.txt {home}/data.txt")), "{}", both.remote);
    assert!(both.remote.stdout().contains(&format!("{home}/gone.txt (deleted)\n")), "{}", both.remote);
}

/// Standard output and error on home files: seekable, truncatable, home's attributes, written in order
/// with what goes through other numbers (`dd of=f seek=N` wrote nothing through a pumped pipe; `cat f >> f`
/// did not see that its input was its output).
const OUTPUTS: &str = r#"
dd if=/dev/zero of=sparse bs=1k count=4 seek=2 2>/dev/null; stat -c %s sparse
printf 'abcdefgh' > h; dd if=/dev/zero of=h bs=1 count=2 seek=3 conv=notrunc 2>/dev/null; od -An -c h
cat f >> f; echo "cat: $?"; wc -l < f
python3 -c 'import os, sys
sys.stdout.write("abc"); sys.stdout.flush()
print(sys.stdout.seekable(), os.lseek(1, 0, os.SEEK_CUR), os.fstat(1).st_size, file=sys.stderr)
os.lseek(1, 1, os.SEEK_SET); os.write(1, b"Z"); os.ftruncate(1, 2)' > o 2> e; cat o; echo; cat e
{ exec 3>&1; echo one; echo two >&3; echo three >&2; echo four; } > ordered 2>&1; cat ordered
python3 -c 'import fcntl, os; print(fcntl.fcntl(1, fcntl.F_GETFL) & os.O_APPEND != 0)' >> appended; cat appended
python3 -c 'import os; print(os.read(1, 1))' > wo 2> err; echo "read: $?"; grep -c 'Bad file descriptor' err
readlink /proc/self/fd/1 > link; sed "s|$PWD|.|" link
"#;

#[test]
fn standard_output_on_a_home_file_is_the_file() {
    skip_unless_root!();
    require_tools!("python3", "dd", "od", "cat", "wc", "sed", "grep");
    let hosts = Hosts::start();
    hosts.write("script.sh", OUTPUTS);
    hosts.write("f", "one\ntwo\n");
    let native = hosts.native_copy();
    let both = hosts.cmd(&["bash", "script.sh"]).check(&native);
    assert!(
        both.remote
            .stdout()
            .starts_with("6144\n   a   b   c  \\0  \\0   f   g   h\ncat: 1\n2\naZ\nTrue 3 3\n"),
        "{}",
        both.remote
    );
    assert_eq!(hosts.read("ordered"), b"one\ntwo\nthree\nfour\n");
    assert_eq!(hosts.read("sparse").len(), 6144);
}
