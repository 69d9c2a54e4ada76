//! Telnet byte codec (RFC 854/855), sans-IO.
//!
//! The decoder splits a client's byte stream into data and Telnet events and may be fed any
//! split of the stream; the encoder doubles 0xFF everywhere it must, including inside
//! subnegotiation values (firmware images are full of 0xFF, so this is on the hot path).

/// Interpret As Command.
pub(crate) const IAC: u8 = 0xFF;
const SB: u8 = 0xFA;
const SE: u8 = 0xF0;
const WILL: u8 = 0xFB;
const WONT: u8 = 0xFC;
const DO: u8 = 0xFD;
const DONT: u8 = 0xFE;

/// Longest subnegotiation we buffer. RFC 2217 values are at most a few bytes; a signature
/// text is the longest legitimate one. Anything longer is a broken or hostile client.
pub(crate) const MAX_SUBNEGOTIATION: usize = 256;

/// Telnet options serialhub knows by name.
pub(crate) mod option {
    pub(crate) const BINARY: u8 = 0;
    pub(crate) const ECHO: u8 = 1;
    pub(crate) const SGA: u8 = 3;
    pub(crate) const COM_PORT: u8 = 44;
}

/// Option negotiation verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Will,
    Wont,
    Do,
    Dont,
}

impl Verb {
    fn from_byte(b: u8) -> Option<Verb> {
        match b {
            WILL => Some(Verb::Will),
            WONT => Some(Verb::Wont),
            DO => Some(Verb::Do),
            DONT => Some(Verb::Dont),
            _ => None,
        }
    }

    fn byte(self) -> u8 {
        match self {
            Verb::Will => WILL,
            Verb::Wont => WONT,
            Verb::Do => DO,
            Verb::Dont => DONT,
        }
    }
}

/// Something other than data in the client's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Negotiate(Verb, u8),
    /// `IAC SB option payload IAC SE`, payload already unescaped.
    Subnegotiation {
        option: u8,
        payload: Vec<u8>,
    },
    /// A subnegotiation longer than [`MAX_SUBNEGOTIATION`]; its bytes were dropped.
    SubnegotiationTooLong {
        option: u8,
    },
    /// A subnegotiation cut short by `IAC <command>`; its bytes were dropped and the
    /// command was processed as usual.
    SubnegotiationAborted {
        option: u8,
    },
    /// A two-byte command such as NOP, BRK or AYT (the byte after IAC).
    Command(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Data,
    Iac,
    Verb(Verb),
    SbOption,
    SbData(u8),
    SbIac(u8),
    /// Skipping an oversized subnegotiation until `IAC SE`.
    SbDiscard(u8),
    SbDiscardIac(u8),
}

/// Where decoded output goes, in stream order: a data run, then the event that followed it,
/// and so on. Order matters: data sent before a baud change must leave at the old baud.
pub(crate) trait Sink {
    fn data(&mut self, bytes: &[u8]);
    fn event(&mut self, event: Event);
    /// Stop decoding after the event just delivered: the consumer must act on it before it
    /// can take more input (a setting that waits for earlier data to reach the device).
    fn paused(&self) -> bool {
        false
    }
}

/// Incremental decoder; holds at most one partial subnegotiation.
#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
    sb: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Data,
            sb: Vec::new(),
        }
    }
}

