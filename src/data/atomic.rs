//! Atomic writing (DESIGN.md section 6: never a partial output file): every writer goes
//! through a temporary file in the destination directory, renamed into place only when
//! everything was written, removed on error.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary path beside `path` (same directory, so the final rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    let unique = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp.{}.{unique}", std::process::id()))
}

/// Writes through `f` into a temporary file beside `path`, then renames it onto `path`.
/// On any error the temporary file is removed and `path` is left untouched.
pub(crate) fn write_atomic_file(
    path: &Path,
    f: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f(&mut file)?;
        file.flush().map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        // Best effort: the temp file may not exist if create failed.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The shared temp-then-rename helper: `f` writes the whole content to a buffered
/// writer; `path` appears only if `f` and the final flush succeed (DESIGN.md section 6:
/// never a partial output file).
pub fn write_atomic(path: &Path, f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    write_atomic_file(path, |file| {
        let mut w = BufWriter::new(file);
        f(&mut w)?;
        w.flush().map_err(|e| Error::io(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_paths_are_unique_and_beside_the_target() {
        let p = Path::new("/some/dir/out.npz");
        let (a, b) = (temp_path(p), temp_path(p));
        assert_ne!(a, b);
        assert_eq!(a.parent(), p.parent());
    }
}
