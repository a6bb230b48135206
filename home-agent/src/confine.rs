//! Confinement (`home-agent --allow PREFIX`): every path a session names resolves beneath one of the
//! allowed directories, whatever `..`, symbolic links, magic links (`/proc/self/fd/N`, `/proc/PID/root`)
//! or concurrent renames do. A path that would leave them fails with `EACCES`.
//!
//! Each prefix is opened once, at start-up, as an `O_PATH | O_DIRECTORY` descriptor (its *root*). An
//! absolute path must begin with a prefix literally (after dropping empty and `.` components); the rest
//! is resolved beneath that root's descriptor. A relative path is resolved beneath its start directory
//! (the process's cwd or a directory handle, both already confined). Resolution is one
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` when it can be; when the kernel refuses (a `..` above
//! the start, an absolute symbolic link, a magic link) the path is walked one component at a time: each
//! component opened with `openat2(O_PATH | O_NOFOLLOW, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` from the
//! directory before it, a symbolic link's text read and resolved again (an absolute target by the same
//! prefix rule, so a magic link is only its text), `..` refused at a root. Every step holds a descriptor,
//! so renaming a directory during the walk cannot move it outside: the job itself can only rename beneath
//! the roots.
//!
//! A call that acts on a directory entry without following it gets (the entry's parent, the last
//! component), which the kernel does not follow; a call that follows a final symbolic link gets the file
//! resolved here, named by `/proc/self/fd/N` (the agent's own descriptor).

use crate::sys;
use homeward_proto::Errno;
use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a path outside every allowed prefix gets: the kernel's answer to a directory one may not search,
/// which programs report plainly ("Permission denied"), rather than openat2's `EXDEV`.
pub const OUTSIDE: Errno = Errno(libc::EACCES as u16);

/// The kernel's limit on symbolic links followed in one lookup.
const MAX_LINKS: u32 = 40;
/// How often a resolution the kernel asked to retry (`EAGAIN`: a rename or mount raced it) is retried
/// before the component walk takes over.
const RETRIES: usize = 3;

const DIR_FLAGS: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
/// The flags an `O_PATH` open keeps (open(2) drops the others, openat2(2) refuses them).
const O_PATH_FLAGS: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
const BENEATH: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;

/// Why the allowed directories cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AllowError {
    #[error("--allow {0}: not an absolute path")]
    Relative(PathBuf),
    #[error("--allow {0}: the path contains a NUL byte")]
    Nul(PathBuf),
    #[error("--allow {path}: cannot open it as a directory: {cause} (create it, or allow another)")]
    Open { path: PathBuf, cause: std::io::Error },
}

/// One allowed directory.
struct Root {
    fd: Arc<OwnedFd>,
    /// The spellings that name it: as given and canonical, as components.
    names: Vec<Vec<Vec<u8>>>,
    /// Its identity, to stop `..` there.
    id: (u64, u64),
    /// It is beneath another allowed directory: `..` from it may go on.
    nested: bool,
}

/// The allowed directories of a confined agent.
pub struct Allow {
    roots: Vec<Root>,
}

/// What a path call needs from its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// The entry itself, never followed (mkdir, unlink, rename, link's new name, symlink, mknod): the
    /// parent directory and the last component.
    Entry,
    /// An existing file, looked up with or without following a final symbolic link.
    Lookup { follow: bool },
}

/// A resolved target: a directory descriptor and a path relative to it that the kernel resolves without
/// leaving the roots (a single component, `.`, or `/proc/self/fd/N` for the descriptor itself).
pub struct Target {
    pub dir: Arc<OwnedFd>,
    pub path: CString,
}

fn identity(fd: BorrowedFd<'_>) -> Result<(u64, u64), Errno> {
    let sx = sys::statx(fd, c"", libc::AT_EMPTY_PATH, libc::STATX_INO)?;
    Ok((libc::makedev(sx.stx_dev_major, sx.stx_dev_minor), sx.stx_ino))
}

/// The components of a path, without empty ones and `.`.
fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".")
}

/// `path` split before its last component: (the directory part, the last component with any trailing
/// slashes). The last component is empty for a path of slashes only (or an empty one).
fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    let Some(end) = path.iter().rposition(|&b| b != b'/').map(|i| i + 1) else {
        return (path, b"");
    };
    let start = path[..end].iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    (&path[..start], &path[start..])
}

fn cstring(bytes: &[u8]) -> Result<CString, Errno> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// `/proc/self/fd/N`: the agent's own magic link to `fd`.
fn fd_path(fd: &OwnedFd) -> Result<CString, Errno> {
    cstring(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())
}

impl Allow {
    /// Opens every prefix (none: the agent is not confined).
    pub fn new(prefixes: &[PathBuf]) -> Result<Option<Arc<Allow>>, AllowError> {
        let mut roots: Vec<(Root, PathBuf)> = Vec::new();
        for prefix in prefixes {
            if !prefix.is_absolute() {
                return Err(AllowError::Relative(prefix.clone()));
            }
            let path =
                CString::new(prefix.as_os_str().as_bytes()).map_err(|_| AllowError::Nul(prefix.clone()))?;
            let opened = sys::open(&path, DIR_FLAGS).and_then(|fd| Ok((identity(fd.as_fd())?, fd)));
            let (id, fd) = opened.map_err(|e| AllowError::Open {
                path: prefix.clone(),
                cause: std::io::Error::from_raw_os_error(e.raw()),
            })?;
            let canonical = std::fs::canonicalize(prefix)
                .map_err(|cause| AllowError::Open { path: prefix.clone(), cause })?;
            let spell =
                |p: &Path| components(p.as_os_str().as_bytes()).map(<[u8]>::to_vec).collect::<Vec<_>>();
            let mut names = vec![spell(&canonical)];
            if spell(prefix) != names[0] {
                names.push(spell(prefix));
            }
            roots.push((Root { fd: Arc::new(fd), names, id, nested: false }, canonical));
        }
        if roots.is_empty() {
            return Ok(None);
        }
        let canonicals: Vec<PathBuf> = roots.iter().map(|(_, c)| c.clone()).collect();
        let roots = roots
            .into_iter()
            .map(|(mut root, canonical)| {
                root.nested =
                    canonicals.iter().any(|other| *other != canonical && canonical.starts_with(other));
                root
            })
            .collect();
        Ok(Some(Arc::new(Allow { roots })))
    }

    /// The root an absolute path begins with, and the rest of the path (relative; keeps a trailing
    /// slash); `EACCES` for a path under no prefix.
    fn split_absolute(&self, path: &[u8]) -> Result<(&Arc<OwnedFd>, Vec<u8>), Errno> {
        let parts: Vec<&[u8]> = components(path).collect();
        let begins = |name: &Vec<Vec<u8>>| {
            parts.len() >= name.len() && parts.iter().zip(name).all(|(a, b)| *a == b.as_slice())
        };
        let (root, len) = self
            .roots
            .iter()
            .filter_map(|root| Some((root, root.names.iter().filter(|n| begins(n)).map(Vec::len).max()?)))
            .max_by_key(|(_, len)| *len)
            .ok_or(OUTSIDE)?;
        let mut rest = parts[len..].join(&b'/');
        if rest.is_empty() {
            rest.push(b'.');
        }
        if path.ends_with(b"/") {
            rest.push(b'/');
        }
        Ok((&root.fd, rest))
    }

    /// The root `fd` is, if it is one.
    fn root_at(&self, fd: BorrowedFd<'_>) -> Result<Option<&Root>, Errno> {
        let id = identity(fd)?;
        Ok(self.roots.iter().find(|r| r.id == id))
    }

    /// Whether `..` from directory `fd` stays beneath the roots: `fd` is a root beneath another one, or no
    /// root and its current path is beneath one (someone at home may have moved it out). For the lease
    /// walk too.
    pub fn may_climb(&self, fd: BorrowedFd<'_>) -> bool {
        match self.root_at(fd) {
            Ok(Some(root)) => return root.nested,
            Ok(None) => {}
            Err(_) => return false,
        }
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        std::fs::read_link(link).is_ok_and(|p| self.split_absolute(p.as_os_str().as_bytes()).is_ok())
    }

    /// An absolute path's root and rest (for the lease walk); `None` outside every prefix.
    pub fn map_absolute(&self, path: &[u8]) -> Option<(BorrowedFd<'_>, Vec<u8>)> {
        self.split_absolute(path).ok().map(|(fd, rest)| (fd.as_fd(), rest))
    }

    /// The directory `start` and `path` name, confined (the session's start directory at `Hello`).
    pub fn open_dir(&self, start: BorrowedFd<'_>, path: &[u8]) -> Result<OwnedFd, Errno> {
        let mut links = 0;
        let fd = self.resolve(start, path, true, &mut links)?;
        sys::openat(fd.as_fd(), c".", DIR_FLAGS, 0)
    }

    /// The target of a path call on (`start`, `path`), `path` not empty.
    pub fn at(&self, start: &Arc<OwnedFd>, path: &[u8], how: How) -> Result<Target, Errno> {
        let (dir, last) = split_last(path);
        let plain = !last.is_empty() && !last.contains(&b'/') && last != b"." && last != b"..";
        let entry = match how {
            // These calls never follow their last component, even `..` or one with a trailing slash: they
            // refuse it, or answer from the type of what it names in the parent.
            How::Entry => !last.is_empty(),
            How::Lookup { follow } => !follow && plain,
        };
        let mut links = 0;
        if entry {
            let parent = if dir.is_empty() {
                start.clone()
            } else {
                Arc::new(self.parent(start.as_fd(), dir, &mut links)?)
            };
            return Ok(Target { dir: parent, path: cstring(last)? });
        }
        let follow = matches!(how, How::Lookup { follow: true });
        let fd = self.resolve(start.as_fd(), path, follow, &mut links)?;
        // A directory named with `.`, `..` or a trailing slash: `.` in it is the same, for every call.
        let path = if plain { fd_path(&fd)? } else { c".".to_owned() };
        Ok(Target { dir: Arc::new(fd), path })
    }

    /// `openat2` of `path` from `start`, confined; `resolve` is the program's own `RESOLVE_*` flags.
    pub fn open(
        &self,
        start: &Arc<OwnedFd>,
        path: &[u8],
        flags: libc::c_int,
        mode: u32,
        resolve: u64,
    ) -> Result<OwnedFd, Errno> {
        if resolve != 0 {
            // The program's own resolution rules, in one call, beneath where it starts.
            let own = resolve & (libc::RESOLVE_BENEATH | libc::RESOLVE_IN_ROOT) != 0;
            let confine =
                if resolve & libc::RESOLVE_IN_ROOT != 0 { libc::RESOLVE_NO_MAGICLINKS } else { BENEATH };
            let (dir, rest) = if path.first() == Some(&b'/') && resolve & libc::RESOLVE_IN_ROOT == 0 {
                let (root, rest) = self.split_absolute(path)?;
                (root.clone(), rest)
            } else {
                (start.clone(), path.to_vec())
            };
            let r = sys::openat2(dir.as_fd(), &cstring(&rest)?, flags, mode, resolve | confine);
            return match r {
                Err(Errno::EXDEV) if !own => Err(OUTSIDE),
                r => r,
            };
        }
        // What open(2) and openat(2) do with their arguments, where openat2(2) would refuse them.
        let flags = if flags & libc::O_PATH != 0 { flags & O_PATH_FLAGS } else { flags };
        let creates = flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE;
        let mode = if creates { mode & 0o7777 } else { 0 };
        let mut links = 0;
        let target = self.at(start, path, How::Entry)?;
        self.open_entry(target, flags, mode, &mut links)
    }

    /// Opens the last component `target.path` in `target.dir`; a symbolic link the kernel would not
    /// follow beneath the directory is followed here.
    fn open_entry(
        &self,
        target: Target,
        flags: libc::c_int,
        mode: u32,
        links: &mut u32,
    ) -> Result<OwnedFd, Errno> {
        let mut tries = 0;
        loop {
            match sys::openat2(target.dir.as_fd(), &target.path, flags, mode, BENEATH) {
                Err(Errno::EAGAIN) if tries < RETRIES => tries += 1,
                Err(Errno::EXDEV) | Err(Errno::EAGAIN) => break,
                Err(e) if e.raw() == libc::ELOOP && flags & libc::O_NOFOLLOW == 0 => break,
                r => return r,
            }
        }
        let (_, last) = split_last(target.path.as_bytes());
        let trailing = last.ends_with(b"/");
        let name = &last[..last.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1)];
        if name == b".." || name == b"." {
            let dir = self.resolve(target.dir.as_fd(), name, true, links)?;
            return sys::openat2(dir.as_fd(), c".", flags, mode, BENEATH);
        }
        let cname = cstring(name)?;
        let sx = sys::statx(target.dir.as_fd(), &cname, libc::AT_SYMLINK_NOFOLLOW, libc::STATX_TYPE)?;
        if u32::from(sx.stx_mode) & libc::S_IFMT != libc::S_IFLNK {
            // A magic link, or something the kernel refused beneath a directory of ours.
            return Err(OUTSIDE);
        }
        *links += 1;
        if *links > MAX_LINKS {
            return Err(Errno(libc::ELOOP as u16));
        }
        let mut text = sys::readlinkat(target.dir.as_fd(), &cname, libc::PATH_MAX as usize)?;
        if text.is_empty() {
            return Err(Errno::ENOENT);
        }
        if trailing {
            text.push(b'/');
        }
        let (dir, last) = split_last(&text);
        let next = match (dir.is_empty(), last.is_empty()) {
            (true, false) => Target { dir: target.dir.clone(), path: cstring(last)? },
            (_, false) => {
                Target { dir: Arc::new(self.parent(target.dir.as_fd(), dir, links)?), path: cstring(last)? }
            }
            // A link to `/`: allowed only if `/` is.
            (_, true) => Target {
                dir: Arc::new(self.resolve(target.dir.as_fd(), &text, true, links)?),
                path: c".".to_owned(),
            },
        };
        self.open_entry(next, flags, mode, links)
    }

    /// The directory `dir` (a path's part before its last component) names from `start`.
    fn parent(&self, start: BorrowedFd<'_>, dir: &[u8], links: &mut u32) -> Result<OwnedFd, Errno> {
        directory(self.resolve(start, dir, true, links)?)
    }

    /// An `O_PATH` descriptor for the whole of `path` from `start` (a final symbolic link followed when
    /// `follow` or the path ends with a slash).
    fn resolve(
        &self,
        start: BorrowedFd<'_>,
        path: &[u8],
        follow: bool,
        links: &mut u32,
    ) -> Result<OwnedFd, Errno> {
        let trailing = path.ends_with(b"/");
        let follow = follow || trailing;
        let (base, rest) = if path.first() == Some(&b'/') {
            let (root, rest) = self.split_absolute(path)?;
            (root.as_fd(), rest)
        } else {
            (start, path.to_vec())
        };
        let mut flags = libc::O_PATH | libc::O_CLOEXEC;
        if !follow {
            flags |= libc::O_NOFOLLOW;
        }
        if trailing {
            flags |= libc::O_DIRECTORY;
        }
        let crest = cstring(&rest)?;
        for _ in 0..RETRIES {
            match sys::openat2(base, &crest, flags, 0, BENEATH) {
                Err(Errno::EAGAIN) => continue,
                Err(e) if e == Errno::EXDEV || e.raw() == libc::ELOOP => break,
                r => return r,
            }
        }
        let fd = self.walk(base, &rest, follow, links)?;
        if trailing {
            return directory(fd);
        }
        Ok(fd)
    }

    /// The component walk (see the module doc): `path` relative to `start`.
    fn walk(
        &self,
        start: BorrowedFd<'_>,
        path: &[u8],
        follow: bool,
        links: &mut u32,
    ) -> Result<OwnedFd, Errno> {
        let mut cur = sys::openat(start, c".", DIR_FLAGS, 0)?;
        let mut todo: VecDeque<Vec<u8>> = components(path).map(<[u8]>::to_vec).collect();
        // Whether `cur` is known to be beneath a root by its path (once checked, climbing from it meets
        // the root before anything outside).
        let mut checked = false;
        while let Some(part) = todo.pop_front() {
            if part == b".." {
                match self.root_at(cur.as_fd())? {
                    // `/..` is `/`.
                    Some(root) if root.names.iter().any(Vec::is_empty) => continue,
                    Some(root) if !root.nested => return Err(OUTSIDE),
                    Some(_) => {}
                    None if !checked && !self.may_climb(cur.as_fd()) => return Err(OUTSIDE),
                    None => checked = true,
                }
                cur = sys::openat(cur.as_fd(), c"..", DIR_FLAGS, 0)?;
                continue;
            }
            let name = cstring(&part)?;
            let next = sys::openat2(
                cur.as_fd(),
                &name,
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0,
                BENEATH,
            )?;
            let sx = sys::statx(next.as_fd(), c"", libc::AT_EMPTY_PATH, libc::STATX_TYPE)?;
            let kind = u32::from(sx.stx_mode) & libc::S_IFMT;
            if kind == libc::S_IFLNK && (follow || !todo.is_empty()) {
                *links += 1;
                if *links > MAX_LINKS {
                    return Err(Errno(libc::ELOOP as u16));
                }
                let text = sys::readlinkat(next.as_fd(), c"", libc::PATH_MAX as usize)?;
                if text.is_empty() {
                    return Err(Errno::ENOENT);
                }
                let rest = if text.first() == Some(&b'/') {
                    let (root, rest) = self.split_absolute(&text)?;
                    cur = sys::openat(root.as_fd(), c".", DIR_FLAGS, 0)?;
                    rest
                } else {
                    text
                };
                for (k, c) in components(&rest).enumerate() {
                    todo.insert(k, c.to_vec());
                }
                continue;
            }
            if !todo.is_empty() && kind != libc::S_IFDIR {
                return Err(Errno::ENOTDIR);
            }
            cur = next;
        }
        Ok(cur)
    }
}

/// `fd` if it is a directory, else `ENOTDIR`.
fn directory(fd: OwnedFd) -> Result<OwnedFd, Errno> {
    let sx = sys::statx(fd.as_fd(), c"", libc::AT_EMPTY_PATH, libc::STATX_TYPE)?;
    if u32::from(sx.stx_mode) & libc::S_IFMT != libc::S_IFDIR {
        return Err(Errno::ENOTDIR);
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::split_last;

    #[test]
    fn splits_before_the_last_component() {
        assert_eq!(split_last(b"a/b/c"), (&b"a/b/"[..], &b"c"[..]));
        assert_eq!(split_last(b"a/b/"), (&b"a/"[..], &b"b/"[..]));
        assert_eq!(split_last(b"x"), (&b""[..], &b"x"[..]));
        assert_eq!(split_last(b"/x"), (&b"/"[..], &b"x"[..]));
        assert_eq!(split_last(b"/"), (&b"/"[..], &b""[..]));
        assert_eq!(split_last(b"//"), (&b"//"[..], &b""[..]));
        assert_eq!(split_last(b"a/.."), (&b"a/"[..], &b".."[..]));
    }
}
