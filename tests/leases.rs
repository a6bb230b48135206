//! Leases granted after the job's own change (remote-shim's attribute cache): a name the job removed is
//! missing, a file it created is found, and `fstat` of a file opened by an absolute name is answered by a
//! leased lookup of that name while it finds that very file. Each answer is checked with home changed
//! behind the program's back (permissions, content, a new file under the name, a removal), and the round
//! trips saved are counted on sqlite's pattern (create, fstat, unlink and look up a journal, every
//! transaction).

use homeward::{require_tools, skip_unless_root, Hosts};
use std::path::Path;
use std::time::{Duration, Instant};

/// Waits (≤ 20 s) until `rel` exists at home, written there by the remote program.
fn wait_for(hosts: &Hosts, rel: &str) {
    let start = Instant::now();
    while !hosts.exists(rel) {
        assert!(start.elapsed() < Duration::from_secs(20), "the program never wrote {rel}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Creates `db` and a journal it then removes, and shows, after each change the test makes at home, what
/// `fstat` of the open descriptor, `stat` of the name and `stat` of the journal say (twice: the second
/// answers may come from the cache).
const CHANGES: &str = r#"
import errno, os, time
p = os.path.abspath("db")
j = p + "-journal"
def wait(name):
    while not os.path.exists(name):
        time.sleep(0.01)
    os.remove(name)
def named(path, ino=None):
    try:
        st = os.stat(path)
        return (st.st_ino == ino, oct(st.st_mode & 0o777), st.st_size)
    except OSError as e:
        return errno.errorcode[e.errno]
def show(step):
    for _ in range(2):
        st = os.fstat(fd)
        print(step, st.st_ino == ino, st.st_size, oct(st.st_mode & 0o777), named(p, ino), named(j))
fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
ino = os.stat(p).st_ino
os.write(fd, b"abc")
jfd = os.open(j, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
os.fstat(jfd)
os.close(jfd)
os.unlink(j)
show("start")
for step in ["chmod", "append", "journal", "replaced", "removed"]:
    open("ready", "w").close()
    wait("go")
    show(step)
"#;

#[test]
fn answers_leased_after_the_jobs_changes_follow_changes_at_home() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("changes.py", CHANGES);
    let db = hosts.path("db");
    let changes: [&dyn Fn(); 5] = [
        &|| hosts.chmod("db", 0o600),
        &|| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&db).expect("open for appending");
            f.write_all(b"xyz").expect("append");
        },
        &|| hosts.write("db-journal", "j"),
        &|| {
            hosts.write("db.new", "new!");
            std::fs::rename(hosts.path("db.new"), &db).expect("rename over");
        },
        &|| std::fs::remove_file(&db).expect("remove"),
    ];
    let remote = std::thread::scope(|s| {
        let run = s.spawn(|| hosts.cmd(&["python3", "changes.py"]).remote());
        for change in changes {
            wait_for(&hosts, "ready");
            std::fs::remove_file(hosts.path("ready")).expect("remove ready");
            change();
            hosts.write("go", "");
        }
        run.join().expect("the remote run")
    });
    remote.assert_success();
    let expected = [
        "start True 3 0o644 (True, '0o644', 3) ENOENT",
        "chmod True 3 0o600 (True, '0o600', 3) ENOENT",
        "append True 6 0o600 (True, '0o600', 6) ENOENT",
        "journal True 6 0o600 (True, '0o600', 6) (False, '0o644', 1)",
        "replaced True 6 0o600 (False, '0o644', 4) (False, '0o644', 1)",
        "removed True 6 0o600 ENOENT (False, '0o644', 1)",
    ];
    let expected: String = expected.iter().flat_map(|l| [*l, "\n", *l, "\n"]).collect();
    assert_eq!(remote.stdout(), expected, "{remote}");
}

/// sqlite's pattern at every transaction, `argv[1]` times: a write to the database, `fstat` and `stat` of
/// it, a journal created, `fstat`ed, closed and removed, then looked up.
const TRANSACTIONS: &str = r#"
import errno, os, sys
p = os.path.abspath("db")
j = p + "-journal"
fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
for i in range(int(sys.argv[1])):
    try:
        os.stat(j)
    except FileNotFoundError:
        pass
    assert os.fstat(fd).st_size == os.stat(p).st_size == i
    jfd = os.open(j, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    assert os.fstat(jfd).st_size == 0
    os.write(jfd, b"journal")
    os.close(jfd)
    os.pwrite(fd, b"x", i)
    os.unlink(j)
print("ok")
"#;

/// The `newfstatat` lines of a `--trace` file: (those naming `path`, those of them that went home).
fn stats_of(trace: &Path, path: &str) -> (usize, usize) {
    let text = std::fs::read_to_string(trace).expect("the trace");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"call\":\"newfstatat\"") && l.contains(&format!("\"{path}\"")))
        .collect();
    (lines.len(), lines.iter().filter(|l| l.contains("\"where\":\"home\"")).count())
}

#[test]
fn sqlites_lookups_of_its_files_are_answered_here() {
    skip_unless_root!();
    require_tools!("python3");
    let hosts = Hosts::start();
    hosts.write("tx.py", TRANSACTIONS);
    let trace = hosts.user_home().join("trace.jsonl");
    let run = hosts
        .cmd(&["python3", "tx.py", "20"])
        .shim_arg("--trace")
        .shim_arg(trace.to_str().expect("UTF-8"))
        .remote();
    run.assert_success();
    assert_eq!(run.stdout(), "ok\n", "{run}");
    assert_eq!(std::fs::read(hosts.path("db")).expect("db"), vec![b'x'; 20]);
    assert!(!hosts.exists("db-journal"));
    let db = hosts.path("db");
    let journal = hosts.path("db-journal");
    // The journal's absence is leased by each unlink: only the first lookup goes home.
    let (all, home) = stats_of(&trace, journal.to_str().expect("UTF-8"));
    assert_eq!((all, home), (20, 1), "stat of the journal: (calls, round trips)");
    // The database changes at every transaction (its own write): the fstat after it asks home for the
    // name, and the stat that follows is answered here.
    let (all, home) = stats_of(&trace, db.to_str().expect("UTF-8"));
    assert_eq!(all, 20);
    assert!(home <= 1, "{home} stats of the database went home");
    // fstat of each new journal is answered from its open: the next `newfstatat` of the descriptor
    // number each journal open returned.
    let text = std::fs::read_to_string(&trace).expect("the trace");
    // In the order of the calls (a line is written when its call is answered, and an open is answered
    // before its line is written).
    let seq = |l: &str| -> u64 {
        l.split("\"seq\":").nth(1).and_then(|r| r.split(',').next()?.parse().ok()).unwrap_or(0)
    };
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_by_key(|l| seq(l));
    let opened = format!("\"args\":[\"AT_FDCWD\",\"{}\"", journal.display());
    let mut checked = 0;
    for (i, open) in
        lines.iter().enumerate().filter(|(_, l)| l.contains("\"call\":\"openat\"") && l.contains(&opened))
    {
        let fd = open.split("\"result\":").nth(1).and_then(|r| r.split(',').next()).expect("a result");
        let fstat = lines[i..]
            .iter()
            .find(|l| l.contains("\"call\":\"newfstatat\"") && l.contains(&format!("\"args\":[{fd},\"\",")))
            .unwrap_or_else(|| panic!("no fstat of {fd} after {open}:\n{}", lines[i..].join("\n")));
        assert!(fstat.contains("\"where\":\"local\""), "went home: {fstat}");
        checked += 1;
    }
    assert_eq!(checked, 20);
}
