//! The token check: a tonic interceptor, so a wrong token is refused before anything at home is touched.

use homeward_proto::AUTH_METADATA;
use std::sync::Arc;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Accepts a request whose `authorization` metadata is `Bearer <token>`; accepts all without a token.
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Arc<[u8]>>,
}

impl TokenCheck {
    pub fn new(token: Option<&str>) -> TokenCheck {
        TokenCheck { token: token.map(|t| Arc::from(t.as_bytes())) }
    }

    fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(token) = &self.token else { return true };
        header.and_then(bearer).is_some_and(|presented| constant_time_eq(presented, token))
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get(AUTH_METADATA).map(|v| v.as_bytes());
        if self.accepts(header) {
            Ok(request)
        } else {
            tracing::warn!("refused a request: wrong or missing token");
            Err(Status::unauthenticated("wrong or missing token"))
        }
    }
}

/// The credentials of a `Bearer` authorization value (the scheme is case-insensitive, RFC 9110).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    scheme.eq_ignore_ascii_case(SCHEME).then_some(rest)
}

/// Compares in time that depends only on the lengths, never on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn bearer_header() {
        let check = TokenCheck::new(Some("s3cret"));
        assert!(check.accepts(Some(b"Bearer s3cret")));
        assert!(check.accepts(Some(b"bearer s3cret")));
        assert!(!check.accepts(Some(b"Bearer s3cre")));
        assert!(!check.accepts(Some(b"s3cret")));
        assert!(!check.accepts(Some(b"Basic s3cret")));
        assert!(!check.accepts(None));
        assert!(TokenCheck::new(None).accepts(None));
    }
}
