//! What a pull or push reports while it works: structured events for the API, and a
//! terminal renderer (bars on a TTY, plain lines otherwise) for the CLI.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The manifest was fetched: what the image is and what will be transferred.
    Resolved {
        reference: String,
        manifest_digest: String,
        layers: usize,
        total_bytes: u64,
    },
    /// A layer (or blob) that is not transferred: the store (or registry) has it.
    LayerSkipped {
        digest: String,
        size: u64,
    },
    LayerStarted {
        digest: String,
        size: u64,
    },
    LayerProgress {
        digest: String,
        bytes: u64,
        size: u64,
    },
    /// Downloaded, verified and unpacked (pull), or uploaded (push).
    LayerDone {
        digest: String,
        size: u64,
    },
    /// A dropped transfer resumed at `offset`.
    LayerRetry {
        digest: String,
        offset: u64,
        error: String,
    },
    Done {
        reference: String,
        image: String,
        id: String,
    },
}

/// Where events go.
pub type Sink<'a> = &'a (dyn Fn(Event) + Send + Sync);

/// Draws events on stderr: one bar per layer redrawn in place on a terminal, a line per
/// layer start and end otherwise.
pub struct Renderer {
    tty: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    rows: BTreeMap<String, (u64, u64, &'static str)>,
    order: Vec<String>,
    drawn: usize,
    last: Option<Instant>,
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

impl Renderer {
    pub fn new(tty: bool) -> Self {
        Self {
            tty,
            state: Mutex::new(State::default()),
        }
    }

    pub fn handle(&self, event: Event) {
        let mut s = self.state.lock().expect("renderer lock");
        let mut err = std::io::stderr().lock();
        let row = |s: &mut State, digest: &str, done: u64, size: u64, what: &'static str| {
            if !s.rows.contains_key(digest) {
                s.order.push(digest.to_string());
            }
            s.rows.insert(digest.to_string(), (done, size, what));
        };
        match &event {
            Event::Resolved {
                reference,
                manifest_digest,
                layers,
                total_bytes,
            } => {
                let _ = writeln!(
                    err,
                    "{reference}: {manifest_digest}, {layers} layers, {}",
                    mib(*total_bytes)
                );
                return;
            }
            Event::LayerSkipped { digest, size } => {
                if !self.tty {
                    let _ = writeln!(err, "{}: already present", short(digest));
                    return;
                }
                row(&mut s, digest, *size, *size, "present");
            }
            Event::LayerStarted { digest, size } => {
                if !self.tty {
                    let _ = writeln!(err, "{}: {} to transfer", short(digest), mib(*size));
                    return;
                }
                row(&mut s, digest, 0, *size, "");
            }
            Event::LayerProgress {
                digest,
                bytes,
                size,
            } => {
                if !self.tty {
                    return;
                }
                row(&mut s, digest, *bytes, *size, "");
                let now = Instant::now();
                if s.last.is_some_and(|t| now - t < Duration::from_millis(100)) {
                    return;
                }
                s.last = Some(now);
            }
            Event::LayerDone { digest, size } => {
                if !self.tty {
                    let _ = writeln!(err, "{}: done", short(digest));
                    return;
                }
                row(&mut s, digest, *size, *size, "done");
            }
            Event::LayerRetry {
                digest,
                offset,
                error,
            } => {
                let _ = writeln!(
                    err,
                    "{}: transfer broke ({error}); resuming at {offset}",
                    short(digest)
                );
                return;
            }
            Event::Done { image, id, .. } => {
                if self.tty {
                    self.draw(&mut s, &mut err);
                }
                let _ = writeln!(err, "{image}: {id}");
                return;
            }
        }
        self.draw(&mut s, &mut err);
    }

    fn draw(&self, s: &mut State, err: &mut impl Write) {
        if s.drawn > 0 {
            let _ = write!(err, "\x1b[{}A", s.drawn);
        }
        for digest in &s.order {
            let (done, size, what) = s.rows[digest];
            let width = 30usize;
            let filled = if size == 0 {
                width
            } else {
                ((done as f64 / size as f64) * width as f64) as usize
            }
            .min(width);
            let label = if what.is_empty() {
                format!("{} / {}", mib(done), mib(size))
            } else {
                what.to_string()
            };
            let _ = writeln!(
                err,
                "\x1b[2K{} [{}{}] {label}",
                short(digest),
                "=".repeat(filled),
                " ".repeat(width - filled)
            );
        }
        s.drawn = s.order.len();
    }
}
