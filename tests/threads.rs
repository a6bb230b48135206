//! Many threads forwarding at once: eight threads writing distinct home files concurrently, and a thread
//! blocked on a home fifo while the others keep working.

use std::time::Duration;

use homeward::{require_tools, skip_unless_root, Compare, Hosts, Times};

const WRITERS: &str = r#"
import hashlib, os, threading

os.makedirs("out", exist_ok=True)
start = threading.Barrier(8)

def work(i):
    start.wait()
    fd = os.open(f"out/t{i}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for j in range(300):
        os.write(fd, f"thread {i} line {j}\n".encode())
        if j % 50 == 0:
            os.fsync(fd)
            os.stat(f"out/t{i}.txt")
    os.close(fd)

threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for i in range(8):
    data = open(f"out/t{i}.txt", "rb").read()
    print(i, len(data), hashlib.sha256(data).hexdigest())
"#;

#[test]
fn eight_threads_write_distinct_home_files() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("writers.py", WRITERS);
    let native = hosts.native_copy();
    hosts.cmd(&["python3", "writers.py"]).check_with(&native, &Compare::new().stderr());
    hosts.assert_home_matches(&native, Times::Ignore);
    for i in 0..8 {
        let text = String::from_utf8(hosts.read(&format!("out/t{i}.txt"))).unwrap();
        assert_eq!(text.lines().count(), 300, "out/t{i}.txt at home is incomplete");
    }
}

/// The reader thread blocks in `open` of a home fifo until the main thread opens it for writing; if the
/// shim serialized forwarded calls, the main thread's own calls (and so the writer) would never run.
const FIFO: &str = r#"
import os, threading

os.mkfifo("pipe")
got = []

def reader():
    with open("pipe", "rb") as f:
        got.append(f.read())

t = threading.Thread(target=reader)
t.start()
for i in range(20):
    with open(f"busy{i}.txt", "w") as f:
        f.write(str(i))
print("main thread kept working:", len(os.listdir(".")))
with open("pipe", "wb") as f:
    f.write(b"through a home fifo\n")
t.join()
print(got)
os.remove("pipe")
"#;

#[test]
fn a_thread_blocked_on_a_home_fifo_blocks_only_itself() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("fifo.py", FIFO);
    let native = hosts.native_copy();
    hosts
        .cmd(&["python3", "fifo.py"])
        .timeout(Duration::from_secs(60))
        .check_with(&native, &Compare::new().stderr());
    hosts.assert_home_matches(&native, Times::Ignore);
}
