//! SLIP framing (RFC 1055) as the ESP serial loader uses it: every packet is wrapped in `END`
//! (`0xC0`) delimiters, and `END` / `ESC` (`0xDB`) inside a packet travel as `ESC ESC_END` /
//! `ESC ESC_ESC`. The project's one SLIP codec: the simulated chip decodes requests and
//! encodes its responses with it, the ESP loader follower (`esp`) shares its bytes.
//!
//! Pure: the encoder appends to a buffer the caller owns ([`Sink`]: a `Vec` or a
//! `VecDeque`; or [`encode_to_slice`] into a fixed array), the decoder is fed chunks as they arrive and hands out whole frames from one
//! reusable buffer, bounded by a maximum frame length.

use std::collections::VecDeque;

/// Frame delimiter.
pub(crate) const END: u8 = 0xC0;
/// Escape introducer.
pub(crate) const ESC: u8 = 0xDB;
/// `ESC ESC_END` stands for a literal `END`.
pub(crate) const ESC_END: u8 = 0xDC;
/// `ESC ESC_ESC` stands for a literal `ESC`.
pub(crate) const ESC_ESC: u8 = 0xDD;

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

impl Sink for VecDeque<u8> {
    fn put(&mut self, b: u8) {
        self.push_back(b);
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend(bytes);
    }
}

/// Appends one complete frame holding `frame`: `END`, `frame` escaped, `END`.
pub(crate) fn encode_into(frame: &[u8], out: &mut impl Sink) {
    encode_parts(&[frame], out);
}

/// Appends one complete frame whose content is `parts` one after the other (a header, a
/// payload, a trailer), without gathering them first.
pub(crate) fn encode_parts(parts: &[&[u8]], out: &mut impl Sink) {
    out.put(END);
    for part in parts {
        escape_into(part, out);
    }
    out.put(END);
}

/// The most bytes a frame of `len` content bytes takes on the wire: every byte escaped, and
/// the two delimiters (for sizing a fixed buffer to [`encode_to_slice`]).
// For `protocol::esp::command`'s fixed-size requests; until it switches, only the tests use
// this and `encode_to_slice`.
#[allow(dead_code)]
pub(crate) const fn max_encoded_len(len: usize) -> usize {
    2 * len + 2
}

/// One complete frame holding `frame`, written to the start of `out` (a fixed buffer of the
/// caller's: no allocation); its length, or `None` if it does not fit (then `out` holds a
/// partial frame, to be ignored). `out` of [`max_encoded_len`] always fits.
#[allow(dead_code)]
pub(crate) fn encode_to_slice(frame: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut sink = SliceSink {
        buf: out,
        len: 0,
        overflow: false,
    };
    encode_into(frame, &mut sink);
    (!sink.overflow).then_some(sink.len)
}

/// A fixed buffer as a [`Sink`]: what does not fit is counted as an overflow, not written.
struct SliceSink<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflow: bool,
}

impl Sink for SliceSink<'_> {
    fn put(&mut self, b: u8) {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => self.overflow = true,
        }
    }
}

/// Appends `bytes` escaped, without delimiters.
pub(crate) fn escape_into(bytes: &[u8], out: &mut impl Sink) {
    let mut rest = bytes;
    while let Some(pos) = memchr::memchr2(END, ESC, rest) {
        out.put_slice(&rest[..pos]);
        out.put(ESC);
        out.put(if rest[pos] == END { ESC_END } else { ESC_ESC });
        rest = &rest[pos + 1..];
    }
    out.put_slice(rest);
}

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
///
/// Strict, as the ESP ROM is: bytes before a frame's opening `END` are noise, an empty
/// frame (`END END`) is only a delimiter, and a frame with an invalid escape or longer than
/// the limit is dropped whole (the `END` that closes it opens the next one).
#[derive(Debug)]
pub(crate) struct Decoder {
    buf: Vec<u8>,
    max_len: usize,
    state: State,
    /// Set when a frame has just been returned, so the next call starts a fresh buffer.
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

