//! Snapshots of directory trees, to check from outside what a run left on home's disk: every entry's type,
//! permissions, owner, link count, size, content or link target, and optionally its times.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Which timestamps a comparison looks at (access times never: reading changes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Times {
    /// None: for trees touched at different moments (a native copy and home).
    Ignore,
    /// Modification times, to the nanosecond: after `touch -d`, `tar x`, `cp -a`.
    Mtime,
    /// Modification and status-change times: for "nothing was touched" checks of the same tree.
    MtimeCtime,
}

/// The type of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A socket or device.
    Other,
}

/// One entry of a [`Tree`], as `lstat` and a read see it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its type.
    pub kind: Kind,
    /// Permission bits (including set-id and sticky bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard link count.
    pub nlink: u64,
    /// Size in bytes (not compared for directories, whose size is a file system detail).
    pub size: u64,
    /// Content of a regular file.
    pub content: Vec<u8>,
    /// Target of a symbolic link.
    pub target: Option<PathBuf>,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Status change time (seconds, nanoseconds).
    pub ctime: (i64, i64),
}

/// All entries below a root (the root itself is `"."`), keyed by path relative to the root.
pub struct Tree {
    /// The directory that was read.
    pub root: PathBuf,
    /// Entries by relative path.
    pub entries: BTreeMap<PathBuf, Entry>,
}

impl Tree {
    /// Reads the whole tree below `root`. Panics on an I/O error (the test's own data is unreadable).
    pub fn read(root: &Path) -> Tree {
        Self::read_excluding(root, &[])
    }

    /// Reads the tree below `root`, leaving out the given relative paths and everything below them.
    pub fn read_excluding(root: &Path, excluded: &[&str]) -> Tree {
        let excluded: Vec<PathBuf> = excluded.iter().map(PathBuf::from).collect();
        let mut entries = BTreeMap::new();
        let mut stack = vec![PathBuf::from(".")];
        while let Some(rel) = stack.pop() {
            let path = root.join(&rel);
            let meta = std::fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("cannot lstat {}: {e}", path.display()));
            let ft = meta.file_type();
            let kind = if ft.is_file() {
                Kind::File
            } else if ft.is_dir() {
                Kind::Dir
            } else if ft.is_symlink() {
                Kind::Symlink
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                Kind::Other
            };
            let content = if kind == Kind::File {
                std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            } else {
                Vec::new()
            };
            let target = (kind == Kind::Symlink).then(|| {
                std::fs::read_link(&path)
                    .unwrap_or_else(|e| panic!("cannot readlink {}: {e}", path.display()))
            });
            if kind == Kind::Dir {
                let dir = std::fs::read_dir(&path)
                    .unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()));
                for child in dir {
                    let child = child.unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()));
                    let child_rel = if rel == Path::new(".") {
                        PathBuf::from(child.file_name())
                    } else {
                        rel.join(child.file_name())
                    };
                    if !excluded.iter().any(|x| child_rel.starts_with(x)) {
                        stack.push(child_rel);
                    }
                }
            }
            let entry = Entry {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                nlink: meta.nlink(),
                size: meta.size(),
                content,
                target,
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
            };
            entries.insert(rel, entry);
        }
        Tree { root: root.to_path_buf(), entries }
    }

    /// The entry at `rel` (`"."` is the root).
    pub fn get(&self, rel: &str) -> Option<&Entry> {
        self.entries.get(Path::new(rel))
    }

    /// Differences between `self` (expected) and `other` (actual), one line each; empty when equal.
    pub fn differences(&self, other: &Tree, times: Times) -> Vec<String> {
        let mut out = Vec::new();
        for (path, a) in &self.entries {
            match other.entries.get(path) {
                None => out.push(format!("{}: missing ({} expected)", path.display(), a.describe())),
                Some(b) => {
                    for d in a.differences(b, times) {
                        out.push(format!("{}: {d}", path.display()));
                    }
                }
            }
        }
        for (path, b) in &other.entries {
            if !self.entries.contains_key(path) {
                out.push(format!("{}: unexpected {}", path.display(), b.describe()));
            }
        }
        out
    }
}

impl fmt::Display for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:", self.root.display())?;
        for (path, e) in &self.entries {
            writeln!(f, "  {} {}", path.display(), e.describe())?;
        }
        Ok(())
    }
}

impl Entry {
    fn describe(&self) -> String {
        let what = match (self.kind, &self.target) {
            (Kind::Symlink, Some(t)) => format!("symlink -> {}", t.display()),
            (Kind::File, _) => format!("file of {} bytes", self.size),
            (kind, _) => format!("{kind:?}").to_lowercase(),
        };
        format!(
            "{what}, mode {:04o}, {}:{}, mtime {}.{:09}",
            self.mode, self.uid, self.gid, self.mtime.0, self.mtime.1
        )
    }

    fn differences(&self, b: &Entry, times: Times) -> Vec<String> {
        let a = self;
        let mut out = Vec::new();
        if a.kind != b.kind {
            out.push(format!("type {:?} expected, found {:?}", a.kind, b.kind));
            return out;
        }
        if a.mode != b.mode {
            out.push(format!("mode {:04o} expected, found {:04o}", a.mode, b.mode));
        }
        if (a.uid, a.gid) != (b.uid, b.gid) {
            out.push(format!("owner {}:{} expected, found {}:{}", a.uid, a.gid, b.uid, b.gid));
        }
        if a.nlink != b.nlink {
            out.push(format!("link count {} expected, found {}", a.nlink, b.nlink));
        }
        if a.kind != Kind::Dir && a.size != b.size {
            out.push(format!("size {} expected, found {}", a.size, b.size));
        }
        if a.content != b.content {
            let at = a.content.iter().zip(&b.content).position(|(x, y)| x != y);
            let at = at.unwrap_or(a.content.len().min(b.content.len()));
            let mut text = format!("content differs from byte {at}");
            if let (Ok(x), Ok(y)) = (std::str::from_utf8(&a.content), std::str::from_utf8(&b.content)) {
                if x.len().max(y.len()) <= 64 * 1024 {
                    text += " (-expected +actual):\n";
                    text += &crate::compare::text_diff(x, y);
                }
            }
            out.push(text);
        }
        if a.target != b.target {
            out.push(format!("link target {:?} expected, found {:?}", a.target, b.target));
        }
        if times != Times::Ignore && a.mtime != b.mtime {
            out.push(format!(
                "mtime {}.{:09} expected, found {}.{:09}",
                a.mtime.0, a.mtime.1, b.mtime.0, b.mtime.1
            ));
        }
        if times == Times::MtimeCtime && a.ctime != b.ctime {
            out.push(format!(
                "ctime {}.{:09} expected, found {}.{:09}",
                a.ctime.0, a.ctime.1, b.ctime.0, b.ctime.1
            ));
        }
        out
    }
}

/// Panics, listing every difference, unless the tree at `actual` matches the tree at `expected`.
#[track_caller]
pub fn assert_same_tree(expected: &Tree, actual: &Tree, times: Times) {
    let diffs = expected.differences(actual, times);
    if !diffs.is_empty() {
        panic!(
            "{} differs from {} ({} differences):\n  {}\nexpected tree:\n{expected}actual tree:\n{actual}",
            actual.root.display(),
            expected.root.display(),
            diffs.len(),
            diffs.join("\n  ")
        );
    }
}
