//! What the sim's tests share: an in-memory host end of the UART, and loader requests framed
//! as esptool frames them.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use super::slip;

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
    slip::encode_frame(&mut out, &[&body]);
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
