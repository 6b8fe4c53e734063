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
///
/// A `path` that is a device or a pipe (`--json /dev/stdout`, `/dev/null`) is written in
/// place: renaming a file onto it would replace the device node itself. A symbolic link
/// is followed, so the file it points to is replaced and the link stays.
pub(crate) fn write_atomic_file(
    path: &Path,
    f: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() && !meta.is_dir() {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            f(&mut file)?;
            return file.flush().map_err(|e| Error::io(path, e));
        }
    }
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let resolved;
    let path = if is_link {
        resolved = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        resolved.as_path()
    } else {
        path
    };
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

    /// A link to a device (here /dev/null) is written through, in place: the link stays
    /// a link and the device a device. (Through a link, so that a regression would
    /// replace only the link in a temporary directory, never /dev/null itself.)
    #[cfg(unix)]
    #[test]
    fn devices_and_links_are_written_in_place() {
        use std::os::unix::fs::FileTypeExt;
        let dir = std::env::temp_dir().join(format!("atomic-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Writes `bytes` through a fresh link at `link` to `target`; the link must stay one.
        let write_through = |link: &Path, target: &Path, bytes: &[u8]| {
            let _ = std::fs::remove_file(link);
            std::os::unix::fs::symlink(target, link).unwrap();
            write_atomic(link, |w| w.write_all(bytes).map_err(|e| Error::io(link, e))).unwrap();
            assert!(std::fs::symlink_metadata(link)
                .unwrap()
                .file_type()
                .is_symlink());
        };
        write_through(&dir.join("null"), Path::new("/dev/null"), b"report");
        assert!(std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
        // A link to a regular file: the file is replaced, the link kept.
        let file = dir.join("out.json");
        std::fs::write(&file, b"old").unwrap();
        write_through(&dir.join("link.json"), &file, b"new");
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_paths_are_unique_and_beside_the_target() {
        let p = Path::new("/some/dir/out.npz");
        let (a, b) = (temp_path(p), temp_path(p));
        assert_ne!(a, b);
        assert_eq!(a.parent(), p.parent());
    }
}
