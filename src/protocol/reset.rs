//! Reset policies: how a client's DTR/RTS become line changes at the board, sans-IO.
//!
//! Passing the client's lines straight through breaks the ESP auto-reset circuit as soon as
//! the network adds a round trip (esptool issue 383): the bootloader entry depends on IO0
//! going low *before* EN rises, and two SET-CONTROLs a round trip apart arrive in the wrong
//! window. So the `esp` and `usb-jtag` policies recognise the start of a bootloader entry in
//! the client's lines and play the whole sequence locally, with esptool's timings, one
//! atomic line change (TIOCMSET) per step.
//!
//! Lines here are in pyserial's sense (true = asserted). On a dev board's two-transistor
//! circuit EN is low iff DTR is released and RTS asserted, IO0 is low iff DTR is asserted and
//! RTS released; (asserted, asserted) and (released, released) leave both high. That is why
//! pyserial's open (DTR and RTS asserted) must reset nothing, and why we never apply the
//! IO0-low state except inside a bootloader entry we run ourselves.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::protocol::line::Lines;

/// Both lines released: EN and IO0 high, the board runs.
pub(crate) const RELEASED: Lines = Lines {
    dtr: false,
    rts: false,
};
/// EN low (chip held in reset), IO0 high.
pub(crate) const EN_LOW: Lines = Lines {
    dtr: false,
    rts: true,
};
/// IO0 low, EN high.
pub(crate) const IO0_LOW: Lines = Lines {
    dtr: true,
    rts: false,
};
/// Both asserted: both high on a two-transistor board.
pub(crate) const BOTH: Lines = Lines {
    dtr: true,
    rts: true,
};

/// `(en_high, io0_high)` for DTR/RTS (pyserial sense) through a dev board's two transistors:
/// EN is low only for (released, asserted), IO0 only for (asserted, released); both asserted
/// and both released leave both high. The one truth table for GPIO wiring and the simulator.
pub(crate) fn levels(lines: Lines) -> (bool, bool) {
    (lines != EN_LOW, lines != IO0_LOW)
}

/// esptool's timings (`reset.py`): EN low 100 ms, then IO0 held low 50 ms after EN rises.
pub(crate) const EN_LOW_HOLD: Duration = Duration::from_millis(100);
pub(crate) const IO0_HOLD: Duration = Duration::from_millis(50);
/// ESP32 revision 0 needs IO0 held much longer (esptool `--r0`: +500 ms).
pub(crate) const IO0_HOLD_R0: Duration = Duration::from_millis(550);
/// How long a client may sit in EN low reached by releasing DTR from both-asserted before it
/// counts as holding the chip in reset: longer than a round trip plus pyserial's 100 ms
/// `ign_set_control` pause, shorter than anything a person would call "holding".
pub(crate) const EN_LOW_DEFER: Duration = Duration::from_millis(500);
/// USB-Serial/JTAG steps are 100 ms apart (esptool's USBJTAGSerialReset).
pub(crate) const USB_JTAG_STEP: Duration = Duration::from_millis(100);

/// What a device's DTR/RTS are wired to, and so what the server does with the client's lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// A USB-UART bridge (or GPIOs) on the two-transistor auto-reset circuit.
    Esp { esp32r0: bool },
    /// Espressif's native USB-Serial/JTAG peripheral, which reads DTR/RTS itself.
    UsbJtag,
    /// Lines follow the client exactly (non-ESP devices).
    Passthrough,
    /// Lines never move (REPLs, boards whose reset must not be touched).
    None,
}

impl Policy {
    /// The config's spelling of the policy (`reset = "usb-jtag"`), as the portal and its API
    /// show it. `esp32r0` is a separate key, so both ESP variants are `esp`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Policy::Esp { .. } => "esp",
            Policy::UsbJtag => "usb-jtag",
            Policy::Passthrough => "passthrough",
            Policy::None => "none",
        }
    }
}

/// Where a server-initiated reset should leave the chip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResetTo {
    App,
    Bootloader,
}

/// Why a reset request could not be honoured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResetError {
    /// The device's policy is `none`: its lines never move.
    LinesDisabled,
    /// The device is not open (unplugged, or waiting to be re-opened).
    NoDevice,
}

impl std::fmt::Display for ResetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResetError::LinesDisabled => {
                write!(
                    f,
                    "this device's reset policy is `none`: its lines never move"
                )
            }
            ResetError::NoDevice => write!(f, "the device is not open"),
        }
    }
}

