//! The queue between a template build and the thread that writes its events to the builder
//! sandbox. A builder that stops reading (stopped, or just slow) must not make the server
//! buffer a RUN step's output without end, and the build must not wait on it either: output
//! over the bound is dropped, and the reader is told how much with a marker line. Every other
//! event (steps, status, warnings, the final `done` or `error`) is always kept; a build sends
//! a bounded number of those.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use hutch_wire::build_channel::BuildChannelEvent;

/// How much RUN output may wait for a slow builder.
pub const OUTPUT_BYTES: usize = 4 << 20;

struct State {
    events: VecDeque<BuildChannelEvent>,
    /// Output bytes in `events`.
    output_bytes: usize,
    /// Output bytes dropped since the last marker.
    dropped: u64,
    senders: usize,
    receiver_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    limit: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending half; cloned freely, never blocks.
pub struct EventSender(Arc<Shared>);

/// The receiving half: a blocking iterator that ends once every sender is gone and the queue
/// is drained.
pub struct EventReceiver(Arc<Shared>);

/// A queue that keeps at most `output_limit` bytes of RUN output.
pub fn bounded(output_limit: usize) -> (EventSender, EventReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            events: VecDeque::new(),
            output_bytes: 0,
            dropped: 0,
            senders: 1,
            receiver_gone: false,
        }),
        ready: Condvar::new(),
        limit: output_limit,
    });
    (EventSender(Arc::clone(&shared)), EventReceiver(shared))
}

fn output_len(event: &BuildChannelEvent) -> Option<usize> {
    match event {
        BuildChannelEvent::Output { data, .. } => Some(data.len()),
        _ => None,
    }
}

impl EventSender {
    pub fn send(&self, event: BuildChannelEvent) {
        let mut state = self.0.lock();
        if state.receiver_gone {
            return;
        }
        let len = output_len(&event);
        if let Some(len) = len
            && state.output_bytes + len > self.0.limit
        {
            state.dropped += len as u64;
            return;
        }
        if state.dropped > 0 {
            let marker = format!(
                "[hutch: {} bytes of build output dropped; the builder read too slowly]\n",
                state.dropped
            );
            // The marker goes in when it fits, or, overshooting by its few bytes, before the
            // last event of the build so the reader always learns of the gap.
            let last = matches!(
                event,
                BuildChannelEvent::Done { .. } | BuildChannelEvent::Error { .. }
            );
            if last || state.output_bytes + marker.len() <= self.0.limit {
                state.output_bytes += marker.len();
                state.events.push_back(BuildChannelEvent::Output {
                    stderr: true,
                    data: marker,
                });
                state.dropped = 0;
            }
        }
        state.output_bytes += len.unwrap_or(0);
        state.events.push_back(event);
        self.0.ready.notify_one();
    }
}

impl Clone for EventSender {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Self(Arc::clone(&self.0))
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.senders -= 1;
        if state.senders == 0 {
            self.0.ready.notify_all();
        }
    }
}

impl Iterator for EventReceiver {
    type Item = BuildChannelEvent;

    fn next(&mut self) -> Option<BuildChannelEvent> {
        let mut state = self.0.lock();
        loop {
            if let Some(event) = state.events.pop_front() {
                state.output_bytes -= output_len(&event).unwrap_or(0);
                return Some(event);
            }
            if state.senders == 0 {
                return None;
            }
            state = self.0.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver_gone = true;
        state.events.clear();
        state.output_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(n: usize) -> BuildChannelEvent {
        BuildChannelEvent::Output {
            stderr: false,
            data: "x".repeat(n),
        }
    }

    fn step(i: usize) -> BuildChannelEvent {
        BuildChannelEvent::Step {
            text: format!("step {i}"),
        }
    }

    #[test]
    fn output_past_the_bound_is_dropped_with_a_marker_and_nothing_else_is() {
        let (tx, rx) = bounded(1000);
        // A stopped reader: 100 MB of output sent, nothing read.
        for i in 0..100_000 {
            tx.send(output(1000));
            if i % 10_000 == 0 {
                tx.send(step(i / 10_000));
            }
        }
        tx.send(BuildChannelEvent::Done {
            metadata: serde_json::json!({}),
        });
        {
            let state = tx.0.lock();
            assert!(state.output_bytes <= 1000 + 100, "{}", state.output_bytes);
            assert!(state.events.len() < 40, "{}", state.events.len());
        }
        drop(tx);
        let events: Vec<_> = rx.collect();
        let steps = events
            .iter()
            .filter(|e| matches!(e, BuildChannelEvent::Step { .. }))
            .count();
        assert_eq!(steps, 10);
        assert!(matches!(
            events.last(),
            Some(BuildChannelEvent::Done { .. })
        ));
        let markers: Vec<&String> = events
            .iter()
            .filter_map(|e| match e {
                BuildChannelEvent::Output { data, .. } if data.starts_with("[hutch:") => Some(data),
                _ => None,
            })
            .collect();
        assert_eq!(markers.len(), 1);
        assert!(markers[0].contains("99999000 bytes of build output dropped"));
    }

    #[test]
    fn a_reader_that_keeps_up_loses_nothing() {
        let (tx, rx) = bounded(1000);
        let reader = std::thread::spawn(move || rx.map(|e| output_len(&e)).collect::<Vec<_>>());
        for _ in 0..100 {
            tx.send(output(10));
        }
        drop(tx);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), 100);
        assert!(got.iter().all(|l| *l == Some(10)));
    }

    #[test]
    fn sending_after_the_reader_is_gone_keeps_nothing() {
        let (tx, rx) = bounded(1000);
        drop(rx);
        tx.send(step(1));
        assert!(tx.0.lock().events.is_empty());
    }
}
