//! Lookups answered here that once always went home: a file with several names (home watches the file
//! itself, so a change through a name in a directory the job never looked at still reaches the cache), a
//! directory opened read-only again at a version home opened for the job (glibc's locale directories),
//! and readlink of a directory while files come and go in it. Each is checked against changes made at
//! home behind the program's back, and its round trips are counted in the trace.

use homeward::{
    require_tools, skip_unless_root, skip_unless_unprivileged, trace_lines, trace_opened, trace_wheres, Hosts,
};

/// Reads and stats `a/f` (which also has the name `b/g` at home) after each change the test makes at home.
const TWO_NAMES: &str = r#"
import os, time
p = os.path.abspath("a/f")
def show(step):
    for _ in range(2):
        with open(p, "rb") as f:
            data = f.read()
        st = os.stat(p)
        print(step, data.decode(), st.st_size, st.st_nlink, oct(st.st_mode & 0o777))
for step in ["start", "rewritten", "chmod", "unlinked"]:
    if step != "start":
        open("ready", "w").close()
        while not os.path.exists("go"):
            time.sleep(0.01)
        os.remove("go")
    show(step)
"#;

#[test]
fn a_file_with_two_names_is_cached_and_follows_changes_through_the_other_name() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("a/f", "v1");
    hosts.mkdir("b");
    std::fs::hard_link(hosts.path("a/f"), hosts.path("b/g")).expect("the test's own step");
    hosts.write("t.py", TWO_NAMES);
    let trace = hosts.user_home().join("trace.jsonl");
    let other = hosts.path("b/g");
    let changes: [&dyn Fn(); 3] = [
        // In place, through the name in the directory the job never looked at.
        &|| std::fs::write(&other, "version 2").expect("the test's own step"),
        &|| hosts.chmod("b/g", 0o600),
        &|| std::fs::remove_file(&other).expect("the test's own step"),
    ];
    let run = hosts
        .cmd(&["python3", "t.py"])
        .shim_arg("--trace")
        .shim_arg(trace.to_str().expect("UTF-8"))
        .remote_while("", &changes);
    run.assert_success();
    let expected = [
        "start v1 2 2 0o644",
        "rewritten version 2 9 2 0o644",
        "chmod version 2 9 2 0o600",
        "unlinked version 2 9 1 0o600",
    ];
    let expected: String = expected.iter().flat_map(|l| [*l, "\n", *l, "\n"]).collect();
    assert_eq!(run.stdout(), expected, "{run}");
    // Each step's second open and stat are answered here: the file was cached although it has two names.
    let opens = trace_wheres(&trace, "openat", &hosts.path("a/f"));
    let stats = trace_wheres(&trace, "newfstatat", &hosts.path("a/f"));
    assert_eq!(opens.len(), 8, "{opens:?}");
    for (i, pair) in opens.chunks(2).enumerate() {
        assert_eq!(pair[1], "local", "step {i}: the second open went home: {opens:?}");
    }
    assert!(stats.iter().filter(|w| *w == "local").count() >= 4, "{stats:?}");
}

/// Opens the directory `d` read-only and `fstat`s it, twice, after each change the test makes at home, and
/// lists it through the second descriptor.
const DIRECTORY: &str = r#"
import os, time
d = os.path.abspath("d")
def show(step):
    for _ in range(2):
        fd = os.open(d, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)
        names = sorted(os.listdir(fd)) if _ else []
        os.close(fd)
        print(step, oct(st.st_mode & 0o777), st.st_nlink, names)
for step in ["start", "chmod", "created"]:
    if step != "start":
        open("ready", "w").close()
        while not os.path.exists("go"):
            time.sleep(0.01)
        os.remove("go")
    show(step)
"#;

