//! The serial loader protocol of the simulated chip, in its two dialects (the ROM loader and
//! esptool's flasher stub), sans-IO: a decoded request frame goes in, response frames go into
//! the UART's transmit queue, and what must wait until they have left (a baud change, a
//! reboot, running the application) comes back to the board as a [`Deferred`].
//!
//! Wire format (esptool `loader.py`): a request is the SLIP frame
//! `00 op len:u16le chk:u32le data[len]`, a response `01 op len:u16le value:u32le data`,
//! where `data` ends with status bytes: 4 under the ESP32 ROM (status, error, 0, 0), 2 under
//! the ESP8266 ROM (status, error) and 2 under the stub (error code, 0). `chk` is 0xEF XORed
//! with the payload of the *_DATA commands (after their 16-byte header).
//!
//! Rooms: `commands` (the commands, which dialect knows which, status bytes), `flash_ops`
//! (FLASH_BEGIN/DATA/END plain and deflated, MD5, READ_FLASH streaming, the ESP8266 ROM's
//! erase), `regs` (identity registers, the SPI flash controller, scratch registers); here
//! the frame check, the dispatch and the RAM download that turns the ROM into the stub.

mod commands;
mod flash_ops;
mod regs;

use std::collections::VecDeque;

pub(crate) use commands::{Command, Fail, Loader};
use commands::{MAX_FRAME, ROM_MAX_BLOCK, ROM_SYNC_VALUE, SYNC_PREFIX, SYNC_REPLIES};
use flash_ops::{FlashWrite, Inflater, ReadFlash};
use regs::Regs;

use super::board::{Target, UsbPort, USB_OTG_MAX_BLOCK};
use super::flash::Flash;
use super::rtc::Watchdogs;
use super::{esp32c3, esp32s3};
use crate::protocol::slip;

/// Longest request frame the chip's decoder takes.
pub(crate) const MAX_REQUEST: usize = MAX_FRAME;

/// Something that must wait until the response before it has left the UART.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deferred {
    /// CHANGE_BAUDRATE: the reply goes out at the old rate.
    SetBaud(u32),
    /// Software reset (FLASH_END with reboot): boots per the latched strapping pins.
    Reboot,
    /// Leave the loader and run the application without a reset.
    RunApp,
}

/// The chip as the loader sees it: which chip, the UART's rate and the latched strapping
/// pins (both read through registers), the native USB console if any, the time and the RTC
/// watchdogs (register writes act on them), the flash, and the UART's transmit queue.
pub(crate) struct Hw<'a> {
    pub(crate) target: Target,
    pub(crate) baud: u32,
    pub(crate) strapped_download: bool,
    pub(crate) usb: Option<UsbPort>,
    pub(crate) now: std::time::Duration,
    pub(crate) watchdogs: Option<&'a mut Watchdogs>,
    pub(crate) flash: &'a mut Flash,
    pub(crate) tx: &'a mut VecDeque<u8>,
}

#[derive(Debug)]
enum Operation {
    Idle,
    Mem { loaded: u32 },
    Flash(FlashWrite),
    Read(ReadFlash),
}

/// The loader's state across requests: which dialect runs, the operation in progress, the
/// registers, the inflater.
pub(crate) struct LoaderState {
    loader: Loader,
    op: Operation,
    regs: Regs,
    inflater: Inflater,
}

impl std::fmt::Debug for LoaderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoaderState")
            .field("loader", &self.loader)
            .field("op", &self.op)
            .finish()
    }
}

impl LoaderState {
    pub(crate) fn new(target: Target) -> LoaderState {
        LoaderState {
            loader: Loader::Rom,
            op: Operation::Idle,
            regs: Regs::new(target),
            inflater: Inflater::new(),
        }
    }

    /// Which program answers.
    pub(crate) fn loader(&self) -> Loader {
        self.loader
    }

    /// The chip left download mode (reset held, or the application runs): back to the ROM,
    /// nothing in progress. The registers keep their values.
    pub(crate) fn leave(&mut self) {
        self.loader = Loader::Rom;
        self.op = Operation::Idle;
    }

    /// The chip booted: also the registers come up in their reset state.
    pub(crate) fn boot(&mut self, target: Target) {
        self.leave();
        self.regs = Regs::new(target);
    }

    /// Stub READ_FLASH: queue the next packet when the UART has sent everything and the
    /// window allows.
    pub(crate) fn pump(&mut self, hw: &mut Hw<'_>) {
        let Operation::Read(rf) = &mut self.op else {
            return;
        };
        if !hw.tx.is_empty() {
            return;
        }
        if rf.pump(hw.flash, hw.tx) {
            self.op = Operation::Idle;
        }
    }

