//! Where results go: JSON on stdout or into a file, output checks before any work,
//! the device, progress spinners.

use std::path::Path;
use std::time::Duration;

use crate::data::npz;
use crate::device::{DeviceChoice, Engine};
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// Prints `value` as JSON on stdout or writes it atomically to a file.
pub fn emit_json(value: &serde_json::Value, json: &Option<String>) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Invalid(format!("JSON encoding: {e}")))?;
    match json.as_deref() {
        None => Ok(()),
        Some("-") => {
            println!("{text}");
            Ok(())
        }
        Some(path) => npz::write_atomic(Path::new(path), |w| {
            writeln!(w, "{text}").map_err(|e| Error::io(path, e))
        }),
    }
}

/// Fails early (before any work) when `dir` cannot receive output files: it, or its
/// nearest existing ancestor when it is still to be created, must be a writable directory.
pub fn check_writable_dir(dir: &Path) -> Result<()> {
    let mut probe_dir = dir;
    while !probe_dir.as_os_str().is_empty() && !probe_dir.exists() {
        match probe_dir.parent() {
            Some(p) => probe_dir = p,
            None => break,
        }
    }
    let probe_dir = if probe_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        probe_dir
    };
    if !probe_dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", probe_dir.display()),
            ),
        ));
    }
    let probe = probe_dir.join(format!(".conformal-gpu-probe.{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| Error::io(dir, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Fails early when the `--json FILE` destination cannot be written.
pub fn check_json_target(json: &Option<String>) -> Result<()> {
    match json.as_deref() {
        None | Some("-") => Ok(()),
        Some(file) => {
            let path = Path::new(file);
            if path.is_dir() {
                return Err(Error::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::IsADirectory,
                        "--json FILE is a directory",
                    ),
                ));
            }
            let parent = path.parent().unwrap_or(Path::new(""));
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            if !parent.is_dir() {
                return Err(Error::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("directory {} does not exist", parent.display()),
                    ),
                ));
            }
            check_writable_dir(parent).map_err(|e| match e {
                Error::Io { source, .. } => Error::io(path, source),
                other => other,
            })
        }
    }
}

pub fn open_device(device: &str) -> Result<(Engine, DeviceChoice)> {
    let choice: DeviceChoice = device.parse()?;
    // GPU timestamp queries (kernel time in the report's meta) cost a little: on request.
    let timestamps = std::env::var("CONFORMAL_GPU_TIMESTAMPS").is_ok_and(|v| v == "1");
    let (engine, note) = Engine::open(choice, timestamps)?;
    eprintln!("{note}");
    Ok((engine, choice))
}

/// A spinner on stderr for a phase that may take more than a second (hidden when stderr
/// is not a terminal).
pub fn phase(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
        pb.set_style(style);
    }
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Parses alpha levels as written (decimal strings; DESIGN.md 2.5 uses them as given).
pub fn parse_alphas(list: &[String]) -> Result<Vec<f64>> {
    list.iter()
        .map(|a| {
            let v: f64 = a
                .trim()
                .parse()
                .map_err(|_| Error::Invalid(format!("--alpha {a:?} is not a number")))?;
            crate::methods::quantile::check_alpha(v)?;
            Ok(v)
        })
        .collect()
}
