//! `cot`: COT of one target and of each of its groups without holding its rows
//! ([`crate::methods::cot_files`], the driver Python's `Calibration.cot_files` calls too);
//! this parses, shows passes and prints.

use std::path::{Path, PathBuf};

use crate::cli::commands::read_calibration;
use crate::cli::outputs::{check_json_target, emit_json, open_device};
use crate::methods::cot_files::{cot_of_files, TWO_CLASS_PASSES};
use crate::{with_backend, Result};

/// `cot --calibration CAL FILE...`: COT raw and ts of the target made of `data`.
pub fn run_cot(
    calibration: &Path,
    data: &[PathBuf],
    device: &str,
    sample_rows: Option<u64>,
    json: &Option<String>,
) -> Result<()> {
    check_json_target(json)?;
    let cal = read_calibration(calibration)?;
    let bar = if cal.k == 2 {
        indicatif::ProgressBar::new(TWO_CLASS_PASSES)
    } else {
        indicatif::ProgressBar::no_length()
    };
    let template = if cal.k == 2 {
        "{bar:30} {pos}/{len} passes [{elapsed}]"
    } else {
        "{spinner} {pos} passes [{elapsed}]"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    let (engine, choice) = open_device(device)?;
    let name = calibration.display().to_string();
    let value = with_backend!(&engine, choice, |b| {
        cot_of_files(b, &cal, &name, data, sample_rows, &|| bar.inc(1))
    })?;
    bar.finish_and_clear();
    let groups: usize = value["groups"].as_object().map_or(0, |g| {
        g.values().filter_map(|l| l.as_array()).map(Vec::len).sum()
    });
    eprintln!(
        "COT of {} rows: raw {:.6}, ts {:.6} ({groups} groups; {} passes)",
        value["n"],
        value["cot"]["raw"].as_f64().unwrap_or(f64::NAN),
        value["cot"]["ts"].as_f64().unwrap_or(f64::NAN),
        value["passes"]
    );
    emit_json(&value, json)
}