impl Decoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Decode `input` into `sink` and return how many bytes were consumed: all of them,
    /// unless the sink paused after an event or a run of data (feed the rest later).
    ///
    /// Decoding is in place: a doubled 0xFF is made one by moving the data after it down, so
    /// that a run of data up to the next Telnet command reaches the sink as one slice, however
    /// many 0xFF it holds (firmware images are a third 0xFF: a call per escaped byte was most
    /// of the server's CPU). Only the consumed part of `input` is changed; the rest is as given.
    pub(crate) fn decode(&mut self, input: &mut [u8], sink: &mut dyn Sink) -> usize {
        let mut at = 0;
        while at < input.len() {
            if self.state == State::Data {
                let (run, next) = unescape_run(input, at);
                if !run.is_empty() {
                    sink.data(&input[run]);
                    if sink.paused() {
                        return next;
                    }
                }
                if next == input.len() {
                    return next;
                }
                // input[next] is an IAC that starts a command (or ends this chunk).
                self.state = State::Iac;
                at = next + 1;
                continue;
            }
            let b = input[at];
            at += 1;
            self.step(b, sink);
            if sink.paused() {
                break;
            }
        }
        at
    }

    fn step(&mut self, b: u8, sink: &mut dyn Sink) {
        self.state = match self.state {
            State::Data => {
                sink.data(&[b]);
                State::Data
            }
            State::Iac => self.after_iac(b, sink),
            State::Verb(v) => {
                sink.event(Event::Negotiate(v, b));
                State::Data
            }
            State::SbOption => {
                self.sb.clear();
                State::SbData(b)
            }
            State::SbData(opt) if b == IAC => State::SbIac(opt),
            State::SbData(opt) => self.sb_push(opt, b, sink),
            State::SbIac(opt) => match b {
                IAC => self.sb_push(opt, IAC, sink),
                SE => {
                    sink.event(Event::Subnegotiation {
                        option: opt,
                        payload: std::mem::take(&mut self.sb),
                    });
                    State::Data
                }
                other => {
                    self.sb.clear();
                    sink.event(Event::SubnegotiationAborted { option: opt });
                    self.after_iac(other, sink)
                }
            },
            State::SbDiscard(opt) if b == IAC => State::SbDiscardIac(opt),
            State::SbDiscard(opt) => State::SbDiscard(opt),
            State::SbDiscardIac(opt) => match b {
                SE => State::Data,
                IAC => State::SbDiscard(opt),
                other => self.after_iac(other, sink),
            },
        };
    }

    fn sb_push(&mut self, opt: u8, b: u8, sink: &mut dyn Sink) -> State {
        if self.sb.len() >= MAX_SUBNEGOTIATION {
            self.sb.clear();
            sink.event(Event::SubnegotiationTooLong { option: opt });
            return State::SbDiscard(opt);
        }
        self.sb.push(b);
        State::SbData(opt)
    }

    fn after_iac(&mut self, b: u8, sink: &mut dyn Sink) -> State {
        match b {
            IAC => {
                sink.data(&[IAC]);
                State::Data
            }
            SB => State::SbOption,
            // A stray SE outside a subnegotiation means nothing; drop it.
            SE => State::Data,
            _ => match Verb::from_byte(b) {
                Some(v) => State::Verb(v),
                None => {
                    sink.event(Event::Command(b));
                    State::Data
                }
            },
        }
    }
}

/// The data run that starts at `input[from]`, unescaped in place: `IAC IAC` pairs are made one
/// byte by moving what follows down. Returns the range that holds the run's data and where
/// the run ended in `input`: its end, or a lone IAC (a command, or the chunk's last byte).
fn unescape_run(input: &mut [u8], from: usize) -> (std::ops::Range<usize>, usize) {
    // Up to the first IAC nothing moves.
    let Some(first) = memchr::memchr(IAC, &input[from..]) else {
        return (from..input.len(), input.len());
    };
    let (mut read, mut write) = (from + first, from + first);
    while read < input.len() {
        let b = input[read];
        if b == IAC {
            if input.get(read + 1) != Some(&IAC) {
                break;
            }
            read += 1;
        }
        input[write] = b;
        write += 1;
        read += 1;
    }
    (from..write, read)
}

/// Append `data` with every 0xFF doubled.
pub(crate) fn escape_into(data: &[u8], out: &mut Vec<u8>) {
    let Some(first) = memchr::memchr(IAC, data) else {
        return out.extend_from_slice(data);
    };
    let rest = &data[first..];
    let doubled = rest.iter().filter(|&&b| b == IAC).count();
    let base = out.len();
    out.resize(base + data.len() + doubled, 0);
    let (head, tail) = out[base..].split_at_mut(first);
    head.copy_from_slice(&data[..first]);
    // One pass of stores, no call per byte: IAC-dense data (firmware) would pay one per byte.
    let mut at = 0;
    for &b in rest {
        tail[at] = b;
        at += 1;
        if b == IAC {
            tail[at] = IAC;
            at += 1;
        }
    }
}

