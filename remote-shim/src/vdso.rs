//! Routing the program's wall-clock reads through the supervisor, when home's wall clock differs from this
//! machine's.
//!
//! glibc reads clocks through the vDSO, which seccomp never sees, and CLOCK_REALTIME has no time namespace.
//! So after an exec, at the new image's first notified call, the supervisor rewrites the entry points of
//! `__vdso_clock_gettime`, `__vdso_gettimeofday` and `__vdso_time` in that process (through `/proc/PID/mem`,
//! as a debugger sets breakpoints; the vDSO is private to the process after the write) into plain system
//! calls. Those are notified for the wall clocks only (CLOCK_MONOTONIC and friends go straight to the
//! kernel, which applies the time namespace) and answered with this machine's clock plus the estimated
//! offset. Only done when the offset exceeds its error bound; only on x86_64.

use std::io;

/// The entry points rewritten, with the system call each becomes.
#[cfg(target_arch = "x86_64")]
const STUBS: &[(&str, u32)] = &[
    ("__vdso_clock_gettime", libc::SYS_clock_gettime as u32),
    ("__vdso_gettimeofday", libc::SYS_gettimeofday as u32),
    ("__vdso_time", libc::SYS_time as u32),
];

/// `mov eax, NR; syscall; ret`: the function's arguments are already in the system call's registers.
#[cfg(target_arch = "x86_64")]
fn stub(nr: u32) -> Vec<u8> {
    let mut code = vec![0xb8];
    code.extend_from_slice(&nr.to_le_bytes());
    code.extend_from_slice(&[0x0f, 0x05, 0xc3]);
    code
}

/// The `[vdso]` mapping of process `pid`: (start, end).
fn vdso_range(pid: u32) -> io::Result<(u64, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let line =
        maps.lines().find(|l| l.ends_with("[vdso]")).ok_or_else(|| io::Error::other("no vDSO mapped"))?;
    let range = line.split_whitespace().next().unwrap_or("");
    let (a, b) = range.split_once('-').ok_or_else(|| io::Error::other("bad maps line"))?;
    let parse = |s: &str| u64::from_str_radix(s, 16).map_err(io::Error::other);
    Ok((parse(a)?, parse(b)?))
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Offsets (from the image start) of the named dynamic symbols in an ELF64 image.
pub fn symbol_offsets(image: &[u8], names: &[&str]) -> Option<Vec<Option<u64>>> {
    if image.get(0..4)? != b"\x7fELF" || image[4] != 2 {
        return None;
    }
    let (phoff, shoff) = (u64_at(image, 0x20)? as usize, u64_at(image, 0x28)? as usize);
    let (phentsize, phnum) = (u16_at(image, 0x36)? as usize, u16_at(image, 0x38)? as usize);
    let (shentsize, shnum) = (u16_at(image, 0x3a)? as usize, u16_at(image, 0x3c)? as usize);
    // The first PT_LOAD's virtual address is the image's base.
    let base = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&p| u32_at(image, p) == Some(1))
        .and_then(|p| u64_at(image, p + 0x10))?;
    let section = |i: usize| shoff + i * shentsize;
    let dynsym = (0..shnum).find(|&i| u32_at(image, section(i) + 4) == Some(11))?;
    let (sym_off, sym_size, sym_ent) = (
        u64_at(image, section(dynsym) + 0x18)? as usize,
        u64_at(image, section(dynsym) + 0x20)? as usize,
        u64_at(image, section(dynsym) + 0x38)?.max(24) as usize,
    );
    let strtab = u32_at(image, section(dynsym) + 0x28)? as usize;
    let str_off = u64_at(image, section(strtab) + 0x18)? as usize;
    let mut found = vec![None; names.len()];
    for i in 0..sym_size / sym_ent {
        let s = sym_off + i * sym_ent;
        let name_at = str_off + u32_at(image, s)? as usize;
        let end = image.get(name_at..)?.iter().position(|&b| b == 0)?;
        let name = std::str::from_utf8(&image[name_at..name_at + end]).ok()?;
        if let Some(k) = names.iter().position(|n| *n == name) {
            found[k] = Some(u64_at(image, s + 8)?.checked_sub(base)?);
        }
    }
    Some(found)
}

/// Rewrites the clock entry points of process `pid`'s vDSO into system calls.
#[cfg(target_arch = "x86_64")]
pub fn route_clock_reads(pid: u32) -> io::Result<()> {
    let (start, end) = vdso_range(pid)?;
    let mut image = vec![0u8; (end - start) as usize];
    let n = crate::sys::tracee::read_mem(pid, start, &mut image)?;
    image.truncate(n);
    let names: Vec<&str> = STUBS.iter().map(|(n, _)| *n).collect();
    let offsets = symbol_offsets(&image, &names).ok_or_else(|| io::Error::other("cannot parse the vDSO"))?;
    for ((_, nr), off) in STUBS.iter().zip(offsets) {
        if let Some(off) = off {
            crate::sys::tracee::poke_mem(pid, start + off, &stub(*nr))?;
        }
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
pub fn route_clock_reads(_pid: u32) -> io::Result<()> {
    Err(io::Error::other("wall-clock routing is only implemented on x86_64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own vDSO is an ELF image with the clock entry points.
    #[test]
    fn finds_the_clock_entry_points_in_our_own_vdso() {
        let pid = std::process::id();
        let (start, end) = vdso_range(pid).expect("this process has a vDSO");
        let mut image = vec![0u8; (end - start) as usize];
        let n = crate::sys::tracee::read_mem(pid, start, &mut image).expect("read our own memory");
        image.truncate(n);
        let found = symbol_offsets(&image, &["__vdso_clock_gettime", "__vdso_gettimeofday"]).expect("parses");
        assert!(found.iter().all(Option::is_some), "{found:?}");
    }
}
