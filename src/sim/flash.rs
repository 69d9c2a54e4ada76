//! A 4 MiB SPI NOR flash: erased bits read 1 (0xFF), programming can only clear bits (the
//! new value is ANDed in), and only an erase of a whole 4 KiB sector (or 64 KiB block, or the
//! chip) sets them again. Modelling the AND is what makes a "forgot to erase" bug visible.
//!
//! Pure: the contents live in memory; the I/O wrappers persist the dirty range.

use std::ops::Range;

/// Total size: what the simulated W25Q32 reports in its JEDEC id.
pub(crate) const FLASH_SIZE: usize = 4 * 1024 * 1024;
/// Smallest erasable unit.
pub(crate) const SECTOR_SIZE: usize = 4 * 1024;
/// Large erase unit (command 0xD8 on real parts).
pub(crate) const BLOCK_SIZE: usize = 64 * 1024;

/// An address range that does not fit the chip, or an erase that is not aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutOfRange;

/// The flash array plus the range changed since the last `take_dirty`.
#[derive(Clone)]
pub(crate) struct Flash {
    data: Vec<u8>,
    dirty: Option<Range<usize>>,
}

impl std::fmt::Debug for Flash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flash")
            .field("size", &self.data.len())
            .field("dirty", &self.dirty)
            .finish()
    }
}

impl Default for Flash {
    fn default() -> Self {
        Flash::new()
    }
}

impl Flash {
    /// A fully erased chip.
    pub(crate) fn new() -> Flash {
        Flash {
            data: vec![0xFF; FLASH_SIZE],
            dirty: None,
        }
    }

    /// A chip holding `image` (shorter images are padded with erased bytes, longer ones cut).
    pub(crate) fn from_image(image: &[u8]) -> Flash {
        let mut flash = Flash::new();
        let n = image.len().min(FLASH_SIZE);
        flash.data[..n].copy_from_slice(&image[..n]);
        flash
    }

    pub(crate) fn size(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// `len` bytes at `addr`, or `None` when the range leaves the chip.
    pub(crate) fn read(&self, addr: u32, len: u32) -> Option<&[u8]> {
        self.range(addr, len).ok().map(|r| &self.data[r])
    }

    /// Page program: every byte is ANDed into what is there.
    pub(crate) fn program(&mut self, addr: u32, bytes: &[u8]) -> Result<(), OutOfRange> {
        let len = u32::try_from(bytes.len()).map_err(|_| OutOfRange)?;
        let r = self.range(addr, len)?;
        for (cell, &b) in self.data[r.clone()].iter_mut().zip(bytes) {
            *cell &= b;
        }
        self.mark(r);
        Ok(())
    }

    #[cfg(test)]
    /// Erase the 4 KiB sector that starts at `addr` (must be aligned).
    pub(crate) fn erase_sector(&mut self, addr: u32) -> Result<(), OutOfRange> {
        self.erase_aligned(addr, SECTOR_SIZE)
    }

    #[cfg(test)]
    /// Erase the 64 KiB block that starts at `addr` (must be aligned).
    pub(crate) fn erase_block(&mut self, addr: u32) -> Result<(), OutOfRange> {
        self.erase_aligned(addr, BLOCK_SIZE)
    }

    /// Erase every sector that overlaps `[addr, addr + len)`, the way the loaders do before
    /// writing: whole sectors, using 64 KiB block erases where they fit.
    pub(crate) fn erase_covering(&mut self, addr: u32, len: u32) -> Result<(), OutOfRange> {
        if len == 0 {
            return Ok(());
        }
        let r = self.range(addr, len)?;
        let mut at = r.start / SECTOR_SIZE * SECTOR_SIZE;
        let end = r.end.div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
        while at < end {
            let unit = if at % BLOCK_SIZE == 0 && end - at >= BLOCK_SIZE {
                BLOCK_SIZE
            } else {
                SECTOR_SIZE
            };
            self.fill_erased(at..at + unit);
            at += unit;
        }
        Ok(())
    }

    pub(crate) fn erase_all(&mut self) {
        self.fill_erased(0..self.data.len());
    }

    /// The byte range written since the last call, for persisting it.
    pub(crate) fn take_dirty(&mut self) -> Option<Range<usize>> {
        self.dirty.take()
    }

    /// At most `max` bytes of the changed range, from its start; the rest stays changed
    /// (for a caller that persists through a bounded buffer).
    pub(crate) fn take_dirty_upto(&mut self, max: usize) -> Option<Range<usize>> {
        let d = self.dirty.take()?;
        let end = d.end.min(d.start.saturating_add(max.max(1)));
        if end < d.end {
            self.dirty = Some(end..d.end);
        }
        Some(d.start..end)
    }

    /// Whether anything changed since the last `take_dirty`.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.is_some()
    }

