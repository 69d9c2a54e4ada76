//! The loader's vocabulary and its dialects: the commands (esptool's `ESP_CMDS`), which
//! program knows which (the ESP32 ROM, the ESP8266 ROM with only the first nine, esptool's
//! flasher stub), how each dialect reports a failure in its status bytes, and the sizes the
//! dialects accept.

use crate::sim::board::Target;

/// Largest block esptool's stub dialect sends (`FLASH_WRITE_SIZE` of the stub).
pub(crate) const STUB_MAX_BLOCK: u32 = 0x4000;
/// Largest block the ROM takes (its RAM download block, `ESP_RAM_BLOCK`).
pub(crate) const ROM_MAX_BLOCK: u32 = 0x1800;
/// Longest request we decode: a stub block plus the 8-byte header, 16-byte data header
/// and some slack. Anything longer is line noise.
pub(crate) const MAX_FRAME: usize = STUB_MAX_BLOCK as usize + 64;
/// SYNC payload: `07 07 12 20` followed by 32 times `55`.
pub(crate) const SYNC_PREFIX: [u8; 4] = [0x07, 0x07, 0x12, 0x20];
/// The ROM answers one SYNC with this many identical responses (esptool reads them all).
pub(crate) const SYNC_REPLIES: usize = 8;
/// The value field of the ROM's SYNC response; the stub answers 0, which esptool uses to
/// detect an already running stub.
pub(crate) const ROM_SYNC_VALUE: u32 = 0x2012_0707;

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
    /// MEM_DATA, FLASH_DATA, FLASH_DEFL_DATA: the commands that carry a data block.
    pub(crate) fn is_data_block(self) -> bool {
        matches!(
            self,
            Command::MemData | Command::FlashData | Command::FlashDeflData
        )
    }

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

/// Which program answers on the UART while in download mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loader {
    /// The mask ROM loader: 4 status bytes (the ESP8266's: 2), ROM semantics.
    Rom,
    /// esptool's flasher stub, uploaded to RAM: 2 status bytes, extra commands.
    Stub,
}

impl Loader {
    /// Whether this loader on `target` implements `cmd`.
    pub(crate) fn supports(self, target: Target, cmd: Command) -> bool {
        match (self, target) {
            // Only the ESP32-C3's ROM (and its stub) has it among ours.
            _ if cmd == Command::GetSecurityInfo => {
                matches!(target, Target::Esp32c3 | Target::Esp32s3)
            }
            (Loader::Rom, Target::Esp8266) => cmd.in_esp8266_rom(),
            (Loader::Rom, _) => !cmd.stub_only(),
            (Loader::Stub, _) => !cmd.rom_only(),
        }
    }

    /// The largest data block (RAM or flash) this loader takes.
    pub(crate) fn max_block(self) -> u32 {
        match self {
            Loader::Rom => ROM_MAX_BLOCK,
            Loader::Stub => STUB_MAX_BLOCK,
        }
    }

    /// The status bytes that end a response on `target`, and how many of them count.
    pub(crate) fn status_bytes(self, target: Target, result: Result<(), Fail>) -> ([u8; 4], usize) {
        match self {
            Loader::Rom => {
                let n = if target == Target::Esp8266 { 2 } else { 4 };
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
}

/// Why a command failed; each dialect encodes it its own way (see [`Loader::status_bytes`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_opcode_names_its_command() {
        let known = (0..=255u8)
            .filter_map(Command::from_byte)
            .collect::<Vec<_>>();
        assert_eq!(known.len(), 22);
        for cmd in known {
            assert_eq!(Command::from_byte(cmd as u8), Some(cmd));
        }
    }

    #[test]
    fn dialects_know_their_commands() {
        let all = || (0..=255u8).filter_map(Command::from_byte);
        let count = |loader: Loader, target| all().filter(|&c| loader.supports(target, c)).count();
        // The ESP8266 ROM: the first nine only.
        assert_eq!(count(Loader::Rom, Target::Esp8266), 9);
        // The ESP32 ROM: all but the stub's four and GET_SECURITY_INFO.
        assert_eq!(count(Loader::Rom, Target::Esp32), 17);
        assert!(!Loader::Stub.supports(Target::Esp32, Command::ReadFlashSlow));
        assert!(Loader::Stub.supports(Target::Esp8266, Command::FlashDeflData));
        assert!(Loader::Rom.supports(Target::Esp32c3, Command::GetSecurityInfo));
        assert!(!Loader::Stub.supports(Target::Esp32, Command::GetSecurityInfo));
    }

    #[test]
    fn status_bytes_per_dialect() {
        let rom = |t| Loader::Rom.status_bytes(t, Err(Fail::BadChecksum));
        assert_eq!(rom(Target::Esp32), ([1, 7, 0, 0], 4));
        assert_eq!(rom(Target::Esp8266), ([1, 7, 0, 0], 2));
        assert_eq!(
            Loader::Stub.status_bytes(Target::Esp32, Err(Fail::BadDataLen)),
            ([0xC0, 0, 0, 0], 2)
        );
        assert_eq!(
            Loader::Stub.status_bytes(Target::Esp32, Ok(())),
            ([0; 4], 2)
        );
    }
}
