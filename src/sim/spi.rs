//! The SPI flash controller of the ESP32, ESP32-C3 (SPI1) and ESP8266 (SPI0) in "user
//! command" mode, plus the bits of the flash chip behind it that esptool talks to directly
//! (`run_spiflash_command`: JEDEC id, SFDP, status registers, the XMC/reset dance). Flash
//! programming goes through the loader commands instead, so it is not modelled here.
//!
//! esptool's sequence: write USR (phases), USR1 (address/dummy lengths), USR2 (opcode),
//! MOSI/MISO bit lengths, ADDR, W0.. (data out), then CMD with the USR bit; poll CMD until
//! the bit clears; read W0. Our command completes at once, so the first poll sees it clear.
//! The ESP8266 has no MOSI/MISO length registers: the bit lengths sit in USR1.

use super::flash::Flash;

/// Register offsets inside the SPI block that are the same on every chip.
const CMD: u32 = 0x00;
const ADDR: u32 = 0x04;

/// Where a chip keeps the MOSI and MISO bit lengths of a user command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BitLengths {
    /// ESP32 and later: registers of their own (`SPI_MOSI_DLEN_OFFS`, `SPI_MISO_DLEN_OFFS`),
    /// each holding the bit count minus one.
    Registers { mosi_dlen: u32, miso_dlen: u32 },
    /// ESP8266: in USR1, next to the address length (`SPI_MOSI_BITLEN_S` 17,
    /// `SPI_MISO_BITLEN_S` 8, 9 bits each, bit count minus one).
    InUsr1,
}

/// USR1 fields of the ESP8266 layout.
const USR1_MOSI_BITLEN_SHIFT: u32 = 17;
const USR1_MISO_BITLEN_SHIFT: u32 = 8;
const USR1_BITLEN_MASK: u32 = 0x1FF;

/// Where a chip keeps the user-command registers (esptool's `SPI_*_OFFS`), and whether
/// `SPI_ADDR_REG` holds the address MSB-aligned (`SPI_ADDR_REG_MSB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SpiLayout {
    pub(crate) usr: u32,
    pub(crate) usr1: u32,
    pub(crate) usr2: u32,
    pub(crate) lengths: BitLengths,
    pub(crate) w0: u32,
    pub(crate) addr_msb: bool,
}

pub(crate) const ESP32_LAYOUT: SpiLayout = SpiLayout {
    usr: 0x1C,
    usr1: 0x20,
    usr2: 0x24,
    lengths: BitLengths::Registers {
        mosi_dlen: 0x28,
        miso_dlen: 0x2C,
    },
    w0: 0x80,
    addr_msb: true,
};

pub(crate) const ESP32C3_LAYOUT: SpiLayout = SpiLayout {
    usr: 0x18,
    usr1: 0x1C,
    usr2: 0x20,
    lengths: BitLengths::Registers {
        mosi_dlen: 0x24,
        miso_dlen: 0x28,
    },
    w0: 0x58,
    addr_msb: false,
};

/// ESP8266 SPI0 (`SPI_REG_BASE` 0x60000200): W0 at 0x40, lengths in USR1.
pub(crate) const ESP8266_LAYOUT: SpiLayout = SpiLayout {
    usr: 0x1C,
    usr1: 0x20,
    usr2: 0x24,
    lengths: BitLengths::InUsr1,
    w0: 0x40,
    addr_msb: true,
};

/// A register of the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Cmd,
    Addr,
    Usr,
    Usr1,
    Usr2,
    MosiDlen,
    MisoDlen,
    /// W0..W15, the data buffer.
    W(usize),
}

impl SpiLayout {
    fn decode(&self, offset: u32) -> Option<Reg> {
        if let BitLengths::Registers {
            mosi_dlen,
            miso_dlen,
        } = self.lengths
        {
            if offset == mosi_dlen {
                return Some(Reg::MosiDlen);
            }
            if offset == miso_dlen {
                return Some(Reg::MisoDlen);
            }
        }
        Some(match offset {
            CMD => Reg::Cmd,
            ADDR => Reg::Addr,
            o if o == self.usr => Reg::Usr,
            o if o == self.usr1 => Reg::Usr1,
            o if o == self.usr2 => Reg::Usr2,
            o if (self.w0..self.w0 + 64).contains(&o) && o % 4 == 0 => {
                Reg::W(((o - self.w0) / 4) as usize)
            }
            _ => return None,
        })
    }
}

/// `SPI_CMD_REG` bit that starts a user command and reads 1 while it runs.
const CMD_USR: u32 = 1 << 18;
/// `SPI_USR_REG` phase enables.
const USR_ADDR: u32 = 1 << 30;
const USR_MISO: u32 = 1 << 28;
const USR_MOSI: u32 = 1 << 27;

/// Winbond W25Q32 (4 MiB): manufacturer, memory type, capacity (2^0x16 bytes).
pub(crate) const JEDEC_ID: [u8; 3] = [0xEF, 0x40, 0x16];

