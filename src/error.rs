//! The error type of the crate: every failure names what went wrong (the file, the field, the op).
//! Every variant's message includes its cause, so an error is printed once, whole (`src/main.rs`).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file whose contents are not what was expected: names the file, the field and the expectation.
    #[error("{path}: {field}: {msg}")]
    BadFile {
        path: PathBuf,
        field: String,
        msg: String,
    },
    /// A configuration or command-line value that cannot be used.
    #[error("invalid {field}: {msg}")]
    Config { field: String, msg: String },
    /// Training produced a non-finite loss or gradient norm.
    #[error("training diverged at step {step}: {what} is {value}; {kept}")]
    Diverged {
        step: usize,
        what: String,
        value: f64,
        kept: String,
    },
    /// A shape mismatch inside an op or between a checkpoint and the model.
    #[error("shape mismatch in {context}: expected {expected}, got {got}")]
    Shape {
        context: String,
        expected: String,
        got: String,
    },
    #[error("json in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("safetensors in {path}: {msg}")]
    SafeTensors { path: PathBuf, msg: String },
    #[error("device: {0}")]
    Device(String),
    /// A data-parallel rank stopped because another rank failed (that rank's error says why).
    #[error("{0}")]
    PeerFailed(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// A cuBLAS call failed.
    #[error("cuBLAS: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    /// A failure inside an operation, with what the operation was doing (the op, the kernel, the shapes).
    #[error("{what}: {inner}")]
    Context { what: String, inner: Box<Error> },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn bad_file(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::BadFile {
            path: path.into(),
            field: field.into(),
            msg: msg.into(),
        }
    }
    /// This error inside `what` (e.g. `layernorm_forward (N = 24, C = 16)`).
    pub fn context(self, what: impl Into<String>) -> Self {
        Error::Context {
            what: what.into(),
            inner: Box::new(self),
        }
    }
    /// Whether this error only reports that another data-parallel rank failed.
    pub fn is_peer_failure(&self) -> bool {
        match self {
            Error::PeerFailed(_) => true,
            Error::Context { inner, .. } => inner.is_peer_failure(),
            _ => false,
        }
    }
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
}