/// One device's reset state: the client's mirrored lines, what we last set, and the steps
/// of a sequence in progress. Pure: callers pass the time and apply the returned lines.
#[derive(Debug)]
pub(crate) struct Resetter {
    policy: Policy,
    /// The client's DTR/RTS as it last set them.
    mirror: Lines,
    /// What we last set on the device.
    applied: Lines,
    /// When the device's EN went low (by our hand), for the minimum hold time.
    en_low_since: Option<Instant>,
    /// Remaining steps of a sequence we are playing; client changes are absorbed meanwhile.
    plan: VecDeque<(Instant, Lines)>,
    /// The sequence in progress, for logs.
    playing: Option<ResetTo>,
    /// The state the client's lines were in when they last entered EN low.
    en_low_from: Option<Lines>,
    /// A client EN low that is not applied yet (see `client_lines`).
    pending_en_low: Option<Instant>,
    /// The time passed in with the line change returned last (see `applied`).
    last_step: Option<Instant>,
}

impl Resetter {
    /// The device starts with both lines released (the bridge releases them on open).
    pub(crate) fn new(policy: Policy) -> Resetter {
        Resetter {
            policy,
            mirror: RELEASED,
            applied: RELEASED,
            en_low_since: None,
            plan: VecDeque::new(),
            playing: None,
            en_low_from: None,
            pending_en_low: None,
            last_step: None,
        }
    }

    pub(crate) fn policy(&self) -> Policy {
        self.policy
    }

    /// A sequence is being played; the client's line changes are being absorbed.
    pub(crate) fn busy(&self) -> Option<ResetTo> {
        self.playing
    }

    /// Since when EN has been held low by our hand, if it is now.
    pub(crate) fn en_low_since(&self) -> Option<Instant> {
        self.en_low_since.filter(|_| self.applied == EN_LOW)
    }

    /// The client set its lines to `new`. Returns the lines to set on the device now, if
    /// any; a started sequence continues through [`Resetter::due`].
    pub(crate) fn client_lines(&mut self, new: Lines, now: Instant) -> Option<Lines> {
        let prev = std::mem::replace(&mut self.mirror, new);
        if !self.plan.is_empty() {
            return None;
        }
        match self.policy {
            Policy::None => None,
            Policy::Passthrough => self.set(new, now),
            Policy::Esp { .. } | Policy::UsbJtag => {
                // How the client got into EN low (kept while it stays there).
                let en_low_from = self.en_low_from.take();
                if new == EN_LOW {
                    self.en_low_from = if prev == EN_LOW {
                        en_low_from
                    } else {
                        Some(prev)
                    };
                }
                // The start of a bootloader entry: EN was held low and DTR rises (esptool's
                // ClassicReset, idf-monitor's to-bootloader). Passing (asserted, asserted)
                // through now would release EN with IO0 still high and boot the app.
                if prev == EN_LOW && new.dtr && !prev.dtr {
                    self.pending_en_low = None;
                    return self.start(ResetTo::Bootloader, now);
                }
                // EN low reached by releasing DTR from both-asserted is how a monitor lets go
                // of a port it opened (DTR, then RTS). On a local port the two changes are
                // microseconds apart and EN's capacitor swallows the glitch; over a network
                // they are a round trip apart. So it waits: DTR rising makes it a bootloader
                // entry, RTS released makes it nothing, and only a client that stays there
                // gets EN low.
                let ambiguous = new == EN_LOW && self.en_low_from == Some(BOTH);
                if new != EN_LOW {
                    self.pending_en_low = None;
                }
                match self.policy {
                    Policy::Esp { .. } if ambiguous => {
                        self.pending_en_low.get_or_insert(now);
                        None
                    }
                    // EN low reached by asserting RTS is a reset (esptool's and idf-monitor's
                    // hard reset): it passes at once; latency only lengthens the pulse.
                    // Everything else leaves both lines high.
                    Policy::Esp { .. } => {
                        self.set(if new == EN_LOW { EN_LOW } else { RELEASED }, now)
                    }
                    // The USB peripheral re-enumerates on any reset, so nothing is applied
                    // until the pattern is complete: a reset (EN low entered by asserting
                    // RTS) released with IO0 high is a reset into the application.
                    _ => {
                        if prev == EN_LOW && new == RELEASED && en_low_from == Some(RELEASED) {
                            self.start(ResetTo::App, now)
                        } else {
                            None
                        }
                    }
                }
            }
        }
    }

    /// Reset the chip on the server's own initiative (the portal's reset button).
    pub(crate) fn reset(&mut self, to: ResetTo, now: Instant) -> Result<Option<Lines>, ResetError> {
        if self.policy == Policy::None {
            return Err(ResetError::LinesDisabled);
        }
        self.plan.clear();
        Ok(self.start(to, now))
    }

