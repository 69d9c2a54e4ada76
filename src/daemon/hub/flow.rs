//! The bytes and the effects: the device's life (open, lost, back within the grace period),
//! its output to the controlling session and the observers, the controller's input through
//! its session to the device, the effect in flight, resets, modem lines and timers.

use std::io;
use std::sync::mpsc;
use std::time::Instant;

use log::{debug, error, info, warn};

use super::{say_notes, Client, Hub, Lag, Link, DRAIN_WAIT, MODEM_POLL, REOPEN_LOST};
use crate::daemon::control::{Reply, RequestError};
use crate::daemon::peerlog::Verdict;
use crate::daemon::registry::{DeviceState, Stats};
use crate::daemon::reopen::Report;
use crate::device::{Device, DevicePath};
use crate::protocol::line::{Lines, Purge};
use crate::protocol::reset::{Played, ResetError, ResetTo};
use crate::protocol::session::{Effect, Failure, Out, Session};

impl Hub {
    /// The device opened (at [`Hub::open_settings`]).
    pub(crate) fn opened(&mut self, mut dev: Box<dyn Device>, now: Instant) {
        let settings = self.open_settings();
        info!("{}: opened {} at {}", self.name, self.spec.path, settings);
        self.backoff.opened();
        self.lines = crate::protocol::reset::LineDriver::new(self.lines.policy());
        let was = std::mem::replace(&mut self.link, Link::Closed { at: now });
        if let (Some(c), Link::Lost { since, dropped, .. }) = (self.clients.first(), was) {
            // Re-enumerated (a native-USB chip resetting): the clients carry on.
            let dropped = match dropped {
                0 => String::new(),
                n => format!(" ({n} bytes it sent meanwhile were dropped)"),
            };
            info!(
                "{}: device is back after {:.2} s; client {} carries on at {settings}{dropped}",
                self.name,
                now.saturating_duration_since(since).as_secs_f32(),
                c.addr,
            );
            if let Ok(st) = dev.modem_status() {
                for c in self.clients.iter_mut() {
                    c.session.modem_status(st, &mut c.to_client);
                }
            }
        }
        self.link = Link::Open(dev);
        self.publish();
    }

    pub(crate) fn open_failed(&mut self, e: io::Error, now: Instant) {
        let path = &self.spec.path;
        if let Link::Lost { at, .. } = &mut self.link {
            debug!("{}: {path} not back yet: {e}", self.name);
            *at = now + REOPEN_LOST;
            return;
        }
        let (delay, report) = self.backoff.failed(now);
        let hint = "check that it is plugged in and that this user may open it";
        match report {
            Report::Once => error!("{}: cannot open {path}: {e}; retrying ({hint})", self.name),
            Report::Quiet => debug!("{}: {path} not openable yet: {e}", self.name),
            Report::Error => {
                error!(
                    "{}: cannot open {path}: {e}; retrying in {:.1} s ({hint})",
                    self.name,
                    delay.as_secs_f32()
                );
                self.shared.registry.set_state(
                    &self.shared.key,
                    DeviceState::Error(format!("cannot open {path}: {e}")),
                );
            }
        }
        self.link = Link::Closed { at: now + delay };
    }

    /// The device's node was removed, or reading or writing it failed.
    pub(crate) fn device_lost(&mut self, why: &str, now: Instant) {
        self.to_device.clear();
        self.shared
            .registry
            .set_state(&self.shared.key, DeviceState::Starting);
        match self.clients.first() {
            Some(c) if !self.shared.grace.is_zero() => {
                // Native-USB chips vanish for a moment when they reset; keep the clients.
                warn!(
                    "{}: device {} went away ({why}); keeping client {} for {:.1} s in case it comes back",
                    self.name,
                    self.spec.path,
                    c.addr,
                    self.shared.grace.as_secs_f32()
                );
                self.link = Link::Lost {
                    since: now,
                    at: now + REOPEN_LOST,
                    dropped: 0,
                };
            }
            _ => {
                error!(
                    "{}: device {} failed: {why}; closing it and retrying",
                    self.name, self.spec.path
                );
                let (delay, _) = self.backoff.failed(now);
                self.link = Link::Closed { at: now + delay };
                self.drop_all("the device went away", now);
            }
        }
    }

    /// The supervisor saw the device's node go.
    pub(crate) fn gone(&mut self, now: Instant) {
        if matches!(self.link, Link::Open(_)) {
            self.device_lost("unplugged", now);
        }
    }

    /// The device is back under another node (USB re-enumeration): open that one.
    pub(crate) fn replace(&mut self, path: DevicePath, now: Instant) {
        info!("{}: device now at {path}", self.name);
        self.spec.path = path;
        if let Link::Lost { at, .. } = &mut self.link {
            *at = now;
        } else {
            self.link = Link::Closed { at: now };
        }
    }

