//! Writable shared mappings of home files (`mmap` with `MAP_SHARED` and `PROT_WRITE`): what a program
//! stores in one reaches home's file, as through the page cache natively: at `msync`, before the next open
//! (small files), when the process ends or is killed, and at the job's end. A linker that writes its output
//! through a mapping (gold) leaves a program that runs at home.

use homeward::{require_tools, skip_unless_root, Hosts};

/// Each case prints what a reader sees; the killed child's stores are checked at home afterwards.
const MAPS: &str = r#"
import mmap, os, signal

# Stored, flushed, then read through another open; stored again and read after close (a small file).
with open("a.bin", "wb") as f:
    f.write(b"a" * 8192)
f = open("a.bin", "r+b")
m = mmap.mmap(f.fileno(), 0)
m[0:5] = b"HELLO"
m.flush()
print("flushed", open("a.bin", "rb").read(8))
m[8192 - 3:] = b"END"
m.close()
f.close()
print("closed", open("a.bin", "rb").read()[-4:])

# A file made, sized, mapped and stored into, then read by its name.
fd = os.open("b.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 3 * 4096)
m = mmap.mmap(fd, 3 * 4096)
m[4096:4099] = b"xyz"
m.close()
os.close(fd)
print("made", open("b.bin", "rb").read()[4096:4100], os.path.getsize("b.bin"))

# A child stores into a larger file and exits without unmapping: its parent reads the stores.
fd = os.open("c.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 3 << 20)
pid = os.fork()
if pid == 0:
    m = mmap.mmap(fd, 3 << 20)
    m[(2 << 20) + 5:(2 << 20) + 10] = b"child"
    os._exit(0)
os.waitpid(pid, 0)
print("child", os.pread(fd, 5, (2 << 20) + 5))
os.close(fd)

# A child killed right after its stores: they are the file's (checked at home once the job is over).
fd = os.open("d.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 4096)
pid = os.fork()
if pid == 0:
    m = mmap.mmap(fd, 4096)
    m[0:6] = b"killed"
    os.kill(os.getpid(), signal.SIGKILL)
os.waitpid(pid, 0)
os.close(fd)

# A store and a write through the descriptor, side by side: both reach the file.
fd = os.open("e.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 8192)
m = mmap.mmap(fd, 8192)
m[0:5] = b"STORE"
os.pwrite(fd, b"PWRITE", 4096)
m.flush()
m.close()
os.close(fd)
d = open("e.bin", "rb").read()
print("mixed", d[0:5], d[4096:4102])

# Written through the descriptor before the mapping: the mapping shows it.
fd = os.open("a.bin", os.O_RDWR)
os.write(fd, b"HEAD")
m = mmap.mmap(fd, 8192)
print("sees", m[0:8])
m.close()
os.close(fd)

# Through a descriptor opened for appending: the stores land where they were made.
with open("f.bin", "wb") as f:
    f.write(b"x" * 4096)
f = open("f.bin", "a+b")
m = mmap.mmap(f.fileno(), 0)
m[0:5] = b"HELLO"
m.flush()
m.close()
f.close()
print("append", os.path.getsize("f.bin"), open("f.bin", "rb").read(6))

# Mapped, grown, mapped again (Go's linker): no SIGBUS, both stores kept.
fd = os.open("g.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 4096)
m = mmap.mmap(fd, 4096)
m[0:1] = b"A"
m.close()
os.ftruncate(fd, 8192)
m = mmap.mmap(fd, 8192)
m[6000:6001] = b"B"
m.close()
os.close(fd)
d = open("g.bin", "rb").read()
print("grown", len(d), d[0:1], d[6000:6001])

# Stored, unmapped, then the file is rewritten from scratch: the old stores do not come back.
fd = os.open("h.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 2 << 20)
m = mmap.mmap(fd, 2 << 20)
m[0:3] = b"OLD"
m.close()
os.close(fd)
with open("h.bin", "wb") as f:
    f.write(b"new content\n")
print("rewritten", open("h.bin", "rb").read())

# Grown in place (Python's resize: ftruncate, then mremap): the new part takes stores too.
fd = os.open("i.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 4096)
m = mmap.mmap(fd, 4096)
m[0:2] = b"ab"
m.resize(8192)
m[8000:8002] = b"cd"
m.flush()
m.close()
os.close(fd)
d = open("i.bin", "rb").read()
print("resized", len(d), d[0:2], d[8000:8002])

# No writable shared mapping through a read-only descriptor; a private one keeps its stores.
f = open("a.bin", "rb")
try:
    mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
except OSError as e:
    print("read-only", e.errno)
m = mmap.mmap(f.fileno(), 0, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
m[0:7] = b"PRIVATE"
m.close()
f.close()
print("private", open("a.bin", "rb").read(8))
"#;

#[test]
fn stores_into_a_shared_mapping_reach_home_as_natively() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("maps.py", MAPS);
    let native = hosts.native_copy();
    let both = hosts.cmd(&["python3", "maps.py"]).check(&native);
    assert!(both.native.stdout().contains("flushed b'HELLOaaa'"), "{}", both.native);
    assert!(both.native.stdout().contains("child b'child'"), "{}", both.native);
    assert_eq!(&hosts.read("d.bin")[..6], b"killed", "the killed child's stores are not at home");
    assert_eq!(&hosts.read("c.bin")[(2 << 20) + 5..(2 << 20) + 10], b"child");
    assert_eq!(&hosts.read("a.bin")[8192 - 3..], b"END");
    assert_eq!(hosts.read("h.bin"), b"new content\n", "old stores were written over the rewritten file");
}

#[test]
fn a_program_linked_by_gold_runs_at_home() {
    skip_unless_root!();
    require_tools!("cc", "ld.gold");
    let hosts = Hosts::start();
    hosts.write("t.c", "int main(void) { return 42; }\n");
    let run = hosts.cmd(&["sh", "-c", "cc -fuse-ld=gold -o t t.c && ./t; echo $?"]).remote();
    run.assert_success();
    assert_eq!(run.stdout(), "42\n", "{run}");
    let at_home = hosts.cmd(&["sh", "-c", "./t; echo $?"]).outside();
    assert_eq!(at_home.stdout(), "42\n", "the linked program does not run at home: {at_home}");
}
