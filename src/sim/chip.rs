//! The simulated ESP32 (ESP32-C3, ESP8266), sans-IO: the board's reset inputs (auto-reset
//! circuit with the RC on EN, USB-Serial/JTAG logic, or GPIO-driven pins; see `board`), the
//! boot ROM (banner, download mode), the application, and the serial loader protocol in its
//! two dialects (ROM loader and esptool's flasher stub). Bytes and line changes go in, bytes
//! come out; time is a `Duration` the caller passes in. No threads, sockets or clocks in here.
//!
//! The application prints `sim: app start, boot #N` when it starts and then
//! `sim: app tick T, boot #N` every 100 ms (T = 0, 1, ...), so a reader can tell a board
//! that keeps running (T keeps counting) from one that was reset (a new banner, N grows).
//!
//! Wire format (esptool `loader.py`): a request is the SLIP frame
//! `00 op len:u16le chk:u32le data[len]`, a response `01 op len:u16le value:u32le data`,
//! where `data` ends with status bytes: 4 under the ESP32 ROM (status, error, 0, 0), 2 under
//! the ESP8266 ROM (status, error) and 2 under the stub (error code, 0). `chk` is 0xEF XORed
//! with the payload of the *_DATA commands (after their 16-byte header).
//!
//! The ESP8266 differs in its ROM: it prints its boot log at 74880 baud (`esp8266`), knows
//! only the first nine commands (no SPI_ATTACH, CHANGE_BAUDRATE, compressed writes or MD5:
//! esptool needs the stub for those) and erases too much on FLASH_BEGIN.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

use super::board::{
    usb_jtag_reset, BootMode, BootRecord, Input, InputRecord, SimBoard, Target, EN_RC_DELAY,
    RECORD_LEN,
};
pub(crate) use super::board::{Pins, ResetCause};
use super::flash::{Flash, SECTOR_SIZE};
use super::md5::{self, Md5};
use super::slip;
use super::spi::{self, SpiController};
use super::{esp32, esp32c3, esp8266};
use crate::protocol::line::Lines;

/// The rate the ROM talks at after every reset (the ESP8266's once its boot log is out: its
/// loader finds the host's rate by itself, modelled as esptool's 115200).
pub(crate) const ROM_BAUD: u32 = 115_200;

/// Largest block esptool's stub dialect sends (`FLASH_WRITE_SIZE` of the stub).
const STUB_MAX_BLOCK: u32 = 0x4000;
/// Largest block the ROM takes (its RAM download block, `ESP_RAM_BLOCK`).
const ROM_MAX_BLOCK: u32 = 0x1800;
/// Longest request we decode: a stub block plus the 8-byte header, 16-byte data header
/// and some slack. Anything longer is line noise.
const MAX_FRAME: usize = STUB_MAX_BLOCK as usize + 64;
/// SYNC payload: `07 07 12 20` followed by 32 times `55`.
const SYNC_PREFIX: [u8; 4] = [0x07, 0x07, 0x12, 0x20];
/// The ROM answers one SYNC with this many identical responses (esptool reads them all).
const SYNC_REPLIES: usize = 8;
/// The value field of the ROM's SYNC response; the stub answers 0, which esptool uses to
/// detect an already running stub.
const ROM_SYNC_VALUE: u32 = 0x2012_0707;
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
/// Bound on distinct registers a host may write (WRITE_REG to random addresses).
const MAX_SCRATCH_REGS: usize = 1024;

const ROM_BANNER: &str = "ets Jun  8 2016 00:22:57\r\n\r\n";
const C3_ROM_BANNER: &str = "ESP-ROM:esp32c3-api1-20210207\r\nBuild:Feb  7 2021\r\n";

/// Loader commands (`ESP_CMDS` in esptool).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Command {
    FlashBegin = 0x02,
    FlashData = 0x03,
    FlashEnd = 0x04,
    MemBegin = 0x05,
    MemEnd = 0x06,
    MemData = 0x07,
    Sync = 0x08,
    WriteReg = 0x09,
    ReadReg = 0x0A,
    SpiSetParams = 0x0B,
    SpiAttach = 0x0D,
    ReadFlashSlow = 0x0E,
    ChangeBaudrate = 0x0F,
    FlashDeflBegin = 0x10,
    FlashDeflData = 0x11,
    FlashDeflEnd = 0x12,
    SpiFlashMd5 = 0x13,
    GetSecurityInfo = 0x14,
    EraseFlash = 0xD0,
    EraseRegion = 0xD1,
    ReadFlash = 0xD2,
    RunUserCode = 0xD3,
}

impl Command {
    pub(crate) fn from_byte(b: u8) -> Option<Command> {
        use Command::*;
        Some(match b {
            0x02 => FlashBegin,
            0x03 => FlashData,
            0x04 => FlashEnd,
            0x05 => MemBegin,
            0x06 => MemEnd,
            0x07 => MemData,
            0x08 => Sync,
            0x09 => WriteReg,
            0x0A => ReadReg,
            0x0B => SpiSetParams,
            0x0D => SpiAttach,
            0x0E => ReadFlashSlow,
            0x0F => ChangeBaudrate,
            0x10 => FlashDeflBegin,
            0x11 => FlashDeflData,
            0x12 => FlashDeflEnd,
            0x13 => SpiFlashMd5,
            0x14 => GetSecurityInfo,
            0xD0 => EraseFlash,
            0xD1 => EraseRegion,
            0xD2 => ReadFlash,
            0xD3 => RunUserCode,
            _ => return None,
        })
    }

    /// Commands only the flasher stub implements.
    fn stub_only(self) -> bool {
        matches!(
            self,
            Command::EraseFlash | Command::EraseRegion | Command::ReadFlash | Command::RunUserCode
        )
    }

    /// Commands the ESP32 ROM knows but the ESP32 stub does not.
    fn rom_only(self) -> bool {
        matches!(self, Command::ReadFlashSlow)
    }

    /// Commands the ESP8266 ROM loader knows (esptool: "supported by ESP8266 ROM
    /// bootloader"); everything later came with the ESP32's ROM or the stub.
    fn in_esp8266_rom(self) -> bool {
        matches!(
            self,
            Command::FlashBegin
                | Command::FlashData
                | Command::FlashEnd
                | Command::MemBegin
                | Command::MemEnd
                | Command::MemData
                | Command::Sync
                | Command::WriteReg
                | Command::ReadReg
        )
    }
}

/// Why a command failed; each dialect encodes it its own way (see `status_bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fail {
    BadDataLen,
    BadChecksum,
    BadBlockSize,
    /// Unknown or unsupported command / malformed message.
    Invalid,
    NotInFlashMode,
    /// The operation could not be carried out (out of range, flash error).
    Failed,
    Inflate,
    NotEnoughData,
    TooMuchData,
}

