//! A bounded mailbox for a thread that sleeps in `poll(2)`: messages on a channel of fixed
//! capacity, and an eventfd that is readable while some wait. The supervisor, every bridge and
//! the mDNS responder each own one; other threads hold [`Sender`]s.
//!
//! One piece instead of a channel and an eventfd wired by hand in three places: the order
//! (queue the message, then wake; on the other side, clear the wake, then drain) is what keeps
//! a message from sleeping in the queue, and the bound is what keeps a stalled loop from
//! growing memory without end.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{mpsc, Arc};

use nix::sys::eventfd::{EfdFlags, EventFd};

/// How one thread posts to another's loop. Cheap to clone.
pub(crate) struct Sender<T> {
    tx: mpsc::SyncSender<T>,
    wake: Arc<EventFd>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }
}

/// The loop's end: poll [`Mailbox::fd`], then [`Mailbox::pop`] until it says `None`.
pub(crate) struct Mailbox<T> {
    rx: mpsc::Receiver<T>,
    wake: Arc<EventFd>,
}

/// Why a message was not posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The loop has not taken its last `capacity` messages: it is stalled or flooded.
    Full,
    /// The loop has ended.
    Closed,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::Full => "busy: its queue of requests is full; try again",
            Refused::Closed => "it has stopped",
        })
    }
}

/// A mailbox that holds at most `capacity` messages not yet taken.
pub(crate) fn mailbox<T>(capacity: usize) -> io::Result<(Sender<T>, Mailbox<T>)> {
    let wake = Arc::new(EventFd::from_flags(
        EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
    )?);
    let (tx, rx) = mpsc::sync_channel(capacity);
    Ok((
        Sender {
            tx,
            wake: wake.clone(),
        },
        Mailbox { rx, wake },
    ))
}

impl<T> Sender<T> {
    /// Queue `msg` and wake the loop; never blocks.
    pub(crate) fn post(&self, msg: T) -> Result<(), Refused> {
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => Refused::Full,
            mpsc::TrySendError::Disconnected(_) => Refused::Closed,
        })?;
        // The counter saturates only after 2^64 - 2 wakes without a read; a failed write
        // leaves it readable, which is all a wake has to do.
        let _ = self.wake.write(1);
        Ok(())
    }
}

impl<T> Mailbox<T> {
    /// What the loop polls for `POLLIN`.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The next message waiting, or `None` once there is none — and then the wake is
    /// cleared. Loop until `None` after each poll: a message posted meanwhile is either seen
    /// by the check after the clear or wakes the next poll (posting queues, then wakes).
    pub(crate) fn pop(&self) -> Option<T> {
        if let Ok(msg) = self.rx.try_recv() {
            return Some(msg);
        }
        let _ = self.wake.read();
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    fn drain(inbox: &Mailbox<u32>) -> Vec<u32> {
        std::iter::from_fn(|| inbox.pop()).take(16).collect()
    }

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    #[test]
    fn a_post_wakes_the_loop_and_taking_clears_the_wake() {
        let (tx, inbox) = mailbox::<u32>(4).unwrap();
        assert!(!readable(inbox.fd()));
        tx.post(1).unwrap();
        tx.clone().post(2).unwrap();
        assert!(readable(inbox.fd()));
        assert_eq!(drain(&inbox), [1, 2]);
        assert!(!readable(inbox.fd()));
    }

    #[test]
    fn a_full_mailbox_refuses_and_keeps_what_it_holds() {
        let (tx, inbox) = mailbox::<u32>(2).unwrap();
        tx.post(1).unwrap();
        tx.post(2).unwrap();
        assert_eq!(tx.post(3), Err(Refused::Full));
        assert_eq!(drain(&inbox), [1, 2]);
        tx.post(4).unwrap();
        assert_eq!(drain(&inbox), [4]);
    }

    #[test]
    fn a_post_while_handling_is_not_left_asleep() {
        let (tx, inbox) = mailbox::<u32>(4).unwrap();
        tx.post(1).unwrap();
        assert_eq!(inbox.pop(), Some(1));
        tx.post(2).unwrap(); // while 1 is handled
        assert_eq!(drain(&inbox), [2]);
        assert!(!readable(inbox.fd()));
        tx.post(3).unwrap(); // after the loop saw `None`: the next poll wakes
        assert!(readable(inbox.fd()));
        assert_eq!(drain(&inbox), [3]);
    }

    #[test]
    fn posting_to_an_ended_loop_says_so() {
        let (tx, inbox) = mailbox::<u32>(1).unwrap();
        drop(inbox);
        assert_eq!(tx.post(1), Err(Refused::Closed));
    }
}
