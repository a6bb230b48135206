//! git in a home repository: init, add, commit with a fixed author and date, status, mv, gc, and the
//! commit hashes must equal those of the same commands run natively; the repository at home is then
//! checked from outside with git itself.

use homeward::{require_tools, skip_unless_root, Compare, Hosts, Times};

#[test]
fn init_add_commit_status_log_match_native() {
    skip_unless_root!();
    require_tools!("git");
    let hosts = Hosts::start();
    hosts.write("repo/README", "homeward test repository\n");
    hosts.write("repo/src/main.c", "int main(void) { return 0; }\n");
    hosts.write("repo/src/lib.c", "int lib(int x) { return x + 1; }\n");
    hosts.write("repo/docs/notes.md", "# Notes\n\nnothing yet\n");
    hosts.write_mode("repo/run.sh", "#!/bin/sh\nexec ./main\n", 0o755);
    let native = hosts.native_copy();
    let git = |args: &[&str]| {
        let argv: Vec<&str> = ["git"].iter().chain(args).copied().collect();
        hosts.cmd(&argv).cwd("repo").check_with(&native, &Compare::new().stderr())
    };

    git(&["-c", "init.defaultBranch=main", "init", "-q"]);
    git(&["status", "--porcelain"]);
    git(&["add", "-A"]);
    git(&["status", "--porcelain"]);
    git(&["commit", "-q", "-m", "first commit"]);

    // Change the work tree through the shim too: append, delete, create.
    hosts
        .cmd(&[
            "sh",
            "-c",
            "printf 'more\\n' >> README && rm docs/notes.md && mkdir new && echo n > new/file",
        ])
        .cwd("repo")
        .check(&native);
    let status = git(&["status", "--porcelain"]);
    assert!(!status.native.stdout.is_empty(), "the native status should list changes: {}", status.native);
    git(&["diff", "--stat"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "second commit"]);
    git(&["mv", "src/lib.c", "src/library.c"]);
    git(&["commit", "-q", "-m", "rename lib"]);
    git(&["status", "--porcelain"]);
    let log = git(&["log", "--format=%H"]);
    assert_eq!(log.native.stdout().lines().count(), 3, "three commits expected natively: {}", log.native);
    git(&["log", "--stat", "--format=%H %an %ad %s"]);
    git(&["ls-files", "-s"]);
    git(&["cat-file", "-p", "HEAD^{tree}"]);
    git(&["gc", "--quiet"]);
    git(&["log", "--format=%H %T"]);
    git(&["fsck", "--full", "--strict", "--no-progress"]);

    // From outside: home's repository has the same history and is intact.
    let outside = |args: &[&str]| {
        let argv: Vec<&str> = ["git", "--no-optional-locks"].iter().chain(args).copied().collect();
        hosts.cmd(&argv).cwd("repo").outside().assert_success().stdout()
    };
    assert_eq!(outside(&["log", "--format=%H"]), log.native.stdout());
    outside(&["fsck", "--full", "--strict", "--no-progress"]);
    assert_eq!(outside(&["status", "--porcelain"]), "");
    // The work tree is the native one; .git differs in stat caches and pack layout, which is fine.
    hosts.assert_home_matches_excluding(&native, Times::Ignore, &["repo/.git"]);
}
