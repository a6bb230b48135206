//! `statx`/`statfs` results to the wire and back into this host's `struct stat`, `struct statx` and
//! `struct statfs`.

use crate::pb::{FileStat, FsStat};

impl FileStat {
    /// Whether `other` is the same version of the file's content: same size, modification and change times
    /// (close-to-open consistency checks this at open and after reading).
    pub fn same_version(&self, other: &FileStat) -> bool {
        let version = |s: &FileStat| (s.size, s.mtime_sec, s.mtime_nsec, s.ctime_sec, s.ctime_nsec);
        version(self) == version(other)
    }

    /// From a `statx` taken at home (every stat at home is taken with `statx`).
    pub fn from_statx(s: &libc::statx) -> FileStat {
        FileStat {
            dev: libc::makedev(s.stx_dev_major, s.stx_dev_minor),
            ino: s.stx_ino,
            mode: u32::from(s.stx_mode),
            nlink: u64::from(s.stx_nlink),
            uid: s.stx_uid,
            gid: s.stx_gid,
            rdev: libc::makedev(s.stx_rdev_major, s.stx_rdev_minor),
            size: s.stx_size as i64,
            blksize: i64::from(s.stx_blksize),
            blocks: s.stx_blocks as i64,
            atime_sec: s.stx_atime.tv_sec,
            atime_nsec: i64::from(s.stx_atime.tv_nsec),
            mtime_sec: s.stx_mtime.tv_sec,
            mtime_nsec: i64::from(s.stx_mtime.tv_nsec),
            ctime_sec: s.stx_ctime.tv_sec,
            ctime_nsec: i64::from(s.stx_ctime.tv_nsec),
            btime_sec: s.stx_btime.tv_sec,
            btime_nsec: i64::from(s.stx_btime.tv_nsec),
            mask: s.stx_mask,
            attributes: s.stx_attributes,
            attributes_mask: s.stx_attributes_mask,
            dev_major: s.stx_dev_major,
            dev_minor: s.stx_dev_minor,
            rdev_major: s.stx_rdev_major,
            rdev_minor: s.stx_rdev_minor,
            mnt_id: s.stx_mnt_id,
        }
    }

    /// This host's `struct stat`, as stat/fstat/newfstatat fill it.
    pub fn to_stat(&self) -> libc::stat {
        let mut st: libc::stat = unsafe_zeroed_stat();
        st.st_dev = self.dev;
        st.st_ino = self.ino;
        st.st_mode = self.mode;
        st.st_nlink = self.nlink as _;
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        st.st_rdev = self.rdev;
        st.st_size = self.size;
        st.st_blksize = self.blksize as _;
        st.st_blocks = self.blocks;
        st.st_atime = self.atime_sec;
        st.st_atime_nsec = self.atime_nsec as _;
        st.st_mtime = self.mtime_sec;
        st.st_mtime_nsec = self.mtime_nsec as _;
        st.st_ctime = self.ctime_sec;
        st.st_ctime_nsec = self.ctime_nsec as _;
        st
    }

    /// This host's `struct statx`, with only the fields home reported as valid.
    pub fn to_statx(&self) -> libc::statx {
        let mut sx = zeroed_statx();
        sx.stx_mask = self.mask;
        sx.stx_blksize = self.blksize as u32;
        sx.stx_attributes = self.attributes;
        sx.stx_nlink = self.nlink as u32;
        sx.stx_uid = self.uid;
        sx.stx_gid = self.gid;
        sx.stx_mode = self.mode as u16;
        sx.stx_ino = self.ino;
        sx.stx_size = self.size as u64;
        sx.stx_blocks = self.blocks as u64;
        sx.stx_attributes_mask = self.attributes_mask;
        sx.stx_atime = ts(self.atime_sec, self.atime_nsec);
        sx.stx_btime = ts(self.btime_sec, self.btime_nsec);
        sx.stx_ctime = ts(self.ctime_sec, self.ctime_nsec);
        sx.stx_mtime = ts(self.mtime_sec, self.mtime_nsec);
        sx.stx_rdev_major = self.rdev_major;
        sx.stx_rdev_minor = self.rdev_minor;
        sx.stx_dev_major = self.dev_major;
        sx.stx_dev_minor = self.dev_minor;
        sx.stx_mnt_id = self.mnt_id;
        sx
    }
}

fn ts(sec: i64, nsec: i64) -> libc::statx_timestamp {
    let mut t = zeroed_statx().stx_atime;
    t.tv_sec = sec;
    t.tv_nsec = nsec as u32;
    t
}

