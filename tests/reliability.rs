//! Losing home: when home-agent dies, the job does not hang; remote-shim ends it within seconds with a clear
//! message naming home's address, and exits 125.

use std::process::Command;
use std::time::{Duration, Instant};

use homeward::{skip_unless_root, Hosts};

#[test]
fn a_dead_home_agent_ends_the_job_with_a_clear_message() {
    skip_unless_root!();
    let hosts = Hosts::start();
    let agent = hosts.agent_pid();
    std::thread::scope(|s| {
        let run =
            s.spawn(|| hosts.cmd(&["sh", "-c", "echo started > started; sleep 60; echo never"]).remote());
        let start = Instant::now();
        while !hosts.exists("started") {
            assert!(start.elapsed() < Duration::from_secs(30), "the job never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(Command::new("kill").args(["-KILL", &agent.to_string()]).status().unwrap().success());
        let killed_at = Instant::now();
        let run = run.join().unwrap();
        assert!(killed_at.elapsed() < Duration::from_secs(10), "the job outlived home by too long:\n{run}");
        assert_eq!(run.code(), 125, "{run}");
        assert!(!run.stdout().contains("never"), "{run}");
        let addr = hosts.addr().to_string();
        assert!(
            run.stderr().contains(&addr) && run.stderr().contains("lost"),
            "message should say so:\n{run}"
        );
    });
}
