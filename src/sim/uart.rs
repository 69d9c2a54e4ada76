//! The wire between the host's UART and the chip's: bytes take their byte time at the rate
//! of whoever sends them, and arrive garbled when the two ends disagree on the rate (or
//! the format). Over USB CDC (`sim-usb`) the host's line settings mean nothing: bytes move
//! at a fixed rate and are never garbled. Shared by the in-process device and the PTY runner.
//!
//! `Pacer`, `garble` and `Uart::step` are pure: the step moves bytes between the wire's
//! buffers and a `Chip`. `Uart::io_before_step` and `Uart::io_after_step` move them between
//! the buffers and a host endpoint (`Read + Write`, non-blocking), without the chip.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::chip::{Chip, USB_CDC_BAUD};
use crate::protocol::line::{DataBits, LineSettings, Parity, StopBits};
use crate::protocol::slip;

/// How far apart the two rates may be before the receiver mis-samples: a UART resyncs on
/// every start bit and tolerates a few percent over a 10-bit character.
const BAUD_TOLERANCE: f64 = 0.03;
/// What the bridge-side reads ahead of the chip (the rest waits in the host's buffer, so
/// a writer feels the line's speed as backpressure).
const RX_AHEAD: usize = 4096;
/// Longest stretch of chip output handed to the host in one go.
const TX_BATCH: Duration = Duration::from_millis(4);
/// Chunk taken from the chip per step.
const TX_CHUNK: usize = 4096;

/// Time on the wire for one character of `settings` (start + data + parity + stop bits).
pub(crate) fn char_time(baud: u32, settings: &LineSettings) -> Duration {
    let data = match settings.data_bits {
        DataBits::Five => 5,
        DataBits::Six => 6,
        DataBits::Seven => 7,
        DataBits::Eight => 8,
    };
    let parity = u32::from(settings.parity != Parity::None);
    // In half bits, for 1.5 stop bits.
    let stop_halves = match settings.stop_bits {
        StopBits::One => 2,
        StopBits::OnePointFive => 3,
        StopBits::Two => 4,
    };
    let half_bits = 2 * (1 + data + parity) + stop_halves;
    let baud = u64::from(baud.max(50));
    Duration::from_nanos(u64::from(half_bits) * 1_000_000_000 / (2 * baud))
}

/// The chip's UART format: 8N1.
pub(crate) fn chip_format() -> LineSettings {
    LineSettings::default()
}

/// Whether a host line set up as `line` and the chip running at `chip_baud` (8N1)
/// understand each other.
pub(crate) fn line_matches(line: &LineSettings, chip_baud: u32) -> bool {
    let host = f64::from(line.baud.max(1));
    let chip = f64::from(chip_baud.max(1));
    (host - chip).abs() / chip <= BAUD_TOLERANCE
        && line.data_bits == DataBits::Eight
        && line.parity == Parity::None
}

/// Deterministic corruption of a byte sampled at the wrong rate. Bijective, and it never
/// maps anything onto itself in a way that keeps SLIP framing intact: `0xC0` does not
/// survive, so a bridge that forgets a baud change fails loudly, not subtly.
pub(crate) fn garble(b: u8) -> u8 {
    b.rotate_left(3) ^ 0x5A
}

/// Paces one direction: bytes finish one character time apart, starting when the line
/// was last free.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pacer {
    /// When the line is free again (the last scheduled character ends).
    free_at: Instant,
}

impl Pacer {
    pub(crate) fn new(now: Instant) -> Pacer {
        Pacer { free_at: now }
    }

    /// The line was idle until `now`: the next character starts now, not in the past.
    pub(crate) fn idle_until(&mut self, now: Instant) {
        self.free_at = self.free_at.max(now);
    }

    /// How many whole characters have finished by `now` (the caller then `consume`s what it
    /// actually moved).
    pub(crate) fn due(&self, now: Instant, char_time: Duration) -> usize {
        let Some(elapsed) = now.checked_duration_since(self.free_at) else {
            return 0;
        };
        let ct = char_time.as_nanos().max(1);
        usize::try_from(elapsed.as_nanos() / ct).unwrap_or(usize::MAX)
    }

    pub(crate) fn consume(&mut self, n: usize, char_time: Duration) {
        self.free_at += char_time * u32::try_from(n).unwrap_or(u32::MAX);
    }

