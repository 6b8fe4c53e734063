//! Provenance shared by every floor: where a report's numbers came from (input files and
//! their SHA-256, in lowercase hex).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One input file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InputFile {
    /// Path as given.
    pub file: String,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

impl InputFile {
    /// Hashes `path`.
    pub fn hash(path: &std::path::Path) -> Result<Self> {
        use sha2::{Digest, Sha256};
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(InputFile {
            file: path.display().to_string(),
            sha256: hex(&h.finalize()),
        })
    }
}
