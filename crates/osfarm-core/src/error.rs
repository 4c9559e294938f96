//! Errors with a stable code (what tooling matches on) and a message that says what to do.

use std::fmt;
use std::io;
use std::path::Path;

/// Stable error codes. They cross into JavaScript as `err.code`; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// An argument is out of range (block size, hash name, ...).
    InvalidArgument,
    /// A file could not be read or written.
    Io,
    /// An index file is truncated, corrupt or inconsistent.
    BadIndex,
    /// An input archive is malformed or hostile (e.g. `..` in a path).
    BadArchive,
    /// Data did not match the digest it was given for: a block or image digest from a
    /// source (a push's sender, a pull's server, a file given to assemble) is wrong, or
    /// an image `verify` checks does not match its index. A transfer that fails with it
    /// is the other side's fault, and keeps nothing for resumption.
    DigestMismatch,
    /// The repository is missing, damaged, or of another format; also a block of a
    /// repository image (or of a partial assembly) found damaged on disk while assembling.
    BadRepository,
    /// No image in the repository matches the given reference.
    NotFound,
    /// A reference matches more than one image.
    Ambiguous,
    /// Two things that must agree (block size, hash) do not.
    Mismatch,
    /// The operation was cancelled by the caller.
    Aborted,
    /// Another process holds the repository lock.
    Locked,
}

/// The code as a string: what a binding sets as the JS error's `code`.
impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "OSFARM_INVALID_ARGUMENT",
            Code::Io => "OSFARM_IO",
            Code::BadIndex => "OSFARM_BAD_INDEX",
            Code::BadArchive => "OSFARM_BAD_ARCHIVE",
            Code::DigestMismatch => "OSFARM_DIGEST_MISMATCH",
            Code::BadRepository => "OSFARM_BAD_REPOSITORY",
            Code::NotFound => "OSFARM_NOT_FOUND",
            Code::Ambiguous => "OSFARM_AMBIGUOUS",
            Code::Mismatch => "OSFARM_MISMATCH",
            Code::Aborted => "OSFARM_ABORTED",
            Code::Locked => "OSFARM_LOCKED",
        }
    }
}

#[derive(Debug)]
pub struct Error {
    pub code: Code,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error { code, message: message.into() }
    }

    /// An I/O error with the path it happened on, so the user knows where to look.
    pub fn io(path: &Path, what: &str, err: io::Error) -> Self {
        let code = if err.kind() == io::ErrorKind::NotFound { Code::NotFound } else { Code::Io };
        Error::new(code, format!("{what} {}: {err}", path.display()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

/// Shorthand for `Err(Error::new(code, format!(...)))`.
#[macro_export]
macro_rules! bail {
    ($code:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::new($crate::error::Code::$code, format!($($arg)*)))
    };
}
