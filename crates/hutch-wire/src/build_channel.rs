//! The build channel: how `tl-rootfs-build`, run inside a builder sandbox, hands a template
//! build to the host's build engine (one engine, not one per sandbox).
//!
//! The host listens on [`BUILD_SOCKET_NAME`] in the sandbox's [`crate::AGENT_SOCKET_DIR`]
//! only for sandboxes started from its builder image. The builder dials it and sends:
//! 1. one line of JSON, [`BuildHello`]: the spec the SDK wrote (opaque, passed through from the
//!    platform's prepare answer, with the Dockerfile and context directory added);
//! 2. the build context as an uncompressed tar stream, then shuts its write side.
//!
//! The host answers with [`BuildChannelEvent`]s, one JSON object per line, ending with
//! exactly one `done` or `error`.

use serde::{Deserialize, Serialize};

/// File name of the build channel's socket inside [`crate::AGENT_SOCKET_DIR`].
pub const BUILD_SOCKET_NAME: &str = "build.sock";
/// The builder's name: the agent binary run under this name is the builder.
pub const ROOTFS_BUILD_COMMAND: &str = "tl-rootfs-build";
/// Longest hello line the host reads.
pub const MAX_HELLO_BYTES: usize = 1 << 20;

/// The first line the builder sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildHello {
    pub spec: serde_json::Value,
    /// Whether a context tar follows (import builds send none).
    pub context: bool,
}

/// What the host reports while it builds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BuildChannelEvent {
    /// A build step started (or was taken from the cache).
    Step {
        text: String,
    },
    /// Output of a RUN step, as it came.
    Output {
        stderr: bool,
        data: String,
    },
    /// A status line (pulls, registration).
    Status {
        message: String,
    },
    Warning {
        message: String,
    },
    /// The build succeeded: the metadata `tl-rootfs-build --metadata-out` writes.
    Done {
        metadata: serde_json::Value,
    },
    Error {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_lines() {
        let e = BuildChannelEvent::Output {
            stderr: true,
            data: "x\n".into(),
        };
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(line, r#"{"event":"output","stderr":true,"data":"x\n"}"#);
        assert_eq!(serde_json::from_str::<BuildChannelEvent>(&line).unwrap(), e);
    }
}
