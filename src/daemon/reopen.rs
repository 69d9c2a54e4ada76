//! When to try opening a device again, and how loudly to say that it failed. Pure: the
//! bridge passes the time and logs what it is told to.
//!
//! Right after a device appears, udev may still be setting its group and mode: try often
//! (and quietly, after saying it once) for a while, so it is served within a few hundred ms
//! of becoming openable even when no inotify event says so. After that, or once it has been
//! open, failures are real problems: back off from 0.5 s to 30 s and say so every time.

use std::time::{Duration, Instant};

/// The first eager retry; doubles up to [`EAGER_CAP`].
const EAGER_FIRST: Duration = Duration::from_millis(25);
const EAGER_CAP: Duration = Duration::from_millis(100);
/// How long after a device appeared failures count as "not ready yet".
const EAGER_FOR: Duration = Duration::from_secs(5);
/// The first slow retry; doubles up to [`SLOW_CAP`].
const SLOW_FIRST: Duration = Duration::from_millis(500);
const SLOW_CAP: Duration = Duration::from_secs(30);

/// How to report a failed open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// The first failure of a device that just appeared: one error line, no more.
    Once,
    /// A device that is probably still being set up: debug only.
    Quiet,
    /// A real problem: an error line, and the registry shows it.
    Error,
}

/// The retry schedule of one device.
#[derive(Debug)]
pub(crate) struct Backoff {
    /// When the device appeared (after its settle delay).
    appeared: Instant,
    /// The next eager delay; `None` before the first failure.
    eager: Option<Duration>,
    slow: Duration,
    /// The device has been open once: later failures are real problems.
    opened: bool,
}

impl Backoff {
    pub(crate) fn new(appeared: Instant) -> Backoff {
        Backoff {
            appeared,
            eager: None,
            slow: SLOW_FIRST,
            opened: false,
        }
    }

    /// The device opened: the next failure starts the slow schedule from the start.
    pub(crate) fn opened(&mut self) {
        self.opened = true;
        self.slow = SLOW_FIRST;
    }

    /// An open failed at `now`: how long to wait, and how to say it.
    pub(crate) fn failed(&mut self, now: Instant) -> (Duration, Report) {
        if !self.opened && now.saturating_duration_since(self.appeared) < EAGER_FOR {
            let (delay, report) = match self.eager {
                None => (EAGER_FIRST, Report::Once),
                Some(d) => (d, Report::Quiet),
            };
            self.eager = Some((delay * 2).min(EAGER_CAP));
            return (delay, report);
        }
        let delay = self.slow;
        self.slow = (self.slow * 2).min(SLOW_CAP);
        (delay, Report::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn eager_while_new_then_doubling_to_thirty_seconds() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        let eager: Vec<_> = (0..5).map(|_| b.failed(t0 + ms(10))).collect();
        assert_eq!(
            eager,
            [
                (ms(25), Report::Once),
                (ms(50), Report::Quiet),
                (ms(100), Report::Quiet),
                (ms(100), Report::Quiet),
                (ms(100), Report::Quiet),
            ]
        );
        let late = t0 + EAGER_FOR;
        let slow: Vec<_> = (0..8).map(|_| b.failed(late).0.as_millis()).collect();
        assert_eq!(slow, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(b.failed(late).1, Report::Error);
    }

    #[test]
    fn a_device_that_was_open_is_never_eager_and_starts_over() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        b.failed(t0 + EAGER_FOR);
        b.failed(t0 + EAGER_FOR);
        b.opened();
        assert_eq!(b.failed(t0 + ms(1)), (ms(500), Report::Error));
    }
}
