//! What a pull or push reports while it works: structured events for the API, and a
//! terminal renderer for the CLI (on a TTY a bar per transfer under way, drawn by
//! `indicatif`, and a line per finished layer; plain lines otherwise, no escape codes).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
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

/// Draws events on stderr: on a terminal a bar per layer being transferred, a line once it
/// is done; otherwise a line per layer start and end.
pub struct Renderer {
    /// `None` off a terminal: plain lines.
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    layers: Mutex<HashMap<String, ProgressBar>>,
    style: ProgressStyle,
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// The line an event prints off a terminal, if any.
fn plain_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::Resolved { .. } | Event::LayerRetry { .. } | Event::Done { .. } => {
            return always_line(event);
        }
        Event::LayerSkipped { digest, .. } => format!("{}: already present", short(digest)),
        Event::LayerStarted { digest, size } => {
            format!("{}: {} to transfer", short(digest), mib(*size))
        }
        Event::LayerProgress { .. } => return None,
        Event::LayerDone { digest, .. } => format!("{}: done", short(digest)),
    })
}

/// The line an event prints on a terminal too (beside the bars).
fn always_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::Resolved {
            reference,
            manifest_digest,
            layers,
            total_bytes,
        } => format!(
            "{reference}: {manifest_digest}, {layers} layers, {}",
            mib(*total_bytes)
        ),
        Event::LayerRetry {
            digest,
            offset,
            error,
        } => format!(
            "{}: transfer broke ({error}); resuming at {offset}",
            short(digest)
        ),
        Event::Done { image, id, .. } => format!("{image}: {id}"),
        _ => return None,
    })
}

impl Renderer {
    pub fn new(tty: bool) -> Self {
        Self {
            bars: tty.then(|| Bars::new(MultiProgress::new())),
        }
    }

    pub fn handle(&self, event: Event) {
        match &self.bars {
            None => {
                if let Some(line) = plain_line(&event) {
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                }
            }
            Some(bars) => bars.handle(&event),
        }
    }
}

impl Bars {
    fn new(multi: MultiProgress) -> Self {
        Self {
            multi,
            layers: Mutex::new(HashMap::new()),
            style: ProgressStyle::with_template(
                "{prefix} [{bar:30}] {binary_bytes} / {binary_total_bytes} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        }
    }

    fn handle(&self, event: &Event) {
        match event {
            Event::LayerStarted { digest, size } => {
                self.bar(digest, *size);
            }
            Event::LayerProgress {
                digest,
                bytes,
                size,
            } => self.bar(digest, *size).set_position(*bytes),
            // A finished layer leaves the bars for its plain line above them: the bars are
            // the transfers under way (a pull runs a few at once), however many layers the
            // image has.
            Event::LayerSkipped { digest, .. } | Event::LayerDone { digest, .. } => {
                if let Some(bar) = self.lock().remove(digest) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                if let Some(line) = plain_line(event) {
                    let _ = self.multi.println(line);
                }
            }
            Event::Done { .. } => {
                // Bars of transfers that never finished stay as they are; the result goes
                // below them.
                for (_, bar) in self.lock().drain() {
                    bar.abandon();
                }
                if let Some(line) = always_line(event) {
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                }
            }
            Event::Resolved { .. } | Event::LayerRetry { .. } => {
                if let Some(line) = always_line(event) {
                    let _ = self.multi.println(line);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ProgressBar>> {
        self.layers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bar of a layer under way, added below the others when first seen.
    fn bar(&self, digest: &str, size: u64) -> ProgressBar {
        let mut layers = self.lock();
        layers
            .entry(digest.to_string())
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(size));
                bar.set_style(self.style.clone());
                bar.set_prefix(short(digest).to_string());
                bar
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_a_terminal_events_are_plain_lines() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let lines: Vec<Option<String>> = [
            Event::Resolved {
                reference: "r/x:1".into(),
                manifest_digest: "sha256:m".into(),
                layers: 2,
                total_bytes: 3 << 20,
            },
            Event::LayerSkipped {
                digest: digest.clone(),
                size: 1,
            },
            Event::LayerStarted {
                digest: digest.clone(),
                size: 1 << 20,
            },
            Event::LayerProgress {
                digest: digest.clone(),
                bytes: 1,
                size: 2,
            },
            Event::LayerRetry {
                digest: digest.clone(),
                offset: 7,
                error: "reset".into(),
            },
            Event::LayerDone {
                digest: digest.clone(),
                size: 2,
            },
            Event::Done {
                reference: "r/x:1".into(),
                image: "r/x:1".into(),
                id: "sha256:i".into(),
            },
        ]
        .iter()
        .map(plain_line)
        .collect();
        let want = [
            Some("r/x:1: sha256:m, 2 layers, 3.0 MiB"),
            Some("abababababab: already present"),
            Some("abababababab: 1.0 MiB to transfer"),
            None,
            Some("abababababab: transfer broke (reset); resuming at 7"),
            Some("abababababab: done"),
            Some("r/x:1: sha256:i"),
        ];
        assert_eq!(lines, want.map(|l| l.map(String::from)));
        for line in lines.iter().flatten() {
            assert!(!line.contains('\x1b'), "no escape codes: {line:?}");
        }
    }

    /// However many layers an image has, the bars on screen are the transfers under way.
    #[test]
    fn a_terminal_shows_a_bar_per_transfer_under_way_only() {
        let bars = Bars::new(MultiProgress::with_draw_target(
            indicatif::ProgressDrawTarget::hidden(),
        ));
        let digest = |i: usize| format!("sha256:{i:064x}");
        let mut most = 0;
        for wave in (0..300).collect::<Vec<_>>().chunks(3) {
            for &i in wave {
                bars.handle(&Event::LayerSkipped {
                    digest: digest(1000 + i),
                    size: 5,
                });
                bars.handle(&Event::LayerStarted {
                    digest: digest(i),
                    size: 10,
                });
                bars.handle(&Event::LayerProgress {
                    digest: digest(i),
                    bytes: 5,
                    size: 10,
                });
            }
            most = most.max(bars.lock().len());
            for &i in wave {
                bars.handle(&Event::LayerDone {
                    digest: digest(i),
                    size: 10,
                });
            }
        }
        assert_eq!(most, 3, "one bar per transfer under way");
        assert!(bars.lock().is_empty(), "finished layers keep no bar");
        bars.handle(&Event::LayerStarted {
            digest: digest(1),
            size: 10,
        });
        bars.handle(&Event::Done {
            reference: "r/x:1".into(),
            image: "r/x:1".into(),
            id: "sha256:i".into(),
        });
        assert!(bars.lock().is_empty());
    }
}