    /// Feed a chunk, up to the end of the first frame it completes: returns how many bytes
    /// of `input` were taken (all of them unless a frame ended early) and that frame. The
    /// caller feeds the rest next; the frame is valid until then.
    pub(crate) fn feed(&mut self, input: &[u8]) -> (usize, Option<&[u8]>) {
        if self.complete {
            self.complete = false;
            self.buf.clear();
        }
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Idle | State::Discard => match memchr::memchr(END, &input[i..]) {
                    // Noise, or the rest of a bad frame. The delimiter that ends it may as
                    // well open the next frame (esptool always sends `C0 .. C0`, so this
                    // loses nothing).
                    Some(p) => {
                        i += p + 1;
                        self.buf.clear();
                        self.state = State::InFrame;
                    }
                    None => return (input.len(), None),
                },
                State::InFrame => {
                    let rest = &input[i..];
                    let run = memchr::memchr2(END, ESC, rest).unwrap_or(rest.len());
                    if run > 0 {
                        self.store(&rest[..run]);
                        i += run;
                        continue;
                    }
                    i += 1;
                    if rest[0] == ESC {
                        self.state = State::Escaped;
                    } else if !self.buf.is_empty() {
                        self.state = State::Idle;
                        self.complete = true;
                        return (i, Some(&self.buf));
                    }
                    // `C0 C0`: an empty frame is just an opening delimiter.
                }
                State::Escaped => {
                    let b = input[i];
                    i += 1;
                    match b {
                        ESC_END => {
                            self.state = State::InFrame;
                            self.store(&[END]);
                        }
                        ESC_ESC => {
                            self.state = State::InFrame;
                            self.store(&[ESC]);
                        }
                        END => {
                            // Invalid escape cut short by a delimiter: drop the frame, keep
                            // syncing.
                            self.buf.clear();
                            self.state = State::InFrame;
                        }
                        _ => {
                            self.buf.clear();
                            self.state = State::Discard;
                        }
                    }
                }
            }
        }
        (input.len(), None)
    }

    /// Feed a whole chunk, calling `on_frame` with every frame it completes.
    pub(crate) fn push(&mut self, mut input: &[u8], mut on_frame: impl FnMut(&[u8])) {
        while !input.is_empty() {
            let (used, frame) = self.feed(input);
            if let Some(frame) = frame {
                on_frame(frame);
            }
            input = &input[used..];
        }
    }

    /// Decoded bytes of the current frame: a frame that outgrows the limit is dropped.
    fn store(&mut self, bytes: &[u8]) {
        if self.buf.len() + bytes.len() > self.max_len {
            self.buf.clear();
            self.state = State::Discard;
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        dec.push(bytes, |f| frames.push(f.to_vec()));
        frames
    }

    /// The byte-at-a-time decoder the chunked one replaced, as the reference it must match.
    struct ByteDecoder {
        buf: Vec<u8>,
        max_len: usize,
        state: State,
    }

    impl ByteDecoder {
        fn push(&mut self, byte: u8) -> Option<Vec<u8>> {
            match (self.state, byte) {
                (State::Idle, END) => self.state = State::InFrame,
                (State::Idle, _) => {}
                (State::Discard, END) => {
                    self.buf.clear();
                    self.state = State::InFrame;
                }
                (State::Discard, _) => {}
                (State::InFrame, END) => {
                    if self.buf.is_empty() {
                        return None;
                    }
                    self.state = State::Idle;
                    return Some(std::mem::take(&mut self.buf));
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
                encode_into(p, &mut wire);
            }
            let cut = cut.min(wire.len());
            let mut dec = Decoder::new(1024);
            let mut frames = decode_all(&mut dec, &wire[..cut]);
            frames.extend(decode_all(&mut dec, &wire[cut..]));
            prop_assert_eq!(frames, payloads);
        }

        /// Whatever the bytes and however they are cut into chunks, the chunked decoder
        /// finds exactly the frames the byte-at-a-time one finds (noise, bad escapes,
        /// oversized frames and empty ones included).
        #[test]
        fn chunks_decode_like_single_bytes(
            wire in proptest::collection::vec(
                prop_oneof![Just(END), Just(ESC), Just(ESC_END), Just(ESC_ESC), any::<u8>()],
                0..600),
            cuts in proptest::collection::vec(1usize..40, 0..40),
            max_len in 0usize..24,
        ) {
            let mut reference = ByteDecoder { buf: Vec::new(), max_len, state: State::Idle };
            let expected: Vec<Vec<u8>> = wire.iter().filter_map(|&b| reference.push(b)).collect();
            let mut dec = Decoder::new(max_len);
            let mut frames = Vec::new();
            let mut rest = &wire[..];
            for cut in cuts.into_iter().chain(std::iter::once(usize::MAX)) {
                let (chunk, tail) = rest.split_at(cut.min(rest.len()));
                frames.extend(decode_all(&mut dec, chunk));
                rest = tail;
            }
            prop_assert_eq!(frames, expected);
        }
    }

    #[test]
    fn escapes_both_special_bytes() {
        let mut out = Vec::new();
        encode_into(&[1, END, 2, ESC, 3], &mut out);
        assert_eq!(out, [END, 1, ESC, ESC_END, 2, ESC, ESC_ESC, 3, END]);
        let mut parts = VecDeque::new();
        encode_parts(&[&[1, END], &[], &[2, ESC, 3]], &mut parts);
        assert_eq!(parts, out);
    }

    #[test]
    fn encodes_into_a_fixed_buffer() {
        let frame = [1, END, ESC, 2];
        let mut vec = Vec::new();
        encode_into(&frame, &mut vec);
        let mut buf = [0u8; max_encoded_len(4)];
        let n = encode_to_slice(&frame, &mut buf).unwrap();
        assert_eq!(&buf[..n], &vec[..]);
        // Worst case: every byte escaped.
        let all = [END; 4];
        assert_eq!(encode_to_slice(&all, &mut buf), Some(max_encoded_len(4)));
        // Too small: refused, not cut.
        assert_eq!(encode_to_slice(&frame, &mut buf[..n - 1]), None);
        assert_eq!(encode_to_slice(&[], &mut [0u8; 1]), None);
        assert_eq!(encode_to_slice(&[], &mut [0u8; 2]), Some(2));
    }

    #[test]
    fn round_trip_split_at_every_byte() {
        let payloads: [&[u8]; 3] = [&[0x00, 0x08, END, ESC, 0xFF], &[ESC, ESC, END], &[7; 40]];
        let mut wire = vec![b'x', b'y']; // noise before the first frame is ignored
        for p in payloads {
            encode_into(p, &mut wire);
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
    fn feed_stops_after_each_frame() {
        let mut wire = Vec::new();
        encode_into(&[1], &mut wire);
        encode_into(&[2, 3], &mut wire);
        let mut dec = Decoder::new(16);
        assert_eq!(dec.feed(&wire), (3, Some(&[1u8][..])));
        assert_eq!(dec.feed(&wire[3..]), (4, Some(&[2u8, 3][..])));
        assert_eq!(dec.feed(&[]), (0, None));
    }

    #[test]
    fn oversized_and_bad_frames_are_dropped_and_sync_recovers() {
        let mut dec = Decoder::new(4);
        let mut wire = Vec::new();
        encode_into(&[1, 2, 3, 4, 5], &mut wire);
        wire.extend_from_slice(&[END, 9, ESC, 0x42, 9, END]); // invalid escape
        encode_into(&[1, 2], &mut wire);
        assert_eq!(decode_all(&mut dec, &wire), vec![vec![1, 2]]);
        // A frame of exactly the limit passes.
        let mut wire = Vec::new();
        encode_into(&[END, 2, 3, ESC], &mut wire);
        assert_eq!(decode_all(&mut dec, &wire), vec![vec![END, 2, 3, ESC]]);
    }
}
