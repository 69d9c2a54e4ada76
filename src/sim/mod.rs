//! Simulated ESP32: something real esptool can flash, for tests, `serve --demo` and
//! measuring servers on the same chip (`serialhub sim --pty LINK`).
//!
//! ```text
//!  host bytes ─▶ uart (pacing at the sender's baud, garbling on mismatch; USB: neither) ─▶ chip
//!  DTR/RTS ───▶ board (transistors + RC on EN | USB-Serial/JTAG logic | nothing) ─▶ reset
//!  GPIOs ─────▶ EN / IO0 (sim-gpio: SimHandle::set_pins, or SimGpioWired's DTR/RTS mapping)
//!  chip: slip ─▶ loader protocol (ROM dialect, stub dialect) ─▶ flash (NOR), spi, esp32 regs
//! ```
//!
//! Three boards (`board::SimBoard`, device paths `sim`, `sim-usb`, `sim-gpio`): an ESP32
//! DevKit, an ESP32-C3 on its native USB-Serial/JTAG, an ESP32 with EN/IO0 on GPIOs.
//!
//! The chip (`chip`, `board`, `slip`, `flash`, `md5`, `spi`, `esp32`, `esp32c3`) is pure:
//! bytes, line changes and a time in, bytes out. `uart` paces the wire; `port` (in-process
//! `Device`) and `pty` (standalone) are the thin I/O around it.

pub(crate) mod board;
#[cfg(test)]
mod boards_test;
pub(crate) mod chip;
pub(crate) mod esp32;
pub(crate) mod esp32c3;
pub(crate) mod flash;
pub(crate) mod md5;
mod port;
mod pty;
pub(crate) mod slip;
pub(crate) mod spi;
pub(crate) mod uart;

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(crate) use board::SimBoard;
pub(crate) use flash::Flash;
pub(crate) use port::open;

/// How the standalone `serialhub sim` and the in-process device are set up.
#[derive(Clone, Debug, Default)]
pub(crate) struct SimOptions {
    /// Keep the 4 MiB flash image in this file (created if missing), so tests can read it.
    pub(crate) flash_file: Option<PathBuf>,
    /// Start in the ROM download mode instead of running the application.
    pub(crate) start_in_bootloader: bool,
    /// Which board (and chip) to simulate.
    pub(crate) board: SimBoard,
    /// The device's name, prefixed to the simulator's log lines (`NAME: sim: boot #N ...`).
    pub(crate) name: Option<String>,
}

/// `serialhub sim --pty LINK`: serve the simulated chip on a pseudo-terminal until
/// SIGINT/SIGTERM.
pub(crate) fn run_pty(link: &Path, opts: SimOptions) -> io::Result<()> {
    pty::run(link, opts)
}

/// The flash image on disk: loaded once, then every changed range is written back, so the
/// file always holds what the chip holds (tests compare it with the image they flashed).
pub(crate) struct FlashStore {
    file: File,
}

impl FlashStore {
    /// Open (or create, erased) `path` and load the flash from it. A shorter file is
    /// padded with erased bytes, a longer one is used for its first 4 MiB.
    pub(crate) fn open(path: &Path) -> io::Result<(FlashStore, Flash)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut image = Vec::with_capacity(flash::FLASH_SIZE);
        (&mut file)
            .take(flash::FLASH_SIZE as u64)
            .read_to_end(&mut image)?;
        let flash = Flash::from_image(&image);
        if image.len() < flash::FLASH_SIZE {
            let pad = &flash.as_bytes()[image.len()..];
            file.write_all_at(pad, image.len() as u64)?;
        }
        Ok((FlashStore { file }, flash))
    }

    /// Write back what changed since the last call.
    pub(crate) fn persist(&mut self, flash: &mut Flash) -> io::Result<()> {
        if let Some(r) = flash.take_dirty() {
            self.file
                .write_all_at(&flash.as_bytes()[r.clone()], r.start as u64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_store_creates_pads_and_persists() {
        let dir = std::env::temp_dir().join(format!("serialhub-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flash.bin");
        std::fs::write(&path, [0x12, 0x34]).unwrap();
        let (mut store, mut flash) = FlashStore::open(&path).unwrap();
        assert_eq!(flash.read(0, 3).unwrap(), &[0x12, 0x34, 0xFF]);
        flash.program(0x1000, &[0x00, 0x0F]).unwrap();
        store.persist(&mut flash).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), flash::FLASH_SIZE);
        assert_eq!(&on_disk[0x1000..0x1003], &[0x00, 0x0F, 0xFF]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