    /// Try to open the device now (its node appeared or its permissions changed).
    pub(crate) fn retry(&mut self, now: Instant) {
        if let Link::Closed { at } = &mut self.link {
            *at = (*at).min(now).max(self.shared.open_after);
        }
    }

    /// The portal asks for a reset; a flash in progress is never cut short.
    pub(crate) fn reset(&mut self, to: ResetTo, now: Instant, reply: &mpsc::Sender<Reply>) {
        let answer = match self.clients.first() {
            // A reset would cut a flash short: the flasher alone decides.
            Some(c) if c.session.loading() => Err(RequestError::Failed(format!(
                "{}: {} is flashing the chip; reset it when the flash is over",
                self.shared.key, c.addr
            ))),
            _ => match self.server_reset(to, now) {
                Ok(()) => Ok(format!("{}: reset into {to:?} started", self.shared.key)),
                Err(e) => Err(RequestError::Failed(e.to_string())),
            },
        };
        let _ = reply.send(answer);
    }

    /// The device is readable (or hung up): its bytes go to the controlling session, to
    /// the observers that keep up, and to the portal's log.
    pub(crate) fn device_readable(&mut self, now: Instant) {
        let Some(dev) = self.link.device() else {
            return;
        };
        match dev.read(&mut self.buf) {
            Ok(0) => self.device_lost("end of file", now),
            Ok(n) => self.device_bytes(n, now),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => self.device_lost(&e.to_string(), now),
        }
    }

    /// `n` bytes came from the device into `self.buf`.
    fn device_bytes(&mut self, n: usize, now: Instant) {
        let data = &self.buf[..n];
        // What the chip says during a flash is for the flasher alone: not for observers,
        // not for the portal's log.
        let loading = self.clients.first().is_some_and(|c| c.session.loading());
        if !loading {
            if let Ok(mut log) = self.shared.log.lock() {
                log.push(data);
            }
        }
        let Some((c, observers)) = self.clients.split_first_mut() else {
            return;
        };
        c.bytes_out += n as u64;
        Stats::add(&self.shared.stats.bytes_to_client, n as u64);
        c.room_for(2 * n);
        let mut out = Out {
            device: &mut self.to_device,
            client: &mut c.to_client,
        };
        let effect = c.session.on_device_bytes(data, now, &mut out);
        self.effect = waiting(effect, now);
        if loading {
            return;
        }
        for o in observers {
            if !o.keeps_up() {
                Stats::add(&o.dropped.to_client, n as u64);
                Stats::add(&self.shared.stats.observer_output_missed, n as u64);
                o.lag = match o.lag {
                    Lag::Keeping => {
                        if let Verdict::Log { .. } = self.peer_log.check(o.addr.ip(), now) {
                            warn!(
                                "{}: observer {} does not keep up; dropping output for it until it does",
                                self.name, o.addr
                            );
                        }
                        Lag::Missing(n as u64)
                    }
                    Lag::Missing(k) => Lag::Missing(k + n as u64),
                };
                continue;
            }
            if let Lag::Missing(k) = std::mem::replace(&mut o.lag, Lag::Keeping) {
                if let Verdict::Log { .. } = self.peer_log.check(o.addr.ip(), now) {
                    info!(
                        "{}: observer {} keeps up again; it missed {k} bytes",
                        self.name, o.addr
                    );
                }
            }
            o.bytes_out += n as u64;
            o.room_for(2 * n);
            let mut out = Out {
                device: &mut self.discard,
                client: &mut o.to_client,
            };
            let effect = o.session.on_device_bytes(data, now, &mut out);
            pretend(&mut o.session, effect, now, &mut out);
            self.discard.clear();
        }
    }

