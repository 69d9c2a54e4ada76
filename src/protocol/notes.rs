//! What the protocol cores have to say, as values: the daemon decides whether and how loudly
//! it reaches the log (and the cores stay testable on what they say, not only on what they do).

use std::collections::VecDeque;
use std::fmt::Display;

use super::Voice;

/// The most notes kept between two times the daemon takes them; later ones are counted.
const NOTES_MAX: usize = 16;

/// How much a note matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Weight {
    /// Worth telling: a protocol decided, a baud changed, a bootloader entered.
    Told,
    /// Something went wrong: a setting refused, an answer that did not come.
    Trouble,
    /// Only for someone debugging.
    Trace,
}

impl Voice {
    /// The level a note of this weight is logged at.
    pub(crate) fn level(self, weight: Weight) -> log::Level {
        match weight {
            Weight::Told => self.info(),
            Weight::Trouble => self.warn(),
            Weight::Trace => log::Level::Debug,
        }
    }
}

/// A note of one core: what it says and how much it matters.
pub(crate) trait Note: Display {
    fn weight(&self) -> Weight;
}

/// Notes waiting for the daemon, bounded: a client that makes a core say something with every
/// byte (a flood of unknown Telnet commands) costs a count, not memory.
#[derive(Debug)]
pub(crate) struct Notes<N> {
    queue: VecDeque<N>,
    dropped: u32,
}

impl<N> Default for Notes<N> {
    fn default() -> Notes<N> {
        Notes {
            queue: VecDeque::new(),
            dropped: 0,
        }
    }
}

impl<N: Note> Notes<N> {
    pub(crate) fn push(&mut self, note: N) {
        if self.queue.len() < NOTES_MAX {
            self.queue.push_back(note);
        } else {
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.dropped == 0
    }

    /// Hand every note to `f`, oldest first; returns how many were not kept.
    pub(crate) fn take(&mut self, f: &mut dyn FnMut(Weight, &dyn Display)) -> u32 {
        for note in self.queue.drain(..) {
            f(note.weight(), &note);
        }
        std::mem::take(&mut self.dropped)
    }

    /// Move every note into `to`, each made one of its notes by `wrap`.
    pub(crate) fn move_into<M: Note>(&mut self, to: &mut Notes<M>, wrap: fn(N) -> M) {
        for note in self.queue.drain(..) {
            to.push(wrap(note));
        }
        to.dropped = to.dropped.saturating_add(std::mem::take(&mut self.dropped));
    }

    #[cfg(test)]
    pub(crate) fn drain(&mut self) -> Vec<N> {
        self.dropped = 0;
        self.queue.drain(..).collect()
    }
}
