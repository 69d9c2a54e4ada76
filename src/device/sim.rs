//! The simulated ESP32 as an in-process device backend: the bridge gets one end of a
//! socket pair (non-blocking, pollable, like a tty fd), a thread owns the other end and
//! runs the chip behind the paced, possibly garbling wire.
//!
//! Line changes (`set_lines`) go straight into the chip under the shared lock, so a reset
//! sequence reaches the board's reset inputs with exactly the timing the bridge plays it.
//! The sim thread holds that lock only for the pure step of the wire and the chip
//! (`Uart::step`) and to copy a bounded piece of changed flash out; it reads and writes its
//! socket and the flash file with the lock released.
//! On a `sim-gpio` board the UART's DTR/RTS go nowhere; [`SimGpioWired`] is the GPIO wiring
//! the bridge uses instead (DTR/RTS through the transistor table onto EN/IO0).
//! A chip on its own USB whose RTC watchdog reset it re-enumerates: the thread closes its
//! end and parks the chip (`sim_park`) for the device's next open.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{setsockopt, sockopt};

use super::sim_flash::{stage_flash, write_staged, FlashStore};
use crate::device::Device;
use crate::protocol::line::{LineSettings, Lines, ModemStatus, Purge};
#[cfg(test)]
use crate::sim::board::{BootRecord, InputRecord};
use crate::sim::board::{Pins, SimBoard};
use crate::sim::chip::{Chip, Mode};
use crate::sim::flash::Flash;
use crate::sim::loader::Loader;
use crate::sim::uart::Uart;
use crate::sim::SimOptions;

/// Socket buffer per direction: about what a USB-UART driver buffers, so a writer that
/// outruns the line is held back instead of queueing megabytes.
const SOCKET_BUFFER: usize = 16 * 1024;
/// Upper bound on one sleep of the sim thread (it is woken for everything that matters).
const MAX_SLEEP: Duration = Duration::from_millis(500);

/// A snapshot of the chip's state for tests and the portal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SimStatus {
    pub(crate) mode: Mode,
    pub(crate) loader: Loader,
    /// Boots since the simulator started; power-on is boot 1. Grows on every reset.
    pub(crate) boot_count: u32,
    /// The UART rate the chip expects right now.
    pub(crate) expected_baud: u32,
    pub(crate) board: SimBoard,
    /// The host's DTR/RTS as last set on the UART.
    pub(crate) lines: Lines,
    /// EN/IO0 as the board drives them.
    pub(crate) pins: Pins,
}

struct State {
    chip: Chip,
    line: LineSettings,
    brk: bool,
}

struct Shared {
    state: Mutex<State>,
    epoch: Instant,
    stop: AtomicBool,
    /// Purge requests (the bridge's end was drained already), taken by the sim thread at
    /// the start of its next round.
    purge_rx: AtomicBool,
    purge_tx: AtomicBool,
    /// Writing a byte here wakes the sim thread.
    wake: UnixStream,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn poke(&self) {
        // A full wake socket already means "wake up"; nothing else can go wrong here.
        let _ = (&self.wake).write(&[1]);
    }
}

/// Cheap, cloneable view of a running simulator: read its state and flash from tests, the
/// portal or the daemon while the bridge owns the `SimDevice`.
#[derive(Clone)]
pub(crate) struct SimHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SimHandle").field(&self.status()).finish()
    }
}

impl SimHandle {
    pub(crate) fn status(&self) -> SimStatus {
        let st = self.shared.lock();
        SimStatus {
            mode: st.chip.mode(),
            loader: st.chip.loader(),
            boot_count: st.chip.boot_count(),
            expected_baud: st.chip.expected_baud(),
            board: st.chip.board(),
            lines: st.chip.lines(),
            pins: st.chip.pins(),
        }
    }

    #[cfg(test)]
    /// The last 256 DTR/RTS, pin and button changes the chip saw, oldest first.
    pub(crate) fn inputs(&self) -> Vec<InputRecord> {
        self.shared.lock().chip.inputs().iter().copied().collect()
    }

    #[cfg(test)]
    /// The most recent boot.
    pub(crate) fn last_boot(&self) -> Option<BootRecord> {
        self.shared.lock().chip.boots().back().copied()
    }