#[test]
fn a_directory_opened_again_needs_no_round_trip_until_home_changes_it() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("d/x", "x");
    hosts.chmod("d", 0o755);
    hosts.write("t.py", DIRECTORY);
    let trace = hosts.user_home().join("trace.jsonl");
    let changes: [&dyn Fn(); 2] = [&|| hosts.chmod("d", 0o750), &|| hosts.mkdir("d/sub")];
    let run = hosts
        .cmd(&["python3", "t.py"])
        .shim_arg("--trace")
        .shim_arg(trace.to_str().expect("UTF-8"))
        .remote_while("", &changes);
    run.assert_success();
    let expected = "start 0o755 2 []\nstart 0o755 2 ['x']\nchmod 0o750 2 []\nchmod 0o750 2 ['x']\n\
                    created 0o750 3 []\ncreated 0o750 3 ['sub', 'x']\n";
    assert_eq!(run.stdout(), expected, "{run}");
    // The first open goes home, the second is answered here; a change of the directory's permissions at
    // home sends the next open home again, a directory made in it does not (who may open it is the same).
    let opens = trace_wheres(&trace, "openat", &hosts.path("d"));
    assert_eq!(opens, ["home", "local", "home", "local", "local", "local"], "{run}");
}

/// sqlite's commit: a file made in `d`, then `d` opened, synced and closed. After the first, each open is
/// answered here and each sync is one round trip; after home replaces `d`, the open goes home again.
const DIRECTORY_SYNC: &str = r#"
import os, time
d = os.path.abspath("d")
def commit(step, n):
    for i in range(n):
        with open(os.path.join(d, "%s-%d" % (step, i)), "w") as f:
            f.write("x")
        fd = os.open(d, os.O_RDONLY | os.O_CLOEXEC)
        os.fsync(fd)
        os.close(fd)
    print(step, sorted(os.listdir(d)))
commit("a", 3)
open("ready", "w").close()
while not os.path.exists("go"):
    time.sleep(0.01)
commit("b", 2)
"#;

#[test]
fn a_directory_synced_after_each_file_made_in_it_is_opened_once() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.mkdir("d");
    hosts.write("t.py", DIRECTORY_SYNC);
    let trace = hosts.user_home().join("trace.jsonl");
    let replace: &dyn Fn() = &|| {
        std::fs::rename(hosts.path("d"), hosts.path("d.old")).expect("the test's own step");
        hosts.mkdir("d");
    };
    let run = hosts
        .cmd(&["python3", "t.py"])
        .shim_arg("--trace")
        .shim_arg(trace.to_str().expect("UTF-8"))
        .remote_while("", &[replace]);
    run.assert_success();
    assert_eq!(run.stdout(), "a ['a-0', 'a-1', 'a-2']\nb ['b-0', 'b-1']\n", "{run}");
    // (The listing at the end of each step opens it too.)
    let opens = trace_wheres(&trace, "openat", &hosts.path("d"));
    assert_eq!(opens, ["home", "local", "local", "local", "home", "local", "local"], "{run}");
    // Each sync of the directory is one round trip, its open's included.
    let lines = trace_lines(&trace);
    let syncs: Vec<(u64, Option<&str>)> = lines
        .iter()
        .filter(|l| l["call"] == "fsync")
        .map(|l| (l["rtt"].as_u64().unwrap_or(0), l["errno"].as_str()))
        .collect();
    assert_eq!(syncs, [(1, None); 5], "{run}");
}

/// readlink of a directory (EINVAL) depends on the entry, not on what the directory holds: files made in
/// it do not send the next readlink home; the directory replaced by a link at home does.
const READLINK: &str = r#"
import os, time
d = os.path.abspath("d")
def show(step):
    try:
        print(step, os.readlink(d))
    except OSError as e:
        print(step, e.strerror)
show("start")
open(os.path.join(d, "new"), "w").close()
show("file made")
open("ready", "w").close()
while not os.path.exists("go"):
    time.sleep(0.01)
show("replaced")
"#;

#[test]
fn readlink_of_a_directory_is_answered_while_files_come_and_go_in_it() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.mkdir("d");
    hosts.mkdir("e");
    hosts.write("t.py", READLINK);
    let trace = hosts.user_home().join("trace.jsonl");
    let replace: &dyn Fn() = &|| {
        std::fs::rename(hosts.path("d"), hosts.path("d.old")).expect("the test's own step");
        hosts.symlink("e", "d");
    };
    let run = hosts
        .cmd(&["python3", "t.py"])
        .shim_arg("--trace")
        .shim_arg(trace.to_str().expect("UTF-8"))
        .remote_while("", &[replace]);
    run.assert_success();
    assert_eq!(run.stdout(), "start Invalid argument\nfile made Invalid argument\nreplaced e\n", "{run}");
    let links = trace_wheres(&trace, "readlink", &hosts.path("d"));
    assert_eq!(links, ["home", "local", "home"], "{run}");
}

