//! The traced program's memory: arguments in, results out, with the kernel's errors (`EFAULT` for a bad
//! pointer, `ENAMETOOLONG` for an over-long path).

use crate::sys::tracee::{self, Pod};
use homeward_proto::Errno;

/// Longest path the kernel accepts, NUL included.
const PATH_MAX: usize = libc::PATH_MAX as usize;

/// Largest buffer the supervisor copies in one call; larger requests are served short, as is legal.
pub const MAX_IO: usize = 16 << 20;

pub fn read_bytes(pid: u32, addr: u64, len: usize) -> Result<Vec<u8>, Errno> {
    if len == 0 {
        return Ok(Vec::new());
    }
    if addr == 0 {
        return Err(Errno::EFAULT);
    }
    let mut buf = vec![0u8; len];
    match tracee::read_mem(pid, addr, &mut buf) {
        Ok(n) if n == len => Ok(buf),
        _ => Err(Errno::EFAULT),
    }
}

pub fn write_bytes(pid: u32, addr: u64, data: &[u8]) -> Result<(), Errno> {
    if data.is_empty() {
        return Ok(());
    }
    if addr == 0 {
        return Err(Errno::EFAULT);
    }
    match tracee::write_mem(pid, addr, data) {
        Ok(n) if n == data.len() => Ok(()),
        _ => Err(Errno::EFAULT),
    }
}

/// Checks that `[addr, addr+len)` is mapped, by reading its first and last byte; used before a call with a
/// side effect at home (a read consumes data) whose result could not be delivered.
pub fn probe(pid: u32, addr: u64, len: usize) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    read_bytes(pid, addr, 1)?;
    read_bytes(pid, addr + len as u64 - 1, 1).map(drop)
}

pub fn read_pod<T: Pod>(pid: u32, addr: u64) -> Result<T, Errno> {
    let bytes = read_bytes(pid, addr, std::mem::size_of::<T>())?;
    tracee::pod_from_bytes(&bytes).ok_or(Errno::EFAULT)
}

pub fn write_pod<T: Pod>(pid: u32, addr: u64, v: &T) -> Result<(), Errno> {
    write_bytes(pid, addr, tracee::pod_bytes(v))
}

/// A NUL-terminated string of at most `PATH_MAX` bytes (NUL excluded from the result).
pub fn read_path(pid: u32, addr: u64) -> Result<Vec<u8>, Errno> {
    read_cstr(pid, addr, PATH_MAX).map_err(|e| if e == Errno::ERANGE { Errno::ENAMETOOLONG } else { e })
}

/// A NUL-terminated string of at most `max` bytes including the NUL; `ERANGE` when longer.
pub fn read_cstr(pid: u32, addr: u64, max: usize) -> Result<Vec<u8>, Errno> {
    if addr == 0 {
        return Err(Errno::EFAULT);
    }
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < max {
        // Never read across a page boundary in one go: the next page may be unmapped though the string ends.
        let to_page_end = 4096 - (at % 4096) as usize;
        let chunk = to_page_end.min(max - out.len());
        let mut buf = vec![0u8; chunk];
        let n = tracee::read_mem(pid, at, &mut buf).map_err(|_| Errno::EFAULT)?;
        if n == 0 {
            return Err(Errno::EFAULT);
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..end]);
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        at += n as u64;
    }
    Err(Errno::ERANGE)
}

/// One buffer of the traced program: an address there and a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iov {
    pub base: u64,
    pub len: usize,
}

/// An `iovec` array of `count` entries; `EINVAL` past `IOV_MAX`, as the kernel.
pub fn read_iovecs(pid: u32, addr: u64, count: u64) -> Result<Vec<Iov>, Errno> {
    if count > libc::UIO_MAXIOV as u64 {
        return Err(Errno::EINVAL);
    }
    let size = std::mem::size_of::<libc::iovec>();
    let bytes = read_bytes(pid, addr, size * count as usize)?;
    Ok(bytes
        .chunks_exact(size)
        .filter_map(tracee::pod_from_bytes::<libc::iovec>)
        .map(|v| Iov { base: v.iov_base as u64, len: v.iov_len })
        .collect())
}

/// Total length of an iovec array, capped at [`MAX_IO`]; `EINVAL` if it overflows `ssize_t`, as the kernel.
pub fn iov_total(iovs: &[Iov]) -> Result<usize, Errno> {
    let mut total: usize = 0;
    for iov in iovs {
        total = total.checked_add(iov.len).ok_or(Errno::EINVAL)?;
    }
    if total > isize::MAX as usize {
        return Err(Errno::EINVAL);
    }
    Ok(total.min(MAX_IO))
}

/// Scatters `data` over the iovecs, in order.
pub fn scatter(pid: u32, iovs: &[Iov], data: &[u8]) -> Result<(), Errno> {
    let mut rest = data;
    for iov in iovs {
        if rest.is_empty() {
            break;
        }
        let n = iov.len.min(rest.len());
        write_bytes(pid, iov.base, &rest[..n])?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Gathers up to `limit` bytes from the iovecs, in order.
pub fn gather(pid: u32, iovs: &[Iov], limit: usize) -> Result<Vec<u8>, Errno> {
    let mut out = Vec::new();
    for iov in iovs {
        let n = iov.len.min(limit - out.len());
        out.extend(read_bytes(pid, iov.base, n)?);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}