    /// When the `n`th next character would finish.
    pub(crate) fn finish_of(&self, n: usize, char_time: Duration) -> Instant {
        self.free_at + char_time * u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// Result of one step: when to step again at the latest, and what to wait for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wait {
    pub(crate) deadline: Option<Instant>,
    /// The host endpoint may be read (there is room ahead of the chip).
    pub(crate) want_read: bool,
    /// Bytes wait for the host endpoint to become writable.
    pub(crate) want_write: bool,
}

/// Both directions of the wire, with their buffers (all fixed in size, allocated once).
///
/// One round is three calls: [`Uart::io_before_step`] (the host's bytes in, output the host
/// had no room for retried), [`Uart::step`] (pure: the chip and the pacing, nothing else),
/// [`Uart::io_after_step`] (the chip's bytes out). A caller that shares the chip behind a
/// lock holds it for the step alone; [`Uart::run`] is the round for one that does not.
#[derive(Debug)]
pub(crate) struct Uart {
    /// Read from the host, not yet seen by a step (which may drop it: a break).
    inbox: Box<[u8]>,
    inbox_len: usize,
    rx: VecDeque<u8>,
    rx_pacer: Pacer,
    /// Chip output whose time on the wire has come, not yet written to the host.
    hold: Box<[u8]>,
    hold_pos: usize,
    hold_len: usize,
    tx_pacer: Pacer,
    /// The chip had nothing to send, or the host took nothing, when the last round ended:
    /// what the chip sends now starts now (the wire must not credit the time it was idle).
    tx_idle: bool,
    /// What the last step found, for the wait its round ends with.
    plan: Plan,
    scratch: Box<[u8]>,
}

/// What a step leaves for the I/O after it to turn into a [`Wait`].
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// The chip's next deadline, or when the host's next frame is through.
    deadline: Option<Instant>,
    /// When the next batch of chip output is due, if the host takes what is held.
    tx_due: Option<Instant>,
    /// The chip had more to send when the step ended.
    chip_tx_ready: bool,
    want_read: bool,
}

impl Uart {
    pub(crate) fn new(now: Instant) -> Uart {
        Uart {
            inbox: vec![0; RX_AHEAD].into_boxed_slice(),
            inbox_len: 0,
            rx: VecDeque::with_capacity(RX_AHEAD),
            rx_pacer: Pacer::new(now),
            hold: vec![0; TX_CHUNK].into_boxed_slice(),
            hold_pos: 0,
            hold_len: 0,
            tx_pacer: Pacer::new(now),
            tx_idle: true,
            plan: Plan {
                deadline: None,
                tx_due: None,
                chip_tx_ready: false,
                want_read: true,
            },
            scratch: vec![0; TX_CHUNK].into_boxed_slice(),
        }
    }

    /// Drop what the host wrote and the chip has not received yet (purge output).
    pub(crate) fn discard_rx(&mut self) {
        self.rx.clear();
        self.inbox_len = 0;
    }

    /// Drop what the chip sent and the host has not taken yet (purge input).
    pub(crate) fn discard_tx(&mut self) {
        self.hold_pos = 0;
        self.hold_len = 0;
    }

    /// A whole round: [`Uart::io_before_step`], [`Uart::step`], [`Uart::io_after_step`].
    pub(crate) fn run<H: Read + Write>(
        &mut self,
        host: &mut H,
        chip: &mut Chip,
        line: &LineSettings,
        rx_enabled: bool,
        now: Instant,
        epoch: Instant,
    ) -> io::Result<Wait> {
        self.io_before_step(host)?;
        self.step(chip, line, rx_enabled, now, epoch);
        self.io_after_step(host)
    }