    /// When the next step of a sequence (or a deferred EN low) is due.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let deferred = self.pending_en_low.map(|t| t + EN_LOW_DEFER);
        [self.plan.front().map(|&(at, _)| at), deferred]
            .into_iter()
            .flatten()
            .min()
    }

    /// The caller applied the line change last returned (by `client_lines`, `reset` or `due`)
    /// at `at`, which may be later than the time it passed in. The rest of the sequence moves
    /// back by the difference, so every hold is measured from when its step really happened.
    pub(crate) fn applied(&mut self, at: Instant) {
        if let Some(planned) = self.last_step.take() {
            let lag = at.saturating_duration_since(planned);
            for step in &mut self.plan {
                step.0 += lag;
            }
            if self.applied == EN_LOW {
                self.en_low_since = Some(at);
            }
        }
    }

    /// The next step that is due at `now`, if any. Call until it returns `None`: every step
    /// must reach the device as its own line change, even when the caller woke up late.
    pub(crate) fn due(&mut self, now: Instant) -> Option<Lines> {
        if let Some(t) = self.pending_en_low {
            if now >= t + EN_LOW_DEFER {
                self.pending_en_low = None;
                if self.mirror == EN_LOW {
                    return self.set(EN_LOW, now);
                }
            }
        }
        let &(at, lines) = self.plan.front()?;
        if at > now {
            return None;
        }
        self.plan.pop_front();
        // Holds are minimums: a step applied late pushes the rest back by as much, so IO0 is
        // never held less than its time however late the caller woke up.
        let lag = now.saturating_duration_since(at);
        for step in &mut self.plan {
            step.0 += lag;
        }
        if self.plan.is_empty() {
            self.playing = None;
        }
        self.set(lines, now)
    }

    /// The client left: its lines count as released. A sequence in progress finishes.
    pub(crate) fn client_left(&mut self, now: Instant) -> Option<Lines> {
        self.hand_over(RELEASED, now)
    }

    /// Another client takes control with `lines` as it last set them (while it observed,
    /// or before it lost control): they apply as the policy passes lines that are not part
    /// of a reset pattern — as they are for `passthrough`, released for the ESP policies —
    /// and never start a sequence. One in progress plays on.
    pub(crate) fn hand_over(&mut self, lines: Lines, now: Instant) -> Option<Lines> {
        self.mirror = lines;
        self.pending_en_low = None;
        self.en_low_from = None;
        if !self.plan.is_empty() {
            return None;
        }
        match self.policy {
            Policy::None => None,
            Policy::Passthrough => self.set(lines, now),
            Policy::Esp { .. } | Policy::UsbJtag => self.set(RELEASED, now),
        }
    }

    fn set(&mut self, lines: Lines, now: Instant) -> Option<Lines> {
        if lines == self.applied {
            return None;
        }
        self.last_step = Some(now);
        if lines == EN_LOW {
            self.en_low_since = Some(now);
        } else if self.applied == EN_LOW {
            self.en_low_since = None;
        }
        self.applied = lines;
        Some(lines)
    }

    /// Queue the sequence for `to` and return its first step if it is due now.
    fn start(&mut self, to: ResetTo, now: Instant) -> Option<Lines> {
        let steps: Vec<(Duration, Lines)> = match (self.policy, to) {
            // esptool's USBJTAGSerialReset: the peripheral resets into the loader when RTS is
            // asserted with DTR released *coming from* both asserted, so those two steps are
            // separate line changes with no delay between them.
            (Policy::UsbJtag, ResetTo::Bootloader) => vec![
                (Duration::ZERO, RELEASED),
                (USB_JTAG_STEP, IO0_LOW),
                (USB_JTAG_STEP, BOTH),
                (Duration::ZERO, EN_LOW),
                (USB_JTAG_STEP, RELEASED),
            ],
            (Policy::UsbJtag, ResetTo::App) => vec![
                (Duration::ZERO, RELEASED),
                (Duration::ZERO, EN_LOW),
                (USB_JTAG_STEP, RELEASED),
            ],
            (_, ResetTo::App) => vec![(Duration::ZERO, EN_LOW), (EN_LOW_HOLD, RELEASED)],
            (policy, ResetTo::Bootloader) => {
                let io0_hold = match policy {
                    Policy::Esp { esp32r0: true } => IO0_HOLD_R0,
                    _ => IO0_HOLD,
                };
                // EN low for at least EN_LOW_HOLD, counting the time it already spent low by
                // our hand; then IO0 low and EN high in one change (EN's RC delay makes IO0
                // win); then both released.
                let already = self
                    .en_low_since
                    .filter(|_| self.applied == EN_LOW)
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                vec![
                    (Duration::ZERO, EN_LOW),
                    (EN_LOW_HOLD.saturating_sub(already), IO0_LOW),
                    (io0_hold, RELEASED),
                ]
            }
        };
        self.playing = Some(to);
        self.plan.clear();
        let mut at = now;
        for (delay, lines) in steps {
            at += delay;
            self.plan.push_back((at, lines));
        }
        // Leading steps that change nothing are skipped by `set`; return the first real one.
        while let Some(&(at, _)) = self.plan.front() {
            if at > now {
                break;
            }
            if let Some(l) = self.due(now) {
                return Some(l);
            }
        }
        None
    }
}

