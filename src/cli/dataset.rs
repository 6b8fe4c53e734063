//! Dataset directories: which `.npz` sets a directory holds, finding one by name, and
//! the main job's cached synthetic dataset.

use std::path::{Path, PathBuf};

use crate::data::grid::{GridConfig, PROFILES, RUNS};
use crate::data::{self, npz, GeneratorConfig};
use crate::{Error, Result};

use crate::cli::outputs::phase;

/// The `.npz` files of a dataset directory, in name order.
pub fn dataset_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        let kind = if dir.exists() {
            std::io::ErrorKind::NotADirectory
        } else {
            std::io::ErrorKind::NotFound
        };
        return Err(Error::io(
            dir,
            std::io::Error::new(kind, "--data must be a directory of .npz prediction sets"),
        ));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "npz") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The set's name: the file stem.
pub fn set_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The target and part a file stem names: `NAME.part-007` is part 7 of target NAME
/// (DESIGN.md 3: a target that arrives as several files), any other stem is a whole set.
pub fn target_part(stem: &str) -> (&str, Option<usize>) {
    if let Some((name, part)) = stem.rsplit_once(".part-") {
        if !name.is_empty() && !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(i) = part.parse::<usize>() {
                return (name, Some(i));
            }
        }
    }
    (stem, None)
}

/// The file of set `name` among `files`; a missing set is an I/O error (exit 3) that
/// lists the sets the directory holds.
pub fn find_set(dir: &Path, files: &[PathBuf], name: &str, role: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.npz"));
    if files.contains(&path) {
        return Ok(path);
    }
    let found: Vec<String> = files.iter().map(|f| set_name(f)).collect();
    let listing = if found.is_empty() {
        "it holds no .npz sets".to_string()
    } else {
        format!("sets found: {}", found.join(", "))
    };
    Err(Error::io(
        &path,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{role} set {name:?} not found in {} ({listing})",
                dir.display()
            ),
        ),
    ))
}

/// Where the main job keeps its generated dataset.
fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CONFORMAL_GPU_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("conformal-gpu")
}

/// The main job's dataset (scale 1, `cfg`), generated into the cache unless a complete
/// copy is there. Returns its directory.
pub fn cached_dataset(cfg: &GeneratorConfig) -> Result<PathBuf> {
    let dir = cache_dir().join(format!("camelyon17-scale{}-seed{}", cfg.scale, cfg.seed));
    let expected: Vec<String> = data::split_specs(cfg.scale)
        .iter()
        .map(|s| format!("{} {}", s.name, s.n))
        .collect();
    cached(&dir, &expected, "the Camelyon17-shaped dataset", |show| {
        data::generate_dataset(cfg, &dir, Some(show)).map(|_| ())
    })?;
    Ok(dir)
}

/// The main job's grid (`cfg`: every dataset shape x model x run), generated into the
/// cache unless a complete copy is there. Returns its root.
pub fn cached_grid(cfg: &GridConfig) -> Result<PathBuf> {
    let dir = cache_dir().join(format!(
        "grid-v1-scale{}-seed{}-{}",
        cfg.scale,
        cfg.seed,
        if cfg.datasets.is_empty() {
            "all".to_string()
        } else {
            cfg.datasets.join("+")
        }
    ));
    let mut expected = Vec::new();
    for shape in cfg.shapes()? {
        for profile in &PROFILES {
            for run in 0..RUNS {
                for set in shape.sets {
                    expected.push(format!(
                        "{}/{}/{run}/{} {}",
                        shape.name,
                        profile.name,
                        set.name,
                        cfg.rows(set)
                    ));
                }
            }
        }
    }
    cached(&dir, &expected, "the sweep's grid", |show| {
        data::grid::generate_grid(cfg, &dir, Some(show)).map(|_| ())
    })?;
    Ok(dir)
}

/// Runs `generate` into `dir` unless its `.complete` marker lists `expected`; writes the
/// marker (atomically) after.
fn cached(
    dir: &Path,
    expected: &[String],
    what: &str,
    generate: impl FnOnce(&dyn Fn(&str)) -> Result<()>,
) -> Result<()> {
    let marker = dir.join(".complete");
    let complete = std::fs::read_to_string(&marker)
        .is_ok_and(|m| m.lines().eq(expected.iter().map(|s| s.as_str())));
    if complete {
        eprintln!("dataset: {} (cached)", dir.display());
        return Ok(());
    }
    let pb = phase(&format!("generating {what} into {}", dir.display()));
    let show = |m: &str| pb.set_message(m.to_string());
    generate(&show)?;
    npz::write_atomic(&marker, |w| {
        writeln!(w, "{}", expected.join("\n")).map_err(|e| Error::io(&marker, e))
    })?;
    pb.finish_and_clear();
    eprintln!(
        "generated {what} ({} sets) into {}",
        expected.len(),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::target_part;

    #[test]
    fn part_names() {
        assert_eq!(target_part("test.part-000"), ("test", Some(0)));
        assert_eq!(target_part("a.b.part-12"), ("a.b", Some(12)));
        assert_eq!(target_part("test"), ("test", None));
        assert_eq!(target_part("test.part-"), ("test.part-", None));
        assert_eq!(target_part("test.part-1x"), ("test.part-1x", None));
        assert_eq!(target_part(".part-3"), (".part-3", None));
    }
}