/// Append `IAC verb option`.
pub(crate) fn negotiate(verb: Verb, option: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&[IAC, verb.byte(), option]);
}

/// Append `IAC SB option payload IAC SE`, escaping 0xFF in the option and payload.
pub(crate) fn subnegotiation(option: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[IAC, SB]);
    escape_into(&[option], out);
    escape_into(payload, out);
    out.extend_from_slice(&[IAC, SE]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Default)]
    struct Collect(Vec<u8>, Vec<Event>);

    impl Sink for Collect {
        fn data(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
        fn event(&mut self, event: Event) {
            self.1.push(event);
        }
    }

    fn decode_all(chunks: &[&[u8]]) -> (Vec<u8>, Vec<Event>) {
        let mut d = Decoder::new();
        let mut c = Collect::default();
        for chunk in chunks {
            let mut chunk = chunk.to_vec();
            assert_eq!(d.decode(&mut chunk, &mut c), chunk.len());
        }
        (c.0, c.1)
    }

    /// A stream with every construct the decoder knows, and its expected decoding.
    fn sample() -> (Vec<u8>, Vec<u8>, Vec<Event>) {
        let mut wire = vec![b'a', IAC, IAC, b'b'];
        negotiate(Verb::Do, option::COM_PORT, &mut wire);
        subnegotiation(44, &[1, 0, 0xFF, 0xFF, 0], &mut wire);
        wire.extend_from_slice(&[IAC, 0xF1, 0xFF, 0xFF, b'z']);
        let data = vec![b'a', 0xFF, b'b', 0xFF, b'z'];
        let events = vec![
            Event::Negotiate(Verb::Do, 44),
            Event::Subnegotiation {
                option: 44,
                payload: vec![1, 0, 0xFF, 0xFF, 0],
            },
            Event::Command(0xF1),
        ];
        (wire, data, events)
    }

    #[test]
    fn decodes_every_construct() {
        let (wire, data, events) = sample();
        assert_eq!(decode_all(&[&wire]), (data, events));
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let (wire, data, events) = sample();
        for i in 0..=wire.len() {
            for j in i..=wire.len() {
                let got = decode_all(&[&wire[..i], &wire[i..j], &wire[j..]]);
                assert_eq!(got, (data.clone(), events.clone()), "split at {i},{j}");
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let (wire, data, events) = sample();
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_all(&chunks), (data, events));
    }

    #[test]
    fn a_run_of_escaped_data_reaches_the_sink_as_one_slice() {
        let data: Vec<u8> = (0..3000u32)
            .map(|i| if i % 3 == 0 { IAC } else { i as u8 | 1 })
            .collect();
        let mut wire = Vec::new();
        escape_into(&data, &mut wire);
        negotiate(Verb::Do, option::COM_PORT, &mut wire);
        wire.extend_from_slice(b"tail");
        struct Calls(Vec<Vec<u8>>, usize);
        impl Sink for Calls {
            fn data(&mut self, bytes: &[u8]) {
                self.0.push(bytes.to_vec());
            }
            fn event(&mut self, _: Event) {
                self.1 += 1;
            }
        }
        let mut calls = Calls(Vec::new(), 0);
        let n = Decoder::new().decode(&mut wire, &mut calls);
        assert_eq!(n, wire.len());
        assert_eq!(calls.0, [data, b"tail".to_vec()]);
        assert_eq!(calls.1, 1);
    }

    #[test]
    fn a_pause_leaves_the_unconsumed_input_as_it_was() {
        struct PauseOnEvent(bool);
        impl Sink for PauseOnEvent {
            fn data(&mut self, _: &[u8]) {}
            fn event(&mut self, _: Event) {
                self.0 = true;
            }
            fn paused(&self) -> bool {
                self.0
            }
        }
        let mut wire = vec![1, IAC, IAC, 2];
        negotiate(Verb::Will, option::COM_PORT, &mut wire);
        let rest = [IAC, IAC, 3, IAC, IAC];
        wire.extend_from_slice(&rest);
        let n = Decoder::new().decode(&mut wire, &mut PauseOnEvent(false));
        assert_eq!(n, wire.len() - rest.len());
        assert_eq!(wire[n..], rest);
    }

    #[test]
    fn escape_doubles_iac_only() {
        let mut out = Vec::new();
        escape_into(&[1, 0xFF, 2, 0xFF, 0xFF], &mut out);
        assert_eq!(out, [1, 0xFF, 0xFF, 2, 0xFF, 0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn subnegotiation_escapes_value() {
        let mut out = Vec::new();
        subnegotiation(44, &[101, 0, 0, 0xFF, 0xFF], &mut out);
        assert_eq!(
            out,
            [IAC, SB, 44, 101, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, IAC, SE]
        );
    }

    #[test]
    fn oversized_subnegotiation_is_reported_once_and_stream_recovers() {
        let mut wire = vec![IAC, SB, 44];
        wire.extend(std::iter::repeat_n(7u8, 10 * MAX_SUBNEGOTIATION));
        wire.extend_from_slice(&[IAC, SE, b'o', b'k']);
        let (data, events) = decode_all(&[&wire]);
        assert_eq!(data, b"ok");
        assert_eq!(events, vec![Event::SubnegotiationTooLong { option: 44 }]);
    }

    #[test]
    fn max_length_subnegotiation_is_accepted() {
        let payload = vec![0xFFu8; MAX_SUBNEGOTIATION];
        let mut wire = Vec::new();
        subnegotiation(44, &payload, &mut wire);
        let (_, events) = decode_all(&[&wire]);
        assert_eq!(
            events,
            vec![Event::Subnegotiation {
                option: 44,
                payload
            }]
        );
    }

    #[test]
    fn aborted_subnegotiation_processes_the_interrupting_command() {
        let wire = [IAC, SB, 44, 1, 2, IAC, DO, 3, b'x'];
        let (data, events) = decode_all(&[&wire]);
        assert_eq!(data, b"x");
        assert_eq!(
            events,
            vec![
                Event::SubnegotiationAborted { option: 44 },
                Event::Negotiate(Verb::Do, 3)
            ]
        );
    }

    #[test]
    fn truncated_input_yields_nothing_yet() {
        for wire in [&[IAC][..], &[IAC, DO], &[IAC, SB], &[IAC, SB, 44, 1, IAC]] {
            let (data, events) = decode_all(&[wire]);
            assert!(data.is_empty() && events.is_empty(), "{wire:?}");
        }
    }

    proptest! {
        /// Escaped data always decodes to itself, however it is split.
        #[test]
        fn escape_roundtrip(data in proptest::collection::vec(prop_oneof![Just(0xFFu8), any::<u8>()], 0..512),
                            cut in 0usize..512) {
            let mut wire = Vec::new();
            escape_into(&data, &mut wire);
            let cut = cut.min(wire.len());
            let (got, events) = decode_all(&[&wire[..cut], &wire[cut..]]);
            prop_assert_eq!(got, data);
            prop_assert!(events.is_empty());
        }

        /// Random bytes never panic, and output never exceeds input.
        #[test]
        fn random_input_is_safe(wire in proptest::collection::vec(
                prop_oneof![Just(IAC), Just(SB), Just(SE), Just(DO), any::<u8>()], 0..2048),
                cuts in proptest::collection::vec(0usize..2048, 0..8)) {
            let mut d = Decoder::new();
            let mut c = Collect::default();
            let mut last = 0;
            let mut cuts = cuts;
            cuts.sort();
            for cut in cuts.into_iter().chain([wire.len()]) {
                let cut = cut.min(wire.len()).max(last);
                let mut chunk = wire[last..cut].to_vec();
                d.decode(&mut chunk, &mut c);
                last = cut;
            }
            prop_assert!(c.0.len() <= wire.len());
            prop_assert!(d.sb.len() <= MAX_SUBNEGOTIATION);
        }
    }
}