/// What a finished sequence looked like, for the log: where it went and the offset at which
/// each step actually reached the device (users and tests read the timings there).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Played {
    pub(crate) to: ResetTo,
    /// `dR@0.0ms DR@100.2ms …` — D/R asserted, d/r released.
    pub(crate) steps: String,
}

/// A device's reset policy plus the record of the sequence in progress, and whether the chip
/// is known to be in its loader. Pure: the caller sets each returned line change on the
/// device as one call and reports it with [`LineDriver::applied`].
#[derive(Debug)]
pub(crate) struct LineDriver {
    resetter: Resetter,
    /// The sequence being played: where to, from when, and its steps so far.
    trace: Option<(ResetTo, Instant, String)>,
    /// A bootloader entry finished and no line has moved since (or an ESP raw session left
    /// the chip there): the next raw session's SYNC needs no reset.
    in_loader: bool,
}

impl LineDriver {
    pub(crate) fn new(policy: Policy) -> LineDriver {
        LineDriver {
            resetter: Resetter::new(policy),
            trace: None,
            in_loader: false,
        }
    }

    pub(crate) fn policy(&self) -> Policy {
        self.resetter.policy()
    }

    pub(crate) fn in_loader(&self) -> bool {
        self.in_loader
    }

    /// What a session that ended says about the chip.
    pub(crate) fn set_in_loader(&mut self, yes: bool) {
        self.in_loader = yes;
    }

    /// When [`LineDriver::due`] has a step.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.resetter.deadline()
    }

    /// The client set its lines. Returns the change to make now, and the sequence this
    /// started, if it started one (the server plays it from here).
    pub(crate) fn client_lines(
        &mut self,
        lines: Lines,
        now: Instant,
    ) -> (Option<Lines>, Option<ResetTo>) {
        let was_busy = self.resetter.busy();
        let en_low_since = self.resetter.en_low_since();
        let change = self.resetter.client_lines(lines, now);
        let started = match (was_busy, self.resetter.busy()) {
            (None, Some(to)) => Some(to),
            _ => None,
        };
        if let Some(to) = started {
            // A bootloader entry usually starts from an EN-low the client already caused:
            // the trace starts there, so the log shows how long EN was really held low.
            self.trace = Some(match en_low_since {
                Some(t0) => (to, t0, " dR@0.0ms".to_string()),
                None => (to, now, String::new()),
            });
        }
        (change, started)
    }

    /// Reset on the server's own initiative; returns the first change to make now.
    pub(crate) fn reset(&mut self, to: ResetTo, now: Instant) -> Result<Option<Lines>, ResetError> {
        let first = self.resetter.reset(to, now)?;
        self.trace = Some((to, now, String::new()));
        Ok(first)
    }

    /// The next step due at `now`; call until `None`.
    pub(crate) fn due(&mut self, now: Instant) -> Option<Lines> {
        self.resetter.due(now)
    }

    /// The client left: its lines count as released.
    pub(crate) fn client_left(&mut self, now: Instant) -> Option<Lines> {
        self.resetter.client_left(now)
    }

    /// Another client takes control with its own lines (see [`Resetter::hand_over`]).
    pub(crate) fn hand_over(&mut self, lines: Lines, now: Instant) -> Option<Lines> {
        self.resetter.hand_over(lines, now)
    }

    /// A reset sequence is being played.
    pub(crate) fn playing(&self) -> bool {
        self.resetter.busy().is_some()
    }

    /// `lines` reached the device at `at`. Returns the sequence this finished, if any.
    pub(crate) fn applied(&mut self, lines: Lines, at: Instant) -> Option<Played> {
        if self.trace.is_none() {
            self.trace = self.resetter.busy().map(|to| (to, at, String::new()));
        }
        if let Some((_, t0, steps)) = &mut self.trace {
            use std::fmt::Write as _;
            let _ = write!(
                steps,
                " {}{}@{:.1}ms",
                if lines.dtr { 'D' } else { 'd' },
                if lines.rts { 'R' } else { 'r' },
                at.duration_since(*t0).as_secs_f64() * 1e3
            );
        }
        self.resetter.applied(at);
        self.in_loader = false;
        if self.resetter.busy().is_some() {
            return None;
        }
        let (to, _, steps) = self.trace.take()?;
        self.in_loader = to == ResetTo::Bootloader;
        Some(Played { to, steps })
    }
}

#[cfg(test)]
#[path = "reset_test.rs"]
mod tests;
