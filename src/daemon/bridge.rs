//! The per-device thread: one `poll()` over the listener, the clients' sockets, the device
//! and a wake fd; the device stays open across clients.
//!
//! The thread owns the descriptors and makes the syscalls; what to do with the bytes is the
//! [`Hub`]'s (admission, sessions, control, effects, resets, the device's life). One round
//! of the loop: ask the hub what to poll for, poll, hand it what happened, write what it
//! has for each client, close whom it says. Nothing in it waits: a setting that must follow
//! data still queued for a slow (or flow-stopped) UART waits as the session's effect in
//! flight, while the client is not read and everything else — commands from the
//! supervisor, new connections, the reset steps — goes on. Every buffer is bounded: a client
//! that does not read its answers and output stops being read (and the device with it, so
//! back-pressure lands in the device's kernel buffer, as with a slow local reader); a fast
//! client fills the device's queue, which stops us reading the socket.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::poll::{PollFd, PollFlags};
use nix::sys::socket::{setsockopt, sockopt};

use crate::daemon::backoff::{self, AcceptBackoff, Failed};
use crate::daemon::config::{DeviceSpec, MAX_CLIENTS};
use crate::daemon::control::Reply;
pub(crate) use crate::daemon::hub::Shared;
use crate::daemon::hub::{Action, Hub};
use crate::daemon::mailbox::{mailbox, Mailbox, Refused, Sender};
use crate::daemon::wait::{poll_until, Woke};
use crate::device::{Device, DevicePath};
use crate::protocol::line::LineSettings;
use crate::protocol::reset::ResetTo;

pub(crate) const STOP_WAIT: Duration = Duration::from_secs(2);

/// How a vanished client is noticed (see [`tune_socket`]).
const KEEPALIVE_IDLE_S: u32 = 10;
const KEEPALIVE_INTERVAL_S: u32 = 5;
const KEEPALIVE_PROBES: u32 = 3;
const UNACKED_TIMEOUT_MS: u32 = 25_000;

/// How many commands may wait for a bridge: the supervisor sends a few per event (a stop is
/// two), the portal's requests one at a time.
const COMMANDS: usize = 32;

/// Requests from other threads, delivered through the bridge's mailbox.
#[derive(Debug)]
pub(crate) enum BridgeCommand {
    /// Restore the device, close the client, end the thread.
    Shutdown,
    /// Reset the chip through the device's reset policy (the portal's request); the answer
    /// goes straight back to whoever asked.
    Reset(ResetTo, mpsc::Sender<Reply>),
    /// The device is back under another node (USB re-enumeration): open that one.
    Replace(DevicePath),
    /// Try to open the device now (its node appeared or its permissions changed).
    Retry,
    /// Close the client, if any, with this reason.
    Disconnect(String),
    /// The device node was removed (the supervisor saw it go).
    Gone,
    /// The device's leases changed: close whom they no longer admit.
    Leases,
}

/// Opens the bridge's device (a tty, the simulator; a fake one in tests).
pub(crate) type Opener =
    Box<dyn FnMut(&DevicePath, &LineSettings) -> io::Result<Box<dyn Device>> + Send>;

/// The opener for a configured device: [`crate::device::open`] with its wiring.
pub(crate) fn opener(spec: &DeviceSpec) -> Opener {
    let wiring = spec.wiring();
    let name = spec.display_name();
    Box::new(move |path, settings| crate::device::open(path, &wiring, &name, settings))
}

/// How another thread talks to a running bridge.
pub(crate) struct BridgeHandle {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    tx: Sender<BridgeCommand>,
    thread: thread::JoinHandle<()>,
    /// Closed (all senders dropped) when the thread ends.
    ended: mpsc::Receiver<()>,
}

