//! When a listener that cannot accept (out of descriptors, most likely: EMFILE) tries again,
//! pure. The bridges and the portal both rest their listener after a failed accept, so the loop
//! does not spin on a socket that stays readable, while connected clients are still served; the
//! pause doubles while it keeps failing. The loops log what they are told: the first failure,
//! and the recovery with how many attempts failed.

use std::time::{Duration, Instant};

/// The first pause after a failed accept.
const FIRST: Duration = Duration::from_millis(50);
/// The longest pause: a listener that recovers is back within this.
pub(crate) const LONGEST: Duration = Duration::from_secs(2);

/// A listener's rest after failed accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AcceptBackoff {
    /// Resting until, the pause that led there, failures in a row; `None`: accepting.
    rest: Option<(Instant, Duration, u32)>,
}

/// What a failed accept means for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failed {
    /// The first of a run: say so (once).
    First,
    /// One more of a run already said.
    Again,
}

impl AcceptBackoff {
    /// The listener must not be polled now.
    pub(crate) fn resting(&self, now: Instant) -> bool {
        self.rest.is_some_and(|(until, _, _)| now < until)
    }

    /// When the rest ends (the loop wakes then to try again).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.rest.map(|(until, _, _)| until)
    }

    /// The rest is over: try to accept even without a readable listener (the connection that
    /// could not be taken is still queued, and poll already said so once).
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.rest.is_some() && !self.resting(now)
    }

    /// An accept failed at `now`: rest, twice as long as last time, at most [`LONGEST`].
    pub(crate) fn failed(&mut self, now: Instant) -> Failed {
        let (pause, failures, said) = match self.rest {
            None => (FIRST, 1, Failed::First),
            Some((_, pause, n)) => ((pause * 2).min(LONGEST), n + 1, Failed::Again),
        };
        self.rest = Some((now + pause, pause, failures));
        said
    }

    /// An accept succeeded: the failures of the run that ended, if one did.
    pub(crate) fn accepted(&mut self) -> Option<u32> {
        self.rest.take().map(|(_, _, n)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_doubles_to_its_cap_and_ends_with_a_count() {
        let t0 = Instant::now();
        let mut b = AcceptBackoff::default();
        assert!(!b.resting(t0) && !b.due(t0) && b.deadline().is_none());
        assert_eq!(b.failed(t0), Failed::First);
        assert_eq!(b.deadline(), Some(t0 + FIRST));
        assert!(b.resting(t0) && !b.due(t0));
        assert!(b.due(t0 + FIRST));
        let mut now = t0 + FIRST;
        let mut pauses = vec![];
        for _ in 0..8 {
            assert_eq!(b.failed(now), Failed::Again);
            let until = b.deadline().unwrap();
            pauses.push(until - now);
            now = until;
        }
        assert_eq!(pauses[0], 2 * FIRST);
        assert_eq!(*pauses.last().unwrap(), LONGEST);
        assert!(pauses.iter().all(|p| *p <= LONGEST));
        assert_eq!(b.accepted(), Some(9));
        assert_eq!(b.accepted(), None);
        assert!(!b.resting(now));
    }
}
