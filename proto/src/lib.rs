//! The wire protocol between remote-shim and home-agent.
//!
//! # Layout
//! - `pb`: the generated gRPC service and messages (`homeward.proto`).
//! - [`errno`]: a lossless Linux errno and the value-or-errno [`pb::Outcome`] helpers.
//! - [`flags`]: conversions between this host's `O_*`/`AT_*` values and the portable wire bits.
//! - [`handles`]: the handles a request names (for a shim that fills them in late).
//! - [`stat`]: conversions between `libc::statx`/`libc::statfs` and the wire's `FileStat`/`FsStat`.
//! - [`text`]: an error with its causes, and the PEM check, for both sides' messages.
//!
//! Wire types and their conversions live only here: the shim and the agent share nothing else.
#![deny(unsafe_code)]

pub mod effects;
pub mod errno;
pub mod flags;
pub mod handles;
pub mod stat;
pub mod text;

/// The generated protocol types and the `Home` service client and server.
pub mod pb {
    tonic::include_proto!("homeward.v1");
}

pub use errno::Errno;

/// Whether `id` has the form of a machine id (`HelloReply.home_id`: 32 hex digits, as `/etc/machine-id`).
pub fn is_machine_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 5;

/// gRPC metadata key that names the session on the `Calls` stream.
pub const SESSION_METADATA: &str = "homeward-session";

/// gRPC metadata key on a `Calls` stream that resumes its session after a break: the last
/// `CallReply.index` the shim received (decimal).
pub const RESUME_METADATA: &str = "homeward-resume";

/// gRPC metadata key on a resuming `Calls` stream: the session's `HelloReply.resume_key` (hex).
pub const RESUME_KEY_METADATA: &str = "homeward-resume-key";

/// gRPC metadata key for the token (`Bearer <token>`).
pub const AUTH_METADATA: &str = "authorization";