/// SPI NOR opcodes the model answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opcode {
    WriteStatus1,
    Read,
    WriteDisable,
    ReadStatus1,
    WriteEnable,
    FastRead,
    WriteStatus3,
    ReadStatus3,
    WriteStatus2,
    ReadStatus2,
    VolatileStatusWriteEnable,
    ReadSfdp,
    ReleasePowerDown,
    ReadJedecId,
    Other,
}

impl Opcode {
    fn from_byte(b: u8) -> Opcode {
        match b {
            0x01 => Opcode::WriteStatus1,
            0x03 => Opcode::Read,
            0x04 => Opcode::WriteDisable,
            0x05 => Opcode::ReadStatus1,
            0x06 => Opcode::WriteEnable,
            0x0B => Opcode::FastRead,
            0x11 => Opcode::WriteStatus3,
            0x15 => Opcode::ReadStatus3,
            0x31 => Opcode::WriteStatus2,
            0x35 => Opcode::ReadStatus2,
            0x50 => Opcode::VolatileStatusWriteEnable,
            0x5A => Opcode::ReadSfdp,
            0xAB => Opcode::ReleasePowerDown,
            0x9F => Opcode::ReadJedecId,
            _ => Opcode::Other,
        }
    }
}

/// The start of a plausible SFDP table: signature, one JEDEC basic parameter header and a
/// vendor header (whose id byte at 0x10 is what esptool's XMC check reads).
const SFDP: [u8; 24] = [
    b'S', b'F', b'D', b'P', 0x06, 0x01, 0x01, 0xFF, // header: v1.6, 2 parameter headers
    0x00, 0x06, 0x01, 0x10, 0x80, 0x00, 0x00, 0xFF, // JEDEC basic flash parameters @0x80
    0x84, 0x00, 0x01, 0x02, 0xD0, 0x00, 0x00, 0xFF, // 4-byte address instruction table
];

/// Register file of the SPI flash controller and the status registers of the flash chip.
#[derive(Clone, Debug)]
pub(crate) struct SpiController {
    layout: SpiLayout,
    cmd: u32,
    addr: u32,
    usr: u32,
    usr1: u32,
    usr2: u32,
    mosi_dlen: u32,
    miso_dlen: u32,
    w: [u32; 16],
    /// Flash status registers 1..3 (volatile copies).
    status: [u8; 3],
}

impl Default for SpiController {
    fn default() -> Self {
        SpiController::new(ESP32_LAYOUT)
    }
}

impl SpiController {
    pub(crate) fn new(layout: SpiLayout) -> SpiController {
        SpiController {
            layout,
            cmd: 0,
            addr: 0,
            usr: 0,
            usr1: 0,
            usr2: 0,
            mosi_dlen: 0,
            miso_dlen: 0,
            w: [0; 16],
            // QE set in SR2 (quad-capable board), driver strength bits in SR3.
            status: [0x00, 0x02, 0x60],
        }
    }

    /// Register read at `offset` inside the block; unknown offsets read 0.
    pub(crate) fn read(&self, offset: u32) -> u32 {
        match self.layout.decode(offset) {
            Some(Reg::Cmd) => self.cmd,
            Some(Reg::Addr) => self.addr,
            Some(Reg::Usr) => self.usr,
            Some(Reg::Usr1) => self.usr1,
            Some(Reg::Usr2) => self.usr2,
            Some(Reg::MosiDlen) => self.mosi_dlen,
            Some(Reg::MisoDlen) => self.miso_dlen,
            Some(Reg::W(i)) => self.w[i],
            None => 0,
        }
    }

    /// Register write; writing CMD with the USR bit runs the user command.
    pub(crate) fn write(&mut self, offset: u32, value: u32, flash: &Flash) {
        match self.layout.decode(offset) {
            Some(Reg::Cmd) => {
                self.cmd = value;
                if value & CMD_USR != 0 {
                    self.run_user_command(flash);
                    self.cmd &= !CMD_USR;
                }
            }
            Some(Reg::Addr) => self.addr = value,
            Some(Reg::Usr) => self.usr = value,
            Some(Reg::Usr1) => self.usr1 = value,
            Some(Reg::Usr2) => self.usr2 = value,
            Some(Reg::MosiDlen) => self.mosi_dlen = value,
            Some(Reg::MisoDlen) => self.miso_dlen = value,
            Some(Reg::W(i)) => self.w[i] = value,
            None => {}
        }
    }

    fn mosi_byte(&self, i: usize) -> u8 {
        self.w.get(i / 4).map_or(0, |w| (w >> (8 * (i % 4))) as u8)
    }

