//! Executors against a temporary directory at home.

mod allow;
mod fds;
mod hostile;
mod paths;

use super::*;
use crate::sys;
use homeward_proto::flags::open_to_wire;
use homeward_proto::pb::{self, Proc};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

pub(super) struct Home {
    pub(super) root: PathBuf,
    pub(super) session: Arc<Session>,
}

impl Home {
    pub(super) fn new() -> Home {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("home-agent-exec-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let root = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&root).unwrap();
        let path = CString::new(root.as_os_str().as_bytes()).unwrap();
        let cwd = sys::open(&path, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC).unwrap();
        Home { root, session: Arc::new(Session::new(1, cwd, 0o022)) }
    }

    /// A home confined (`--allow`) to its root and to `more`.
    pub(super) fn confined(more: &[&std::path::Path]) -> Home {
        let mut home = Home::new();
        let path = CString::new(home.root.as_os_str().as_bytes()).unwrap();
        let cwd = sys::open(&path, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC).unwrap();
        let mut allowed = vec![home.root.clone()];
        allowed.extend(more.iter().map(|p| p.to_path_buf()));
        let allow = crate::confine::Allow::new(&allowed).unwrap();
        home.session = Arc::new(Session::new(1, cwd, 0o022).with_allow(allow));
        home
    }

    pub(super) fn reply_as(&self, proc: u64, op: Op) -> CallReply {
        let reply = execute(
            &self.session,
            &CallRequest {
                seq: 7,
                proc: Some(Proc { id: proc, parent: 0 }),
                op: Some(op),
                ..Default::default()
            },
        );
        assert_eq!(reply.seq, 7);
        reply
    }

    pub(super) fn reply(&self, op: Op) -> CallReply {
        self.reply_as(1, op)
    }

    pub(super) fn call(&self, op: Op) -> Result<i64, Errno> {
        self.reply(op).outcome.unwrap().to_result()
    }

    pub(super) fn open(&self, path: &str, flags: i32, mode: u32) -> Result<u64, Errno> {
        self.call(open(path, flags, mode)).map(|h| h as u64)
    }

    pub(super) fn mode_of(&self, path: &str) -> u32 {
        std::fs::metadata(self.root.join(path)).unwrap().permissions().mode() & 0o7777
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub(super) fn cwd() -> Option<Dir> {
    Some(Dir { handle: 0 })
}

pub(super) fn open(path: &str, flags: i32, mode: u32) -> Op {
    Op::Open(pb::Open {
        dir: cwd(),
        path: path.to_string().into(),
        flags: open_to_wire(flags),
        mode,
        resolve: 0,
        content_max: 0,
        lease: false,
    })
}

pub(super) fn stat(path: &str) -> Op {
    Op::Stat(pb::Stat { dir: cwd(), path: path.to_string().into(), at_flags: 0, mask: 0, lease: false })
}

pub(super) fn mkdir(path: &str) -> Op {
    Op::Mkdir(pb::Mkdir { dir: cwd(), path: path.to_string().into(), mode: 0o777 })
}

pub(super) fn thread_umask() -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    status.lines().find(|l| l.starts_with("Umask:")).unwrap().to_string()
}
