//! The simulated ESP32 (ESP32-C3, ESP8266) on its board, sans-IO: the board's reset inputs
//! (auto-reset circuit with the RC on EN, USB-Serial/JTAG logic, or GPIO-driven pins; see
//! `board`), the boot ROM (banner, download mode), the application, and the UART's transmit
//! queue. In download mode the frames the host sends go to the serial loader (`loader`, both
//! dialects and the flash operations), and what it asks to wait for the reply (a baud change,
//! a reboot, running the application) happens here once the reply has left. Bytes and line
//! changes go in, bytes come out; time is a `Duration` the caller passes in. No threads,
//! sockets or clocks in here.
//!
//! The application prints `sim: app start, boot #N` when it starts and then
//! `sim: app tick T, boot #N` every 100 ms (T = 0, 1, ...), so a reader can tell a board
//! that keeps running (T keeps counting) from one that was reset (a new banner, N grows).
//!
//! The ESP8266 differs in its ROM: it prints its boot log at 74880 baud (`esp8266`), and its
//! loader knows less (see `loader`).

use std::collections::VecDeque;
use std::time::Duration;

use super::board::{
    usb_jtag_reset, BootMode, BootRecord, Input, InputRecord, SimBoard, Target, UsbPort,
    EN_RC_DELAY, RECORD_LEN,
};
pub(crate) use super::board::{Pins, ResetCause};
use super::flash::Flash;
use super::loader::{Deferred, Hw, Loader, LoaderState, MAX_REQUEST};
use super::rtc::{RtcLayout, Watchdogs};
use super::{esp32, esp32c3, esp32s3, esp8266};
use crate::protocol::line::Lines;
use crate::protocol::slip;

/// The rate the ROM talks at after every reset (the ESP8266's once its boot log is out: its
/// loader finds the host's rate by itself, modelled as esptool's 115200).
pub(crate) const ROM_BAUD: u32 = 115_200;
/// The application's log is dropped rather than queued beyond this (nobody listening).
const APP_TX_LIMIT: usize = 4096;
/// How often the application prints its tick line.
pub(crate) const APP_TICK: Duration = Duration::from_millis(100);
/// The application catches up on at most this many missed tick lines (a caller that let
/// more time pass gets the latest one; the numbers show the gap).
const APP_MAX_CATCH_UP: u32 = 10;
/// The rate a USB CDC link moves bytes at, as a baud rate (8N1): about USB full speed's
/// practical bulk throughput, whatever rate the host sets.
pub(crate) const USB_CDC_BAUD: u32 = 4_000_000;

/// What the chip is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// EN held low: silent, input ignored.
    Reset,
    /// Running the application from flash (prints a tick line every 100 ms).
    App,
    /// ROM download mode (or the stub, see `Loader`), answering loader commands.
    Download,
}

/// The `rst:` part of the ROM banner.
fn reset_banner(target: Target, cause: ResetCause) -> &'static str {
    match (target, cause) {
        (Target::Esp32, ResetCause::Software) => "rst:0x3 (SW_RESET)",
        (Target::Esp32, _) => "rst:0x1 (POWERON_RESET)",
        (Target::Esp32c3 | Target::Esp32s3, ResetCause::Software) => "rst:0x3 (RTC_SW_SYS_RST)",
        (Target::Esp32c3 | Target::Esp32s3, ResetCause::UsbJtag) => {
            "rst:0x15 (USB_UART_CHIP_RESET)"
        }
        (Target::Esp32c3 | Target::Esp32s3, ResetCause::RtcWatchdog) => "rst:0x10 (RTCWDT_RTC_RST)",
        (Target::Esp32c3 | Target::Esp32s3, _) => "rst:0x1 (POWERON)",
        // The ESP8266 ROM reports a software restart like its RST pin.
        (Target::Esp8266, ResetCause::PowerOn) => "rst cause:1,",
        (Target::Esp8266, _) => "rst cause:2,",
    }
}