    fn run_user_command(&mut self, flash: &Flash) {
        let opcode = Opcode::from_byte((self.usr2 & 0xFF) as u8);
        let addr = if self.usr & USR_ADDR != 0 {
            let bits = ((self.usr1 >> 26) & 0x3F) + 1;
            if self.layout.addr_msb {
                // The address sits in the top `bits` bits.
                self.addr.checked_shr(32 - bits).unwrap_or(0)
            } else {
                self.addr & u32::MAX.checked_shr(32 - bits.min(32)).unwrap_or(0)
            }
        } else {
            0
        };
        // Bit counts minus one, wherever this chip keeps them.
        let (mosi_dlen, miso_dlen) = match self.layout.lengths {
            BitLengths::Registers { .. } => (self.mosi_dlen & 0x7FF, self.miso_dlen & 0x7FF),
            BitLengths::InUsr1 => (
                (self.usr1 >> USR1_MOSI_BITLEN_SHIFT) & USR1_BITLEN_MASK,
                (self.usr1 >> USR1_MISO_BITLEN_SHIFT) & USR1_BITLEN_MASK,
            ),
        };
        let mosi_bytes = if self.usr & USR_MOSI != 0 {
            (mosi_dlen as usize + 1).div_ceil(8).min(64)
        } else {
            0
        };
        let miso_bits = if self.usr & USR_MISO != 0 {
            miso_dlen as usize + 1
        } else {
            0
        };

        match opcode {
            Opcode::WriteStatus1 if mosi_bytes > 0 => {
                self.status[0] = self.mosi_byte(0) & !0x03; // WIP/WEL are read-only
                if mosi_bytes >= 2 {
                    self.status[1] = self.mosi_byte(1);
                }
            }
            Opcode::WriteStatus2 if mosi_bytes > 0 => self.status[1] = self.mosi_byte(0),
            Opcode::WriteStatus3 if mosi_bytes > 0 => self.status[2] = self.mosi_byte(0),
            Opcode::WriteEnable => self.status[0] |= 0x02,
            Opcode::WriteDisable => self.status[0] &= !0x02,
            _ => {}
        }

        if miso_bits == 0 {
            return;
        }
        let status = self.status;
        let answer = |i: usize| -> u8 {
            match opcode {
                Opcode::ReadJedecId => JEDEC_ID.get(i).copied().unwrap_or(0xFF),
                Opcode::ReadStatus1 => status[0],
                Opcode::ReadStatus2 => status[1],
                Opcode::ReadStatus3 => status[2],
                Opcode::ReleasePowerDown => 0x15,
                Opcode::ReadSfdp => {
                    let a = addr as usize + i;
                    SFDP.get(a).copied().unwrap_or(0xFF)
                }
                Opcode::Read | Opcode::FastRead => flash
                    .read(addr.wrapping_add(i as u32), 1)
                    .map_or(0xFF, |b| b[0]),
                // Nothing drives MISO: the line floats high.
                _ => 0xFF,
            }
        };
        // Received bits fill W0.. from the least significant byte; untouched bits keep
        // what esptool wrote (it clears W0 first, so short reads come back zero-extended).
        for bit_base in (0..miso_bits.min(512)).step_by(8) {
            let i = bit_base / 8;
            let nbits = (miso_bits - bit_base).min(8);
            let mask = ((1u16 << nbits) - 1) as u32;
            let shift = 8 * (i % 4);
            let word = &mut self.w[i / 4];
            *word = (*word & !(mask << shift)) | ((u32::from(answer(i)) & mask) << shift);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// esptool's `run_spiflash_command` against the model.
    fn run(spi: &mut SpiController, cmd: u8, addr: Option<(u32, u32)>, read_bits: u32) -> u32 {
        let flash = Flash::new();
        let l = spi.layout;
        let mut usr = 1 << 31;
        let mut usr1 = 0;
        if read_bits > 0 {
            usr |= USR_MISO;
            match l.lengths {
                BitLengths::Registers { miso_dlen, .. } => {
                    spi.write(miso_dlen, read_bits - 1, &flash)
                }
                BitLengths::InUsr1 => usr1 |= (read_bits - 1) << USR1_MISO_BITLEN_SHIFT,
            }
        }
        if let Some((a, bits)) = addr {
            usr |= USR_ADDR;
            usr1 |= (bits - 1) << 26;
            let a = if l.addr_msb { a << (32 - bits) } else { a };
            spi.write(ADDR, a, &flash);
        }
        if usr1 != 0 || l.lengths == BitLengths::InUsr1 {
            spi.write(l.usr1, usr1, &flash);
        }
        spi.write(l.usr, usr, &flash);
        spi.write(l.usr2, 7 << 28 | u32::from(cmd), &flash);
        spi.write(l.w0, 0, &flash);
        spi.write(CMD, CMD_USR, &flash);
        assert_eq!(spi.read(CMD) & CMD_USR, 0, "command completes at once");
        spi.read(l.w0)
    }

    #[test]
    fn jedec_id_status_and_sfdp() {
        for layout in [ESP32_LAYOUT, ESP32C3_LAYOUT, ESP8266_LAYOUT] {
            let mut spi = SpiController::new(layout);
            assert_eq!(run(&mut spi, 0x9F, None, 24), 0x0016_40EF);
            assert_eq!(run(&mut spi, 0x05, None, 8), 0x00);
            assert_eq!(run(&mut spi, 0x35, None, 8), 0x02);
            assert_eq!(run(&mut spi, 0x5A, Some((0, 24)), 32), 0x5044_4653); // "SFDP"
            assert_eq!(run(&mut spi, 0x5A, Some((0x10, 24)), 8), 0x84);
        }
    }
}
