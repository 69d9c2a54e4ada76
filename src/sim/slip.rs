//! SLIP framing (RFC 1055 as the ESP ROM loader uses it): every packet is wrapped in `0xC0`
//! delimiters, and `0xC0` / `0xDB` inside a packet travel as `0xDB 0xDC` / `0xDB 0xDD`.
//!
//! Pure: the decoder takes bytes and yields whole frames, the encoder appends to a buffer.

/// Frame delimiter.
pub(crate) const END: u8 = 0xC0;
/// Escape introducer.
pub(crate) const ESC: u8 = 0xDB;
/// `ESC ESC_END` stands for a literal `END`.
pub(crate) const ESC_END: u8 = 0xDC;
/// `ESC ESC_ESC` stands for a literal `ESC`.
pub(crate) const ESC_ESC: u8 = 0xDD;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between frames: everything up to the next `END` is line noise (boot messages,
    /// garbled bytes) and is dropped, as the ROM does.
    Idle,
    /// Inside a frame.
    InFrame,
    /// Inside a frame, after an `ESC`.
    Escaped,
    /// The frame grew past the limit or had a bad escape; skip to its closing `END`.
    Discard,
}

/// Incremental SLIP decoder with one reusable buffer (no allocation per byte or per frame).
#[derive(Debug)]
pub(crate) struct Decoder {
    buf: Vec<u8>,
    max_len: usize,
    state: State,
    /// Set when a frame has just been returned, so the next `push` starts a fresh buffer.
    complete: bool,
}

impl Decoder {
    /// A decoder that drops frames longer than `max_len` decoded bytes (a corrupted stream
    /// must not make it grow without bound).
    pub(crate) fn new(max_len: usize) -> Decoder {
        Decoder {
            buf: Vec::with_capacity(max_len.min(64 * 1024)),
            max_len,
            state: State::Idle,
            complete: false,
        }
    }

    /// Forget any partial frame (after a reset of the receiving side).
    pub(crate) fn reset(&mut self) {
        self.buf.clear();
        self.state = State::Idle;
        self.complete = false;
    }

    /// Feed one byte; returns the decoded frame when this byte completed one.
    /// The slice is valid until the next call.
    pub(crate) fn push(&mut self, byte: u8) -> Option<&[u8]> {
        if self.complete {
            self.complete = false;
            self.buf.clear();
        }
        match (self.state, byte) {
            (State::Idle, END) => self.state = State::InFrame,
            (State::Idle, _) => {}
            (State::Discard, END) => {
                // The delimiter that closes a bad frame may as well open the next one
                // (esptool always sends `C0 .. C0`, so this loses nothing).
                self.buf.clear();
                self.state = State::InFrame;
            }
            (State::Discard, _) => {}
            (State::InFrame, END) => {
                if self.buf.is_empty() {
                    // `C0 C0`: an empty frame is just an opening delimiter.
                    return None;
                }
                self.state = State::Idle;
                self.complete = true;
                return Some(&self.buf);
            }
            (State::InFrame, ESC) => self.state = State::Escaped,
            (State::InFrame, b) => self.store(b),
            (State::Escaped, ESC_END) => {
                self.state = State::InFrame;
                self.store(END);
            }
            (State::Escaped, ESC_ESC) => {
                self.state = State::InFrame;
                self.store(ESC);
            }
            (State::Escaped, END) => {
                // Invalid escape cut short by a delimiter: drop the frame, keep syncing.
                self.buf.clear();
                self.state = State::InFrame;
            }
            (State::Escaped, _) => {
                self.buf.clear();
                self.state = State::Discard;
            }
        }
        None
    }

    fn store(&mut self, b: u8) {
        if self.buf.len() >= self.max_len {
            self.buf.clear();
            self.state = State::Discard;
        } else {
            self.buf.push(b);
        }
    }
}

/// Something a SLIP frame can be appended to without intermediate allocations.
pub(crate) trait Sink {
    fn put(&mut self, b: u8);
    fn put_slice(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.put(b);
        }
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, b: u8) {
        self.push(b);
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for std::collections::VecDeque<u8> {
    fn put(&mut self, b: u8) {
        self.push_back(b);
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend(bytes);
    }
}

/// Appends escaped `bytes` (no delimiters): lets a frame be built from several parts.
pub(crate) fn encode_body(out: &mut impl Sink, bytes: &[u8]) {
    let mut rest = bytes;
    while let Some(pos) = rest.iter().position(|&b| b == END || b == ESC) {
        out.put_slice(&rest[..pos]);
        out.put(ESC);
        out.put(if rest[pos] == END { ESC_END } else { ESC_ESC });
        rest = &rest[pos + 1..];
    }
    out.put_slice(rest);
}

/// Appends one complete frame: `END`, escaped parts, `END`.
pub(crate) fn encode_frame(out: &mut impl Sink, parts: &[&[u8]]) {
    out.put(END);
    for part in parts {
        encode_body(out, part);
    }
    out.put(END);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any sequence of payloads survives encoding and decoding, with the wire cut
        /// anywhere.
        #[test]
        fn roundtrip_any_payloads(
            payloads in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(END), Just(ESC), any::<u8>()], 1..300),
                0..6),
            cut in 0usize..4000,
        ) {
            let mut wire = Vec::new();
            for p in &payloads {
                encode_frame(&mut wire, &[p]);
            }
            let cut = cut.min(wire.len());
            let mut dec = Decoder::new(1024);
            let mut frames = decode_all(&mut dec, &wire[..cut]);
            frames.extend(decode_all(&mut dec, &wire[cut..]));
            prop_assert_eq!(frames, payloads);
        }
    }

    fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for &b in bytes {
            if let Some(f) = dec.push(b) {
                frames.push(f.to_vec());
            }
        }
        frames
    }

    #[test]
    fn escapes_both_special_bytes() {
        let mut out = Vec::new();
        encode_frame(&mut out, &[&[1, END, 2, ESC, 3]]);
        assert_eq!(out, [END, 1, ESC, ESC_END, 2, ESC, ESC_ESC, 3, END]);
    }

    #[test]
    fn round_trip_split_at_every_byte() {
        let payloads: [&[u8]; 3] = [&[0x00, 0x08, END, ESC, 0xFF], &[ESC, ESC, END], &[7; 40]];
        let mut wire = vec![b'x', b'y']; // noise before the first frame is ignored
        for p in payloads {
            encode_frame(&mut wire, &[p]);
        }
        for split in 0..=wire.len() {
            let mut dec = Decoder::new(1024);
            let mut frames = decode_all(&mut dec, &wire[..split]);
            frames.extend(decode_all(&mut dec, &wire[split..]));
            let expected: Vec<Vec<u8>> = payloads.iter().map(|p| p.to_vec()).collect();
            assert_eq!(frames, expected, "split at {split}");
        }
    }

    #[test]
    fn oversized_and_bad_frames_are_dropped_and_sync_recovers() {
        let mut dec = Decoder::new(4);
        let mut wire = Vec::new();
        encode_frame(&mut wire, &[&[1, 2, 3, 4, 5]]);
        wire.extend_from_slice(&[END, 9, ESC, 0x42, 9, END]); // invalid escape
        encode_frame(&mut wire, &[&[1, 2]]);
        assert_eq!(decode_all(&mut dec, &wire), vec![vec![1, 2]]);
    }
}
