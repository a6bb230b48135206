//! Path policy: which absolute paths the local kernel serves (`/proc`, `/sys`, `/dev` and `--local`
//! prefixes) and which are home's.

/// The prefixes always served locally: they describe this machine and this process, not home's files.
pub const DEFAULT_LOCAL: &[&str] = &["/proc", "/sys", "/dev"];

#[derive(Debug, Clone)]
pub struct PathPolicy {
    local: Vec<Vec<u8>>,
}

impl PathPolicy {
    pub fn new(extra_local: &[String]) -> PathPolicy {
        let mut local: Vec<Vec<u8>> = DEFAULT_LOCAL.iter().map(|p| p.as_bytes().to_vec()).collect();
        for p in extra_local {
            let n = normalize(p.as_bytes());
            if !n.is_empty() {
                local.push(n);
            }
        }
        PathPolicy { local }
    }

    /// Whether an absolute path is served by the local kernel. Decided on the lexically normalized path
    /// (`/proc/../home/x` is home's `/home/x`); symlinks at home that point into a local prefix stay home's.
    pub fn is_local(&self, path: &[u8]) -> bool {
        let n = normalize(path);
        self.local
            .iter()
            .any(|p| p.as_slice() == b"/" || n == *p || (n.starts_with(p) && n.get(p.len()) == Some(&b'/')))
    }
}

/// Lexical normalization of an absolute path: collapses `//`, `.` and `..` (`..` at the root stays at root).
pub fn normalize(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for p in &parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_extra() {
        let p = PathPolicy::new(&["/scratch/".to_string()]);
        assert!(p.is_local(b"/proc/self/status"));
        assert!(p.is_local(b"/proc"));
        assert!(p.is_local(b"/dev/null"));
        assert!(p.is_local(b"/scratch/x"));
        assert!(!p.is_local(b"/procfoo"));
        assert!(!p.is_local(b"/home/u/x"));
        assert!(!p.is_local(b"/proc/../home/x"));
        assert!(p.is_local(b"//dev/./null"));
        assert!(!p.is_local(b"/tmp"));
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize(b"/a//b/./c/../d"), b"/a/b/d");
        assert_eq!(normalize(b"/../.."), b"/");
    }
}
