//! Stopping bridges together. A bridge's stop is a signal (close the client, end) and a join
//! (wait for its thread, at most [`STOP_WAIT`]). Signalled and joined one after another, N
//! bridges that are slow to end (a tty stuck in close) would hold the supervisor's thread N
//! times `STOP_WAIT` — and the portal's only thread, waiting for its answer, with it. So a
//! batch signals each bridge as soon as it is told to stop, and joins them all, once, with
//! one deadline set by the first signal: N bridges take about one `STOP_WAIT`.
//!
//! The join still comes before the answer and before anything that follows the stops (a
//! registry mark, a restart on the same port): "stopped" means the tty is released and the
//! port closed, as it did before.

use std::time::{Duration, Instant};

use crate::daemon::bridge::{BridgeHandle, STOP_WAIT};

/// The two halves of a bridge's stop.
pub(crate) trait Stoppable {
    /// Tell it to close its client (with `why`) and end; returns at once.
    fn signal_stop(&self, why: &str);
    /// Wait until `deadline` at most for it to end.
    fn join_by(self, deadline: Instant);
}

impl Stoppable for BridgeHandle {
    fn signal_stop(&self, why: &str) {
        BridgeHandle::signal_stop(self, why);
    }

    fn join_by(self, deadline: Instant) {
        BridgeHandle::join_by(self, deadline);
    }
}

/// Bridges signalled to stop and not joined yet.
pub(crate) struct Stopping<B: Stoppable> {
    wait: Duration,
    pending: Vec<B>,
    /// Set by the first signal of the batch.
    deadline: Option<Instant>,
}

impl Stopping<BridgeHandle> {
    pub(crate) fn new() -> Self {
        Stopping::with_wait(STOP_WAIT)
    }
}

impl<B: Stoppable> Stopping<B> {
    pub(crate) fn with_wait(wait: Duration) -> Self {
        Stopping {
            wait,
            pending: Vec::new(),
            deadline: None,
        }
    }

    /// Signal `bridge` now; it is joined by [`Stopping::join`].
    pub(crate) fn signal(&mut self, bridge: B, why: &str) {
        bridge.signal_stop(why);
        self.deadline
            .get_or_insert_with(|| Instant::now() + self.wait);
        self.pending.push(bridge);
    }

    /// Wait for every signalled bridge, all by the one deadline.
    pub(crate) fn join(&mut self) {
        let Some(deadline) = self.deadline.take() else {
            return;
        };
        for b in self.pending.drain(..) {
            b.join_by(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, Arc, Mutex};

    /// A bridge stuck in the kernel: it never ends, so a join waits out its deadline. It
    /// writes what is done to it into `journal`.
    struct Stuck {
        name: &'static str,
        journal: Arc<Mutex<Vec<String>>>,
        /// Never sent on (the sender lives as long as this), so a receive waits its timeout.
        never: (mpsc::Sender<()>, mpsc::Receiver<()>),
    }

    impl Stoppable for Stuck {
        fn signal_stop(&self, why: &str) {
            let mut j = self.journal.lock().unwrap();
            j.push(format!("signal {} ({why})", self.name));
        }

        fn join_by(self, deadline: Instant) {
            let wait = deadline.saturating_duration_since(Instant::now());
            let _ = self.never.1.recv_timeout(wait);
            self.journal
                .lock()
                .unwrap()
                .push(format!("joined {}", self.name));
        }
    }

    fn stuck(names: &[&'static str], journal: &Arc<Mutex<Vec<String>>>) -> Vec<Stuck> {
        (names.iter())
            .map(|&name| Stuck {
                name,
                journal: journal.clone(),
                never: mpsc::channel(),
            })
            .collect()
    }

    #[test]
    fn every_bridge_is_signalled_before_any_is_waited_for() {
        let journal = Arc::default();
        let mut stopping = Stopping::with_wait(Duration::ZERO);
        for b in stuck(&["a", "b", "c"], &journal) {
            stopping.signal(b, "the device was stopped");
        }
        stopping.join();
        assert_eq!(
            *journal.lock().unwrap(),
            [
                "signal a (the device was stopped)",
                "signal b (the device was stopped)",
                "signal c (the device was stopped)",
                "joined a",
                "joined b",
                "joined c",
            ]
        );
    }

    #[test]
    fn n_stuck_bridges_take_one_wait_not_n() {
        const N: usize = 5;
        let wait = Duration::from_millis(200);
        let journal = Arc::default();
        let start = Instant::now();
        let mut stopping = Stopping::with_wait(wait);
        for b in stuck(&["a", "b", "c", "d", "e"], &journal) {
            stopping.signal(b, "server shutting down");
        }
        stopping.join();
        let took = start.elapsed();
        assert!(took >= wait, "joined before the deadline: {took:?}");
        // One after another they would take N × wait (1 s); together, one wait.
        assert!(took < wait * 2, "{N} stuck bridges took {took:?}");
        assert_eq!(journal.lock().unwrap().len(), 2 * N);
    }

    #[test]
    fn a_new_batch_gets_a_new_deadline() {
        let journal = Arc::default();
        let mut stopping = Stopping::with_wait(Duration::from_millis(50));
        let mut bridges = stuck(&["a", "b"], &journal).into_iter();
        stopping.signal(bridges.next().unwrap(), "x");
        stopping.join();
        assert!(stopping.deadline.is_none() && stopping.pending.is_empty());
        let start = Instant::now();
        stopping.signal(bridges.next().unwrap(), "x");
        stopping.join();
        assert!(start.elapsed() >= Duration::from_millis(50));
        stopping.join(); // nothing pending: returns at once
    }
}