    /// The device can take more: write what waits for it.
    pub(crate) fn device_writable(&mut self, now: Instant) {
        let dev = match &mut self.link {
            Link::Open(dev) => dev,
            Link::Lost { dropped, .. } => {
                *dropped += self.to_device.len() as u64;
                self.to_device.clear();
                return;
            }
            Link::Closed { .. } => {
                self.to_device.clear();
                return;
            }
        };
        while !self.to_device.is_empty() {
            match dev.write(&self.to_device) {
                Ok(n) => {
                    self.to_device.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.device_lost(&e.to_string(), now),
            }
        }
    }

    /// The bridge read `n` bytes from client `id` into [`Hub::client_input`]; they are taken
    /// by [`Hub::advance`].
    pub(crate) fn client_bytes(&mut self, id: u64, n: usize, now: Instant) {
        let Some(i) = self.clients.iter().position(|c| c.id == id) else {
            return;
        };
        let c = &mut self.clients[i];
        c.input.at = 0;
        c.input.end = n.min(c.input.buf.len());
        c.bytes_in += n as u64;
        c.last_input = now;
        if i == 0 {
            Stats::add(&self.shared.stats.bytes_to_device, n as u64);
        }
    }

    /// Timers: leases, reset steps, the sessions' own waits, modem lines, the grace period.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.lease_ends.is_some_and(|t| now >= t) {
            self.lease_expired(now);
        }
        if self.link.device().is_some() {
            while let Some(lines) = self.lines.due(now) {
                self.set_lines(lines, now);
            }
        }
        if let Link::Lost { since, .. } = self.link {
            if now.saturating_duration_since(since) >= self.shared.grace {
                self.link = Link::Closed {
                    at: now + REOPEN_LOST,
                };
                let why = format!(
                    "the device did not come back within {:.1} s",
                    self.shared.grace.as_secs_f32()
                );
                return self.drop_all(&why, now);
            }
        }
        let due = |c: &Client| c.session.deadline().is_some_and(|t| t <= now);
        if let Some(c) = self.clients.first_mut() {
            if self.effect.is_none() && due(c) {
                let mut out = Out {
                    device: &mut self.to_device,
                    client: &mut c.to_client,
                };
                let effect = c.session.on_timer(now, &mut out);
                self.effect = waiting(effect, now);
            }
        }
        for c in self.clients.iter_mut().skip(1).filter(|c| due(c)) {
            let mut out = Out {
                device: &mut self.discard,
                client: &mut c.to_client,
            };
            let effect = c.session.on_timer(now, &mut out);
            pretend(&mut c.session, effect, now, &mut out);
            self.discard.clear();
        }
        if !self.clients.is_empty() && now >= self.next_modem_poll {
            self.next_modem_poll = now + MODEM_POLL;
            if let Some(st) = self.link.device().and_then(|d| d.modem_status().ok()) {
                for c in self.clients.iter_mut() {
                    c.session.modem_status(st, &mut c.to_client);
                }
            }
        }
    }

    /// Move the sessions on, then hand control to whoever waited for it, then write what
    /// waits for the device. The controlling session: perform the effect it waits on once
    /// the data queued before it has reached the device (or could not in time), then feed
    /// it the client bytes it has not taken yet; it stops when it waits on the device or
    /// has taken all. Observers: their requests are answered, their data dropped.
    pub(crate) fn advance(&mut self, now: Instant) {
        self.advance_controller(now);
        for i in (1..self.clients.len()).rev() {
            self.advance_observer(i, now);
        }
        self.settle_control(now);
        self.device_writable(now);
        for c in self.clients.iter_mut() {
            say_notes(&self.name, c);
        }
    }

    fn advance_controller(&mut self, now: Instant) {
        loop {
            let Some(c) = self.clients.first_mut() else {
                self.effect = None;
                return;
            };
            if let Some((effect, until)) = self.effect {
                let outcome = if effect.after_data() && !self.to_device.is_empty() {
                    if now < until {
                        return; // The device's POLLOUT, or the deadline, brings us back.
                    }
                    Err(Failure::Stalled)
                } else {
                    Ok(())
                };
                let outcome = outcome.and_then(|()| self.perform(effect, now));
                let Some(c) = self.clients.first_mut() else {
                    return;
                };
                let mut out = Out {
                    device: &mut self.to_device,
                    client: &mut c.to_client,
                };
                let next = c.session.done(outcome, now, &mut out);
                self.effect = waiting(next, now);
                self.device_writable(now);
                continue;
            }
            if c.input.pending().is_empty() {
                return;
            }
            let mut out = Out {
                device: &mut self.to_device,
                client: &mut c.to_client,
            };
            match c
                .session
                .on_client_bytes(c.input.pending_mut(), now, &mut out)
            {
                Ok(step) => {
                    c.input.at += step.consumed;
                    let stuck = step.consumed == 0 && step.effect.is_none();
                    self.effect = waiting(step.effect, now);
                    self.device_writable(now);
                    if stuck {
                        return;
                    }
                }
                Err(e) => return self.drop_client(0, &format!("disconnected: {e}"), now),
            }
        }
    }

    /// An observer's bytes: requests answered as if applied (they are, when it gains
    /// control), data counted and dropped.
    fn advance_observer(&mut self, i: usize, now: Instant) {
        let c = &mut self.clients[i];
        let mut dropped = 0;
        let mut failed = None;
        while !c.input.pending().is_empty() {
            let mut out = Out {
                device: &mut self.discard,
                client: &mut c.to_client,
            };
            match c
                .session
                .on_client_bytes(c.input.pending_mut(), now, &mut out)
            {
                Ok(step) => {
                    c.input.at += step.consumed;
                    let stuck = step.consumed == 0 && step.effect.is_none();
                    pretend(&mut c.session, step.effect, now, &mut out);
                    dropped += self.discard.len() as u64;
                    self.discard.clear();
                    if stuck {
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(format!("disconnected: {e}"));
                    break;
                }
            }
        }
        if dropped > 0 {
            Stats::add(&c.dropped.from_client, dropped);
            Stats::add(&self.shared.stats.observer_bytes_dropped, dropped);
            if !std::mem::replace(&mut c.drop_said, true) {
                let controller = self.clients[0].addr;
                let c = &self.clients[i];
                if let Verdict::Log { .. } = self.peer_log.check(c.addr.ip(), now) {
                    info!(
                        "{}: observer {} writes while {controller} is in control; its data is dropped (counted in the portal)",
                        self.name, c.addr
                    );
                }
            }
        }
        if let Some(why) = failed {
            self.drop_client(i, &why, now);
        }
    }

    /// Do what the controlling session asked of the device. Without a device
    /// (re-enumerating) settings are only remembered — the session re-applies them when it
    /// is back — and a reset fails.
    fn perform(&mut self, effect: Effect, now: Instant) -> Result<(), Failure> {
        if let Effect::Purge(Purge::Output | Purge::Both) = effect {
            self.to_device.clear();
        }
        if let Effect::Reset(to) = effect {
            return self.server_reset(to, now).map_err(Failure::Reset);
        }
        let Some(dev) = self.link.device() else {
            return Ok(());
        };
        match effect {
            Effect::Apply(s) => dev.apply(&s).map_err(Failure::Device),
            Effect::Break(on) => dev.set_break(on).map_err(Failure::Device),
            Effect::Purge(p) => dev.purge(p).map_err(Failure::Device),
            Effect::Lines(lines) => {
                let (change, started) = self.lines.client_lines(lines, now);
                if let Some(to) = started {
                    info!(
                        "{}: client started a reset into {to:?}; playing it locally",
                        self.name
                    );
                    Stats::add(&self.shared.stats.resets, 1);
                    if to == ResetTo::Bootloader {
                        if let Some(c) = self.clients.first_mut() {
                            c.session.entry_started();
                        }
                    }
                }
                if let Some(l) = change {
                    self.set_lines(l, now);
                }
                Ok(())
            }
            Effect::Reset(_) => Ok(()),
        }
    }

    /// A reset on the server's initiative (the portal, an ESP session's SYNC, a session end).
    pub(super) fn server_reset(&mut self, to: ResetTo, now: Instant) -> Result<(), ResetError> {
        if self.link.device().is_none() {
            return Err(ResetError::NoDevice);
        }
        let first = self.lines.reset(to, now)?;
        info!("{}: reset into {to:?} requested by the server", self.name);
        Stats::add(&self.shared.stats.resets, 1);
        if let Some(l) = first {
            self.set_lines(l, now);
        }
        Ok(())
    }

    /// Set both lines in one call and tell the driver when they got there; a finished
    /// sequence is told to the sessions. A device without modem lines (a PTY, some
    /// adapters) is said once, at debug: a policy that tries a bootloader entry on any tty
    /// meets them routinely.
    pub(super) fn set_lines(&mut self, lines: Lines, now: Instant) {
        let Some(dev) = self.link.device() else {
            return;
        };
        if let Err(e) = dev.set_lines(lines) {
            if !std::mem::replace(&mut self.lines_refused, true) {
                debug!(
                    "{}: cannot set DTR/RTS ({e}); this device has no modem lines",
                    self.name
                );
            }
        }
        if let Some(played) = self.lines.applied(lines, now) {
            self.reset_played(played, now);
        }
    }

    /// A reset sequence finished: log its timings, tell the sessions (an ESP raw session
    /// waits for its bootloader entry; every session's follower learns where the chip is).
    fn reset_played(&mut self, played: Played, now: Instant) {
        info!(
            "{}: reset into {:?} done, lines (D/R = asserted):{}",
            self.name, played.to, played.steps
        );
        for (i, c) in self.clients.iter_mut().enumerate() {
            let device = if i == 0 {
                &mut self.to_device
            } else {
                &mut self.discard
            };
            let mut out = Out {
                device,
                client: &mut c.to_client,
            };
            c.session.reset_done(played.to, now, &mut out);
        }
        self.discard.clear();
    }
}

/// An observer's session asked for an effect: it is answered as done (its settings are
/// recorded and applied when it gains control), and whatever follows is settled the same
/// way. Nothing reaches the device.
fn pretend(session: &mut Session, mut effect: Option<Effect>, now: Instant, out: &mut Out) {
    // Each answer may ask for one more effect (a parked baud change, then its release);
    // a bounded number settles any chain.
    for _ in 0..8 {
        if effect.is_none() {
            return;
        }
        effect = session.done(Ok(()), now, out);
    }
}

/// An effect the session now waits on, and until when it waits for the data before it.
fn waiting(effect: Option<Effect>, now: Instant) -> Option<(Effect, Instant)> {
    effect.map(|e| (e, now + DRAIN_WAIT))
}
