//! Text both sides make for their messages: an error with its causes, and PEM files (the agent's and the
//! shim's certificates and keys) read with a clear error.

use std::path::{Path, PathBuf};

/// Why a PEM file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PemFileError {
    #[error("cannot read the {what} {}: {source}", .path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the {what} {} holds no PEM `{label}` block (expected -----BEGIN {label}-----)", .path.display())]
    NotPem { what: &'static str, path: PathBuf, label: &'static str },
}

/// Reads the `what` file at `path`, which must hold at least one PEM block whose label ends with `label`.
pub fn read_pem(what: &'static str, path: &Path, label: &'static str) -> Result<Vec<u8>, PemFileError> {
    let text = std::fs::read(path).map_err(|source| PemFileError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if has_pem_block(&text, label) {
        Ok(text)
    } else {
        Err(PemFileError::NotPem { what, path: path.to_path_buf(), label })
    }
}

/// An error and its sources, `: `-separated (tonic's transport error alone says only "transport error").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Whether `text` holds a PEM block whose label ends with `label` (`PRIVATE KEY` matches `RSA PRIVATE KEY`
/// and `EC PRIVATE KEY`).
pub fn has_pem_block(text: &[u8], label: &str) -> bool {
    String::from_utf8_lossy(text).lines().any(|line| {
        line.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|found| found.ends_with(label))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_found_by_label() {
        let key = b"junk\n-----BEGIN EC PRIVATE KEY-----\nabc\n-----END EC PRIVATE KEY-----\n";
        assert!(has_pem_block(key, "PRIVATE KEY"));
        assert!(!has_pem_block(key, "CERTIFICATE"));
        assert!(!has_pem_block(b"\x00\xff not pem", "CERTIFICATE"));
    }

    #[test]
    fn an_error_chain_names_every_cause() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let outer = Outer(std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert!(
            error_chain(&outer).starts_with("transport error: Connection refused"),
            "{}",
            error_chain(&outer)
        );
    }
}
