//! The `home-agent` binary's command line contract.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_home-agent");

#[test]
fn refuses_a_public_address_without_a_token() {
    let out =
        Command::new(BIN).args(["--listen", "0.0.0.0:0"]).env_remove("HOMEWARD_TOKEN").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0 without a token"), "{stderr}");
}

#[test]
fn an_empty_token_file_is_an_error() {
    let file = std::env::temp_dir().join(format!("home-agent-empty-token-{}", std::process::id()));
    std::fs::write(&file, "\n").unwrap();
    let out =
        Command::new(BIN).arg("--listen").arg("127.0.0.1:0").arg("--token-file").arg(&file).output().unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));
}

#[test]
fn prints_the_real_port_once_listening() {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("HOMEWARD_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap();
    assert!(line.contains("listening on 127.0.0.1:"), "{line}");
    assert_ne!(addr.parse::<std::net::SocketAddr>().unwrap().port(), 0);
    assert_eq!(stderr.matches("no token").count(), 1, "{stderr}");
}
