//! How a daemon thread sleeps: in `poll(2)` on its descriptors until one is ready or its next
//! deadline passes. One piece for the supervisor, the bridges, the portal and the mDNS
//! responder, so each rounds its timeout and treats a failed poll the same way.

use std::fmt::Display;
use std::thread;
use std::time::{Duration, Instant};

use log::error;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollTimeout};

/// The longest single sleep: a deadline further away is slept towards in steps (it also keeps
/// the milliseconds inside poll's `i32`).
const CAP: Duration = Duration::from_secs(60);
/// After a failed poll (which should not happen: it means a bad descriptor), so a broken loop
/// costs a wake-up every 100 ms instead of a core.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How a sleep ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Woke {
    /// A descriptor is ready or the deadline passed: the `revents` say which.
    Ready,
    /// A signal interrupted the poll, or it failed (logged, paused on): no `revents` to read.
    Interrupted,
}

/// The poll timeout that wakes at `deadline` and not before: rounded up to the next
/// millisecond (waking early would only poll again), capped at [`CAP`]; `None`: no deadline.
pub(crate) fn timeout_until(deadline: Option<Instant>, now: Instant) -> PollTimeout {
    deadline.map_or(PollTimeout::NONE, |d| {
        let left = d.saturating_duration_since(now).min(CAP);
        let mut ms = left.as_millis() as i32;
        if left > Duration::from_millis(ms as u64) {
            ms += 1;
        }
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
    })
}

/// Sleep on `fds` until one is ready or `deadline` passes; `who` names the thread in the one
/// line a failed poll gets.
pub(crate) fn poll_until(fds: &mut [PollFd], deadline: Option<Instant>, who: &dyn Display) -> Woke {
    match poll(fds, timeout_until(deadline, Instant::now())) {
        Ok(_) => Woke::Ready,
        Err(Errno::EINTR) => Woke::Interrupted,
        Err(e) => {
            error!("{who}: poll failed: {e}");
            thread::sleep(ERROR_PAUSE);
            Woke::Interrupted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_wakes_at_the_deadline_not_before() {
        let now = Instant::now();
        let ms = |t: PollTimeout| i32::from(t);
        assert_eq!(timeout_until(None, now), PollTimeout::NONE);
        assert_eq!(ms(timeout_until(Some(now), now)), 0);
        assert_eq!(
            ms(timeout_until(Some(now - Duration::from_secs(1)), now)),
            0
        );
        assert_eq!(
            ms(timeout_until(Some(now + Duration::from_millis(5)), now)),
            5
        );
        assert_eq!(
            ms(timeout_until(Some(now + Duration::from_micros(5_001)), now)),
            6
        );
        assert_eq!(
            ms(timeout_until(Some(now + Duration::from_secs(3600)), now)),
            60_000
        );
    }
}
