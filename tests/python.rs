//! python3 creating, reading, listing, renaming and deleting home files, with the script itself read from
//! home; output compared with a native run and home's disk with the native copy. Runs in a private network
//! namespace, so the shim reaches the agent over that namespace's own loopback.

use homeward::{require_tools, skip_unless_root, Compare, Hosts, Times};

const SCRIPT: &str = r#"
import errno, hashlib, os, shutil, stat, sys

base = "work"
print("cwd", os.getcwd())
with open("input/data.txt") as f:
    lines = f.read().splitlines()
print("input lines", len(lines), lines[:2])

os.mkdir(base)
for i in range(24):
    with open(os.path.join(base, f"f{i:02}.txt"), "w") as f:
        f.write(f"file {i}\n" * (i + 1))
print("listing", sorted(os.listdir(base)))

total = 0
for name in sorted(os.listdir(base)):
    with open(os.path.join(base, name), "rb") as f:
        data = f.read()
    total += len(data)
    print(name, len(data), hashlib.sha256(data).hexdigest()[:16])
print("total", total)

with open(f"{base}/f03.txt", "r+") as f:
    f.seek(5)
    f.write("XX")
    f.seek(0, os.SEEK_END)
    f.write("appended\n")
    f.seek(0)
    print("rewritten", repr(f.read()))

for i in range(0, 24, 2):
    os.rename(f"{base}/f{i:02}.txt", f"{base}/renamed-{i:02}.txt")
os.replace(f"{base}/f01.txt", f"{base}/renamed-00.txt")
for i in range(3, 24, 4):
    os.remove(f"{base}/f{i:02}.txt")

os.makedirs(f"{base}/deep/er/est", exist_ok=True)
with open(f"{base}/deep/er/est/leaf.bin", "wb") as f:
    f.write(bytes(range(256)) * 300)
os.chmod(f"{base}/deep/er/est/leaf.bin", 0o600)
os.utime(f"{base}/deep/er/est/leaf.bin", (1_000_000_000, 1_100_000_000))
st = os.stat(f"{base}/deep/er/est/leaf.bin")
print("leaf", st.st_size, oct(stat.S_IMODE(st.st_mode)), st.st_mtime)
os.symlink("er/est/leaf.bin", f"{base}/deep/leaf-link")
print("link", os.readlink(f"{base}/deep/leaf-link"), os.path.getsize(f"{base}/deep/leaf-link"))

for root, dirs, files in os.walk(base):
    dirs.sort()
    print("walk", root, dirs, sorted(files))
with os.scandir(base) as it:
    print("scandir", sorted((e.name, e.is_dir(), e.is_file()) for e in it))

for attempt in [lambda: open(f"{base}/nope.txt"),
                lambda: os.mkdir(base),
                lambda: os.rmdir(f"{base}/deep"),
                lambda: open(f"{base}/deep", "w"),
                lambda: open(f"{base}/renamed-02.txt/x"),
                lambda: open(f"{base}/new.txt", "x") and open(f"{base}/new.txt", "x")]:
    try:
        attempt()
        print("no error")
    except OSError as e:
        print("error", errno.errorcode[e.errno], type(e).__name__)

shutil.copytree(f"{base}/deep", f"{base}/deep-copy")
shutil.rmtree(f"{base}/deep")
print("after rmtree", sorted(os.listdir(base)))
print("exists", os.path.exists(f"{base}/deep"), os.path.isdir(f"{base}/deep-copy"))
sys.exit(3)
"#;

#[test]
fn script_creates_reads_lists_renames_and_deletes() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::with_netns();
    hosts.write("script.py", SCRIPT);
    hosts.write("input/data.txt", (0..1000).map(|i| format!("row {i}\n")).collect::<String>());
    let native = hosts.native_copy();

    let both = hosts.cmd(&["python3", "script.py"]).check_with(&native, &Compare::new().stderr());
    assert_eq!(both.native.code(), 3, "the script ends with exit(3): {}", both.native);
    assert!(both.native.stdout().contains("error ENOENT FileNotFoundError"), "{}", both.native);
    hosts.assert_home_matches(&native, Times::Ignore);
    // From outside: what the script left at home.
    assert_eq!(hosts.read("work/deep-copy/er/est/leaf.bin").len(), 256 * 300);
    assert!(
        !hosts.exists("work/deep") && !hosts.exists("work/f01.txt") && hosts.exists("work/renamed-00.txt")
    );
}

#[test]
fn python_reads_a_module_and_data_from_home() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("pkg/helper.py", "def double(x):\n    return 2 * x\n");
    hosts.write("pkg/__init__.py", "");
    hosts.write(
        "main.py",
        "import json, pkg.helper\nprint(pkg.helper.double(21))\nprint(json.load(open('cfg.json'))['name'])\n",
    );
    hosts.write("cfg.json", r#"{"name": "from home"}"#);
    let native = hosts.native_copy();
    hosts.cmd(&["python3", "main.py"]).check_with(&native, &Compare::new().stderr());
    hosts
        .cmd(&["python3", "-B", "-c", "import sys; print(sys.path[0] == '', open('cfg.json').read())"])
        .check(&native);
    hosts.assert_home_matches(&native, Times::Ignore);
}