    /// One decoded frame from the host, in download mode.
    pub(crate) fn handle_frame(&mut self, frame: &[u8], hw: &mut Hw<'_>) -> Option<Deferred> {
        if let Operation::Read(rf) = &mut self.op {
            // While streaming, the host only sends acks: the byte count it has received.
            if frame.len() == 4 {
                rf.ack(u32_at(frame, 0));
                self.pump(hw);
            }
            return None;
        }
        if frame.len() < 8 || frame[0] != 0x00 {
            return None; // not a request: noise, ignored like the ROM does
        }
        let op = frame[1];
        let len = usize::from(u16::from_le_bytes([frame[2], frame[3]]));
        let chk = u32_at(frame, 1);
        let data = &frame[8..];
        if data.len() != len {
            self.respond(hw, op, 0, &[], Err(Fail::BadDataLen));
            return None;
        }
        let Some(cmd) = Command::from_byte(op) else {
            self.respond(hw, op, 0, &[], Err(Fail::Invalid));
            return None;
        };
        if hw.usb == Some(UsbPort::Otg)
            && self.loader == Loader::Rom
            && cmd.is_data_block()
            && len > USB_OTG_MAX_BLOCK + 16
        {
            // The ROM's USB-OTG CDC cannot take a block past its buffer: the request never
            // reaches the loader whole, nothing answers, and the host times out. The stub
            // brings its own USB driver and takes the big blocks (esptool 5.6 `loader.py`
            // `use_usb_otg_block`: "The USB-OTG ROM cannot take the larger RAM block sizes
            // used to upload the stub ... The stub can receive larger blocks").
            return None;
        }
        if !self.loader.supports(hw.target, cmd) {
            self.respond(hw, op, 0, &[], Err(Fail::Invalid));
            return None;
        }
        self.execute(cmd, data, chk, hw)
    }

    fn respond(&self, hw: &mut Hw<'_>, op: u8, value: u32, data: &[u8], result: Result<(), Fail>) {
        let (status, n) = self.loader.status_bytes(hw.target, result);
        let len = (data.len() + n) as u16;
        let mut header = [0u8; 8];
        header[0] = 0x01;
        header[1] = op;
        header[2..4].copy_from_slice(&len.to_le_bytes());
        header[4..8].copy_from_slice(&value.to_le_bytes());
        slip::encode_parts(&[&header, data, &status[..n]], hw.tx);
    }

    /// A response with no data and no value: the command's result only.
    fn status(&self, hw: &mut Hw<'_>, op: u8, result: Result<(), Fail>) {
        self.respond(hw, op, 0, &[], result);
    }