impl BridgeHandle {
    /// Post `cmd` to the bridge's loop. A bridge that has not taken its last [`COMMANDS`]
    /// is stuck (in the kernel, in a tty that will not close): the command is dropped with a
    /// line, and a reset's asker hears at once that it failed.
    pub(crate) fn send(&self, cmd: BridgeCommand) {
        if let Err(why) = self.tx.post(cmd) {
            if why == Refused::Full {
                warn!("{}: the bridge is {why}; a command is dropped", self.name);
            }
        }
    }

    /// Close the client (with `why`), restore the device and end the thread. Waits a short
    /// while for it; a thread stuck in the kernel (a tty that will not close) is left to
    /// finish alone, so one device never holds up the others. (The supervisor stops
    /// several at once: [`BridgeHandle::signal_stop`], then [`BridgeHandle::join_by`].)
    #[cfg(test)]
    pub(crate) fn stop(self, why: &str) {
        self.signal_stop(why);
        self.join_by(Instant::now() + STOP_WAIT);
    }

    /// The first half of [`BridgeHandle::stop`]: tell the bridge to close its client (with
    /// `why`) and end. Several bridges are signalled first and joined after, with one
    /// deadline (daemon/stopping.rs), so the slowest sets the pace, not the sum.
    pub(crate) fn signal_stop(&self, why: &str) {
        self.send(BridgeCommand::Disconnect(why.to_string()));
        self.send(BridgeCommand::Shutdown);
    }

    /// The second half: wait until `deadline` for the thread to end.
    pub(crate) fn join_by(self, deadline: Instant) {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.ended.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
            }
            _ => warn!(
                "{}: the bridge did not stop within {:.0} s; leaving it to finish",
                self.name,
                STOP_WAIT.as_secs_f32()
            ),
        }
    }
}

/// Start a bridge thread for `spec` on an already bound listener.
pub(crate) fn spawn(
    spec: DeviceSpec,
    listener: TcpListener,
    shared: Shared,
    open: Opener,
) -> io::Result<BridgeHandle> {
    let name = spec.display_name();
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let (tx, inbox) = mailbox(COMMANDS)?;
    let (ended_tx, ended) = mpsc::channel::<()>();
    info!(
        "{name} ({}) listening on {addr}, reset policy {}",
        spec.path,
        shared.policy.name()
    );
    let mut bridge = Bridge {
        hub: Hub::new(spec, shared, addr.port(), Instant::now()),
        listener,
        inbox,
        open,
        streams: Vec::with_capacity(MAX_CLIENTS),
        accept_rest: AcceptBackoff::default(),
    };
    let thread = thread::Builder::new()
        .name(format!("bridge {name}"))
        .spawn(move || {
            let _ended = ended_tx;
            bridge.run();
        })?;
    Ok(BridgeHandle {
        name,
        addr,
        tx,
        thread,
        ended,
    })
}

struct Bridge {
    hub: Hub,
    listener: TcpListener,
    /// Commands from the supervisor, and the fd that wakes the poll for them.
    inbox: Mailbox<BridgeCommand>,
    open: Opener,
    /// The clients' sockets, by the hub's client id.
    streams: Vec<(u64, TcpStream)>,
    /// Accepting failed: the listener rests until then; the pause, and failures so far.
    accept_rest: AcceptBackoff,
}

struct Shutdown;

/// One poll slot per possible client, plus the listener, the wake fd and the device.
const SLOTS: usize = 3 + MAX_CLIENTS;

impl Bridge {
    fn run(&mut self) {
        loop {
            let now = Instant::now();
            if self.hub.open_due(now) {
                self.open_device(now);
            }
            if self.turn().is_err() {
                break;
            }
        }
        self.hub.drop_all("server shutting down", Instant::now());
        self.close_clients();
        debug!("{}: bridge thread done", self.hub.name());
    }

    fn open_device(&mut self, now: Instant) {
        let settings = self.hub.open_settings();
        match (self.open)(self.hub.path(), &settings) {
            Ok(dev) => self.hub.opened(dev, now),
            Err(e) => self.hub.open_failed(e, now),
        }
    }

