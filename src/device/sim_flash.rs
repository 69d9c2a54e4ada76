//! The simulated chip's flash image in a file (`sim:FLASHFILE`): loaded once, then every
//! change written back, so the file always holds what the chip holds (tests compare it with
//! the image they flashed). The in-process device stages a bounded piece of each change
//! under the chip's lock and writes it after; the PTY runner, which owns its chip, writes
//! straight from it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::sim::flash::{self, Flash};

/// Most changed flash copied out under the lock per round (the rest follows at once).
pub(crate) const PERSIST_CHUNK: usize = 64 * 1024;

/// The flash image on disk: loaded once, then every changed range is written back, so the
/// file always holds what the chip holds (tests compare it with the image they flashed).
pub(crate) struct FlashStore {
    file: File,
    /// A changed piece copied out of the flash (at most `PERSIST_CHUNK`), and where it goes.
    staged: Vec<u8>,
    staged_at: u64,
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
        let store = FlashStore {
            file,
            staged: Vec::with_capacity(PERSIST_CHUNK),
            staged_at: 0,
        };
        Ok((store, flash))
    }

    /// Write back what changed since the last call (the caller owns the flash).
    pub(crate) fn persist(&mut self, flash: &mut Flash) -> io::Result<()> {
        if let Some(r) = flash.take_dirty() {
            self.file
                .write_all_at(&flash.as_bytes()[r.clone()], r.start as u64)?;
        }
        Ok(())
    }

    /// Copy the next piece of what changed (at most `PERSIST_CHUNK` bytes) out of `flash`,
    /// for [`FlashStore::write_staged`] to write once the flash's lock is released. Whether
    /// more changes are left.
    pub(crate) fn stage(&mut self, flash: &mut Flash) -> bool {
        if self.staged.is_empty() {
            if let Some(r) = flash.take_dirty_upto(PERSIST_CHUNK) {
                self.staged.extend_from_slice(&flash.as_bytes()[r.clone()]);
                self.staged_at = r.start as u64;
            }
        }
        flash.is_dirty()
    }

    /// Write the staged piece to the file. A piece that failed is dropped, like the whole
    /// range was before (the next change is tried afresh).
    pub(crate) fn write_staged(&mut self) -> io::Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let r = self.file.write_all_at(&self.staged, self.staged_at);
        self.staged.clear();
        r
    }
}

/// Under the lock: copy the next changed piece of the flash out for the file (or forget the
/// change without one). Whether more is left.
pub(crate) fn stage_flash(store: Option<&mut FlashStore>, flash: &mut Flash) -> bool {
    match store {
        Some(store) => store.stage(flash),
        None => {
            flash.take_dirty();
            false
        }
    }
}

/// After the lock: write what `stage_flash` copied.
pub(crate) fn write_staged(store: Option<&mut FlashStore>) {
    if let Some(store) = store {
        if let Err(e) = store.write_staged() {
            log::warn!("sim: cannot write the flash file: {e}");
        }
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

    #[test]
    fn a_large_change_is_staged_in_bounded_pieces() {
        let dir = std::env::temp_dir().join(format!("serialhub-sim-stage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flash.bin");
        let (mut store, mut flash) = FlashStore::open(&path).unwrap();
        let image: Vec<u8> = (0..3 * PERSIST_CHUNK + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        flash.program(0x1_0000, &image).unwrap();
        let mut rounds = 0;
        loop {
            let more = store.stage(&mut flash);
            assert!(store.staged.len() <= PERSIST_CHUNK);
            store.write_staged().unwrap();
            rounds += 1;
            if !more {
                break;
            }
        }
        assert_eq!(rounds, 4);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[0x1_0000..0x1_0000 + image.len()], &image[..]);
        assert!(
            store.staged.capacity() <= PERSIST_CHUNK,
            "one buffer, reused"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
