//! The loader protocol's framing as the follower sees it: SLIP bytes, the packet header, the
//! opcodes it acts on, esptool's SYNC, and a decoder that keeps only the start of a frame.

/// SLIP (RFC 1055) framing bytes.
pub(super) const END: u8 = 0xC0;
pub(super) const ESC: u8 = 0xDB;
pub(super) const ESC_END: u8 = 0xDC;
pub(super) const ESC_ESC: u8 = 0xDD;

/// A request's direction byte; responses carry [`RESPONSE`].
pub(super) const REQUEST: u8 = 0x00;
pub(super) const RESPONSE: u8 = 0x01;

/// A request's header (direction, opcode, size, checksum: 8 bytes) plus CHANGE_BAUDRATE's
/// two words: the frames the watch acts on other than SYNC. A response's header and its
/// first status bytes fit too.
pub(super) const HEAD: usize = 16;
/// How many decoded bytes of a frame are kept: enough to recognise a whole SYNC and to tell
/// that a frame is longer than one.
pub(super) const LOOK: usize = SYNC_BODY.len() + 1;

/// The loader commands the follower acts on or sends itself (esptool's `ESP_CMDS`); the rest
/// pass unread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    Sync = 0x08,
    #[allow(dead_code)] // sent by issue 22's native-USB fix; the tests now
    WriteReg = 0x09,
    #[allow(dead_code)]
    ReadReg = 0x0A,
    ChangeBaudrate = 0x0F,
    /// The stub's READ_FLASH: its answer is followed by a stream of data frames that the
    /// client acknowledges, so nothing may be slipped in until the client's next request.
    ReadFlash = 0xD2,
}

/// esptool's SYNC request, decoded (fixed by the protocol: 36 data bytes, checksum 0).
pub(super) const SYNC_BODY: [u8; 44] = {
    let mut b = [0x55u8; 44];
    let head = [
        REQUEST,
        Op::Sync as u8,
        36,
        0,
        0,
        0,
        0,
        0,
        0x07,
        0x07,
        0x12,
        0x20,
    ];
    let mut i = 0;
    while i < head.len() {
        b[i] = head[i];
        i += 1;
    }
    b
};

/// The SYNC request on the wire (nothing in it needs escaping), replayed once the chip is
/// ready.
pub(crate) const SYNC_FRAME: [u8; 46] = {
    let mut f = [END; 46];
    let mut i = 0;
    while i < SYNC_BODY.len() {
        f[i + 1] = SYNC_BODY[i];
        i += 1;
    }
    f
};

/// Rates a client may mean; a ROM-form CHANGE_BAUDRATE is snapped to the nearest one.
const STANDARD_RATES: [u32; 18] = [
    9_600, 19_200, 38_400, 57_600, 74_880, 115_200, 230_400, 250_000, 460_800, 500_000, 576_000,
    921_600, 1_000_000, 1_152_000, 1_500_000, 2_000_000, 2_500_000, 3_000_000,
];
/// How far (per mille) a ROM-form rate may be from a standard one: the ROM's crystal
/// estimate is off by a few percent at most.
const SNAP_PER_MILLE: u64 = 30;

/// The rate a client meant by a ROM-form CHANGE_BAUDRATE: esptool scales it by the ROM's
/// crystal estimate, so a standard rate within a few percent is what a local esptool sets
/// on its own port.
pub(crate) fn snap_rom_rate(value: u32) -> u32 {
    let off = |r: u32| (u64::from(r)).abs_diff(u64::from(value)) * 1000 / u64::from(r);
    STANDARD_RATES
        .into_iter()
        .min_by_key(|&r| off(r))
        .filter(|&r| off(r) <= SNAP_PER_MILLE)
        .unwrap_or(value)
}

/// The rate a CHANGE_BAUDRATE `(new, old)` switches the UART to once the chip accepts it
/// (`old` is 0 in the ROM form, whose `new` is scaled by the ROM's crystal estimate).
pub(super) fn baud_meant(new: u32, old: u32) -> u32 {
    if old == 0 {
        snap_rom_rate(new)
    } else {
        new
    }
}

/// Follows SLIP frame boundaries in one direction and decodes the start of each frame.
#[derive(Debug)]
pub(super) struct Framer {
    /// An END has been seen: the bytes that follow are a frame's content.
    pub(super) in_frame: bool,
    /// The last content byte was ESC.
    pub(super) esc: bool,
    pub(super) head: [u8; LOOK],
    /// Decoded bytes of the current frame, counted up to `LOOK`.
    pub(super) len: usize,
}

impl Default for Framer {
    fn default() -> Framer {
        Framer {
            in_frame: false,
            esc: false,
            head: [0; LOOK],
            len: 0,
        }
    }
}

impl Framer {
    /// Decode content bytes into `head` until it holds `want` bytes; returns how many raw
    /// bytes of `raw` that took (all of them if `want` is not reached).
    pub(super) fn decode(&mut self, raw: &[u8], want: usize) -> usize {
        let mut used = 0;
        while self.len < want && used < raw.len() {
            let b = raw[used];
            used += 1;
            if self.esc {
                self.esc = false;
                // An invalid escape decodes as itself: the frame is malformed, and passes.
                self.head[self.len] = match b {
                    ESC_END => END,
                    ESC_ESC => ESC,
                    other => other,
                };
                self.len += 1;
            } else if b == ESC {
                self.esc = true;
            } else {
                self.head[self.len] = b;
                self.len += 1;
            }
        }
        used
    }

    /// An END: the current frame (if any) is over and a new one starts.
    pub(super) fn restart(&mut self) {
        self.in_frame = true;
        self.esc = false;
        self.len = 0;
    }

    pub(super) fn is(&self, dir: u8, op: Op) -> bool {
        self.len >= 2 && self.head[0] == dir && self.head[1] == op as u8
    }

    /// The frame is a whole packet header's worth of the given direction: its opcode.
    pub(super) fn packet(&self, dir: u8) -> Option<u8> {
        (self.len >= 8 && self.head[0] == dir).then_some(self.head[1])
    }

    pub(super) fn word(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.head[at],
            self.head[at + 1],
            self.head[at + 2],
            self.head[at + 3],
        ])
    }
}