    /// One round of poll and the work it reveals.
    fn turn(&mut self) -> Result<(), Shutdown> {
        // A fixed array, no allocation per round: absent slots poll the wake fd for nothing.
        let idle = || PollFd::new(self.inbox.fd(), PollFlags::empty());
        let mut fds: [PollFd; SLOTS] = std::array::from_fn(|_| idle());
        if !self.accept_rest.resting(Instant::now()) {
            fds[0] = PollFd::new(self.listener.as_fd(), PollFlags::POLLIN);
        }
        fds[1] = PollFd::new(self.inbox.fd(), PollFlags::POLLIN);
        if let Some(fd) = self.hub.device_fd() {
            let want = self.hub.device_interest();
            fds[2] = PollFd::new(fd, flags(want));
        }
        let mut ids = [0u64; MAX_CLIENTS];
        let mut used = 3;
        for id in self.hub.client_ids().take(MAX_CLIENTS) {
            let Some((_, s)) = self.streams.iter().find(|(i, _)| *i == id) else {
                continue;
            };
            fds[used] = PollFd::new(s.as_fd(), flags(self.hub.client_interest(id)));
            ids[used - 3] = id;
            used += 1;
        }
        let rest = self.accept_rest.deadline();
        let deadline = [rest, self.hub.poll_timeout()].into_iter().flatten().min();
        if poll_until(&mut fds[..used], deadline, &self.hub.name()) == Woke::Interrupted {
            return Ok(());
        }
        let ready = fds.map(|f| f.revents().unwrap_or(PollFlags::empty()));
        let (listener_ready, wake_ready, dev_ready) = (ready[0], ready[1], ready[2]);
        let now = Instant::now();

        if wake_ready.contains(PollFlags::POLLIN) {
            while let Some(cmd) = self.inbox.pop() {
                self.command(cmd, now)?;
            }
        }
        if dev_ready.contains(PollFlags::POLLOUT) {
            self.hub.device_writable(now);
        }
        if dev_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            self.hub.device_readable(now);
        }
        for (k, &id) in ids.iter().enumerate().take(used - 3) {
            let ev = ready[3 + k];
            if ev.contains(PollFlags::POLLOUT) {
                self.send(id, now);
            }
            if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                self.receive(id, now);
            }
        }
        if listener_ready.contains(PollFlags::POLLIN) || self.accept_rest.due(now) {
            self.accept(now);
        }
        self.hub.handle_timeout(now);
        self.hub.advance(now);
        // Observers first, as the line-up may change under a failed write.
        let mut ids = [0u64; MAX_CLIENTS];
        let mut n = 0;
        for (slot, id) in ids.iter_mut().zip(self.hub.client_ids()) {
            *slot = id;
            n += 1;
        }
        for &id in ids[..n].iter().rev() {
            self.send(id, now);
        }
        self.close_clients();
        Ok(())
    }

    fn command(&mut self, cmd: BridgeCommand, now: Instant) -> Result<(), Shutdown> {
        match cmd {
            BridgeCommand::Shutdown => return Err(Shutdown),
            BridgeCommand::Reset(to, reply) => self.hub.reset(to, now, &reply),
            BridgeCommand::Replace(path) => self.hub.replace(path, now),
            BridgeCommand::Retry => self.hub.retry(now),
            BridgeCommand::Disconnect(why) => self.hub.drop_all(&why, now),
            BridgeCommand::Gone => self.hub.gone(now),
            BridgeCommand::Leases => self.hub.apply_leases(now),
        }
        Ok(())
    }

    /// Close the sockets of the clients the hub let go.
    fn close_clients(&mut self) {
        while let Some(Action::Close { id, last_words }) = self.hub.poll_effect() {
            if let Some(k) = self.streams.iter().position(|(i, _)| *i == id) {
                let (_, mut s) = self.streams.swap_remove(k);
                if !last_words.is_empty() {
                    let _ = s.write(last_words);
                }
            }
        }
    }

    /// Read what client `id` sent, when the hub has room for it.
    fn receive(&mut self, id: u64, now: Instant) {
        let Some(k) = self.streams.iter().position(|(i, _)| *i == id) else {
            return;
        };
        let Some(buf) = self.hub.client_input(id) else {
            return;
        };
        match self.streams[k].1.read(buf) {
            Ok(0) => self
                .hub
                .client_gone(id, "client closed the connection", now),
            Ok(n) => self.hub.client_bytes(id, n, now),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => self
                .hub
                .client_gone(id, &format!("connection error: {e}"), now),
        }
    }

    /// Write what waits for client `id`.
    fn send(&mut self, id: u64, now: Instant) {
        let Some(k) = self.streams.iter().position(|(i, _)| *i == id) else {
            return;
        };
        loop {
            let out = self.hub.client_output(id);
            if out.is_empty() {
                return;
            }
            match self.streams[k].1.write(out) {
                Ok(n) => self.hub.client_sent(id, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return self
                        .hub
                        .client_gone(id, &format!("connection error: {e}"), now)
                }
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let (mut stream, addr) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accepting_again();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.accept_failed(e, now),
            };
            self.accepting_again();
            // Closed before a byte reaches the device or the session.
            if let Err(e) = tune_socket(&stream) {
                warn!(
                    "{}: cannot set up the connection from {addr}: {e}",
                    self.hub.name()
                );
                continue;
            }
            match self.hub.accept(addr, now) {
                Ok(id) => self.streams.push((id, stream)),
                Err(refused) => {
                    if !refused.0.is_empty() {
                        let _ = stream.write(refused.0);
                    }
                }
            }
            // A kick closes the client in control before the newcomer is served.
            self.close_clients();
        }
    }

    /// Accepting failed (out of descriptors, most likely: EMFILE): rest the listener, say so
    /// once, try again later.
    fn accept_failed(&mut self, e: io::Error, now: Instant) {
        if self.accept_rest.failed(now) == Failed::First {
            warn!(
                "{}: cannot accept connections: {e}; retrying every {:.0} s at most, connected clients are still served (too many open files? raise LimitNOFILE)",
                self.hub.name(),
                backoff::LONGEST.as_secs_f32()
            );
        }
    }

    fn accepting_again(&mut self) {
        if let Some(failures) = self.accept_rest.accepted() {
            info!(
                "{}: accepting connections again ({failures} attempts failed)",
                self.hub.name()
            );
        }
    }
}

