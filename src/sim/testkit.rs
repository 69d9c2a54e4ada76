//! What the sim's tests share: an in-memory host end of the UART, loader requests framed as
//! esptool frames them, and a chip in download mode to send them to, with its responses
//! taken apart.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::Duration;

use super::chip::Chip;
use super::flash::Flash;
use super::loader::{Command, Loader};
use crate::protocol::slip;

/// The time the chip tests run at: nothing in them waits.
pub(crate) const T0: Duration = Duration::ZERO;

/// The host end of a simulated UART: bytes queued for the chip, bytes the chip sent.
#[derive(Default)]
pub(crate) struct Host {
    pub(crate) to_chip: VecDeque<u8>,
    pub(crate) from_chip: Vec<u8>,
}

impl Read for Host {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.to_chip.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.to_chip.len());
        for (d, s) in buf.iter_mut().zip(self.to_chip.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }
}

impl Write for Host {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.from_chip.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Little-endian words, as loader requests carry their arguments.
pub(crate) fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A request frame as esptool builds it; `chk` is the *_DATA checksum.
pub(crate) fn request(op: u8, data: &[u8], chk: u32) -> Vec<u8> {
    let mut body = vec![0x00, op];
    body.extend_from_slice(&(data.len() as u16).to_le_bytes());
    body.extend_from_slice(&chk.to_le_bytes());
    body.extend_from_slice(data);
    let mut out = Vec::new();
    slip::encode_into(&body, &mut out);
    out
}

/// A *_DATA request: the 16-byte header, the payload and its checksum.
pub(crate) fn block_request(op: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut data = words(&[payload.len() as u32, seq, 0, 0]);
    data.extend_from_slice(payload);
    request(op, &data, checksum(payload))
}

/// The loader's *_DATA checksum.
pub(crate) fn checksum(data: &[u8]) -> u32 {
    u32::from(data.iter().fold(0xEF_u8, |acc, &b| acc ^ b))
}

/// The SLIP frames in `bytes` (up to 64 KiB each; noise between them dropped).
pub(crate) fn split_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut dec = slip::Decoder::new(1 << 16);
    let mut out = Vec::new();
    dec.push(bytes, |f| out.push(f.to_vec()));
    out
}

/// Drain everything the chip sends and split it into SLIP frames.
pub(crate) fn frames(chip: &mut Chip) -> Vec<Vec<u8>> {
    let mut dec = slip::Decoder::new(1 << 20);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..10_000 {
        let n = chip.take_tx(&mut buf, T0);
        if n == 0 {
            break;
        }
        dec.push(&buf[..n], |f| out.push(f.to_vec()));
    }
    out
}

/// What the chip sends by `now` (one take, up to 64 KiB), as text.
pub(crate) fn text(chip: &mut Chip, now: Duration) -> String {
    let mut buf = vec![0u8; 1 << 16];
    let n = chip.take_tx(&mut buf, now);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// `(op, value, data without status, status)` of a response frame.
pub(crate) fn parse(frame: &[u8], status_len: usize) -> (u8, u32, Vec<u8>, Vec<u8>) {
    assert_eq!(frame[0], 0x01, "response direction");
    let len = u16::from_le_bytes([frame[2], frame[3]]) as usize;
    assert_eq!(len, frame.len() - 8, "length field");
    let value = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let data = &frame[8..];
    let split = data.len() - status_len;
    (
        frame[1],
        value,
        data[..split].to_vec(),
        data[split..].to_vec(),
    )
}

/// An ESP32 DevKit powered up with BOOT held, its banner read.
pub(crate) fn download_chip() -> Chip {
    let mut chip = Chip::new(Flash::new(), true, T0);
    let banner = text(&mut chip, T0);
    assert!(banner.contains("waiting for download"), "{banner}");
    chip
}

/// One request and its one response: `(value, data, status)`.
pub(crate) fn command(
    chip: &mut Chip,
    op: u8,
    data: &[u8],
    status_len: usize,
) -> (u32, Vec<u8>, Vec<u8>) {
    chip.receive(&request(op, data, 0), T0);
    let f = frames(chip);
    assert_eq!(f.len(), 1, "one response to {op:#x}");
    let (rop, value, data, status) = parse(&f[0], status_len);
    assert_eq!(rop, op);
    (value, data, status)
}

/// esptool's stub upload, as far as the ROM sees it: MEM_BEGIN, one MEM_DATA, MEM_END
/// with an entry point; the stub greets with `OHAI`.
pub(crate) fn upload_stub(chip: &mut Chip) {
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
