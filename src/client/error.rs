//! Why a client command failed, and the exit code each reason maps to: 1 no such device,
//! several match, or a runtime failure; 2 a bad command line or an unreachable host.

/// Why a client command failed; each maps to an exit code.
#[derive(Debug)]
pub(crate) enum ClientError {
    Usage(String),
    /// No device or several devices match (exit 1).
    Select(String),
    /// The portal cannot be reached (exit 2).
    Unreachable(String),
    Runtime(String),
}

impl ClientError {
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_) | ClientError::Unreachable(_) => 2,
            ClientError::Select(_) | ClientError::Runtime(_) => 1,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Usage(m)
            | ClientError::Select(m)
            | ClientError::Unreachable(m)
            | ClientError::Runtime(m) => write!(f, "{m}"),
        }
    }
}

impl From<lexopt::Error> for ClientError {
    fn from(e: lexopt::Error) -> Self {
        ClientError::Usage(e.to_string())
    }
}
