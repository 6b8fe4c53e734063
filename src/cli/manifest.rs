//! The sweep's manifest form (DESIGN.md 3, "The sweep"): a TOML file naming each cell's
//! source and targets, and evaluate's options. Read whole and checked before any cell
//! runs: an unknown key, a missing field, a duplicate cell, two targets of one name, an
//! empty glob or a named target that is not a prediction set is an error naming the
//! manifest, the cell's line and the field (exit code 2, bad input).
//!
//! ```toml
//! [options]
//! alpha = [0.1, 0.05]
//! bootstrap = 0
//! exclude = ["train", "id_*"]
//!
//! [[cell]]
//! dataset = "camelyon"
//! model = "densenet"
//! run = 1
//! source = "densenet/1/id_val.npz"
//! targets = ["densenet/1/*.npz", { name = "test", files = ["t0.npz", "t1.npz"] }]
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::cli::args::SourceOpts;
use crate::cli::dataset::set_name;
use crate::methods::files::FileJob;
use crate::{Error, Result};

/// One cell of a manifest: its names, its source and targets (absolute or relative to
/// the working directory), and the line of its `[[cell]]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestCell {
    pub dataset: String,
    pub model: String,
    pub run: String,
    pub line: usize,
    /// The source file (its set name is its stem).
    pub source: PathBuf,
    /// Targets: `(set name, files)`, one file, or a target's parts in order.
    pub targets: Vec<(String, Vec<PathBuf>)>,
}