/// Which program answers on the UART while in download mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loader {
    /// The mask ROM loader: 4 status bytes (the ESP8266's: 2), ROM semantics.
    Rom,
    /// esptool's flasher stub, uploaded to RAM: 2 status bytes, extra commands.
    Stub,
}

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
        (Target::Esp32c3, ResetCause::Software) => "rst:0x3 (RTC_SW_SYS_RST)",
        (Target::Esp32c3, ResetCause::UsbJtag) => "rst:0x15 (USB_UART_CHIP_RESET)",
        (Target::Esp32c3, _) => "rst:0x1 (POWERON)",
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

/// Something that must wait until the response before it has left the UART.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deferred {
    /// CHANGE_BAUDRATE: the reply goes out at the old rate.
    SetBaud(u32),
    /// Software reset (FLASH_END with reboot): boots per the latched strapping pins.
    Reboot,
    /// Leave the loader and run the application without a reset.
    RunApp,
}

/// An ongoing flash write (FLASH_BEGIN or FLASH_DEFL_BEGIN until the END).
#[derive(Debug)]
struct FlashWrite {
    offset: u32,
    /// Bytes to be written (stub: exact image size; ROM: the erased size).
    size: u32,
    block_size: u32,
    /// Uncompressed bytes written so far (deflate mode).
    written: u32,
    /// Next DEFL_DATA sequence number to inflate.
    next_seq: u32,
    deflate: bool,
    stream_done: bool,
    /// FLASH_BEGIN with size 0: the END reboots (stub semantics).
    reboot_on_end: bool,
}

/// An ongoing stub READ_FLASH: packets flow out, the host acks with byte counts.
#[derive(Debug)]
struct ReadFlash {
    offset: u32,
    length: u32,
    packet_size: u32,
    max_unacked: u32,
    sent: u32,
    acked: u32,
    md5: Md5,
}

#[derive(Debug)]
enum Operation {
    Idle,
    Mem { loaded: u32 },
    Flash(FlashWrite),
    Read(ReadFlash),
}

