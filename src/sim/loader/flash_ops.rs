//! The loader's flash operations: FLASH_BEGIN / FLASH_DATA / FLASH_END, plain or deflated
//! (FLASH_DEFL_*, inflated with miniz_oxide as blocks arrive), SPI_FLASH_MD5, the ROM's
//! READ_FLASH_SLOW, the stub's ERASE_REGION and its READ_FLASH stream (packets out, byte-count
//! acks in, the MD5 last), and the ESP8266 ROM's erase that takes too much.
//!
//! Each takes the request's data and returns a result (`Fail` for the status bytes); the
//! dispatch in `loader` frames the replies.

use std::collections::VecDeque;

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

use super::commands::{Fail, Loader, STUB_MAX_BLOCK};
use super::{u32_at, Deferred};
use crate::protocol::slip;
use crate::sim::board::Target;
use crate::sim::esp8266;
use crate::sim::flash::{Flash, SECTOR_SIZE};
use crate::sim::md5::{self, Md5};

/// The zlib stream of a deflated write, with a reused output buffer (one allocation per chip,
/// not per block).
pub(super) struct Inflater {
    state: Box<InflateState>,
    buf: Vec<u8>,
}

impl Inflater {
    pub(super) fn new() -> Inflater {
        Inflater {
            state: InflateState::new_boxed(DataFormat::Zlib),
            buf: vec![0; 32 * 1024],
        }
    }

    /// A new compressed image starts.
    pub(super) fn restart(&mut self) {
        self.state.reset(DataFormat::Zlib);
    }
}

/// An ongoing flash write (FLASH_BEGIN or FLASH_DEFL_BEGIN until the END).
#[derive(Debug)]
pub(super) struct FlashWrite {
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

/// FLASH_BEGIN / FLASH_DEFL_BEGIN: erase what the image covers and start the write.
pub(super) fn begin(
    loader: Loader,
    target: Target,
    flash: &mut Flash,
    data: &[u8],
    deflate: bool,
) -> Result<FlashWrite, Fail> {
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
    if block_size > loader.max_block() || (block_size == 0 && size != 0) {
        return Err(Fail::BadBlockSize);
    }
    // Both dialects end up erasing the sectors the image covers: the ROM up front
    // (size = erase size), the stub as it goes (size = image size).
    if (loader, target) == (Loader::Rom, Target::Esp8266) {
        esp8266_rom_erase(flash, offset, size)?;
    } else {
        flash
            .erase_covering(offset, size)
            .map_err(|_| Fail::Failed)?;
    }
    Ok(FlashWrite {
        offset,
        size,
        block_size,
        written: 0,
        next_seq: 0,
        deflate,
        stream_done: false,
        reboot_on_end: size == 0,
    })
}

/// The ESP8266 ROM's FLASH_BEGIN erase, bug included (`esp8266::rom_erase_sectors`);
/// sectors past the end of the chip are skipped.
fn esp8266_rom_erase(flash: &mut Flash, offset: u32, size: u32) -> Result<(), Fail> {
    let sector = SECTOR_SIZE as u64;
    let (first, count) = esp8266::rom_erase_sectors(offset, size, SECTOR_SIZE as u32);
    if count == 0 {
        return Ok(());
    }
    let start = u64::from(first) * sector;
    let end = (start + u64::from(count) * sector).min(flash.size() as u64);
    if start >= end {
        return Err(Fail::Failed);
    }
    flash
        .erase_covering(start as u32, (end - start) as u32)
        .map_err(|_| Fail::Failed)
}

impl FlashWrite {
    /// Whether this write takes FLASH_DEFL_DATA (or else FLASH_DATA).
    pub(super) fn deflate(&self) -> bool {
        self.deflate
    }

    /// FLASH_DATA: the block lands at its sequence number's place.
    pub(super) fn program_block(
        &mut self,
        flash: &mut Flash,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), Fail> {
        // Address from the sequence number: a block re-sent after a lost ack lands in the
        // same place.
        let addr = u64::from(seq) * u64::from(self.block_size) + u64::from(self.offset);
        let end = (flash.size() as u64).min(addr + payload.len() as u64);
        if addr > end {
            return Err(Fail::Failed);
        }
        let (inside, beyond) = payload.split_at((end - addr) as usize);
        if beyond.iter().any(|&b| b != 0xFF) {
            return Err(Fail::Failed); // padding past the chip is fine, data is not
        }
        flash.program(addr as u32, inside).map_err(|_| Fail::Failed)
    }