#[allow(unsafe_code)]
fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: `libc::stat` is a C struct of integers; the all-zero bit pattern is a valid value.
    unsafe { std::mem::zeroed() }
}

#[allow(unsafe_code)]
fn zeroed_statx() -> libc::statx {
    // SAFETY: `libc::statx` is a C struct of integers; the all-zero bit pattern is a valid value.
    unsafe { std::mem::zeroed() }
}

#[allow(unsafe_code)]
fn zeroed_statfs() -> libc::statfs {
    // SAFETY: `libc::statfs` is a C struct of integers; the all-zero bit pattern is a valid value.
    unsafe { std::mem::zeroed() }
}

impl FsStat {
    /// `__fsword_t` is `i64` on every 64-bit Linux this builds for.
    pub fn from_statfs(s: &libc::statfs) -> FsStat {
        let fsid: [i32; 2] = fsid_pair(&s.f_fsid);
        FsStat {
            kind: s.f_type,
            bsize: s.f_bsize,
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            fsid0: fsid[0],
            fsid1: fsid[1],
            namelen: s.f_namelen,
            frsize: s.f_frsize,
            flags: statfs_flags(s),
        }
    }

    pub fn to_statfs(&self) -> libc::statfs {
        let mut s = zeroed_statfs();
        s.f_type = self.kind as _;
        s.f_bsize = self.bsize as _;
        s.f_blocks = self.blocks;
        s.f_bfree = self.bfree;
        s.f_bavail = self.bavail;
        s.f_files = self.files;
        s.f_ffree = self.ffree;
        s.f_fsid = make_fsid([self.fsid0, self.fsid1]);
        s.f_namelen = self.namelen as _;
        s.f_frsize = self.frsize as _;
        set_statfs_flags(&mut s, self.flags);
        s
    }
}

/// `f_flags` follows `f_frsize` in the kernel's `struct statfs` on 64-bit Linux; libc hides it in padding.
const STATFS_FLAGS_OFFSET: usize = std::mem::offset_of!(libc::statfs, f_frsize) + 8;

#[allow(unsafe_code)]
fn statfs_flags(s: &libc::statfs) -> i64 {
    const _: () = assert!(STATFS_FLAGS_OFFSET + 8 <= std::mem::size_of::<libc::statfs>());
    // SAFETY: the offset is inside the struct (checked above) and the kernel writes an aligned word there.
    unsafe {
        std::ptr::read_unaligned(
            (s as *const libc::statfs as *const u8).add(STATFS_FLAGS_OFFSET) as *const i64
        )
    }
}

#[allow(unsafe_code)]
fn set_statfs_flags(s: &mut libc::statfs, flags: i64) {
    // SAFETY: as in `statfs_flags`: the word lies inside the struct, which we own mutably.
    unsafe {
        std::ptr::write_unaligned(
            (s as *mut libc::statfs as *mut u8).add(STATFS_FLAGS_OFFSET) as *mut i64,
            flags,
        )
    }
}

#[allow(unsafe_code)]
fn fsid_pair(f: &libc::fsid_t) -> [i32; 2] {
    const _: () = assert!(std::mem::size_of::<libc::fsid_t>() == 8);
    // SAFETY: `fsid_t` is `struct { int val[2]; }` (size checked above), so it has the layout of `[i32; 2]`.
    unsafe { std::mem::transmute_copy(f) }
}

#[allow(unsafe_code)]
fn make_fsid(v: [i32; 2]) -> libc::fsid_t {
    // SAFETY: as in `fsid_pair`: `fsid_t` has the layout of `[i32; 2]`.
    unsafe { std::mem::transmute_copy(&v) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statx_to_stat_keeps_fields() {
        let mut sx = zeroed_statx();
        sx.stx_ino = 42;
        sx.stx_size = 4096;
        sx.stx_mode = (libc::S_IFREG | 0o640) as u16;
        sx.stx_dev_major = 8;
        sx.stx_dev_minor = 1;
        sx.stx_mtime.tv_sec = 1_700_000_000;
        sx.stx_mtime.tv_nsec = 5;
        let fs = FileStat::from_statx(&sx);
        let st = fs.to_stat();
        assert_eq!(st.st_ino, 42);
        assert_eq!(st.st_size, 4096);
        assert_eq!(st.st_mode, libc::S_IFREG | 0o640);
        assert_eq!(st.st_dev, libc::makedev(8, 1));
        assert_eq!(st.st_mtime_nsec, 5);
        assert_eq!(fs.to_statx().stx_ino, 42);
    }
}