/// Everything but the SLIP decoder (split so a decoded frame can borrow the decoder while
/// the core handles it).
struct Core {
    target: Target,
    /// Prefix of the boot log lines (the device's name), may be empty.
    label: String,
    mode: Mode,
    loader: Loader,
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
    spi: SpiController,
    /// Registers written by the host that have no model (read back as written).
    scratch: BTreeMap<u32, u32>,
    op: Operation,
    inflater: Box<InflateState>,
    /// Reused output buffer for inflating (one allocation per chip, not per block).
    inflate_buf: Vec<u8>,
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
            .field("loader", &self.core.loader)
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
            loader: Loader::Rom,
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
            spi: SpiController::new(spi_layout(target)),
            scratch: BTreeMap::new(),
            op: Operation::Idle,
            inflater: InflateState::new_boxed(DataFormat::Zlib),
            inflate_buf: vec![0; 32 * 1024],
        };
        core.boot(ResetCause::PowerOn, download);
        Chip {
            rx: slip::Decoder::new(MAX_FRAME),
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
        self.core.loader
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
            SimBoard::UsbJtag => {
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
        for &b in bytes {
            if let Some(frame) = self.rx.push(b) {
                let before = self.core.boot_count;
                self.core.handle_frame(frame);
                if self.core.boot_count != before || self.core.mode != Mode::Download {
                    self.rx.reset();
                    return;
                }
            }
        }
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
        self.core.now = self.core.now.max(now);
        self.core.app_tick();
    }

    /// When `advance` next has something to do (EN rising, the application's next line).
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        let app = (self.core.mode == Mode::App).then(|| self.core.next_tick_at());
        match (app, self.en_rise_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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

fn u32_at(data: &[u8], i: usize) -> u32 {
    data.get(4 * i..4 * i + 4)
        .map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

fn checksum(data: &[u8]) -> u32 {
    u32::from(data.iter().fold(0xEF_u8, |acc, &b| acc ^ b))
}

fn spi_layout(target: Target) -> spi::SpiLayout {
    match target {
        Target::Esp32 => spi::ESP32_LAYOUT,
        Target::Esp32c3 => spi::ESP32C3_LAYOUT,
        Target::Esp8266 => spi::ESP8266_LAYOUT,
    }
}

impl Core {
    fn enter_reset(&mut self) {
        self.mode = Mode::Reset;
        self.loader = Loader::Rom;
        self.expected_baud = ROM_BAUD;
        // What sits in the UART FIFO is lost with the reset.
        self.tx_taken += self.tx.len() as u64;
        self.tx.clear();
        self.deferred.clear();
        self.op = Operation::Idle;
    }

    /// Come out of reset. A chip reset (EN) latches the strapping pins; a software reset
    /// keeps what was latched, which is why esptool can leave the stub "back to the ROM
    /// loader" with a soft reset.
    fn boot(&mut self, cause: ResetCause, download: bool) {
        self.enter_reset();
        self.boot_count = self.boot_count.wrapping_add(1);
        self.booted_at = self.now;
        self.spi = SpiController::new(spi_layout(self.target));
        self.scratch.clear();
        if cause != ResetCause::Software {
            self.strapped_download = download;
        }
        let mode = if self.strapped_download {
            BootMode::Download
        } else {
            BootMode::App
        };
        self.record_boot(cause, mode);
        let rst = reset_banner(self.target, cause);
        match (self.target, mode) {
            (Target::Esp32, BootMode::App) => {
                self.push_str(ROM_BANNER);
                self.push_str(rst);
                self.push_str(
                    ",boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n\
                     configsip: 0, SPIWP:0xee\r\n\
                     clk_drv:0x00,q_drv:0x00,d_drv:0x00,cs0_drv:0x00,hd_drv:0x00,wp_drv:0x00\r\n\
                     mode:DIO, clock div:2\r\n\
                     entry 0x400806a8\r\n",
                );
            }
            (Target::Esp32, BootMode::Download) => {
                self.push_str(ROM_BANNER);
                self.push_str(rst);
                self.push_str(
                    ",boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\n\
                     waiting for download\r\n",
                );
            }
            (Target::Esp32c3, BootMode::App) => {
                self.push_str(C3_ROM_BANNER);
                self.push_str(rst);
                self.push_str(
                    ",boot:0xc (SPI_FAST_FLASH_BOOT)\r\n\
                     Saved PC:0x40380dd2\r\n\
                     SPIWP:0xee\r\n\
                     mode:DIO, clock div:1\r\n\
                     entry 0x403cc710\r\n",
                );
            }
            (Target::Esp32c3, BootMode::Download) => {
                self.push_str(C3_ROM_BANNER);
                self.push_str(rst);
                self.push_str(
                    ",boot:0x7 (DOWNLOAD(USB/UART0/1))\r\n\
                     Saved PC:0x40048b82\r\n\
                     waiting for download\r\n",
                );
            }
            (Target::Esp8266, _) => {
                // The ROM's log runs at 74880; then the loader (or the application) talks
                // at 115200, which is why a monitor sees garbage before the first line.
                self.expected_baud = esp8266::ROM_LOG_BAUD;
                self.push_str(esp8266::ROM_BANNER);
                self.push_str(rst);
                if mode == BootMode::App {
                    self.push_str(esp8266::BOOT_MODE_FLASH);
                    self.push_str(esp8266::ROM_LOAD_LOG);
                } else {
                    self.push_str(esp8266::BOOT_MODE_DOWNLOAD);
                }
                self.defer(Deferred::SetBaud(ROM_BAUD));
            }
        }
        match mode {
            BootMode::App => self.start_app(),
            BootMode::Download => self.mode = Mode::Download,
        }
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
        self.loader = Loader::Rom;
        self.op = Operation::Idle;
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

    /// Stub READ_FLASH: queue the next packet when the UART has room and the window allows.
    fn pump(&mut self) {
        let Operation::Read(rf) = &mut self.op else {
            return;
        };
        if !self.tx.is_empty() {
            return;
        }
        if rf.sent < rf.length {
            let window = u64::from(rf.max_unacked) * u64::from(rf.packet_size);
            if u64::from(rf.sent - rf.acked.min(rf.sent)) < window {
                let len = rf.packet_size.min(rf.length - rf.sent);
                if let Some(data) = self.flash.read(rf.offset + rf.sent, len) {
                    rf.md5.update(data);
                    slip::encode_frame(&mut self.tx, &[data]);
                }
                rf.sent += len;
            }
        } else if rf.acked >= rf.length {
            let digest = std::mem::take(&mut rf.md5).finalize();
            slip::encode_frame(&mut self.tx, &[&digest]);
            self.op = Operation::Idle;
        }
    }

    fn status_bytes(&self, result: Result<(), Fail>) -> ([u8; 4], usize) {
        match self.loader {
            Loader::Rom => {
                let n = if self.target == Target::Esp8266 { 2 } else { 4 };
                let err = match result {
                    Ok(()) => return ([0; 4], n),
                    Err(Fail::BadDataLen | Fail::Invalid) => 0x05,
                    Err(Fail::BadChecksum) => 0x07,
                    Err(Fail::Inflate) => 0x0B,
                    Err(
                        Fail::BadBlockSize
                        | Fail::NotInFlashMode
                        | Fail::Failed
                        | Fail::NotEnoughData
                        | Fail::TooMuchData,
                    ) => 0x06,
                };
                ([1, err, 0, 0], n)
            }
            Loader::Stub => {
                let code = match result {
                    Ok(()) => 0,
                    Err(Fail::BadDataLen) => 0xC0,
                    Err(Fail::BadChecksum) => 0xC1,
                    Err(Fail::BadBlockSize) => 0xC2,
                    Err(Fail::Invalid) => 0xC3,
                    Err(Fail::Failed) => 0xC4,
                    Err(Fail::NotInFlashMode) => 0xC6,
                    Err(Fail::Inflate) => 0xC7,
                    Err(Fail::NotEnoughData) => 0xC8,
                    Err(Fail::TooMuchData) => 0xC9,
                };
                ([code, 0, 0, 0], 2)
            }
        }
    }

    fn respond(&mut self, op: u8, value: u32, data: &[u8], result: Result<(), Fail>) {
        let (status, n) = self.status_bytes(result);
        let len = (data.len() + n) as u16;
        let mut header = [0u8; 8];
        header[0] = 0x01;
        header[1] = op;
        header[2..4].copy_from_slice(&len.to_le_bytes());
        header[4..8].copy_from_slice(&value.to_le_bytes());
        slip::encode_frame(&mut self.tx, &[&header, data, &status[..n]]);
    }

    fn handle_frame(&mut self, frame: &[u8]) {
        if let Operation::Read(rf) = &mut self.op {
            // While streaming, the host only sends acks: the byte count it has received.
            if frame.len() == 4 {
                rf.acked = rf.acked.max(u32_at(frame, 0).min(rf.sent));
                self.pump();
            }
            return;
        }
        if frame.len() < 8 || frame[0] != 0x00 {
            return; // not a request: noise, ignored like the ROM does
        }
        let op = frame[1];
        let len = usize::from(u16::from_le_bytes([frame[2], frame[3]]));
        let chk = u32_at(frame, 1);
        let data = &frame[8..];
        if data.len() != len {
            self.respond(op, 0, &[], Err(Fail::BadDataLen));
            return;
        }
        let Some(cmd) = Command::from_byte(op) else {
            self.respond(op, 0, &[], Err(Fail::Invalid));
            return;
        };
        if !self.supports(cmd) {
            self.respond(op, 0, &[], Err(Fail::Invalid));
            return;
        }
        self.execute(cmd, data, chk);
    }

    /// Whether the loader running now implements `cmd`.
    fn supports(&self, cmd: Command) -> bool {
        match (self.loader, self.target) {
            // Only the ESP32-C3's ROM (and its stub) has it among ours.
            _ if cmd == Command::GetSecurityInfo => self.target == Target::Esp32c3,
            (Loader::Rom, Target::Esp8266) => cmd.in_esp8266_rom(),
            (Loader::Rom, _) => !cmd.stub_only(),
            (Loader::Stub, _) => !cmd.rom_only(),
        }
    }

    fn execute(&mut self, cmd: Command, data: &[u8], chk: u32) {
        let op = cmd as u8;
        let word = |i: usize| u32_at(data, i);
        match cmd {
            Command::Sync => {
                if data.len() != 36
                    || data[..4] != SYNC_PREFIX
                    || data[4..].iter().any(|&b| b != 0x55)
                {
                    self.respond(op, 0, &[], Err(Fail::Invalid));
                    return;
                }
                let value = match self.loader {
                    Loader::Rom => ROM_SYNC_VALUE,
                    Loader::Stub => 0,
                };
                for _ in 0..SYNC_REPLIES {
                    self.respond(op, value, &[], Ok(()));
                }
            }
            Command::ReadReg => {
                if data.len() != 4 {
                    return self.respond(op, 0, &[], Err(Fail::BadDataLen));
                }
                let value = self.read_reg(word(0));
                self.respond(op, value, &[], Ok(()));
            }
            Command::WriteReg => {
                if data.is_empty() || data.len() % 16 != 0 {
                    return self.respond(op, 0, &[], Err(Fail::BadDataLen));
                }
                for entry in data.chunks_exact(16) {
                    let (addr, value, mask) =
                        (u32_at(entry, 0), u32_at(entry, 1), u32_at(entry, 2));
                    let old = self.read_reg(addr);
                    self.write_reg(addr, (old & !mask) | (value & mask));
                }
                self.respond(op, 0, &[], Ok(()));
            }
            Command::SpiSetParams => {
                let r = if data.len() == 24 {
                    Ok(())
                } else {
                    Err(Fail::BadDataLen)
                };
                self.respond(op, 0, &[], r);
            }
            Command::SpiAttach => {
                let r = if data.len() == 4 || data.len() == 8 {
                    Ok(())
                } else {
                    Err(Fail::BadDataLen)
                };
                self.respond(op, 0, &[], r);
            }
            Command::ChangeBaudrate => {
                if data.len() != 8 {
                    return self.respond(op, 0, &[], Err(Fail::BadDataLen));
                }
                let baud = word(0);
                if !(300..=5_000_000).contains(&baud) {
                    return self.respond(op, 0, &[], Err(Fail::Failed));
                }
                self.respond(op, 0, &[], Ok(()));
                self.defer(Deferred::SetBaud(baud));
            }
            Command::MemBegin => {
                let r = self.mem_begin(data);
                self.respond(op, 0, &[], r);
            }
            Command::MemData => {
                let r = self.mem_data(data, chk);
                self.respond(op, 0, &[], r);
            }
            Command::MemEnd => {
                if data.len() != 8 {
                    return self.respond(op, 0, &[], Err(Fail::BadDataLen));
                }
                let (no_entry, entry) = (word(0), word(1));
                let loaded = match self.op {
                    Operation::Mem { loaded } => loaded,
                    _ => 0,
                };
                self.op = Operation::Idle;
                self.respond(op, 0, &[], Ok(()));
                if no_entry == 0 && entry != 0 && loaded > 0 {
                    // The uploaded code is taken to be esptool's stub: it greets the host.
                    self.loader = Loader::Stub;
                    slip::encode_frame(&mut self.tx, &[b"OHAI"]);
                }
            }
            Command::FlashBegin | Command::FlashDeflBegin => {
                let r = self.flash_begin(data, cmd == Command::FlashDeflBegin);
                self.respond(op, 0, &[], r);
            }
            Command::FlashData | Command::FlashDeflData => {
                let r = self.flash_data(data, chk, cmd == Command::FlashDeflData);
                self.respond(op, 0, &[], r);
            }
            Command::FlashEnd | Command::FlashDeflEnd => self.flash_end(op, data),
            Command::SpiFlashMd5 => self.flash_md5(op, data),
            Command::ReadFlashSlow => {
                // esptool sends (address, length); espflash adds two words it does not use.
                if data.len() < 8 {
                    return self.respond(op, 0, &[], Err(Fail::BadDataLen));
                }
                let (addr, len) = (word(0), word(1));
                let mut block = [0xFFu8; 64];
                match self.flash.read(addr, len).filter(|_| len <= 64) {
                    Some(bytes) => {
                        block[..bytes.len()].copy_from_slice(bytes);
                        self.respond(op, 0, &block, Ok(()));
                    }
                    None => self.respond(op, 0, &[], Err(Fail::Failed)),
                }
            }
            Command::GetSecurityInfo => {
                if !data.is_empty() {
                    return self.respond(op, 0, &[], Err(Fail::BadDataLen));
                }
                match self.target {
                    Target::Esp32c3 => self.respond(op, 0, &esp32c3::security_info(), Ok(())),
                    Target::Esp32 | Target::Esp8266 => self.respond(op, 0, &[], Err(Fail::Invalid)),
                }
            }
            Command::EraseFlash => {
                self.flash.erase_all();
                self.respond(op, 0, &[], Ok(()));
            }
            Command::EraseRegion => {
                if data.len() != 8 {
                    return self.respond(op, 0, &[], Err(Fail::BadDataLen));
                }
                let (addr, len) = (word(0), word(1));
                let sector = SECTOR_SIZE as u32;
                let r = if addr % sector != 0 || len % sector != 0 {
                    Err(Fail::BadDataLen)
                } else {
                    self.flash
                        .erase_covering(addr, len)
                        .map_err(|_| Fail::Failed)
                };
                self.respond(op, 0, &[], r);
            }
            Command::ReadFlash => {
                if data.len() != 16 {
                    return self.respond(op, 0, &[], Err(Fail::BadDataLen));
                }
                let (offset, length, packet_size, max_unacked) =
                    (word(0), word(1), word(2), word(3));
                if packet_size == 0 || packet_size > STUB_MAX_BLOCK {
                    return self.respond(op, 0, &[], Err(Fail::BadBlockSize));
                }
                if self.flash.read(offset, length).is_none() {
                    return self.respond(op, 0, &[], Err(Fail::Failed));
                }
                self.respond(op, 0, &[], Ok(()));
                self.op = Operation::Read(ReadFlash {
                    offset,
                    length,
                    packet_size,
                    max_unacked: max_unacked.max(1),
                    sent: 0,
                    acked: 0,
                    md5: Md5::new(),
                });
            }
            Command::RunUserCode => {
                // No response: the stub jumps straight into the application.
                self.defer(Deferred::RunApp);
            }
        }
    }

    fn max_block(&self) -> u32 {
        match self.loader {
            Loader::Rom => ROM_MAX_BLOCK,
            Loader::Stub => STUB_MAX_BLOCK,
        }
    }

    fn mem_begin(&mut self, data: &[u8]) -> Result<(), Fail> {
        if data.len() != 16 {
            return Err(Fail::BadDataLen);
        }
        if u32_at(data, 2) > ROM_MAX_BLOCK {
            return Err(Fail::BadBlockSize);
        }
        self.op = Operation::Mem { loaded: 0 };
        Ok(())
    }

    /// Checks the 16-byte data header (`len, seq, 0, 0`) and the checksum; returns
    /// `(seq, payload)`.
    fn data_block<'a>(&self, data: &'a [u8], chk: u32) -> Result<(u32, &'a [u8]), Fail> {
        if data.len() < 16 || u32_at(data, 0) as usize != data.len() - 16 {
            return Err(Fail::BadDataLen);
        }
        let payload = &data[16..];
        if payload.len() as u32 > self.max_block() {
            return Err(Fail::BadDataLen);
        }
        if checksum(payload) != chk {
            return Err(Fail::BadChecksum);
        }
        Ok((u32_at(data, 1), payload))
    }

    fn mem_data(&mut self, data: &[u8], chk: u32) -> Result<(), Fail> {
        let (_, payload) = self.data_block(data, chk)?;
        match &mut self.op {
            Operation::Mem { loaded } => {
                *loaded = loaded.saturating_add(payload.len() as u32);
                Ok(())
            }
            _ => Err(Fail::NotInFlashMode),
        }
    }

    fn flash_begin(&mut self, data: &[u8], deflate: bool) -> Result<(), Fail> {
        // 16 bytes; the stub and later ROMs take a fifth word (encrypted write).
        if data.len() != 16 && data.len() != 20 {
            return Err(Fail::BadDataLen);
        }
        let (size, _blocks, block_size, offset) = (
            u32_at(data, 0),
            u32_at(data, 1),
            u32_at(data, 2),
            u32_at(data, 3),
        );
        if block_size > self.max_block() || (block_size == 0 && size != 0) {
            return Err(Fail::BadBlockSize);
        }
        // Both dialects end up erasing the sectors the image covers: the ROM up front
        // (size = erase size), the stub as it goes (size = image size).
        if (self.loader, self.target) == (Loader::Rom, Target::Esp8266) {
            self.esp8266_rom_erase(offset, size)?;
        } else {
            self.flash
                .erase_covering(offset, size)
                .map_err(|_| Fail::Failed)?;
        }
        if deflate {
            self.inflater.reset(DataFormat::Zlib);
        }
        self.op = Operation::Flash(FlashWrite {
            offset,
            size,
            block_size,
            written: 0,
            next_seq: 0,
            deflate,
            stream_done: false,
            reboot_on_end: size == 0,
        });
        Ok(())
    }

    /// The ESP8266 ROM's FLASH_BEGIN erase, bug included (`esp8266::rom_erase_sectors`);
    /// sectors past the end of the chip are skipped.
    fn esp8266_rom_erase(&mut self, offset: u32, size: u32) -> Result<(), Fail> {
        let sector = SECTOR_SIZE as u64;
        let (first, count) = esp8266::rom_erase_sectors(offset, size, SECTOR_SIZE as u32);
        if count == 0 {
            return Ok(());
        }
        let start = u64::from(first) * sector;
        let end = (start + u64::from(count) * sector).min(self.flash.size() as u64);
        if start >= end {
            return Err(Fail::Failed);
        }
        self.flash
            .erase_covering(start as u32, (end - start) as u32)
            .map_err(|_| Fail::Failed)
    }

    fn flash_data(&mut self, data: &[u8], chk: u32, deflate: bool) -> Result<(), Fail> {
        let (seq, payload) = self.data_block(data, chk)?;
        let Operation::Flash(fw) = &mut self.op else {
            return Err(Fail::NotInFlashMode);
        };
        if fw.deflate != deflate {
            return Err(Fail::NotInFlashMode);
        }
        if !deflate {
            // Address from the sequence number: a block re-sent after a lost ack lands
            // in the same place.
            let addr = u64::from(seq) * u64::from(fw.block_size) + u64::from(fw.offset);
            let end = (self.flash.size() as u64).min(addr + payload.len() as u64);
            if addr > end {
                return Err(Fail::Failed);
            }
            let (inside, beyond) = payload.split_at((end - addr) as usize);
            if beyond.iter().any(|&b| b != 0xFF) {
                return Err(Fail::Failed); // padding past the chip is fine, data is not
            }
            return self
                .flash
                .program(addr as u32, inside)
                .map_err(|_| Fail::Failed);
        }
        if seq < fw.next_seq {
            return Ok(()); // already inflated; the host lost our ack and retried
        }
        if seq > fw.next_seq || fw.stream_done {
            return Err(if fw.stream_done {
                Fail::TooMuchData
            } else {
                Fail::Failed
            });
        }
        let mut input = payload;
        loop {
            let r = inflate(
                &mut self.inflater,
                input,
                &mut self.inflate_buf,
                MZFlush::None,
            );
            input = &input[r.bytes_consumed..];
            if r.bytes_written > 0 {
                let out = &self.inflate_buf[..r.bytes_written];
                if u64::from(fw.written) + out.len() as u64 > u64::from(fw.size) {
                    return Err(Fail::TooMuchData);
                }
                self.flash
                    .program(fw.offset + fw.written, out)
                    .map_err(|_| Fail::Failed)?;
                fw.written += out.len() as u32;
            }
            match r.status {
                Ok(MZStatus::StreamEnd) => {
                    fw.stream_done = true;
                    break;
                }
                Ok(_) => {
                    let progressed = r.bytes_consumed > 0 || r.bytes_written > 0;
                    let flushed = r.bytes_written < self.inflate_buf.len();
                    if !progressed || (input.is_empty() && flushed) {
                        break;
                    }
                }
                Err(MZError::Buf) => break, // wants more input: the next block
                Err(_) => return Err(Fail::Inflate),
            }
        }
        fw.next_seq += 1;
        Ok(())
    }

    fn flash_end(&mut self, op: u8, data: &[u8]) {
        // esptool and espflash ≥ 4.5 send a word; older espflash one byte (1 = stay).
        if !(1..=4).contains(&data.len()) {
            return self.respond(op, 0, &[], Err(Fail::BadDataLen));
        }
        let stay = data[0] != 0;
        let op_state = std::mem::replace(&mut self.op, Operation::Idle);
        match self.loader {
            Loader::Rom => {
                // The ROM leaves the loader either way: run the app, or reboot.
                self.respond(op, 0, &[], Ok(()));
                self.defer(if stay {
                    Deferred::RunApp
                } else {
                    Deferred::Reboot
                });
            }
            Loader::Stub => {
                let Operation::Flash(fw) = op_state else {
                    return self.respond(op, 0, &[], Err(Fail::NotInFlashMode));
                };
                if fw.deflate && fw.written < fw.size {
                    return self.respond(op, 0, &[], Err(Fail::NotEnoughData));
                }
                self.respond(op, 0, &[], Ok(()));
                if !stay || fw.reboot_on_end {
                    self.defer(Deferred::Reboot);
                }
            }
        }
    }

    fn flash_md5(&mut self, op: u8, data: &[u8]) {
        if data.len() != 16 {
            return self.respond(op, 0, &[], Err(Fail::BadDataLen));
        }
        let Some(bytes) = self.flash.read(u32_at(data, 0), u32_at(data, 1)) else {
            return self.respond(op, 0, &[], Err(Fail::Failed));
        };
        let digest = md5::digest(bytes);
        match self.loader {
            Loader::Rom => {
                let hex = md5::to_hex(&digest);
                self.respond(op, 0, &hex, Ok(()));
            }
            Loader::Stub => self.respond(op, 0, &digest, Ok(())),
        }
    }

    fn apb_hz(&self) -> u32 {
        match (self.target, self.loader) {
            (Target::Esp32, Loader::Rom) => esp32::APB_ROM_HZ,
            (Target::Esp32, Loader::Stub) => esp32::APB_STUB_HZ,
            (Target::Esp32c3, _) => esp32c3::APB_HZ,
            (Target::Esp8266, _) => esp8266::UART_CLK_HZ,
        }
    }

    /// The identity register at `addr` (chip model, eFuses, straps), if it is one.
    fn identity_reg(&self, addr: u32) -> Option<u32> {
        let (baud, strap) = (self.expected_baud, self.strapped_download);
        match self.target {
            Target::Esp32 => esp32::identity_reg(addr, baud, self.apb_hz(), strap),
            Target::Esp32c3 => esp32c3::identity_reg(addr, baud, strap),
            Target::Esp8266 => esp8266::identity_reg(addr, baud),
        }
    }

    /// The offset into the flash controller's block, if `addr` is in it.
    fn spi_offset(&self, addr: u32) -> Option<u32> {
        let (base, len) = match self.target {
            Target::Esp32 => (esp32::SPI_BASE, esp32::SPI_BLOCK_LEN),
            Target::Esp32c3 => (esp32c3::SPI_BASE, esp32c3::SPI_BLOCK_LEN),
            Target::Esp8266 => (esp8266::SPI_BASE, esp8266::SPI_BLOCK_LEN),
        };
        (base..base + len).contains(&addr).then(|| addr - base)
    }

    fn read_reg(&self, addr: u32) -> u32 {
        if let Some(v) = self.identity_reg(addr) {
            return v;
        }
        if let Some(off) = self.spi_offset(addr) {
            return self.spi.read(off);
        }
        self.scratch.get(&addr).copied().unwrap_or(0)
    }

    fn write_reg(&mut self, addr: u32, value: u32) {
        if let Some(off) = self.spi_offset(addr) {
            self.spi.write(off, value, &self.flash);
        } else if self.identity_reg(addr).is_none()
            && (self.scratch.len() < MAX_SCRATCH_REGS || self.scratch.contains_key(&addr))
        {
            self.scratch.insert(addr, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::testkit::{block_request, request, words};

    const T0: Duration = Duration::ZERO;

    /// Drain everything the chip sends and split it into SLIP frames.
    fn frames(chip: &mut Chip) -> Vec<Vec<u8>> {
        let mut dec = slip::Decoder::new(1 << 20);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..10_000 {
            let n = chip.take_tx(&mut buf, T0);
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                if let Some(f) = dec.push(b) {
                    out.push(f.to_vec());
                }
            }
        }
        out
    }

    fn text(chip: &mut Chip, now: Duration) -> String {
        let mut buf = vec![0u8; 1 << 16];
        let n = chip.take_tx(&mut buf, now);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// `(value, data without status, status)` of a response frame.
    fn parse(frame: &[u8], status_len: usize) -> (u8, u32, Vec<u8>, Vec<u8>) {
        assert_eq!(frame[0], 0x01, "response direction");
        let len = u16::from_le_bytes([frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 8, "length field");
        let value = u32_at(frame, 1);
        let data = &frame[8..];
        let split = data.len() - status_len;
        (
            frame[1],
            value,
            data[..split].to_vec(),
            data[split..].to_vec(),
        )
    }

    fn download_chip() -> Chip {
        let mut chip = Chip::new(Flash::new(), true, T0);
        let banner = text(&mut chip, T0);
        assert!(banner.contains("waiting for download"), "{banner}");
        chip
    }

    fn command(chip: &mut Chip, op: u8, data: &[u8], status_len: usize) -> (u32, Vec<u8>, Vec<u8>) {
        chip.receive(&request(op, data, 0), T0);
        let f = frames(chip);
        assert_eq!(f.len(), 1, "one response to {op:#x}");
        let (rop, value, data, status) = parse(&f[0], status_len);
        assert_eq!(rop, op);
        (value, data, status)
    }

    fn sync_payload() -> Vec<u8> {
        let mut d = SYNC_PREFIX.to_vec();
        d.extend_from_slice(&[0x55; 32]);
        d
    }

    fn upload_stub(chip: &mut Chip) {
        command(
            chip,
            Command::MemBegin as u8,
            &words(&[8, 1, 0x1800, 0x4009_0000]),
            4,
        );
        chip.receive(
            &block_request(Command::MemData as u8, 0, &[1, 2, 3, 4, 5, 6, 7, 8]),
            T0,
        );
        let f = frames(chip);
        assert_eq!(parse(&f[0], 4).3, [0, 0, 0, 0]);
        chip.receive(
            &request(Command::MemEnd as u8, &words(&[0, 0x4009_0000]), 0),
            T0,
        );
        let f = frames(chip);
        assert_eq!(f.len(), 2);
        assert_eq!(f[1], b"OHAI");
        assert_eq!(chip.loader(), Loader::Stub);
    }

    #[test]
    fn reset_circuit_truth_table() {
        let l = |dtr, rts| auto_reset_circuit(Lines { dtr, rts });
        assert_eq!(
            l(false, false),
            Pins {
                en: true,
                io0: true
            }
        );
        assert_eq!(
            l(true, true),
            Pins {
                en: true,
                io0: true
            }
        );
        assert_eq!(
            l(false, true),
            Pins {
                en: false,
                io0: true
            }
        );
        assert_eq!(
            l(true, false),
            Pins {
                en: true,
                io0: false
            }
        );
    }

    #[test]
    fn reset_sequence_enters_download_and_counts_boots() {
        let mut chip = Chip::new(Flash::new(), false, T0);
        assert_eq!(chip.mode(), Mode::App);
        assert!(text(&mut chip, T0).contains("boot:0x13 (SPI_FAST_FLASH_BOOT)"));
        // esptool's UnixTightReset: EN low, then EN high with IO0 low, then release.
        chip.set_lines(
            Lines {
                dtr: false,
                rts: true,
            },
            Duration::from_millis(10),
        );
        assert_eq!(chip.mode(), Mode::Reset);
        assert_eq!(text(&mut chip, Duration::from_millis(50)), "");
        chip.set_lines(
            Lines {
                dtr: true,
                rts: false,
            },
            Duration::from_millis(110),
        );
        chip.set_lines(
            Lines {
                dtr: false,
                rts: false,
            },
            Duration::from_millis(160),
        );
        assert_eq!(chip.mode(), Mode::Download);
        assert_eq!(chip.boot_count(), 2);
        assert_eq!(
            text(&mut chip, Duration::from_millis(200)),
            "ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x3 \
             (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\nwaiting for download\r\n"
        );
        // A software reset (ROM FLASH_END asking for a reboot) keeps the latched straps:
        // back into download mode although IO0 has been released since.
        chip.receive(&request(0x04, &words(&[0]), 0), Duration::from_millis(200));
        let mut reply = [0u8; 64];
        let n = chip.take_tx(&mut reply, Duration::from_millis(201)); // stops at the reboot
        assert_eq!((n, reply[1], reply[2]), (14, 0x01, 0x04));
        let out = text(&mut chip, Duration::from_millis(210));
        assert!(out.contains("rst:0x3 (SW_RESET),boot:0x3"), "{out}");
        assert_eq!((chip.mode(), chip.boot_count()), (Mode::Download, 3));
        // Hard reset (RTS pulse) boots the application again.
        chip.set_lines(
            Lines {
                dtr: false,
                rts: true,
            },
            Duration::from_millis(300),
        );
        chip.set_lines(
            Lines {
                dtr: false,
                rts: false,
            },
            Duration::from_millis(400),
        );
        assert_eq!(chip.mode(), Mode::Reset, "EN's RC: not up yet");
        chip.advance(Duration::from_millis(401));
        assert_eq!(chip.mode(), Mode::App);
        assert_eq!(chip.boot_count(), 4);
        let out = text(&mut chip, Duration::from_millis(401));
        assert!(out.ends_with("sim: app start, boot #4\r\n"), "{out}");
        // Two seconds without a look: only the latest tick line, its number shows the gap.
        let out = text(&mut chip, Duration::from_millis(2450));
        assert_eq!(out, "sim: app tick 19, boot #4\r\n");
        // Opening the port (pyserial asserts both lines) does not reset.
        chip.set_lines(
            Lines {
                dtr: true,
                rts: true,
            },
            Duration::from_millis(2500),
        );
        assert_eq!((chip.mode(), chip.boot_count()), (Mode::App, 4));
    }

    #[test]
    fn reset_button_with_and_without_boot() {
        let mut chip = Chip::new(Flash::new(), false, T0);
        chip.press_reset(true, T0);
        assert_eq!((chip.mode(), chip.boot_count()), (Mode::Download, 2));
        chip.press_reset(false, T0);
        assert_eq!((chip.mode(), chip.boot_count()), (Mode::App, 3));
        // While the host holds EN low, the button cannot bring the chip up.
        let hold = Lines {
            dtr: false,
            rts: true,
        };
        chip.set_lines(hold, T0);
        chip.press_reset(false, T0);
        assert_eq!(chip.mode(), Mode::Reset);
    }

    #[test]
    fn sync_gets_eight_responses_and_app_ignores_it() {
        let mut chip = download_chip();
        chip.receive(&request(Command::Sync as u8, &sync_payload(), 0), T0);
        let f = frames(&mut chip);
        assert_eq!(f.len(), SYNC_REPLIES);
        for frame in &f {
            let (op, value, data, status) = parse(frame, 4);
            assert_eq!((op, value), (0x08, ROM_SYNC_VALUE));
            assert!(data.is_empty());
            assert_eq!(status, [0, 0, 0, 0]);
        }
        let mut app = Chip::new(Flash::new(), false, T0);
        text(&mut app, T0);
        app.receive(&request(Command::Sync as u8, &sync_payload(), 0), T0);
        assert!(frames(&mut app).is_empty());
    }

    #[test]
    fn registers_identify_an_esp32() {
        let mut chip = download_chip();
        let (v, _, st) = command(&mut chip, 0x0A, &words(&[esp32::CHIP_DETECT_MAGIC_REG]), 4);
        assert_eq!((v, st), (esp32::ESP32_MAGIC, vec![0, 0, 0, 0]));
        let (v, _, _) = command(&mut chip, 0x0A, &words(&[0x1234_5678]), 4);
        assert_eq!(v, 0);
        // Unsupported on the ESP32 ROM: error status, which esptool tolerates.
        let (_, _, st) = command(&mut chip, 0x14, &[], 4);
        assert_eq!(st, [1, 5, 0, 0]);
    }

    #[test]
    fn flash_id_through_spi_registers() {
        let mut chip = download_chip();
        let base = esp32::SPI_BASE;
        let write = |chip: &mut Chip, addr: u32, value: u32| {
            command(chip, 0x09, &words(&[addr, value, 0xFFFF_FFFF, 0]), 4);
        };
        write(&mut chip, base + 0x2C, 23); // MISO 24 bits
        write(&mut chip, base + 0x1C, 1 << 31 | 1 << 28);
        write(&mut chip, base + 0x24, 7 << 28 | 0x9F);
        write(&mut chip, base + 0x80, 0);
        write(&mut chip, base, 1 << 18);
        let (cmd, _, _) = command(&mut chip, 0x0A, &words(&[base]), 4);
        assert_eq!(cmd & (1 << 18), 0);
        let (id, _, _) = command(&mut chip, 0x0A, &words(&[base + 0x80]), 4);
        assert_eq!(id, 0x0016_40EF);
    }

    #[test]
    fn rom_flash_begin_data_end_writes_flash() {
        let mut chip = download_chip();
        chip.flash_mut().program(0x10000, &[0u8; 0x1000]).unwrap(); // old contents
        let image: Vec<u8> = (0..0x900u32).map(|i| (i * 31 + 7) as u8).collect();
        let (value, _, st) = command(&mut chip, 0x02, &words(&[0x900, 3, 0x400, 0x10000]), 4);
        assert_eq!((value, st), (0, vec![0, 0, 0, 0]));
        for (seq, chunk) in image.chunks(0x400).enumerate() {
            let mut block = chunk.to_vec();
            block.resize(0x400, 0xFF); // esptool pads the last block
            chip.receive(&block_request(0x03, seq as u32, &block), T0);
            let f = frames(&mut chip);
            assert_eq!(parse(&f[0], 4).3, [0, 0, 0, 0], "block {seq}");
        }
        // A corrupted block is refused with the ROM's checksum error and not written.
        let mut bad = block_request(0x03, 0, &[0u8; 0x400]);
        let last = bad.len() - 2;
        bad[last] ^= 1;
        chip.receive(&bad, T0);
        let f = frames(&mut chip);
        assert_eq!(parse(&f[0], 4).3, [1, 7, 0, 0]);

        let got = chip.flash().read(0x10000, 0x1000).unwrap();
        assert_eq!(&got[..0x900], &image[..]);
        assert!(
            got[0x900..].iter().all(|&b| b == 0xFF),
            "rest of the sector erased"
        );
        // MD5 in ROM dialect: 32 hex characters.
        let (_, hex, st) = command(&mut chip, 0x13, &words(&[0x10000, 0x900, 0, 0]), 4);
        assert_eq!(st, [0, 0, 0, 0]);
        assert_eq!(hex, md5::to_hex(&md5::digest(&image)));
        // FLASH_END(run) leaves the loader for the application, after the reply.
        let (_, _, st) = command(&mut chip, 0x04, &words(&[1]), 4);
        assert_eq!(st, [0, 0, 0, 0]);
        assert_eq!(chip.mode(), Mode::App);
        assert_eq!(chip.boot_count(), 1, "running the app is not a reset");
    }

    #[test]
    fn stub_deflate_write_read_and_baud_change() {
        let mut chip = download_chip();
        upload_stub(&mut chip);
        // CHANGE_BAUDRATE: reply at the old rate, then switch.
        chip.receive(&request(0x0F, &words(&[921_600, 115_200]), 0), T0);
        assert_eq!(chip.expected_baud(), ROM_BAUD);
        let f = frames(&mut chip);
        assert_eq!(parse(&f[0], 2).3, [0, 0]);
        assert_eq!(chip.expected_baud(), 921_600);

        let image: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let z = miniz_oxide::deflate::compress_to_vec_zlib(&image, 6);
        let blocks = z.len().div_ceil(0x4000) as u32;
        let (_, _, st) = command(
            &mut chip,
            0x10,
            &words(&[image.len() as u32, blocks, 0x4000, 0x20000, 0]),
            2,
        );
        assert_eq!(st, [0, 0]);
        for (seq, chunk) in z.chunks(0x4000).enumerate() {
            chip.receive(&block_request(0x11, seq as u32, chunk), T0);
            let f = frames(&mut chip);
            assert_eq!(parse(&f[0], 2).3, [0, 0], "block {seq}");
        }
        let (_, _, st) = command(&mut chip, 0x12, &words(&[1]), 2);
        assert_eq!(st, [0, 0]);
        assert_eq!(chip.mode(), Mode::Download, "stay in the stub");
        assert_eq!(
            chip.flash().read(0x20000, image.len() as u32).unwrap(),
            &image[..]
        );
        let (_, digest, _) = command(
            &mut chip,
            0x13,
            &words(&[0x20000, image.len() as u32, 0, 0]),
            2,
        );
        assert_eq!(digest, md5::digest(&image));

        // READ_FLASH: packets, acked by byte count, then the raw MD5.
        chip.receive(&request(0xD2, &words(&[0x20000, 10_000, 0x1000, 2]), 0), T0);
        let mut dec = slip::Decoder::new(1 << 16);
        let mut got = Vec::new();
        let mut digest = None;
        let mut buf = [0u8; 512];
        for _ in 0..1000 {
            let n = chip.take_tx(&mut buf, T0);
            let mut acks = Vec::new();
            for &b in &buf[..n] {
                if let Some(f) = dec.push(b) {
                    if f[0] == 0x01 && f.len() == 10 {
                        assert_eq!(&f[8..], [0, 0]);
                    } else if got.len() < 10_000 {
                        got.extend_from_slice(f);
                        acks.push(got.len() as u32);
                    } else {
                        digest = Some(f.to_vec());
                    }
                }
            }
            for a in acks {
                let mut frame = Vec::new();
                slip::encode_frame(&mut frame, &[&a.to_le_bytes()]);
                chip.receive(&frame, T0);
            }
            if digest.is_some() {
                break;
            }
        }
        assert_eq!(got, &image[..10_000]);
        assert_eq!(digest.unwrap(), md5::digest(&image[..10_000]));

        // Erase region must be sector aligned.
        let (_, _, st) = command(&mut chip, 0xD1, &words(&[0x20000, 0x800]), 2);
        assert_eq!(st, [0xC0, 0]);
        let (_, _, st) = command(&mut chip, 0xD1, &words(&[0x20000, 0x1000]), 2);
        assert_eq!(st, [0, 0]);
        assert!(chip
            .flash()
            .read(0x20000, 0x1000)
            .unwrap()
            .iter()
            .all(|&b| b == 0xFF));

        // FLASH_END asking for a reboot: reply, then a software reset at 115200.
        command(&mut chip, 0x02, &words(&[0, 0, 0x4000, 0, 0]), 2);
        chip.receive(&request(0x04, &words(&[0]), 0), T0);
        let mut buf = vec![0u8; 4096];
        let n = chip.take_tx(&mut buf, T0);
        assert!(n > 0);
        assert_eq!(chip.boot_count(), 2);
        assert_eq!(
            (chip.loader(), chip.expected_baud()),
            (Loader::Rom, ROM_BAUD)
        );
        assert!(text(&mut chip, T0).contains("rst:0x3 (SW_RESET),boot:0x3"));
    }

    proptest::proptest! {
        /// Arbitrary (partly well-framed) input in both dialects: no panic, and every
        /// response that comes out is a well-formed response frame.
        #[test]
        fn arbitrary_requests_are_answered_or_ignored(
            reqs in proptest::collection::vec(
                (proptest::prelude::any::<u8>(),
                 proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                 proptest::prelude::any::<bool>()),
                0..40),
            stub in proptest::prelude::any::<bool>(),
        ) {
            let mut chip = download_chip();
            if stub {
                upload_stub(&mut chip);
            }
            for (op, data, raw) in reqs {
                if raw {
                    chip.receive(&data, T0);
                } else {
                    chip.receive(&request(op, &data, 0), T0);
                }
                for f in frames(&mut chip) {
                    if f.len() >= 8 && f[0] == 0x01 {
                        let len = u16::from_le_bytes([f[2], f[3]]) as usize;
                        proptest::prop_assert_eq!(len, f.len() - 8);
                    }
                }
            }
        }
    }

    #[test]
    fn malformed_input_never_panics() {
        let mut chip = download_chip();
        upload_stub(&mut chip);
        let mut seed = 0x1234_5678u32;
        let mut junk = vec![0u8; 64 * 1024];
        for b in junk.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            *b = match seed % 7 {
                0 => 0xC0,
                1 => 0x00,
                _ => (seed >> 8) as u8,
            };
        }
        chip.receive(&junk, T0);
        // Short and lying requests of every command get an error or nothing at all.
        for op in 0..=255u8 {
            chip.receive(&request(op, &[1, 2, 3], 0), T0);
            chip.receive(&[0xC0, 0x00, op, 0xFF, 0xFF, 0xC0], T0);
        }
        frames(&mut chip);
    }
}