/// A manifest read and checked.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// Cells in the manifest's order.
    pub cells: Vec<ManifestCell>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    options: Option<toml::Table>,
    #[serde(default)]
    cell: Vec<Spanned<RawCell>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCell {
    dataset: String,
    model: String,
    run: RunName,
    source: String,
    targets: Vec<RawTarget>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RunName {
    Int(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawTarget {
    Path(String),
    Parts(RawParts),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParts {
    name: String,
    files: Vec<String>,
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Whether `s` is a glob pattern (has `*`, `?` or `[`).
fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl Manifest {
    /// Reads `path`, applies its `[options]` to `opts` (an option given on the command
    /// line, named in `explicit`, wins) and checks every cell.
    pub fn read(path: &Path, opts: &mut SourceOpts, explicit: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let where_ = path.display().to_string();
        let raw: Raw = toml::from_str(&text).map_err(|e| {
            Error::Invalid(format!(
                "manifest {where_}: {}",
                e.to_string().replace('\n', " ")
            ))
        })?;
        if let Some(options) = &raw.options {
            apply_options(&where_, options, opts, explicit)?;
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut cells = Vec::new();
        let mut seen = BTreeSet::new();
        for spanned in &raw.cell {
            let line = line_of(&text, spanned.span().start);
            let c = spanned.get_ref();
            let bad = |field: &str, msg: String| {
                Error::Invalid(format!(
                    "manifest {where_}, cell at line {line}, field {field}: {msg}"
                ))
            };
            let run = match &c.run {
                RunName::Int(i) => i.to_string(),
                RunName::Text(s) => s.clone(),
            };
            for (field, v) in [("dataset", &c.dataset), ("model", &c.model), ("run", &run)] {
                if v.is_empty() || v.contains(['/', '\\']) || v.starts_with('.') {
                    return Err(bad(
                        field,
                        format!("{v:?} is not a usable name (empty, a path, or hidden)"),
                    ));
                }
            }
            if !seen.insert((c.dataset.clone(), c.model.clone(), run.clone())) {
                return Err(bad(
                    "run",
                    format!("cell {}/{}/{run} listed twice", c.dataset, c.model),
                ));
            }
            let source = base.join(&c.source);
            probe(&source).map_err(|e| bad("source", e))?;
            let source_name = set_name(&source);
            let mut targets: Vec<(String, Vec<PathBuf>)> = Vec::new();
            let mut add = |name: String, files: Vec<PathBuf>| -> Result<()> {
                if name == source_name || targets.iter().any(|(n, _)| *n == name) {
                    return Err(bad(
                        "targets",
                        format!("two sets named {name:?} (a target's name is its file stem)"),
                    ));
                }
                targets.push((name, files));
                Ok(())
            };
            for t in &c.targets {
                match t {
                    RawTarget::Path(p) if is_glob(p) => {
                        let pattern = base.join(p);
                        let mut found: Vec<PathBuf> = glob::glob(&pattern.to_string_lossy())
                            .map_err(|e| bad("targets", format!("glob {p:?}: {e}")))?
                            .filter_map(|r| r.ok())
                            .filter(|f| f.is_file() && !same_file(f, &source))
                            .collect();
                        found.sort();
                        if found.is_empty() {
                            return Err(bad("targets", format!("glob {p:?} matches no file")));
                        }
                        for f in found {
                            probe(&f).map_err(|e| bad("targets", e))?;
                            add(set_name(&f), vec![f])?;
                        }
                    }
                    RawTarget::Path(p) => {
                        let f = base.join(p);
                        probe(&f).map_err(|e| bad("targets", e))?;
                        add(set_name(&f), vec![f])?;
                    }
                    RawTarget::Parts(parts) => {
                        if parts.name.is_empty() || parts.name.contains(['/', '\\']) {
                            return Err(bad("targets.name", format!("{:?}", parts.name)));
                        }
                        if parts.files.is_empty() {
                            return Err(bad(
                                "targets.files",
                                format!("target {:?} lists no file", parts.name),
                            ));
                        }
                        let mut files = Vec::new();
                        for p in &parts.files {
                            let f = base.join(p);
                            probe(&f).map_err(|e| bad("targets.files", e))?;
                            files.push(f);
                        }
                        add(parts.name.clone(), files)?;
                    }
                }
            }
            if targets.is_empty() {
                return Err(bad("targets", "no target".into()));
            }
            cells.push(ManifestCell {
                dataset: c.dataset.clone(),
                model: c.model.clone(),
                run,
                line,
                source,
                targets,
            });
        }
        if cells.is_empty() {
            return Err(Error::Invalid(format!(
                "manifest {where_}: no [[cell]] table"
            )));
        }
        Ok(Manifest { cells })
    }
}

/// Same file (by canonical path; a glob never matches the source).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// A prediction set's file, or why not (naming the file).
fn probe(path: &Path) -> std::result::Result<(), String> {
    if !path.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    if path.extension().is_none_or(|e| e != "npz") {
        return Err(format!("{} is not an .npz prediction set", path.display()));
    }
    FileJob::open(path, &set_name(path), None)
        .map(drop)
        .map_err(|e| format!("{} is not a prediction set: {e}", path.display()))
}

/// `[options]` onto `opts`: evaluate's long names (`-` or `_`), each skipped when the
/// command line gave it (`explicit` holds clap's argument ids).
fn apply_options(
    where_: &str,
    options: &toml::Table,
    opts: &mut SourceOpts,
    explicit: &[String],
) -> Result<()> {
    // Every key is checked; then the command line's values are put back.
    let cli = opts.clone();
    for (key, value) in options {
        let id = key.replace('-', "_");
        let bad =
            |msg: &str| Error::Invalid(format!("manifest {where_}, [options], field {key}: {msg}"));
        let float = || {
            value
                .as_float()
                .or_else(|| value.as_integer().map(|i| i as f64))
                .ok_or_else(|| bad("expected a number"))
        };
        let uint = || {
            value
                .as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .ok_or_else(|| bad("expected an integer >= 0"))
        };
        let boolean = || value.as_bool().ok_or_else(|| bad("expected true or false"));
        let strings = || -> Result<Vec<String>> {
            match value {
                toml::Value::String(s) => Ok(s.split(',').map(|x| x.trim().to_string()).collect()),
                toml::Value::Array(a) => a
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s.clone()),
                        _ => Err(bad("expected strings")),
                    })
                    .collect(),
                _ => Err(bad("expected a string or a list of strings")),
            }
        };
        match id.as_str() {
            "alpha" => {
                opts.alpha = match value {
                    toml::Value::Array(a) => a
                        .iter()
                        .map(|v| {
                            v.as_float()
                                .map(|x| format!("{x}"))
                                .ok_or_else(|| bad("expected a list of numbers"))
                        })
                        .collect::<Result<_>>()?,
                    toml::Value::Float(x) => vec![format!("{x}")],
                    toml::Value::String(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
                    _ => return Err(bad("expected a number or a list of numbers")),
                }
            }
            "temperature" => opts.temperature = Some(float()?),
            "temperature_source" => {
                opts.temperature_source = Some(
                    value
                        .as_str()
                        .ok_or_else(|| bad("expected a set name"))?
                        .to_string(),
                )
            }
            "bootstrap" => opts.bootstrap = uint()? as usize,
            "confidence" => opts.confidence = float()?,
            "seed" => opts.seed = uint()?,
            "score" => opts.score = strings()?.join(","),
            "randomize" => opts.randomize = boolean()?,
            "raps_lambda" => opts.raps_lambda = float()?,
            "raps_k_reg" => opts.raps_k_reg = uint()? as usize,
            "saps_lambda" => opts.saps_lambda = float()?,
            "class_conditional" => opts.class_conditional = boolean()?,
            "exclude" => opts.exclude = strings()?,
            "cot_reference" => opts.cot_reference = boolean()?,
            "cot_prior" => {
                opts.cot_prior = value
                    .as_str()
                    .ok_or_else(|| bad("expected source or uniform"))?
                    .to_string()
            }
            "source" => return Err(bad("the source is named per cell (cell.source)")),
            _ => return Err(bad("not an option of evaluate")),
        }
    }
    for id in explicit {
        match id.as_str() {
            "alpha" => opts.alpha = cli.alpha.clone(),
            "temperature" | "temperature_source" => {
                opts.temperature = cli.temperature;
                opts.temperature_source = cli.temperature_source.clone();
            }
            "bootstrap" => opts.bootstrap = cli.bootstrap,
            "confidence" => opts.confidence = cli.confidence,
            "seed" => opts.seed = cli.seed,
            "score" => opts.score = cli.score.clone(),
            "randomize" => opts.randomize = cli.randomize,
            "raps_lambda" => opts.raps_lambda = cli.raps_lambda,
            "raps_k_reg" => opts.raps_k_reg = cli.raps_k_reg,
            "saps_lambda" => opts.saps_lambda = cli.saps_lambda,
            "class_conditional" => opts.class_conditional = cli.class_conditional,
            "exclude" => opts.exclude = cli.exclude.clone(),
            "cot_reference" => opts.cot_reference = cli.cot_reference,
            "cot_prior" => opts.cot_prior = cli.cot_prior.clone(),
            _ => {}
        }
    }
    if opts.temperature.is_some() && opts.temperature_source.is_some() {
        return Err(Error::Invalid(format!(
            "manifest {where_}, [options]: temperature and temperature-source exclude each other"
        )));
    }
    Ok(())
}