/// The two-transistor auto-reset circuit of ESP32 dev boards, fed by the host's DTR/RTS
/// (pyserial sense: `true` = asserted). Each transistor only conducts when its base line is
/// asserted and its emitter line is not, so asserting both (what pyserial does on open)
/// changes nothing. The truth table is `crate::protocol::reset::levels`, shared with GPIO wiring.
pub(crate) fn auto_reset_circuit(lines: Lines) -> Pins {
    let (en, io0) = crate::protocol::reset::levels(lines);
    Pins { en, io0 }
}

/// The board and its chip but the SLIP decoder (split so a decoded frame can borrow the
/// decoder while the core handles it).
struct Core {
    target: Target,
    /// Prefix of the boot log lines (the device's name), may be empty.
    label: String,
    mode: Mode,
    /// IO0 was low when EN last rose (GPIO_STRAP): where software resets lead.
    strapped_download: bool,
    boot_count: u32,
    booted_at: Duration,
    boots: VecDeque<BootRecord>,
    now: Duration,
    /// When the application (last) started, and how many tick lines it has printed.
    app_started: Duration,
    app_ticks: u32,
    expected_baud: u32,
    tx: VecDeque<u8>,
    /// Bytes ever taken out of `tx`: positions of deferred actions are absolute.
    tx_taken: u64,
    deferred: VecDeque<(u64, Deferred)>,
    flash: Flash,
    /// The serial loader's state: which dialect, the operation in progress, the registers.
    loader: LoaderState,
    /// RTC watchdog resets so far (each re-enumerates a native USB port).
    usb_resets: u32,
    /// The native USB peripheral the host talks to, if any.
    usb: Option<UsbPort>,
    /// The RTC domain's watchdogs (C3, S3): they survive a USB-Serial/JTAG reset.
    watchdogs: Option<Watchdogs>,
}

/// The simulated ESP32 (ESP32-C3, ESP8266) on its board.
pub(crate) struct Chip {
    rx: slip::Decoder,
    core: Core,
    board: SimBoard,
    /// The host's DTR/RTS as last set.
    lines: Lines,
    /// EN/IO0 as the board drives them (EN before its RC delay).
    pins: Pins,
    /// EN has let go and the chip comes out of reset at this time (the RC on EN).
    en_rise_at: Option<Duration>,
    inputs: VecDeque<InputRecord>,
}

impl std::fmt::Debug for Chip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chip")
            .field("board", &self.board)
            .field("mode", &self.core.mode)
            .field("loader", &self.core.loader.loader())
            .field("boot_count", &self.core.boot_count)
            .field("expected_baud", &self.core.expected_baud)
            .finish()
    }
}

impl Chip {
    /// An ESP32 DevKit that has just been powered: it boots at `now` into the application,
    /// or into download mode when `download` (BOOT held at power-on).
    #[cfg(test)]
    pub(crate) fn new(flash: Flash, download: bool, now: Duration) -> Chip {
        Chip::for_board(SimBoard::DevKit, flash, download, now)
    }

    #[cfg(test)]
    /// A freshly powered chip on `board`; see [`Chip::new`].
    pub(crate) fn for_board(board: SimBoard, flash: Flash, download: bool, now: Duration) -> Chip {
        Chip::labelled(board, flash, download, now, "")
    }

    /// [`Chip::for_board`], its log lines prefixed with `label` from the power-on boot on.
    pub(crate) fn labelled(
        board: SimBoard,
        flash: Flash,
        download: bool,
        now: Duration,
        label: &str,
    ) -> Chip {
        let target = board.target();
        let mut core = Core {
            target,
            label: label.to_owned(),
            mode: Mode::Reset,
            strapped_download: download,
            boot_count: 0,
            booted_at: now,
            boots: VecDeque::with_capacity(RECORD_LEN),
            now,
            app_started: now,
            app_ticks: 0,
            expected_baud: ROM_BAUD,
            tx: VecDeque::with_capacity(8 * 1024),
            tx_taken: 0,
            deferred: VecDeque::new(),
            flash,
            loader: LoaderState::new(target),
            usb_resets: 0,
            usb: board.usb_port(),
            watchdogs: RtcLayout::for_target(target)
                .map(|l| Watchdogs::new(l, board.usb_port() == Some(UsbPort::SerialJtag))),
        };
        if download && board.usb_port() == Some(UsbPort::SerialJtag) {
            // Into download mode the way esptool gets there on this board: the application
            // ran (its bootloader armed the RTC watchdog) and the USB-Serial/JTAG
            // peripheral reset the chip into the ROM loader, which keeps the RTC domain.
            // (A PTY has no DTR/RTS to do that reset later.)
            core.boot(ResetCause::PowerOn, false);
            core.boot(ResetCause::UsbJtag, true);
        } else {
            core.boot(ResetCause::PowerOn, download);
        }
        Chip {
            rx: slip::Decoder::new(MAX_REQUEST),
            core,
            board,
            lines: Lines {
                dtr: false,
                rts: false,
            },
            pins: Pins::HIGH,
            en_rise_at: None,
            inputs: VecDeque::with_capacity(RECORD_LEN),
        }
    }