    /// FLASH_DEFL_DATA: inflate the block in sequence and program what comes out.
    pub(super) fn inflate_block(
        &mut self,
        inflater: &mut Inflater,
        flash: &mut Flash,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), Fail> {
        if seq < self.next_seq {
            return Ok(()); // already inflated; the host lost our ack and retried
        }
        if seq > self.next_seq || self.stream_done {
            return Err(if self.stream_done {
                Fail::TooMuchData
            } else {
                Fail::Failed
            });
        }
        let mut input = payload;
        loop {
            let r = inflate(&mut inflater.state, input, &mut inflater.buf, MZFlush::None);
            input = &input[r.bytes_consumed..];
            if r.bytes_written > 0 {
                let out = &inflater.buf[..r.bytes_written];
                if u64::from(self.written) + out.len() as u64 > u64::from(self.size) {
                    return Err(Fail::TooMuchData);
                }
                flash
                    .program(self.offset + self.written, out)
                    .map_err(|_| Fail::Failed)?;
                self.written += out.len() as u32;
            }
            match r.status {
                Ok(MZStatus::StreamEnd) => {
                    self.stream_done = true;
                    break;
                }
                Ok(_) => {
                    let progressed = r.bytes_consumed > 0 || r.bytes_written > 0;
                    let flushed = r.bytes_written < inflater.buf.len();
                    if !progressed || (input.is_empty() && flushed) {
                        break;
                    }
                }
                Err(MZError::Buf) => break, // wants more input: the next block
                Err(_) => return Err(Fail::Inflate),
            }
        }
        self.next_seq += 1;
        Ok(())
    }
}

/// FLASH_END's argument: whether to stay in the loader (`None`: malformed). esptool and
/// espflash ≥ 4.5 send a word; older espflash one byte (1 = stay).
pub(super) fn end_stays(data: &[u8]) -> Option<bool> {
    (1..=4).contains(&data.len()).then(|| data[0] != 0)
}

/// FLASH_END / FLASH_DEFL_END, after the write `write` (if one was going on): what the
/// board does once the reply is out.
pub(super) fn end(
    loader: Loader,
    write: Option<FlashWrite>,
    stay: bool,
) -> Result<Option<Deferred>, Fail> {
    match loader {
        // The ROM leaves the loader either way: run the app, or reboot.
        Loader::Rom => Ok(Some(if stay {
            Deferred::RunApp
        } else {
            Deferred::Reboot
        })),
        Loader::Stub => {
            let fw = write.ok_or(Fail::NotInFlashMode)?;
            if fw.deflate && fw.written < fw.size {
                return Err(Fail::NotEnoughData);
            }
            Ok((!stay || fw.reboot_on_end).then_some(Deferred::Reboot))
        }
    }
}

/// SPI_FLASH_MD5 of `(address, length, 0, 0)`: the digest as the dialect sends it (the ROM
/// in 32 hex characters, the stub in 16 bytes), and its length.
pub(super) fn md5(loader: Loader, flash: &Flash, data: &[u8]) -> Result<([u8; 32], usize), Fail> {
    if data.len() != 16 {
        return Err(Fail::BadDataLen);
    }
    let bytes = flash
        .read(u32_at(data, 0), u32_at(data, 1))
        .ok_or(Fail::Failed)?;
    let digest = md5::digest(bytes);
    Ok(match loader {
        Loader::Rom => (md5::to_hex(&digest), 32),
        Loader::Stub => {
            let mut out = [0u8; 32];
            out[..16].copy_from_slice(&digest);
            (out, 16)
        }
    })
}

/// READ_FLASH_SLOW (ROM): up to 64 bytes, padded with 0xFF to 64.
pub(super) fn read_slow(flash: &Flash, data: &[u8]) -> Result<[u8; 64], Fail> {
    // esptool sends (address, length); espflash adds two words it does not use.
    if data.len() < 8 {
        return Err(Fail::BadDataLen);
    }
    let (addr, len) = (u32_at(data, 0), u32_at(data, 1));
    let bytes = flash
        .read(addr, len)
        .filter(|_| len <= 64)
        .ok_or(Fail::Failed)?;
    let mut block = [0xFFu8; 64];
    block[..bytes.len()].copy_from_slice(bytes);
    Ok(block)
}

/// ERASE_REGION (stub): whole sectors only.
pub(super) fn erase_region(flash: &mut Flash, data: &[u8]) -> Result<(), Fail> {
    if data.len() != 8 {
        return Err(Fail::BadDataLen);
    }
    let (addr, len) = (u32_at(data, 0), u32_at(data, 1));
    let sector = SECTOR_SIZE as u32;
    if addr % sector != 0 || len % sector != 0 {
        return Err(Fail::BadDataLen);
    }
    flash.erase_covering(addr, len).map_err(|_| Fail::Failed)
}

/// An ongoing stub READ_FLASH: packets flow out, the host acks with byte counts.
#[derive(Debug)]
pub(super) struct ReadFlash {
    offset: u32,
    length: u32,
    packet_size: u32,
    max_unacked: u32,
    sent: u32,
    acked: u32,
    md5: Md5,
}

impl ReadFlash {
    /// READ_FLASH of `(offset, length, packet size, packets in flight)`.
    pub(super) fn start(flash: &Flash, data: &[u8]) -> Result<ReadFlash, Fail> {
        if data.len() != 16 {
            return Err(Fail::BadDataLen);
        }
        let (offset, length, packet_size, max_unacked) = (
            u32_at(data, 0),
            u32_at(data, 1),
            u32_at(data, 2),
            u32_at(data, 3),
        );
        if packet_size == 0 || packet_size > STUB_MAX_BLOCK {
            return Err(Fail::BadBlockSize);
        }
        if flash.read(offset, length).is_none() {
            return Err(Fail::Failed);
        }
        Ok(ReadFlash {
            offset,
            length,
            packet_size,
            max_unacked: max_unacked.max(1),
            sent: 0,
            acked: 0,
            md5: Md5::new(),
        })
    }

    /// The host has received `count` bytes (never more than were sent).
    pub(super) fn ack(&mut self, count: u32) {
        self.acked = self.acked.max(count.min(self.sent));
    }

    /// Queue the next packet if the window allows, or the MD5 once all is acked; `true`
    /// when the stream is over.
    pub(super) fn pump(&mut self, flash: &Flash, tx: &mut VecDeque<u8>) -> bool {
        if self.sent < self.length {
            let window = u64::from(self.max_unacked) * u64::from(self.packet_size);
            if u64::from(self.sent - self.acked.min(self.sent)) < window {
                let len = self.packet_size.min(self.length - self.sent);
                if let Some(data) = flash.read(self.offset + self.sent, len) {
                    self.md5.update(data);
                    slip::encode_into(data, tx);
                }
                self.sent += len;
            }
            false
        } else if self.acked >= self.length {
            let digest = std::mem::take(&mut self.md5).finalize();
            slip::encode_into(&digest, tx);
            true
        } else {
            false
        }
    }
}
