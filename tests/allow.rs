//! `home-agent --allow DIR`: a job under remote-shim reaches only the allowed directory at home. Reading
//! or writing outside it, directly, by `..` or through a symbolic link, fails with "Permission denied";
//! inside, everything works; a job cannot start outside it.

use homeward::{skip_unless_root, Hosts, Run};

/// The machine's own programs and libraries stay local: only the home directory is home's.
const LOCAL: [&str; 10] =
    ["--local", "/usr", "--local", "/lib", "--local", "/lib64", "--local", "/etc", "--local", "/bin"];

fn remote(hosts: &Hosts, cwd: &str, argv: &[&str]) -> Run {
    let mut cmd = hosts.cmd(argv).cwd(cwd);
    for arg in LOCAL {
        cmd = cmd.shim_arg(arg);
    }
    cmd.remote()
}

#[track_caller]
fn denied(run: &Run) {
    assert!(run.code() == 1 || run.code() == 2, "cat and ls fail with 1 and 2: {run}");
    assert!(run.stderr().contains("Permission denied"), "{run}");
    assert!(!run.stdout().contains("outside"), "{run}");
}

#[test]
fn a_confined_job_reaches_only_the_allowed_directory() {
    skip_unless_root!();
    let hosts = Hosts::builder().allow("allowed").start();
    hosts.write("allowed/inside.txt", "inside\n");
    hosts.write("secret.txt", "outside\n");
    let secret = hosts.path("secret.txt").display().to_string();
    hosts.symlink("../secret.txt", "allowed/link");
    hosts.symlink(&secret, "allowed/abslink");
    hosts.symlink(&hosts.path("allowed/inside.txt").display().to_string(), "allowed/abs-inside");

    let inside = remote(&hosts, "allowed", &["cat", "inside.txt", "abs-inside"]);
    inside.assert_success();
    assert_eq!(inside.stdout(), "inside\ninside\n", "{inside}");

    for path in ["../secret.txt", "link", "abslink", secret.as_str()] {
        denied(&remote(&hosts, "allowed", &["cat", path]));
    }
    // The link itself is inside: reading it is fine.
    let readlink = remote(&hosts, "allowed", &["readlink", "abslink"]);
    readlink.assert_success();
    assert_eq!(readlink.stdout().trim_end(), secret, "{readlink}");

    denied(&remote(&hosts, "allowed", &["ls", ".."]));
    denied(&remote(&hosts, "allowed", &["sh", "-c", "echo new > ../new.txt"]));
    assert!(!hosts.exists("new.txt"));
    let made = remote(&hosts, "allowed", &["sh", "-c", "mkdir d && echo new > d/f && mv d/f g && cat g"]);
    made.assert_success();
    assert_eq!(made.stdout(), "new\n", "{made}");
    assert_eq!(hosts.read("allowed/g"), b"new\n");
    assert_eq!(hosts.read("secret.txt"), b"outside\n");

    // Starting outside: refused before the program runs, with the reason.
    let outside = remote(&hosts, "", &["cat", "secret.txt"]);
    assert_ne!(outside.code(), 0, "{outside}");
    assert!(outside.stderr().contains("--allow"), "{outside}");
    assert!(!outside.stdout().contains("outside"), "{outside}");
}

#[test]
fn a_missing_allowed_directory_stops_the_agent_with_a_clear_message() {
    let mut cmd = std::process::Command::new(homeward::agent_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--allow", "/no/such/homeward/dir"]);
    let run = homeward::run_with(cmd, None, std::time::Duration::from_secs(20));
    assert_eq!(run.code(), 2, "{run}");
    assert!(run.stderr().contains("--allow /no/such/homeward/dir"), "{run}");
    assert!(run.stderr().contains("No such file or directory"), "{run}");
}