    pub(crate) fn board(&self) -> SimBoard {
        self.board
    }

    /// The host's DTR/RTS as last set.
    pub(crate) fn lines(&self) -> Lines {
        self.lines
    }

    #[cfg(test)]
    /// The last [`RECORD_LEN`] line, pin and button changes, oldest first.
    pub(crate) fn inputs(&self) -> &VecDeque<InputRecord> {
        &self.inputs
    }

    #[cfg(test)]
    /// The last [`RECORD_LEN`] boots, oldest first (power-on included).
    pub(crate) fn boots(&self) -> &VecDeque<BootRecord> {
        &self.core.boots
    }

    /// The host talks to this chip over USB CDC: the line's baud rate and format are
    /// ignored (nothing is garbled), bytes move at [`USB_CDC_BAUD`].
    pub(crate) fn usb_cdc(&self) -> bool {
        self.board.usb_cdc()
    }

    /// The rate bytes move at between host and chip: [`Chip::expected_baud`] on a UART,
    /// [`USB_CDC_BAUD`] over USB.
    pub(crate) fn wire_baud(&self) -> u32 {
        if self.usb_cdc() {
            USB_CDC_BAUD
        } else {
            self.core.expected_baud
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        self.core.mode
    }

    pub(crate) fn loader(&self) -> Loader {
        self.core.loader.loader()
    }

    /// Boots since creation (power-on counts as the first).
    pub(crate) fn boot_count(&self) -> u32 {
        self.core.boot_count
    }

    /// The rate the chip's UART runs at: 115200 after reset (74880 while an ESP8266 prints
    /// its boot log), then what CHANGE_BAUDRATE set.
    pub(crate) fn expected_baud(&self) -> u32 {
        self.core.expected_baud
    }

    /// EN/IO0 as the board drives them (EN before its RC delay).
    pub(crate) fn pins(&self) -> Pins {
        self.pins
    }

    #[cfg(test)]
    pub(crate) fn flash(&self) -> &Flash {
        &self.core.flash
    }

    pub(crate) fn flash_mut(&mut self) -> &mut Flash {
        &mut self.core.flash
    }

    /// The host's DTR/RTS changed. DevKit: through the auto-reset circuit to EN/IO0.
    /// UsbJtag: the peripheral's reset logic ([`usb_jtag_reset`]). Gpio: not connected.
    pub(crate) fn set_lines(&mut self, lines: Lines, now: Duration) {
        self.advance(now);
        self.record(Input::Lines(lines), now);
        let prev = std::mem::replace(&mut self.lines, lines);
        match self.board {
            SimBoard::DevKit | SimBoard::Esp8266DevKit => {
                self.drive_pins(auto_reset_circuit(lines), now)
            }
            SimBoard::UsbJtag | SimBoard::S3UsbJtag | SimBoard::S3Otg => {
                // The chip held in reset by its EN pin cannot be reset any further.
                if let Some(download) = usb_jtag_reset(prev, lines) {
                    if self.pins.en && self.en_rise_at.is_none() {
                        self.rx.reset();
                        self.core.boot(ResetCause::UsbJtag, download);
                    }
                }
            }
            SimBoard::Gpio => {}
        }
    }

    /// Drive EN/IO0 directly (GPIO wiring, or a test's fingers). EN low holds the chip in
    /// reset at once; when EN lets go the chip boots [`EN_RC_DELAY`] later, sampling IO0
    /// then.
    pub(crate) fn set_pins(&mut self, pins: Pins, now: Duration) {
        self.advance(now);
        self.record(Input::Pins(pins), now);
        self.drive_pins(pins, now);
    }

    fn drive_pins(&mut self, pins: Pins, now: Duration) {
        let old = std::mem::replace(&mut self.pins, pins);
        if old.en && !pins.en {
            self.en_rise_at = None;
            self.core.enter_reset();
            self.rx.reset();
        } else if !old.en && pins.en {
            self.en_rise_at = Some(now + EN_RC_DELAY);
        }
    }

    fn record(&mut self, input: Input, at: Duration) {
        if self.inputs.len() == RECORD_LEN {
            self.inputs.pop_front();
        }
        self.inputs.push_back(InputRecord { at, input });
    }

    #[cfg(test)]
    /// Press EN like a person would, holding BOOT (IO0 low) if `download` until the chip
    /// is up; afterwards the pins are the board's again. Does nothing while the board
    /// holds EN low.
    pub(crate) fn press_reset(&mut self, download: bool, now: Duration) {
        self.advance(now);
        self.record(Input::Button { download }, now);
        if !self.pins.en {
            return;
        }
        self.en_rise_at = None;
        self.rx.reset();
        self.core.boot(ResetCause::Button, download);
    }

    /// Bytes the chip's UART received (already garbled by the caller if the rates differ).
    pub(crate) fn receive(&mut self, bytes: &[u8], now: Duration) {
        self.advance(now);
        if self.core.mode != Mode::Download {
            return; // in reset nothing listens; the application ignores its console
        }
        // A frame cannot leave download mode by itself: what would (a reboot, running the
        // application) waits in `deferred` until its reply has been sent.
        let core = &mut self.core;
        self.rx.push(bytes, |frame| core.handle_frame(frame));
    }

    /// Let time pass: EN's delayed rising edge boots the chip, the application prints its
    /// tick lines.
    pub(crate) fn advance(&mut self, now: Duration) {
        if let Some(at) = self.en_rise_at.filter(|&at| at <= now) {
            // IO0 as it was at `at`: every pin change first advances to its own time.
            self.en_rise_at = None;
            self.core.now = self.core.now.max(at);
            self.rx.reset();
            self.core.boot(ResetCause::EnPin, !self.pins.io0);
        }
        if let Some(at) = self.core.watchdog_deadline().filter(|&at| at <= now) {
            // The RTC watchdog's RTC reset: the straps are sampled again (nobody holds
            // BOOT), and the USB peripheral is reset with the chip, so the host's port
            // re-enumerates (`usb_resets`).
            self.core.now = self.core.now.max(at);
            self.rx.reset();
            self.core.usb_resets = self.core.usb_resets.wrapping_add(1);
            self.core.boot(ResetCause::RtcWatchdog, false);
        }
        self.core.now = self.core.now.max(now);
        self.core.app_tick();
    }

    /// How often the chip's own USB peripheral was reset with it (an RTC watchdog reset):
    /// each time a real port vanishes from the host and comes back.
    pub(crate) fn usb_resets(&self) -> u32 {
        self.core.usb_resets
    }

    /// When `advance` next has something to do (EN rising, the application's next line).
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        let app = (self.core.mode == Mode::App).then(|| self.core.next_tick_at());
        [app, self.en_rise_at, self.core.watchdog_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Bytes queued in the UART (a stub READ_FLASH may queue more once they are out).
    pub(crate) fn tx_len(&self) -> usize {
        self.core.tx.len()
    }

    /// Whether the UART has something to send right now.
    pub(crate) fn tx_ready(&mut self) -> bool {
        self.core.pump();
        !self.core.tx.is_empty()
    }

    /// Take up to `out.len()` bytes the UART sends (the caller paces them). Returns early
    /// when a deferred action (baud change, reboot) took effect, so the caller re-reads
    /// `expected_baud` before taking more.
    pub(crate) fn take_tx(&mut self, out: &mut [u8], now: Duration) -> usize {
        self.advance(now);
        let core = &mut self.core;
        let mut n = 0;
        loop {
            if core.run_due_actions() {
                if core.mode != Mode::Download {
                    self.rx.reset();
                }
                if n > 0 {
                    break;
                }
            }
            if n == out.len() {
                break;
            }
            if core.tx.is_empty() {
                core.pump();
                if core.tx.is_empty() {
                    break;
                }
            }
            let limit = core
                .deferred
                .front()
                .map_or(usize::MAX, |&(at, _)| (at - core.tx_taken) as usize);
            let k = core.tx.len().min(limit).min(out.len() - n);
            if k == 0 {
                break;
            }
            let (a, b) = core.tx.as_slices();
            let from_a = k.min(a.len());
            out[n..n + from_a].copy_from_slice(&a[..from_a]);
            out[n + from_a..n + k].copy_from_slice(&b[..k - from_a]);
            core.tx.drain(..k);
            core.tx_taken += k as u64;
            n += k;
        }
        n
    }
}

impl Core {
    fn enter_reset(&mut self) {
        self.mode = Mode::Reset;
        self.loader.leave();
        self.expected_baud = ROM_BAUD;
        // What sits in the UART FIFO is lost with the reset.
        self.tx_taken += self.tx.len() as u64;
        self.tx.clear();
        self.deferred.clear();
    }

    /// Come out of reset. A chip reset (EN) latches the strapping pins; a software reset
    /// keeps what was latched, which is why esptool can leave the stub "back to the ROM
    /// loader" with a soft reset.
    fn boot(&mut self, cause: ResetCause, download: bool) {
        self.enter_reset();
        self.boot_count = self.boot_count.wrapping_add(1);
        self.booted_at = self.now;
        self.loader.boot(self.target);
        if cause != ResetCause::Software {
            self.strapped_download = download;
        }
        let mode = if self.strapped_download {
            BootMode::Download
        } else {
            BootMode::App
        };
        self.record_boot(cause, mode);
        let now = self.now;
        if let Some(w) = self.watchdogs.as_mut() {
            w.on_boot(cause, mode, now);
        }
        let rst = reset_banner(self.target, cause);
        let log = match (self.target, mode) {
            (Target::Esp32, BootMode::App) => [esp32::ROM_BANNER, rst, esp32::BOOT_LOG_APP, ""],
            (Target::Esp32, BootMode::Download) => {
                [esp32::ROM_BANNER, rst, esp32::BOOT_LOG_DOWNLOAD, ""]
            }
            (Target::Esp32c3, BootMode::App) => {
                [esp32c3::ROM_BANNER, rst, esp32c3::BOOT_LOG_APP, ""]
            }
            (Target::Esp32c3, BootMode::Download) => {
                [esp32c3::ROM_BANNER, rst, esp32c3::BOOT_LOG_DOWNLOAD, ""]
            }
            (Target::Esp32s3, BootMode::App) => {
                [esp32s3::ROM_BANNER, rst, esp32s3::BOOT_LOG_APP, ""]
            }
            (Target::Esp32s3, BootMode::Download) => {
                [esp32s3::ROM_BANNER, rst, esp32s3::BOOT_LOG_DOWNLOAD, ""]
            }
            (Target::Esp8266, BootMode::App) => [
                esp8266::ROM_BANNER,
                rst,
                esp8266::BOOT_MODE_FLASH,
                esp8266::ROM_LOAD_LOG,
            ],
            (Target::Esp8266, BootMode::Download) => {
                [esp8266::ROM_BANNER, rst, esp8266::BOOT_MODE_DOWNLOAD, ""]
            }
        };
        // The ESP8266 ROM's log runs at 74880; then the loader (or the application) talks at
        // 115200, which is why a monitor sees garbage before the first line.
        let slow_log = self.target == Target::Esp8266;
        if slow_log {
            self.expected_baud = esp8266::ROM_LOG_BAUD;
        }
        for part in log {
            self.push_str(part);
        }
        if slow_log {
            self.defer(Deferred::SetBaud(ROM_BAUD));
        }
        match mode {
            BootMode::App => self.start_app(),
            BootMode::Download => self.mode = Mode::Download,
        }
    }

    /// When the RTC watchdog resets the chip, if it runs.
    fn watchdog_deadline(&self) -> Option<Duration> {
        self.watchdogs.as_ref().and_then(Watchdogs::deadline)
    }

    fn record_boot(&mut self, cause: ResetCause, mode: BootMode) {
        let n = self.boot_count;
        if self.boots.len() == RECORD_LEN {
            self.boots.pop_front();
        }
        self.boots.push_back(BootRecord {
            n,
            at: self.now,
            mode,
            cause,
        });
        let who = if self.label.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.label)
        };
        log::debug!(
            "{who}sim: boot #{n} into {} ({cause:?} at {:.1} ms)",
            mode.short(),
            self.now.as_secs_f64() * 1e3
        );
        let to = match mode {
            BootMode::App => "the application",
            BootMode::Download => "download mode",
        };
        log::info!("{who}sim: boot #{n} into {to}");
    }

