//! `serialhub pty`: a local pseudo-terminal bridged to a remote port.

use super::ClientError;

pub fn main(_parser: lexopt::Parser) -> Result<(), ClientError> {
    Err(ClientError::Usage("pty: not implemented yet".into()))
}