    #[cfg(test)]
    pub(crate) fn boot_count(&self) -> u32 {
        self.shared.lock().chip.boot_count()
    }

    #[cfg(test)]
    pub(crate) fn mode(&self) -> Mode {
        self.shared.lock().chip.mode()
    }

    /// Set the UART's DTR/RTS (as the bridge would): into the board's reset inputs on a
    /// DevKit or USB-JTAG board, nowhere on a GPIO board.
    pub(crate) fn set_lines(&self, lines: Lines) {
        let now = self.shared.now();
        self.shared.lock().chip.set_lines(lines, now);
        self.shared.poke();
    }

    /// Drive EN/IO0 directly, as GPIO lines wired to them would (EN rises after its RC
    /// delay, IO0 is sampled then).
    pub(crate) fn set_pins(&self, pins: Pins) {
        let now = self.shared.now();
        self.shared.lock().chip.set_pins(pins, now);
        self.shared.poke();
    }
}

/// The simulated ESP32 behind the `Device` trait.
pub(crate) struct SimDevice {
    stream: UnixStream,
    handle: SimHandle,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("handle", &self.handle)
            .finish()
    }
}

impl SimDevice {
    /// Power up a simulated ESP32: running its application, or in the ROM download mode
    /// with `opts.start_in_bootloader`. With `opts.flash_file` the flash lives in that file
    /// (created erased if missing) and every change is written back.
    pub(crate) fn spawn(opts: SimOptions) -> io::Result<SimDevice> {
        let (flash, store) = match &opts.flash_file {
            Some(path) => {
                let (store, flash) = FlashStore::open(path)?;
                (flash, Some(store))
            }
            None => (Flash::new(), None),
        };
        let (bridge_end, sim_end) = UnixStream::pair()?;
        for s in [&bridge_end, &sim_end] {
            s.set_nonblocking(true)?;
            // Best effort: the defaults only make the buffers bigger.
            let _ = setsockopt(s, sockopt::SndBuf, &SOCKET_BUFFER);
            let _ = setsockopt(s, sockopt::RcvBuf, &SOCKET_BUFFER);
        }
        let (wake, wake_rx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;

        let label = opts.name.as_deref().unwrap_or("");
        // Back from re-enumerating: the same chip (its flash is what the file holds).
        let (chip, epoch) = match opts
            .name
            .as_deref()
            .and_then(|n| super::sim_park::take(n, opts.board))
        {
            Some(parked) => parked,
            None => (
                Chip::labelled(
                    opts.board,
                    flash,
                    opts.start_in_bootloader,
                    Duration::ZERO,
                    label,
                ),
                Instant::now(),
            ),
        };
        let park_as = opts.name.clone();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                chip,
                line: LineSettings::default(),
                brk: false,
            }),
            epoch,
            stop: AtomicBool::new(false),
            purge_rx: AtomicBool::new(false),
            purge_tx: AtomicBool::new(false),
            wake,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("sim-esp32".into())
            .spawn(move || sim_thread(&thread_shared, &sim_end, &wake_rx, store, park_as))?;
        Ok(SimDevice {
            stream: bridge_end,
            handle: SimHandle { shared },
            thread: Some(thread),
        })
    }

    /// A handle that stays valid after the device is moved into a bridge.
    pub(crate) fn handle(&self) -> SimHandle {
        self.handle.clone()
    }

    fn poke(&self) {
        self.handle.shared.poke();
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.handle.shared.stop.store(true, Ordering::SeqCst);
        self.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Device for SimDevice {
    fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.stream).read(buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // No poke: the sim thread polls its end whenever it has room for more.
        (&self.stream).write(buf)
    }

    fn apply(&mut self, settings: &LineSettings) -> io::Result<()> {
        self.handle.shared.lock().line = *settings;
        self.poke();
        Ok(())
    }

    fn set_lines(&mut self, lines: Lines) -> io::Result<()> {
        self.handle.set_lines(lines);
        Ok(())
    }

    fn modem_status(&mut self) -> io::Result<ModemStatus> {
        // Dev boards leave CTS/DSR/RI/CD of the USB-UART unconnected.
        Ok(ModemStatus::default())
    }

    fn set_break(&mut self, on: bool) -> io::Result<()> {
        self.handle.shared.lock().brk = on;
        self.poke();
        Ok(())
    }

    fn purge(&mut self, which: Purge) -> io::Result<()> {
        if matches!(which, Purge::Input | Purge::Both) {
            let mut buf = [0u8; 4096];
            loop {
                match (&self.stream).read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        let shared = &self.handle.shared;
        if matches!(which, Purge::Input | Purge::Both) {
            shared.purge_tx.store(true, Ordering::SeqCst);
        }
        if matches!(which, Purge::Output | Purge::Both) {
            shared.purge_rx.store(true, Ordering::SeqCst);
        }
        self.poke();
        Ok(())
    }
}

/// A `sim-gpio` board as the bridge sees it: DTR/RTS become EN/IO0 levels through the same
/// transistor table as real GPIO wiring (`crate::protocol::reset::levels`, as `GpioWired` does), so
/// pyserial's both-asserted open holds nothing in reset. Everything else is the UART's.
#[derive(Debug)]
pub(crate) struct SimGpioWired {
    sim: SimDevice,
}

impl SimGpioWired {
    pub(crate) fn new(sim: SimDevice) -> SimGpioWired {
        SimGpioWired { sim }
    }
}

impl Device for SimGpioWired {
    fn fd(&self) -> BorrowedFd<'_> {
        self.sim.fd()
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sim.read(buf)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sim.write(buf)
    }
    fn apply(&mut self, settings: &LineSettings) -> io::Result<()> {
        self.sim.apply(settings)
    }
    /// Both pins in one change, like one SET_VALUES ioctl.
    fn set_lines(&mut self, lines: Lines) -> io::Result<()> {
        let (en, io0) = crate::protocol::reset::levels(lines);
        self.sim.handle.set_pins(Pins { en, io0 });
        Ok(())
    }
    fn modem_status(&mut self) -> io::Result<ModemStatus> {
        self.sim.modem_status()
    }
    fn set_break(&mut self, on: bool) -> io::Result<()> {
        self.sim.set_break(on)
    }
    fn purge(&mut self, which: Purge) -> io::Result<()> {
        self.sim.purge(which)
    }
}

/// The simulated board `opts.board` as a bridge device (a `sim-gpio` board with its GPIO
/// wiring), and a handle to watch it.
pub(crate) fn open(opts: SimOptions) -> io::Result<(Box<dyn Device>, SimHandle)> {
    let gpio = opts.board == SimBoard::Gpio;
    let sim = SimDevice::spawn(opts)?;
    let handle = sim.handle();
    let dev: Box<dyn Device> = if gpio {
        Box::new(SimGpioWired::new(sim))
    } else {
        Box::new(sim)
    };
    Ok((dev, handle))
}

fn drain(mut s: &UnixStream) {
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

fn sim_thread(
    shared: &Shared,
    sim_end: &UnixStream,
    wake_rx: &UnixStream,
    mut store: Option<FlashStore>,
    park_as: Option<String>,
) {
    let mut uart = Uart::new(shared.epoch);
    let mut host = sim_end;
    let usb_resets = shared.lock().chip.usb_resets();
    let mut reenumerating = false;
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.purge_rx.swap(false, Ordering::SeqCst) {
            uart.discard_rx();
            drain(sim_end);
        }
        if shared.purge_tx.swap(false, Ordering::SeqCst) {
            uart.discard_tx();
        }
        if let Err(e) = uart.io_before_step(&mut host) {
            log::warn!("sim: device side failed: {e}");
            break;
        }
        // Under the lock: the pure step, and a copy of what changed in the flash.
        let more_flash = {
            let mut st = shared.lock();
            let (line, rx_enabled) = (st.line, !st.brk);
            uart.step(
                &mut st.chip,
                &line,
                rx_enabled,
                Instant::now(),
                shared.epoch,
            );
            reenumerating = park_as.is_some() && st.chip.usb_resets() != usb_resets;
            stage_flash(store.as_mut(), st.chip.flash_mut())
        };
        if reenumerating {
            break; // the port vanishes: the bridge reads end-of-file
        }
        let wait = match uart.io_after_step(&mut host) {
            Ok(w) => w,
            Err(e) => {
                log::warn!("sim: device side failed: {e}");
                break;
            }
        };
        write_staged(store.as_mut());

        let mut events = PollFlags::empty();
        if wait.want_read {
            events |= PollFlags::POLLIN;
        }
        if wait.want_write {
            events |= PollFlags::POLLOUT;
        }
        let mut fds = [
            PollFd::new(sim_end.as_fd(), events),
            PollFd::new(wake_rx.as_fd(), PollFlags::POLLIN),
        ];
        let sleep = if more_flash {
            Duration::ZERO
        } else {
            wait.deadline
                .map_or(MAX_SLEEP, |d| d.saturating_duration_since(Instant::now()))
                .min(MAX_SLEEP)
        };
        // Round up so we do not spin just short of a deadline.
        let ms = u16::try_from(sleep.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                log::warn!("sim: poll failed: {e}");
                break;
            }
        }
        if fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
        {
            break; // the device end is gone
        }
        if fds[1]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            drain(wake_rx);
        }
    }
    // What changed last goes to the file before the thread ends.
    while stage_flash(store.as_mut(), shared.lock().chip.flash_mut()) {
        write_staged(store.as_mut());
    }
    write_staged(store.as_mut());
    if let (true, Some(name)) = (reenumerating, park_as) {
        let mut st = shared.lock();
        let board = st.chip.board();
        let stand_in = Chip::labelled(
            board,
            Flash::new(),
            false,
            Duration::ZERO,
            &format!("{name} (re-enumerating)"),
        );
        let chip = std::mem::replace(&mut st.chip, stand_in);
        drop(st);
        log::info!("{name}: sim: USB re-enumerates (RTC watchdog reset)");
        super::sim_park::park(&name, board, chip, shared.epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::slip;

    /// Read from the device until `pred` holds for what arrived, or panic after `limit`.
    fn read_until(dev: &mut dyn Device, limit: Duration, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !pred(&got) {
            assert!(
                start.elapsed() < limit,
                "timed out; got {:?}",
                String::from_utf8_lossy(&got)
            );
            let mut fds = [PollFd::new(dev.fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(50u16));
            match dev.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn reset_into_download_and_sync_over_the_device() {
        let mut dev = SimDevice::spawn(SimOptions::default()).unwrap();
        let handle = dev.handle();
        let got = read_until(&mut dev, Duration::from_secs(5), |g| {
            contains(g, b"sim: app tick 0, boot #1\r\n")
        });
        assert!(contains(&got, b"sim: app start, boot #1\r\n"));
        assert!(contains(&got, b"SPI_FAST_FLASH_BOOT"));
        assert_eq!(handle.status().mode, Mode::App);

        // esptool's reset into the bootloader, as the bridge plays it.
        dev.set_lines(Lines {
            dtr: false,
            rts: true,
        })
        .unwrap();
        assert_eq!(handle.mode(), Mode::Reset);
        dev.set_lines(Lines {
            dtr: true,
            rts: false,
        })
        .unwrap();
        // IO0 held past EN's RC delay (esptool holds it 50 ms).
        std::thread::sleep(Duration::from_millis(5));
        dev.set_lines(Lines {
            dtr: false,
            rts: false,
        })
        .unwrap();
        assert_eq!(handle.status().boot_count, 2);
        assert_eq!(handle.mode(), Mode::Download);
        read_until(&mut dev, Duration::from_secs(5), |g| {
            contains(g, b"waiting for download\r\n")
        });

        let mut sync = vec![0x00, 0x08, 36, 0, 0, 0, 0, 0, 0x07, 0x07, 0x12, 0x20];
        sync.extend_from_slice(&[0x55; 32]);
        let mut frame = Vec::new();
        slip::encode_into(&sync, &mut frame);
        assert_eq!(dev.write(&frame).unwrap(), frame.len());
        let got = read_until(&mut dev, Duration::from_secs(5), |g| {
            g.iter().filter(|&&b| b == 0xC0).count() >= 16
        });
        assert_eq!(&got[..6], &[0xC0, 0x01, 0x08, 0x04, 0x00, 0x07]);

        // At the wrong rate the same request goes unanswered.
        dev.apply(&LineSettings {
            baud: 460_800,
            ..LineSettings::default()
        })
        .unwrap();
        dev.write(&frame).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 256];
        let mut garbage = 0;
        while start.elapsed() < Duration::from_millis(300) {
            let mut fds = [PollFd::new(dev.fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(20u16));
            if let Ok(n) = dev.read(&mut buf) {
                garbage += n;
            }
        }
        assert_eq!(garbage, 0);
    }

    #[test]
    fn dropping_the_device_stops_its_thread() {
        let dev = SimDevice::spawn(SimOptions {
            start_in_bootloader: true,
            ..SimOptions::default()
        })
        .unwrap();
        let handle = dev.handle();
        assert_eq!(handle.mode(), Mode::Download);
        let start = Instant::now();
        drop(dev); // joins the thread
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(Arc::strong_count(&handle.shared), 1);
    }

    #[test]
    fn gpio_board_takes_dtr_rts_through_its_wiring_only() {
        use crate::protocol::reset::{EN_LOW, IO0_LOW, RELEASED};
        let (mut dev, handle) = open(SimOptions {
            board: SimBoard::Gpio,
            ..SimOptions::default()
        })
        .unwrap();
        // The UART's own lines are not connected.
        handle.set_lines(EN_LOW);
        assert_eq!((handle.mode(), handle.boot_count()), (Mode::App, 1));
        // The bridge's lines reach EN/IO0 through the transistor table.
        dev.set_lines(EN_LOW).unwrap();
        assert_eq!(handle.mode(), Mode::Reset);
        assert_eq!(
            handle.status().pins,
            Pins {
                en: false,
                io0: true
            }
        );
        dev.set_lines(IO0_LOW).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        dev.set_lines(RELEASED).unwrap();
        assert_eq!((handle.mode(), handle.boot_count()), (Mode::Download, 2));
        // The banner comes out without anyone else waking the sim thread.
        read_until(dev.as_mut(), Duration::from_secs(5), |g| {
            contains(g, b"waiting for download\r\n")
        });
        let boot = handle.last_boot().unwrap();
        assert_eq!(boot.n, 2);
        assert!(handle.inputs().len() >= 4);
    }

    #[test]
    fn usb_board_talks_at_any_baud_rate() {
        let mut dev = SimDevice::spawn(SimOptions {
            board: SimBoard::UsbJtag,
            start_in_bootloader: true,
            ..SimOptions::default()
        })
        .unwrap();
        dev.apply(&LineSettings {
            baud: 1200,
            ..LineSettings::default()
        })
        .unwrap();
        let got = read_until(&mut dev, Duration::from_secs(5), |g| {
            contains(g, b"waiting for download\r\n")
        });
        assert!(contains(&got, b"ESP-ROM:esp32c3"));
    }

    #[test]
    fn esp8266_board_is_a_device_path_and_boots_at_74880() {
        let (mut dev, handle) = match crate::device::DevicePath::parse("sim-esp8266") {
            crate::device::DevicePath::Sim { board, .. } => open(SimOptions {
                board,
                ..SimOptions::default()
            })
            .unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(handle.status().board, SimBoard::Esp8266DevKit);
        // At the bridge's 115200 the ROM's log is garbage, the application's lines are not.
        let got = read_until(dev.as_mut(), Duration::from_secs(5), |g| {
            contains(g, b"sim: app tick 0, boot #1\r\n")
        });
        assert!(contains(&got, b"sim: app start, boot #1\r\n"));
        assert!(!contains(&got, b"ets Jan"));
        // Its DTR/RTS go through the auto-reset circuit: RST low, then GPIO0 low as it rises;
        // the download banner comes at 74880, which the line is set to first.
        dev.apply(&LineSettings {
            baud: 74_880,
            ..LineSettings::default()
        })
        .unwrap();
        dev.set_lines(crate::protocol::reset::EN_LOW).unwrap();
        dev.set_lines(crate::protocol::reset::IO0_LOW).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        dev.set_lines(crate::protocol::reset::RELEASED).unwrap();
        assert_eq!((handle.mode(), handle.boot_count()), (Mode::Download, 2));
        read_until(dev.as_mut(), Duration::from_secs(5), |g| {
            contains(g, b"boot mode:(1,7)")
        });
    }
}