    fn start_app(&mut self) {
        self.mode = Mode::App;
        self.loader.leave();
        self.app_started = self.now;
        self.app_ticks = 0;
        let line = format!("sim: app start, boot #{}\r\n", self.boot_count);
        self.push_str(&line);
    }

    /// When the application prints its next tick line.
    fn next_tick_at(&self) -> Duration {
        self.app_started + APP_TICK * self.app_ticks.saturating_add(1)
    }

    fn app_tick(&mut self) {
        if self.mode != Mode::App {
            return;
        }
        while self.now >= self.next_tick_at() {
            // Ticks due by now: tick T is due at (T + 1) * APP_TICK after the start.
            let due = (self.now - self.app_started).as_nanos() / APP_TICK.as_nanos();
            let due = u32::try_from(due).unwrap_or(u32::MAX);
            if due > self.app_ticks.saturating_add(APP_MAX_CATCH_UP) {
                self.app_ticks = due - 1;
            }
            if self.tx.len() < APP_TX_LIMIT {
                let line = format!(
                    "sim: app tick {}, boot #{}\r\n",
                    self.app_ticks, self.boot_count
                );
                self.push_str(&line);
            }
            self.app_ticks = self.app_ticks.saturating_add(1);
        }
    }

    fn push_str(&mut self, s: &str) {
        self.tx.extend(s.as_bytes());
    }