/// A directory opened without a round trip (through a symbolic link), then made unreadable by the job
/// itself under its own name, is still listed through that descriptor (it is opened at home before the
/// change); made unreadable at home, the next open is refused as home refuses it. The agent runs as
/// `nobody`, so permissions bind it.
const UNREADABLE: &str = r#"
import os, time
d = os.path.abspath("d")
link = os.path.abspath("l")
os.close(os.open(link, os.O_RDONLY))
fd = os.open(link, os.O_RDONLY)
os.chmod(d, 0)
print(sorted(os.listdir(fd)))
os.chmod(d, 0o755)
os.close(os.open(d, os.O_RDONLY))
os.close(fd)
open("ready", "w").close()
while not os.path.exists("go"):
    time.sleep(0.01)
try:
    os.open(d, os.O_RDONLY)
    print("opened")
except PermissionError as e:
    print(e.strerror)
"#;

#[test]
fn permissions_bind_directories_opened_without_a_round_trip() {
    skip_unless_root!();
    require_tools!("python3");
    skip_unless_unprivileged!("needs setpriv or runuser to drop privileges for EACCES");
    let hosts = Hosts::builder().unprivileged().start();
    hosts.mkdir("w/d");
    hosts.write("w/d/x", "x");
    hosts.symlink("d", "w/l");
    hosts.write("w/t.py", UNREADABLE);
    hosts.chown_to_nobody("w");
    hosts.chown_to_nobody("w/d");
    let run = hosts.cmd(&["python3", "t.py"]).cwd("w").remote_while("w", &[&|| hosts.chmod("w/d", 0o300)]);
    run.assert_success();
    assert_eq!(run.stdout(), "['x']\nPermission denied\n", "{run}");
}

/// Lookups of names relative to the cwd, by the program and by a child, before and after home renames a
/// directory above the cwd and makes a new file where the old path led.
const FROM_THE_CWD: &str = r#"
import os, subprocess, sys, time
os.getcwd()
old = os.path.abspath("a")
def show(step):
    print(step, os.stat("a").st_size, sorted(os.listdir(".")))
    child = "import os; print(os.stat('a').st_size, os.stat('./a').st_size, os.readlink('b'))"
    sys.stdout.flush()
    subprocess.run([sys.executable, "-c", child], check=True)
show("start")
open("../../ready", "w").close()
while not os.path.exists("../../go"):
    time.sleep(0.01)
show("moved")
print(os.stat(old).st_size)
"#;

#[test]
fn lookups_from_the_cwd_are_shared_by_processes_and_follow_the_cwd_when_home_moves_it() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("w/d/a", "old");
    hosts.symlink("a", "w/d/b");
    hosts.write("w/d/t.py", FROM_THE_CWD);
    let trace = hosts.user_home().join("trace.jsonl");
    let moved: &dyn Fn() = &|| {
        std::fs::rename(hosts.path("w"), hosts.path("w2")).expect("the test's own step");
        hosts.write("w/d/a", "new file");
    };
    let run = hosts
        .cmd(&["python3", "t.py"])
        .cwd("w/d")
        .shim_arg("--trace")
        .shim_arg(trace.to_str().expect("UTF-8"))
        .remote_while("", &[moved]);
    run.assert_success();
    let expected = "start 3 ['a', 'b', 't.py']\n3 3 a\nmoved 3 ['a', 'b', 't.py']\n3 3 a\n8\n";
    assert_eq!(run.stdout(), expected, "{run}");
    // The child's lookups of the names the program looked up and listed were answered here, before the move.
    let lines = trace_lines(&trace);
    let relative: Vec<(String, String)> = lines
        .iter()
        .filter(|l| {
            let args = l["args"].as_array();
            args.is_some_and(|a| a.iter().any(|v| matches!(v.as_str(), Some("a" | "./a" | "b"))))
        })
        .map(|l| {
            (l["call"].as_str().unwrap_or_default().into(), l["where"].as_str().unwrap_or_default().into())
        })
        .collect();
    // (The program's own may be too: python lists the script's directory at start. A link's target is not
    // known from the listing: its readlink goes home.)
    let before: Vec<&str> = relative.iter().skip(1).take(3).map(|(_, w)| w.as_str()).collect();
    assert_eq!(before, ["local", "local", "home"], "{relative:?}\n{run}");
}

