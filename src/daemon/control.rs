//! The control messages: what the portal (and the signal handler) may ask of the
//! supervisor, and the channel they travel on. Its own module, so the portal and the
//! supervisor both depend on it and not on each other.

use std::sync::mpsc;
use std::time::Duration;

use log::warn;

use crate::daemon::assign::DeviceKey;
use crate::daemon::config::Config;
use crate::daemon::mailbox::{mailbox, Mailbox, Sender};
use crate::protocol::reset::ResetTo;

/// How long a request waits for the supervisor's answer.
const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// What other threads (the portal) may ask of the supervisor.
#[derive(Debug)]
pub(crate) enum Request {
    /// Serve a stopped device again, by its node (`/dev/ttyUSB0`).
    Start(String),
    /// Stop serving a device (its client is closed) until started again.
    Stop(String),
    StartAll,
    StopAll,
    Reset(DeviceKey, ResetTo),
    Disconnect(DeviceKey),
    /// The device's leases changed: its bridge closes whom they no longer admit.
    Leased(DeviceKey),
}

/// A request's outcome: a message for the user, or why it failed.
pub(crate) type Reply = Result<String, RequestError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestError {
    /// No such device (by node or key).
    NotFound(String),
    /// The device exists but cannot do this now.
    Failed(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::NotFound(what) => write!(f, "no device {what}"),
            RequestError::Failed(why) => write!(f, "{why}"),
        }
    }
}

/// What reaches the supervisor's thread.
pub(crate) enum Command {
    Shutdown,
    Reload(Box<Config>),
    Request(Request, mpsc::Sender<Reply>),
}

/// How many commands may wait for the supervisor: the portal asks one at a time and waits,
/// the signal thread sends a reload or a shutdown; more waiting means it is stuck.
const QUEUE: usize = 32;

/// How other threads reach the supervisor.
#[derive(Clone)]
pub(crate) struct Handle {
    tx: Sender<Command>,
}

impl Handle {
    /// Ask and wait for the answer (a reset answers once its sequence has started).
    pub(crate) fn request(&self, req: Request) -> Reply {
        let (tx, rx) = mpsc::channel(); // one answer, ever
        if let Err(why) = self.tx.post(Command::Request(req, tx)) {
            return Err(RequestError::Failed(format!("the daemon is {why}")));
        }
        rx.recv_timeout(REQUEST_WAIT)
            .unwrap_or_else(|_| Err(RequestError::Failed("the supervisor did not answer".into())))
    }

    /// Re-read configuration for the supervisor to apply.
    pub(crate) fn reload(&self, config: Config) {
        self.send(Command::Reload(Box::new(config)));
    }

    /// Ask the supervisor to stop every device and return.
    pub(crate) fn shutdown(&self) {
        self.send(Command::Shutdown);
    }

    fn send(&self, cmd: Command) {
        if let Err(why) = self.tx.post(cmd) {
            warn!("the supervisor is {why}; the signal's command is dropped");
        }
    }
}

/// The supervisor's end.
pub(crate) type Inbox = Mailbox<Command>;

/// A new control channel.
pub(crate) fn channel() -> std::io::Result<(Handle, Inbox)> {
    let (tx, inbox) = mailbox(QUEUE)?;
    Ok((Handle { tx }, inbox))
}
