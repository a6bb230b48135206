//! This host's `O_*` and `AT_*` values to the portable wire bits and back.
//!
//! Several `O_*` values differ between x86_64 and aarch64 (`O_DIRECTORY`, `O_NOFOLLOW`, `O_DIRECT`,
//! `O_LARGEFILE`), so they never travel as they are.

use crate::pb::{AtFlag, OpenFlag};

const OPEN_TABLE: &[(i32, OpenFlag)] = &[
    (libc::O_WRONLY, OpenFlag::Wronly),
    (libc::O_RDWR, OpenFlag::Rdwr),
    (libc::O_CREAT, OpenFlag::Creat),
    (libc::O_EXCL, OpenFlag::Excl),
    (libc::O_NOCTTY, OpenFlag::Noctty),
    (libc::O_TRUNC, OpenFlag::Trunc),
    (libc::O_APPEND, OpenFlag::Append),
    (libc::O_NONBLOCK, OpenFlag::Nonblock),
    (libc::O_DSYNC, OpenFlag::Dsync),
    (libc::O_DIRECTORY, OpenFlag::Directory),
    (libc::O_NOFOLLOW, OpenFlag::Nofollow),
    (libc::O_CLOEXEC, OpenFlag::Cloexec),
    (libc::O_NOATIME, OpenFlag::Noatime),
    (libc::O_PATH, OpenFlag::Path),
    (libc::O_DIRECT, OpenFlag::Direct),
    (libc::O_ASYNC, OpenFlag::Async),
    (libc::O_LARGEFILE, OpenFlag::Largefile),
];

/// Native open flags to wire bits. `O_SYNC` and `O_TMPFILE` contain other bits (`O_DSYNC`, `O_DIRECTORY`)
/// and are matched whole first.
pub fn open_to_wire(native: i32) -> u32 {
    let mut native = native;
    let mut wire = 0u32;
    if native & libc::O_TMPFILE == libc::O_TMPFILE {
        wire |= OpenFlag::Tmpfile as u32;
        native &= !libc::O_TMPFILE;
    }
    if native & libc::O_SYNC == libc::O_SYNC {
        wire |= OpenFlag::Sync as u32;
        native &= !libc::O_SYNC;
    }
    for (n, w) in OPEN_TABLE {
        if native & n == *n && *n != 0 {
            wire |= *w as u32;
        }
    }
    wire
}

/// Wire bits to native open flags.
pub fn open_from_wire(wire: u32) -> i32 {
    let mut native = 0;
    if wire & OpenFlag::Tmpfile as u32 != 0 {
        native |= libc::O_TMPFILE;
    }
    if wire & OpenFlag::Sync as u32 != 0 {
        native |= libc::O_SYNC;
    }
    for (n, w) in OPEN_TABLE {
        if wire & *w as u32 != 0 {
            native |= n;
        }
    }
    native
}

/// Wire bits to native open flags; `None` when a bit is not an [`OpenFlag`] (a malformed request: no
/// shim sends one).
pub fn open_from_wire_checked(wire: u32) -> Option<i32> {
    let known = OPEN_TABLE
        .iter()
        .fold(OpenFlag::Tmpfile as u32 | OpenFlag::Sync as u32, |acc, (_, w)| acc | *w as u32);
    (wire & !known == 0).then(|| open_from_wire(wire))
}

/// Native open flags that this module does not know (would be dropped on the wire).
pub fn open_unknown(native: i32) -> i32 {
    native & !open_from_wire(open_to_wire(native))
}

const AT_TABLE: &[(i32, AtFlag)] = &[
    (libc::AT_SYMLINK_NOFOLLOW, AtFlag::SymlinkNofollow),
    (libc::AT_EMPTY_PATH, AtFlag::EmptyPath),
    (libc::AT_EACCESS, AtFlag::Eaccess),
    (libc::AT_REMOVEDIR, AtFlag::Removedir),
    (libc::AT_SYMLINK_FOLLOW, AtFlag::SymlinkFollow),
    (libc::AT_NO_AUTOMOUNT, AtFlag::NoAutomount),
    (libc::AT_STATX_FORCE_SYNC, AtFlag::StatxForceSync),
    (libc::AT_STATX_DONT_SYNC, AtFlag::StatxDontSync),
];

/// Native `AT_*` flags to wire bits. `AT_EACCESS` and `AT_REMOVEDIR` share the value 0x200 in Linux: the
/// caller says which one the syscall means through `removedir`.
pub fn at_to_wire(native: i32, removedir: bool) -> u32 {
    let mut wire = 0;
    for (n, w) in AT_TABLE {
        let meant = match w {
            AtFlag::Eaccess => !removedir,
            AtFlag::Removedir => removedir,
            _ => true,
        };
        if meant && native & n == *n {
            wire |= *w as u32;
        }
    }
    wire
}

/// Wire bits to native `AT_*` flags.
pub fn at_from_wire(wire: u32) -> i32 {
    AT_TABLE.iter().filter(|(_, w)| wire & *w as u32 != 0).fold(0, |acc, (n, _)| acc | n)
}

/// Wire bits to native `AT_*` flags; `None` when a bit is not an [`AtFlag`] (a malformed request).
pub fn at_from_wire_checked(wire: u32) -> Option<i32> {
    let known = AT_TABLE.iter().fold(0, |acc, (_, w)| acc | *w as u32);
    (wire & !known == 0).then(|| at_from_wire(wire))
}

/// Native `AT_*` flags that the wire cannot carry.
pub fn at_unknown(native: i32) -> i32 {
    let all = AT_TABLE.iter().fold(0, |acc, (n, _)| acc | n);
    native & !all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_round_trip() {
        let cases = [
            libc::O_RDONLY,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            libc::O_RDWR | libc::O_APPEND | libc::O_CLOEXEC,
            libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            libc::O_SYNC,
            libc::O_TMPFILE | libc::O_RDWR,
            libc::O_PATH,
        ];
        for c in cases {
            assert_eq!(open_from_wire(open_to_wire(c)), c, "flags {c:#o}");
            assert_eq!(open_unknown(c), 0);
        }
    }

    #[test]
    fn at_flags_round_trip() {
        assert_eq!(at_from_wire(at_to_wire(libc::AT_REMOVEDIR, true)), libc::AT_REMOVEDIR);
        assert_eq!(at_to_wire(libc::AT_REMOVEDIR, true), AtFlag::Removedir as u32);
        assert_eq!(at_to_wire(libc::AT_EACCESS, false), AtFlag::Eaccess as u32);
        let f = libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH;
        assert_eq!(at_from_wire(at_to_wire(f, false)), f);
        assert_eq!(at_unknown(0x4000_0000), 0x4000_0000);
    }

    #[test]
    fn unknown_wire_bits_are_refused() {
        let all_open = open_to_wire(libc::O_RDWR | libc::O_SYNC | libc::O_TMPFILE | libc::O_PATH);
        assert_eq!(open_from_wire_checked(all_open), Some(open_from_wire(all_open)));
        assert_eq!(open_from_wire_checked(OpenFlag::Largefile as u32 * 2), None);
        assert_eq!(open_from_wire_checked(u32::MAX), None);
        assert_eq!(at_from_wire_checked(AtFlag::StatxDontSync as u32), Some(libc::AT_STATX_DONT_SYNC));
        assert_eq!(at_from_wire_checked(AtFlag::StatxDontSync as u32 * 2), None);
    }
}