    fn run_due_actions(&mut self) -> bool {
        let mut ran = false;
        while let Some(&(at, action)) = self.deferred.front() {
            if at > self.tx_taken {
                break;
            }
            self.deferred.pop_front();
            ran = true;
            match action {
                Deferred::SetBaud(baud) => self.expected_baud = baud,
                Deferred::Reboot => {
                    self.boot(ResetCause::Software, self.strapped_download);
                    return true; // `boot` cleared the queue
                }
                Deferred::RunApp => {
                    self.enter_reset();
                    self.start_app();
                    return true;
                }
            }
        }
        ran
    }

    fn defer(&mut self, action: Deferred) {
        let at = self.tx_taken + self.tx.len() as u64;
        self.deferred.push_back((at, action));
    }

    /// The loader and its view of the rest of the chip (borrowed apart, field by field).
    fn hw(&mut self) -> (&mut LoaderState, Hw<'_>) {
        let hw = Hw {
            target: self.target,
            baud: self.expected_baud,
            strapped_download: self.strapped_download,
            usb: self.usb,
            now: self.now,
            watchdogs: self.watchdogs.as_mut(),
            flash: &mut self.flash,
            tx: &mut self.tx,
        };
        (&mut self.loader, hw)
    }

    /// A request frame in download mode; what its reply asks for waits until it is out.
    fn handle_frame(&mut self, frame: &[u8]) {
        let (loader, mut hw) = self.hw();
        if let Some(action) = loader.handle_frame(frame, &mut hw) {
            self.defer(action);
        }
    }

    /// Stub READ_FLASH: the next packet, once the UART has sent everything before it.
    fn pump(&mut self) {
        let (loader, mut hw) = self.hw();
        loader.pump(&mut hw);
    }
}
