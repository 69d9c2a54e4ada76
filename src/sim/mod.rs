//! Simulated ESP32 (placeholder; being written).
use std::path::PathBuf;

/// How the standalone `serialhub sim` and the in-process device are set up.
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// Keep the 4 MiB flash image in this file (created if missing), so tests can read it.
    pub flash_file: Option<PathBuf>,
    /// Start in the ROM download mode instead of running the application.
    pub start_in_bootloader: bool,
}

/// `serialhub sim --pty LINK`: serve the simulated chip on a pseudo-terminal.
pub fn run_pty(_link: &std::path::Path, _opts: SimOptions) -> std::io::Result<()> {
    Err(std::io::Error::other("sim not implemented yet"))
}