/// readlink of a file the program created (EINVAL: not a link), while the program writes to it, and after
/// home replaced it by a link.
const CREATED: &str = r#"
import os, time
def show(step):
    try:
        print(step, os.readlink("n"))
    except OSError as e:
        print(step, e.strerror)
with open("n", "w") as f:
    show("created")
    f.write("data")
show("written")
open("ready", "w").close()
while not os.path.exists("go"):
    time.sleep(0.01)
show("replaced")
"#;

#[test]
fn readlink_of_a_created_file_is_answered_until_home_changes_the_name() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("t.py", CREATED);
    let trace = hosts.user_home().join("trace.jsonl");
    let replace: &dyn Fn() = &|| {
        std::fs::remove_file(hosts.path("n")).expect("the test's own step");
        hosts.symlink("t.py", "n");
    };
    let run = hosts
        .cmd(&["python3", "t.py"])
        .shim_arg("--trace")
        .shim_arg(trace.to_str().expect("UTF-8"))
        .remote_while("", &[replace]);
    run.assert_success();
    assert_eq!(run.stdout(), "created Invalid argument\nwritten Invalid argument\nreplaced t.py\n", "{run}");
    let lines = trace_lines(&trace);
    let links: Vec<&str> = lines
        .iter()
        .filter(|l| l["call"] == "readlink" && l["args"][0] == "n")
        .filter_map(|l| l["where"].as_str())
        .collect();
    assert_eq!(links, ["local", "local", "home"], "{run}");
}

/// A file written and synced through a descriptor opened by an absolute name (sqlite's database): the
/// sync leases the name again, so the next `fstat` is answered here with the attributes the writes left;
/// a change at home afterwards is seen by the next `fstat`.
const SYNCED: &str = r#"
import os, time
p = os.path.abspath("db")
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
for step in range(3):
    os.pwrite(fd, b"x" * 4096, step * 4096)
    os.fdatasync(fd)
    st = os.fstat(fd)
    print(step, st.st_size, os.stat(p).st_size)
open("ready", "w").close()
while not os.path.exists("go"):
    time.sleep(0.01)
print("home appended", os.fstat(fd).st_size)
"#;

#[test]
fn fstat_after_a_sync_is_answered_by_the_name_leased_again() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("t.py", SYNCED);
    let trace = hosts.user_home().join("trace.jsonl");
    let append: &dyn Fn() = &|| {
        use std::io::Write;
        let mut f =
            std::fs::OpenOptions::new().append(true).open(hosts.path("db")).expect("the test's own step");
        f.write_all(b"home").expect("the test's own step");
    };
    let run = hosts
        .cmd(&["python3", "t.py"])
        .shim_arg("--trace")
        .shim_arg(trace.to_str().expect("UTF-8"))
        .remote_while("", &[append]);
    run.assert_success();
    assert_eq!(run.stdout(), "0 4096 4096\n1 8192 8192\n2 12288 12288\nhome appended 12292\n", "{run}");
    // Each fstat after a sync is answered here; the one after home's change goes home.
    let lines = trace_lines(&trace);
    let db = trace_opened(&lines, "db", None);
    let fstats: Vec<String> = lines
        .iter()
        .filter(|l| l["call"] == "newfstatat" && l["args"][0].as_i64() == Some(db))
        .map(|l| l["where"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(fstats[fstats.len() - 4..], ["local", "local", "local", "home"], "{fstats:?}\n{run}");
}
