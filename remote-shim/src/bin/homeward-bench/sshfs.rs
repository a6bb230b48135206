//! The comparison: the data set mounted through sshfs (an `sshd` of our own on a loopback port, with a
//! throw-away key), optionally through the delay proxy. Needs `openssh-server` and `sshfs`
//! (`bench/run.sh` installs them) and root (for the FUSE mount).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private sshd serving this machine on a loopback port.
pub struct Sshd {
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Child,
}

impl Sshd {
    /// Starts one in `dir`, or says why it cannot.
    pub fn start(dir: &Path) -> Result<Sshd, String> {
        for tool in ["/usr/sbin/sshd", "/usr/bin/ssh-keygen", "/usr/bin/sshfs"] {
            if !Path::new(tool).exists() {
                return Err(format!("{tool} is missing (apt-get install openssh-server sshfs)"));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        for key in ["host_key", "user_key"] {
            let _ = std::fs::remove_file(dir.join(key));
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .status()
                .map_err(|e| e.to_string())?;
            if !ok.success() {
                return Err("ssh-keygen failed".into());
            }
        }
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).map_err(|e| e.to_string())?;
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin yes\nPasswordAuthentication no\nUsePAM no\nStrictModes no\nPidFile {d}/sshd.pid\n\
             Subsystem sftp internal-sftp\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).map_err(|e| e.to_string())?;
        std::fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting sshd: {e}"))?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err("sshd did not start listening".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Sshd { addr, dir: dir.to_path_buf(), child })
    }

    /// Mounts `remote_dir` of this machine at `mountpoint` through `via` (this sshd, or a proxy to it).
    pub fn mount(&self, via: SocketAddr, remote_dir: &Path, mountpoint: &Path) -> Result<Mount, String> {
        std::fs::create_dir_all(mountpoint).map_err(|e| e.to_string())?;
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let ok = Command::new("sshfs")
            .arg(format!("{user}@{}:{}", via.ip(), remote_dir.display()))
            .arg(mountpoint)
            .args(["-p", &via.port().to_string()])
            .args(["-o", &format!("IdentityFile={}/user_key", self.dir.display())])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
            ])
            .status()
            .map_err(|e| format!("running sshfs: {e}"))?;
        if !ok.success() {
            return Err(format!("sshfs could not mount {}", remote_dir.display()));
        }
        Ok(Mount { at: mountpoint.to_path_buf() })
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An sshfs mount, unmounted when dropped.
pub struct Mount {
    pub at: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount").arg("-u").arg(&self.at).status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(2222)
}