    fn execute(
        &mut self,
        cmd: Command,
        data: &[u8],
        chk: u32,
        hw: &mut Hw<'_>,
    ) -> Option<Deferred> {
        let op = cmd as u8;
        let word = |i: usize| u32_at(data, i);
        let len_is = |ok: bool| if ok { Ok(()) } else { Err(Fail::BadDataLen) };
        match cmd {
            Command::Sync => {
                if data.len() != 36
                    || data[..4] != SYNC_PREFIX
                    || data[4..].iter().any(|&b| b != 0x55)
                {
                    self.status(hw, op, Err(Fail::Invalid));
                    return None;
                }
                let value = match self.loader {
                    Loader::Rom => ROM_SYNC_VALUE,
                    Loader::Stub => 0,
                };
                for _ in 0..SYNC_REPLIES {
                    self.respond(hw, op, value, &[], Ok(()));
                }
            }
            Command::ReadReg => {
                if data.len() != 4 {
                    self.status(hw, op, Err(Fail::BadDataLen));
                    return None;
                }
                let value = self.regs.read(hw, self.loader, word(0));
                self.respond(hw, op, value, &[], Ok(()));
            }
            Command::WriteReg => {
                if data.is_empty() || data.len() % 16 != 0 {
                    self.status(hw, op, Err(Fail::BadDataLen));
                    return None;
                }
                for entry in data.chunks_exact(16) {
                    let (addr, value, mask) =
                        (u32_at(entry, 0), u32_at(entry, 1), u32_at(entry, 2));
                    let old = self.regs.read(hw, self.loader, addr);
                    self.regs
                        .write(hw, self.loader, addr, (old & !mask) | (value & mask));
                }
                self.status(hw, op, Ok(()));
            }
            Command::SpiSetParams => self.status(hw, op, len_is(data.len() == 24)),
            Command::SpiAttach => self.status(hw, op, len_is(data.len() == 4 || data.len() == 8)),
            Command::ChangeBaudrate => {
                if data.len() != 8 {
                    self.status(hw, op, Err(Fail::BadDataLen));
                    return None;
                }
                let baud = word(0);
                if !(300..=5_000_000).contains(&baud) {
                    self.status(hw, op, Err(Fail::Failed));
                    return None;
                }
                self.status(hw, op, Ok(()));
                return Some(Deferred::SetBaud(baud));
            }
            Command::MemBegin => {
                let r = self.mem_begin(data);
                self.status(hw, op, r);
            }
            Command::MemData => {
                let r = self.mem_data(data, chk);
                self.status(hw, op, r);
            }
            Command::MemEnd => {
                if data.len() != 8 {
                    self.status(hw, op, Err(Fail::BadDataLen));
                    return None;
                }
                let (no_entry, entry) = (word(0), word(1));
                let loaded = match self.op {
                    Operation::Mem { loaded } => loaded,
                    _ => 0,
                };
                self.op = Operation::Idle;
                self.status(hw, op, Ok(()));
                if no_entry == 0 && entry != 0 && loaded > 0 {
                    // The uploaded code is taken to be esptool's stub: it greets the host.
                    self.loader = Loader::Stub;
                    slip::encode_into(b"OHAI", hw.tx);
                }
            }
            Command::FlashBegin | Command::FlashDeflBegin => {
                let deflate = cmd == Command::FlashDeflBegin;
                let r =
                    flash_ops::begin(self.loader, hw.target, hw.flash, data, deflate).map(|fw| {
                        if deflate {
                            self.inflater.restart();
                        }
                        self.op = Operation::Flash(fw);
                    });
                self.status(hw, op, r);
            }
            Command::FlashData | Command::FlashDeflData => {
                let r = self.flash_data(data, chk, cmd == Command::FlashDeflData, hw);
                self.status(hw, op, r);
            }
            Command::FlashEnd | Command::FlashDeflEnd => {
                let Some(stay) = flash_ops::end_stays(data) else {
                    self.status(hw, op, Err(Fail::BadDataLen));
                    return None;
                };
                let write = match std::mem::replace(&mut self.op, Operation::Idle) {
                    Operation::Flash(fw) => Some(fw),
                    _ => None,
                };
                let r = flash_ops::end(self.loader, write, stay);
                self.status(hw, op, r.map(|_| ()));
                return r.ok().flatten();
            }
            Command::SpiFlashMd5 => match flash_ops::md5(self.loader, hw.flash, data) {
                Ok((digest, n)) => self.respond(hw, op, 0, &digest[..n], Ok(())),
                Err(e) => self.status(hw, op, Err(e)),
            },
            Command::ReadFlashSlow => match flash_ops::read_slow(hw.flash, data) {
                Ok(block) => self.respond(hw, op, 0, &block, Ok(())),
                Err(e) => self.status(hw, op, Err(e)),
            },
            Command::GetSecurityInfo => {
                if !data.is_empty() {
                    self.status(hw, op, Err(Fail::BadDataLen));
                    return None;
                }
                match hw.target {
                    Target::Esp32c3 => self.respond(hw, op, 0, &esp32c3::security_info(), Ok(())),
                    Target::Esp32s3 => self.respond(hw, op, 0, &esp32s3::security_info(), Ok(())),
                    Target::Esp32 | Target::Esp8266 => self.status(hw, op, Err(Fail::Invalid)),
                }
            }
            Command::EraseFlash => {
                hw.flash.erase_all();
                self.status(hw, op, Ok(()));
            }
            Command::EraseRegion => {
                let r = flash_ops::erase_region(hw.flash, data);
                self.status(hw, op, r);
            }
            Command::ReadFlash => match ReadFlash::start(hw.flash, data) {
                Ok(rf) => {
                    self.status(hw, op, Ok(()));
                    self.op = Operation::Read(rf);
                }
                Err(e) => self.status(hw, op, Err(e)),
            },
            Command::RunUserCode => {
                // No response: the stub jumps straight into the application.
                return Some(Deferred::RunApp);
            }
        }
        None
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

    fn mem_data(&mut self, data: &[u8], chk: u32) -> Result<(), Fail> {
        let (_, payload) = data_block(self.loader, data, chk)?;
        match &mut self.op {
            Operation::Mem { loaded } => {
                *loaded = loaded.saturating_add(payload.len() as u32);
                Ok(())
            }
            _ => Err(Fail::NotInFlashMode),
        }
    }

    fn flash_data(
        &mut self,
        data: &[u8],
        chk: u32,
        deflate: bool,
        hw: &mut Hw<'_>,
    ) -> Result<(), Fail> {
        let (seq, payload) = data_block(self.loader, data, chk)?;
        let Operation::Flash(fw) = &mut self.op else {
            return Err(Fail::NotInFlashMode);
        };
        if fw.deflate() != deflate {
            return Err(Fail::NotInFlashMode);
        }
        if deflate {
            fw.inflate_block(&mut self.inflater, hw.flash, seq, payload)
        } else {
            fw.program_block(hw.flash, seq, payload)
        }
    }
}

/// Checks the 16-byte data header (`len, seq, 0, 0`) of a *_DATA request and its checksum;
/// returns `(seq, payload)`.
fn data_block(loader: Loader, data: &[u8], chk: u32) -> Result<(u32, &[u8]), Fail> {
    if data.len() < 16 || u32_at(data, 0) as usize != data.len() - 16 {
        return Err(Fail::BadDataLen);
    }
    let payload = &data[16..];
    if payload.len() as u32 > loader.max_block() {
        return Err(Fail::BadDataLen);
    }
    if checksum(payload) != chk {
        return Err(Fail::BadChecksum);
    }
    Ok((u32_at(data, 1), payload))
}

/// The little-endian word `i` of `data`, 0 past its end.
pub(crate) fn u32_at(data: &[u8], i: usize) -> u32 {
    data.get(4 * i..4 * i + 4)
        .map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

fn checksum(data: &[u8]) -> u32 {
    u32::from(data.iter().fold(0xEF_u8, |acc, &b| acc ^ b))
}

#[cfg(test)]
mod flash_ops_test;
#[cfg(test)]
mod loader_test;
