//! Deputies started ahead of the job's forks, so a fork waits for no round trip.
//!
//! In the job's pid namespace every new process takes its deputy's pid (decision 14 of
//! `docs/ARCHITECTURE.md`), so the deputy must exist before the clone goes on: that was a round trip to
//! home per fork, on top of home starting the deputy (`make` forks a compiler, which forks `cc1` and
//! `as`: each waited). Instead the shim keeps a few *spare* deputies: it reserves a proc id and asks home
//! for a deputy for it (`Identity.spare`), in the background. A fork takes a spare, and its child's first
//! call, `Identity` as the parent's child, goes home *behind* (ordered, not waited for): home adopts the
//! spare and copies the parent's state (cwd, umask) before it reads anything the job sends after the fork,
//! as the synchronous path did while the parent waited in it. Taking a spare asks for another. The first
//! fork of a job asks for the first ones (and waits for its own deputy): a job that never forks costs home
//! no spare, and many jobs starting at once do not queue their first deputies behind spares.
//!
//! A signal sent at home to a spare before a fork adopts it (someone at home who saw it in `ps`) is kept
//! and delivered to the process once it exists, as it would have been had the process existed then.

use crate::supervisor::Supervisor;
use homeward_proto::pb::{self, call_request::Op};
use std::sync::{Arc, Mutex, MutexGuard};

/// Spare deputies kept ready (each is one small process at home).
const KEEP: usize = 2;

#[derive(Default)]
pub struct Spares(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    /// Ready: (proc id, home pid, signals sent to it at home meanwhile).
    ready: Vec<(u64, i32, Vec<i32>)>,
    /// Asked of home, not answered yet.
    asked: usize,
    /// Home refused one (no deputies there, or too many): no more are asked for.
    refused: bool,
}

/// A spare taken for a fork.
pub struct Spare {
    pub id: u64,
    pub pid: i32,
    /// Signals sent to it at home before the fork: deliver them to the process once it exists.
    pub signals: Vec<i32>,
}

impl Spares {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A spare for a fork, if one is ready; another is asked for (the first ones at the job's first fork).
    pub fn take(&self, sup: &Arc<Supervisor>) -> Option<Spare> {
        let taken = self.lock().ready.pop().map(|(id, pid, signals)| Spare { id, pid, signals });
        self.refill(sup);
        taken
    }

    /// Asks home for spares until [`KEEP`] are ready or asked for.
    pub fn refill(&self, sup: &Arc<Supervisor>) {
        let wanted = {
            let mut inner = self.lock();
            if inner.refused {
                return;
            }
            let wanted = KEEP.saturating_sub(inner.ready.len() + inner.asked);
            inner.asked += wanted;
            wanted
        };
        for _ in 0..wanted {
            let sup = sup.clone();
            tokio::spawn(async move {
                let id = sup.procs.reserve();
                let op = Op::Identity(pb::Identity { spare: true });
                let reply = sup.link.call(pb::Proc { id, parent: 0 }, op).await;
                let pid = reply.map(|r| crate::syscalls::outcome(&r));
                let mut inner = sup.spares.lock();
                inner.asked -= 1;
                match pid {
                    Ok(Ok(pid)) if pid > 0 && pid <= i64::from(i32::MAX) => {
                        inner.ready.push((id, pid as i32, Vec::new()))
                    }
                    // Home is short of processes for now: the next fork asks again.
                    Ok(Err(e)) if e.raw() == libc::EAGAIN => {}
                    _ => {
                        tracing::debug!("home starts no spare deputies: forks wait for theirs");
                        inner.refused = true;
                    }
                }
            });
        }
    }

    /// A signal sent at home to the deputy of proc `id`: kept if `id` is a spare not yet taken (false
    /// otherwise).
    pub fn signalled(&self, id: u64, signal: i32) -> bool {
        let mut inner = self.lock();
        match inner.ready.iter_mut().find(|(spare, _, _)| *spare == id) {
            Some((_, _, signals)) => {
                signals.push(signal);
                true
            }
            None => false,
        }
    }
}
