//! Where an in-process simulated chip waits while its USB port re-enumerates.
//!
//! When the RTC watchdog resets a chip on its own USB (`sim::rtc`), the real port vanishes
//! from the host and comes back a moment later (a ttyACM re-enumerating). The in-process
//! device models that the way the bridge already knows from real native-USB boards: the sim
//! thread closes its end of the socket pair (the bridge reads end-of-file, keeps its client
//! for the grace period and opens the device again), and parks the chip here under the
//! device's name, so the next open of that device gets the same chip — its flash, its boot
//! count, its clock — as the same board plugged back in, not a freshly powered one.

use std::sync::Mutex;
use std::time::Instant;

use crate::sim::board::SimBoard;
use crate::sim::chip::Chip;

/// A parked chip, its board and the epoch its clock counts from.
struct Parked {
    name: String,
    board: SimBoard,
    chip: Chip,
    epoch: Instant,
}

/// One entry per device at most (a device parks again only after it was taken back).
static PARKED: Mutex<Vec<Parked>> = Mutex::new(Vec::new());

/// Park `chip` of device `name` until the device is opened again.
pub(super) fn park(name: &str, board: SimBoard, chip: Chip, epoch: Instant) {
    let mut parked = PARKED.lock().unwrap_or_else(|p| p.into_inner());
    parked.retain(|p| p.name != name);
    parked.push(Parked {
        name: name.to_owned(),
        board,
        chip,
        epoch,
    });
}

/// The chip device `name` left parked on `board`, with its epoch.
pub(super) fn take(name: &str, board: SimBoard) -> Option<(Chip, Instant)> {
    let mut parked = PARKED.lock().unwrap_or_else(|p| p.into_inner());
    let i = parked
        .iter()
        .position(|p| p.name == name && p.board == board)?;
    let p = parked.swap_remove(i);
    Some((p.chip, p.epoch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::flash::Flash;
    use std::time::Duration;

    #[test]
    fn a_parked_chip_comes_back_to_its_own_device_and_board_only() {
        let epoch = Instant::now();
        let chip = Chip::for_board(SimBoard::S3UsbJtag, Flash::new(), true, Duration::ZERO);
        let boots = chip.boot_count();
        park("park-test", SimBoard::S3UsbJtag, chip, epoch);
        assert!(
            take("park-test", SimBoard::UsbJtag).is_none(),
            "another board"
        );
        assert!(
            take("park-test-2", SimBoard::S3UsbJtag).is_none(),
            "another device"
        );
        let (chip, at) = take("park-test", SimBoard::S3UsbJtag).expect("parked");
        assert_eq!((chip.boot_count(), at), (boots, epoch));
        assert!(
            take("park-test", SimBoard::S3UsbJtag).is_none(),
            "taken once"
        );
    }
}