    /// I/O before a step, without the chip: retry what the host had no room for, then read
    /// what it wrote, as far as there is room ahead of the chip.
    pub(crate) fn io_before_step<H: Read + Write>(&mut self, host: &mut H) -> io::Result<()> {
        self.flush_hold(host)?;
        loop {
            let room = RX_AHEAD.saturating_sub(self.rx.len());
            if self.inbox_len >= room {
                break;
            }
            match host.read(&mut self.inbox[self.inbox_len..room]) {
                Ok(0) => break,
                Ok(n) => self.inbox_len += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Move whatever is due at `now` between the buffers and the chip; pure (no I/O), so a
    /// caller may hold the chip's lock for it alone. `line` is the host side's setting;
    /// `rx_enabled` false (a break on the line) swallows host bytes.
    pub(crate) fn step(
        &mut self,
        chip: &mut Chip,
        line: &LineSettings,
        rx_enabled: bool,
        now: Instant,
        epoch: Instant,
    ) {
        let t = now.saturating_duration_since(epoch);
        // USB CDC: whatever the host set, both ends agree and bytes move at the link's rate.
        let usb_line;
        let line = if chip.usb_cdc() {
            usb_line = LineSettings {
                baud: USB_CDC_BAUD,
                ..chip_format()
            };
            &usb_line
        } else {
            line
        };
        chip.advance(t);

        // Host -> chip, at the host's rate.
        let rx_ct = char_time(line.baud, line);
        if self.rx.is_empty() {
            self.rx_pacer.idle_until(now);
        }
        if rx_enabled {
            self.rx.extend(&self.inbox[..self.inbox_len]);
        }
        self.inbox_len = 0;
        let due = self.rx_pacer.due(now, rx_ct).min(self.rx.len());
        if due > 0 {
            self.rx_pacer.consume(due, rx_ct);
            let mut left = due;
            while left > 0 {
                let n = left.min(TX_CHUNK);
                for (dst, b) in self.scratch[..n].iter_mut().zip(self.rx.drain(..n)) {
                    *dst = b;
                }
                // The chip's rate may change while we deliver (not in practice: the host
                // waits for the reply), so decide per chunk.
                if !line_matches(line, chip.wire_baud()) {
                    self.scratch[..n].iter_mut().for_each(|b| *b = garble(*b));
                }
                chip.receive(&self.scratch[..n], t);
                left -= n;
            }
        }

        // Chip -> host, at the chip's rate, into `hold` (the I/O after the step writes it).
        if self.tx_idle {
            self.tx_pacer.idle_until(now);
        }
        if self.hold_pos == self.hold_len {
            self.hold_pos = 0;
            self.hold_len = 0;
            if !chip.tx_ready() {
                self.tx_pacer.idle_until(now);
            } else {
                while self.hold_len < self.hold.len() {
                    let tx_ct = char_time(chip.wire_baud(), &chip_format());
                    let room = self.hold.len() - self.hold_len;
                    let due = self.tx_pacer.due(now, tx_ct).min(room);
                    if due == 0 {
                        break;
                    }
                    let garbled = !line_matches(line, chip.wire_baud());
                    let out = &mut self.hold[self.hold_len..self.hold_len + due];
                    let n = chip.take_tx(out, t);
                    if n == 0 {
                        self.tx_pacer.idle_until(now);
                        break;
                    }
                    self.tx_pacer.consume(n, tx_ct);
                    if garbled {
                        out[..n].iter_mut().for_each(|b| *b = garble(*b));
                    }
                    self.hold_len += n;
                }
            }
        }

        let chip_tx_ready = chip.tx_ready();
        let mut deadline = chip.next_deadline().map(|d| epoch + d);
        if !self.rx.is_empty() {
            // Nothing the chip does depends on a byte before its frame ends, so sleep
            // until the next delimiter is through, or until it is time to top up.
            let to_delimiter = self
                .rx
                .iter()
                .position(|&b| b == slip::END)
                .map_or(usize::MAX, |p| p + 1);
            let to_refill = self.rx.len().saturating_sub(RX_AHEAD / 2).max(1);
            let n = to_delimiter.min(to_refill).min(self.rx.len());
            deadline = soonest(deadline, self.rx_pacer.finish_of(n, rx_ct));
        }
        // Hand bytes over in batches of a few milliseconds, as a USB-UART does, but a short
        // reply as soon as its last byte is through.
        let tx_due = chip_tx_ready.then(|| {
            let tx_ct = char_time(chip.wire_baud(), &chip_format());
            let batch = (TX_BATCH.as_nanos() / tx_ct.as_nanos().max(1)).max(1) as usize;
            let n = chip.tx_len().clamp(1, batch);
            self.tx_pacer.finish_of(n, tx_ct)
        });
        self.plan = Plan {
            deadline,
            tx_due,
            chip_tx_ready,
            // Top up only at half empty: polling for input while plenty is buffered would
            // wake us for every byte the host writes.
            want_read: self.rx.len() <= RX_AHEAD / 2,
        };
    }

    /// I/O after a step, without the chip: write what the step took from it. Returns when
    /// to come back at the latest, and what to wait for.
    pub(crate) fn io_after_step<H: Write>(&mut self, host: &mut H) -> io::Result<Wait> {
        self.flush_hold(host)?;
        let blocked = self.hold_pos < self.hold_len;
        self.tx_idle = blocked || !self.plan.chip_tx_ready;
        let deadline = match self.plan.tx_due.filter(|_| !blocked) {
            Some(at) => soonest(self.plan.deadline, at),
            None => self.plan.deadline,
        };
        Ok(Wait {
            deadline,
            want_read: self.plan.want_read,
            want_write: blocked,
        })
    }

    fn flush_hold<H: Write>(&mut self, host: &mut H) -> io::Result<()> {
        while self.hold_pos < self.hold_len {
            match host.write(&self.hold[self.hold_pos..self.hold_len]) {
                Ok(0) => break,
                Ok(n) => self.hold_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn soonest(deadline: Option<Instant>, at: Instant) -> Option<Instant> {
    Some(deadline.map_or(at, |d| d.min(at)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::chip::{Chip, Mode};
    use crate::sim::flash::Flash;
    use crate::sim::testkit::Host;

    #[test]
    fn character_times() {
        let line = LineSettings::default();
        assert_eq!(char_time(115_200, &line), Duration::from_nanos(86_805));
        let mut two_stop = line;
        two_stop.stop_bits = StopBits::Two;
        two_stop.parity = Parity::Even;
        assert_eq!(char_time(100_000, &two_stop), Duration::from_micros(120));
    }

    #[test]
    fn pacer_releases_bytes_at_line_rate() {
        let t0 = Instant::now();
        let ct = Duration::from_micros(10);
        let mut p = Pacer::new(t0);
        assert_eq!(p.due(t0, ct), 0);
        assert_eq!(p.due(t0 + Duration::from_micros(35), ct), 3);
        p.consume(3, ct);
        assert_eq!(p.finish_of(1, ct), t0 + Duration::from_micros(40));
        // Idle for a while: no credit accumulates.
        p.idle_until(t0 + Duration::from_secs(1));
        assert_eq!(p.due(t0 + Duration::from_secs(1), ct), 0);
    }

    #[test]
    fn baud_tolerance_and_format() {
        let mut line = LineSettings::default();
        assert!(line_matches(&line, 115_200));
        line.baud = 118_000; // +2.4 %
        assert!(line_matches(&line, 115_200));
        line.baud = 921_600;
        assert!(!line_matches(&line, 115_200));
        line.baud = 115_200;
        line.parity = Parity::Even;
        assert!(!line_matches(&line, 115_200));
    }

    #[test]
    fn garble_is_a_permutation_that_breaks_slip() {
        let mut seen = [false; 256];
        for b in 0..=255u8 {
            seen[usize::from(garble(b))] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_ne!(garble(0xC0), 0xC0);
    }

    const SYNC: [u8; 46] = {
        let mut f = [0x55u8; 46];
        let head = [
            0xC0, 0x00, 0x08, 0x24, 0x00, 0, 0, 0, 0, 0x07, 0x07, 0x12, 0x20,
        ];
        let mut i = 0;
        while i < head.len() {
            f[i] = head[i];
            i += 1;
        }
        f[45] = 0xC0;
        f
    };

    /// Run the wire in simulated time (no sleeping), 1 ms per step.
    fn run(
        uart: &mut Uart,
        host: &mut Host,
        chip: &mut Chip,
        line: &LineSettings,
        t0: Instant,
        ms: u64,
    ) {
        for i in 0..=ms {
            uart.run(host, chip, line, true, t0 + Duration::from_millis(i), t0)
                .unwrap();
        }
    }

    #[test]
    fn sync_at_the_right_rate_is_answered_and_paced() {
        let t0 = Instant::now();
        let mut chip = Chip::new(Flash::new(), true, Duration::ZERO);
        let mut uart = Uart::new(t0);
        let mut host = Host::default();
        let line = LineSettings::default();
        run(&mut uart, &mut host, &mut chip, &line, t0, 20);
        let banner = String::from_utf8_lossy(&host.from_chip).into_owned();
        assert!(banner.ends_with("waiting for download\r\n"), "{banner}");
        // 103 banner bytes at 11520 bytes/s take ~9 ms: after 5 ms only part is out.
        let mut early = Host::default();
        let mut chip2 = Chip::new(Flash::new(), true, Duration::ZERO);
        let mut uart2 = Uart::new(t0);
        run(&mut uart2, &mut early, &mut chip2, &line, t0, 5);
        assert!(early.from_chip.len() < banner.len() && !early.from_chip.is_empty());

        host.from_chip.clear();
        host.to_chip.extend(SYNC);
        let start = t0 + Duration::from_millis(20);
        for i in 0..200 {
            uart.run(
                &mut host,
                &mut chip,
                &line,
                true,
                start + Duration::from_millis(i),
                t0,
            )
            .unwrap();
        }
        assert_eq!(chip.mode(), Mode::Download);
        let responses = host.from_chip.iter().filter(|&&b| b == 0xC0).count();
        assert_eq!(responses, 16, "eight framed SYNC responses");
    }

    #[test]
    fn wrong_baud_garbles_both_directions() {
        let t0 = Instant::now();
        let mut chip = Chip::new(Flash::new(), true, Duration::ZERO);
        let mut uart = Uart::new(t0);
        let mut host = Host::default();
        let line = LineSettings {
            baud: 921_600,
            ..LineSettings::default()
        };
        run(&mut uart, &mut host, &mut chip, &line, t0, 20);
        assert!(!host.from_chip.is_empty());
        assert!(!String::from_utf8_lossy(&host.from_chip).contains("waiting for download"));
        host.from_chip.clear();
        host.to_chip.extend(SYNC);
        run(
            &mut uart,
            &mut host,
            &mut chip,
            &line,
            t0 + Duration::from_millis(21),
            100,
        );
        assert!(host.from_chip.is_empty(), "a garbled SYNC gets no answer");
    }
}