    #[cfg(test)]
    fn erase_aligned(&mut self, addr: u32, unit: usize) -> Result<(), OutOfRange> {
        let start = addr as usize;
        if start % unit != 0 {
            return Err(OutOfRange);
        }
        let r = self.range(addr, unit as u32)?;
        self.fill_erased(r);
        Ok(())
    }

    fn fill_erased(&mut self, r: Range<usize>) {
        self.data[r.clone()].fill(0xFF);
        self.mark(r);
    }

    fn range(&self, addr: u32, len: u32) -> Result<Range<usize>, OutOfRange> {
        let start = addr as usize;
        let end = start.checked_add(len as usize).ok_or(OutOfRange)?;
        if end > self.data.len() {
            return Err(OutOfRange);
        }
        Ok(start..end)
    }

    fn mark(&mut self, r: Range<usize>) {
        if r.is_empty() {
            return;
        }
        self.dirty = Some(match self.dirty.take() {
            Some(d) => d.start.min(r.start)..d.end.max(r.end),
            None => r,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_erased() {
        let f = Flash::new();
        assert_eq!(f.size(), FLASH_SIZE);
        assert!(f.as_bytes().iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn program_ands_bits_and_only_erase_restores_them() {
        let mut f = Flash::new();
        f.program(0x1000, &[0xF0, 0x0F, 0xAA]).unwrap();
        f.program(0x1000, &[0x3C, 0xFF, 0x55]).unwrap();
        assert_eq!(f.read(0x1000, 3).unwrap(), &[0x30, 0x0F, 0x00]);
        f.erase_sector(0x1000).unwrap();
        assert_eq!(f.read(0x1000, 3).unwrap(), &[0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn erase_units_and_alignment() {
        let mut f = Flash::new();
        f.program(0, &vec![0u8; 3 * BLOCK_SIZE]).unwrap();
        assert_eq!(f.erase_sector(0x800), Err(OutOfRange));
        assert_eq!(f.erase_block(SECTOR_SIZE as u32), Err(OutOfRange));
        f.erase_block(BLOCK_SIZE as u32).unwrap();
        assert_eq!(f.read(BLOCK_SIZE as u32 - 1, 1).unwrap(), &[0]);
        assert!(f
            .read(BLOCK_SIZE as u32, BLOCK_SIZE as u32)
            .unwrap()
            .iter()
            .all(|&b| b == 0xFF));
        assert_eq!(f.read(2 * BLOCK_SIZE as u32, 1).unwrap(), &[0]);
        // Covering erase rounds out to whole sectors.
        f.erase_covering(0x1010, 0x10).unwrap();
        assert_eq!(f.read(0x0FFF, 1).unwrap(), &[0]);
        assert!(f.read(0x1000, 0x1000).unwrap().iter().all(|&b| b == 0xFF));
        assert_eq!(f.read(0x2000, 1).unwrap(), &[0]);
    }

    #[test]
    fn out_of_range_is_an_error_not_a_panic() {
        let mut f = Flash::new();
        assert_eq!(f.program(FLASH_SIZE as u32 - 1, &[0, 0]), Err(OutOfRange));
        assert_eq!(f.erase_covering(u32::MAX, 10), Err(OutOfRange));
        assert!(f.read(u32::MAX, u32::MAX).is_none());
        assert_eq!(f.erase_sector(FLASH_SIZE as u32), Err(OutOfRange));
    }

    #[test]
    fn dirty_range_is_the_union_of_changes() {
        let mut f = Flash::new();
        assert_eq!(f.take_dirty(), None);
        f.program(0x2000, &[0]).unwrap();
        f.erase_sector(0x5000).unwrap();
        assert_eq!(f.take_dirty(), Some(0x2000..0x6000));
        assert_eq!(f.take_dirty(), None);
        // Piece by piece: what is left stays dirty, and a new change joins it.
        f.program(0x2000, &[0]).unwrap();
        f.erase_sector(0x5000).unwrap();
        assert_eq!(f.take_dirty_upto(0x1000), Some(0x2000..0x3000));
        f.program(0x7000, &[0]).unwrap();
        assert_eq!(f.take_dirty_upto(0x10000), Some(0x3000..0x7001));
        assert!(!f.is_dirty());
        assert_eq!(f.take_dirty_upto(0x10000), None);
    }
}