fn flags(want: crate::daemon::hub::Interest) -> PollFlags {
    let mut ev = PollFlags::empty();
    if want.read {
        ev |= PollFlags::POLLIN;
    }
    if want.write {
        ev |= PollFlags::POLLOUT;
    }
    ev
}

/// Non-blocking, TCP_NODELAY (every answer is latency-critical), keepalive (about 10 s idle,
/// then 3 probes 5 s apart) and a user timeout of the same 25 s for data the client does not
/// acknowledge, so a client that vanished without a FIN frees the port in ~25 s, idle or in
/// the middle of a flash (where keepalive alone would wait out minutes of retransmissions).
/// A connection that cannot be made non-blocking is refused: it would stall the loop.
fn tune_socket(s: &TcpStream) -> io::Result<()> {
    s.set_nonblocking(true)?;
    let _ = s.set_nodelay(true);
    let _ = setsockopt(s, sockopt::KeepAlive, &true);
    let _ = setsockopt(s, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_S);
    let _ = setsockopt(s, sockopt::TcpKeepInterval, &KEEPALIVE_INTERVAL_S);
    let _ = setsockopt(s, sockopt::TcpKeepCount, &KEEPALIVE_PROBES);
    let _ = setsockopt(s, sockopt::TcpUserTimeout, &UNACKED_TIMEOUT_MS);
    Ok(())
}

#[cfg(test)]
#[path = "bridge_test.rs"]
mod tests;
