//! `sweep` on the command line (README "The sweep"): every cell's report equals `evaluate
//! --json` of its directory (all but `meta`, `timings_ms`, `device`); `results.csv` and
//! `summary.csv` are the documented long form and summary of those reports; a rerun keeps
//! current cells and rewrites the CSV files byte for byte (removing a killed run's
//! temporary files); a changed input redoes its cell; a failing cell is listed and the
//! others are done (exit 7); a held lock refuses a second sweep (exit 8).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_conformal-gpu"));
    c.env("RUST_BACKTRACE", "1").env("XDG_RUNTIME_DIR", "/tmp");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run binary")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A layout of one dataset, models `a` (runs 0, 1, 10: numeric order puts 10 last) and
/// `b` (run 0), each cell a small generated Camelyon-shaped set (seeded per cell).
fn layout(root: &Path) -> Vec<(String, String, String)> {
    let mut cells = Vec::new();
    for (i, (model, run)) in [("a", "0"), ("a", "1"), ("a", "10"), ("b", "0")]
        .into_iter()
        .enumerate()
    {
        let dir = root.join("cam").join(model).join(run);
        let seed = (i + 1).to_string();
        let o = run_ok(&[
            "generate",
            "--out",
            s(&dir),
            "--scale",
            "0.002",
            "--seed",
            &seed,
        ]);
        drop(o);
        cells.push(("cam".to_string(), model.to_string(), run.to_string()));
    }
    cells
}

#[track_caller]
fn run_ok(args: &[&str]) -> Output {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Two scores and Mondrian entries: CPC-APS enters the method order, conformal.csv has
/// four entries per level.
const OPTS: [&str; 9] = [
    "--device",
    "cpu",
    "--alpha",
    "0.1,0.05",
    "--bootstrap",
    "8",
    "--score",
    "aps,lac",
    "--class-conditional",
];

fn sweep(root: &Path, out: &Path) -> Output {
    let mut args = vec!["sweep", "--data", s(root), "--out", s(out)];
    args.extend(OPTS);
    run(&args)
}

fn without_run_fields(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for k in ["meta", "timings_ms", "device"] {
            o.remove(k);
        }
    }
    v
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn csv_rows(p: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn cell_path(out: &Path, c: &(String, String, String)) -> PathBuf {
    out.join("cells")
        .join(&c.0)
        .join(&c.1)
        .join(format!("{}.json", c.2))
}

const METHODS: [&str; 8] = [
    "AC", "DoC", "ATC-MC", "ATC-NE", "CPC", "CPC-APS", "COT", "COTT",
];

/// A target's entries in the CSV files' order: `(kind, id, entry)`, the target itself
/// (kind and id empty), then its groups by kind and numeric id.
fn entries_of(t: &Value) -> Vec<(String, String, &Value)> {
    let mut entries = vec![(String::new(), String::new(), t)];
    for kind in ["hospital", "slide"] {
        let mut gs: Vec<&Value> = t["groups"][kind].as_array().unwrap().iter().collect();
        gs.sort_by_key(|g| g["id"].as_i64());
        entries.extend(
            gs.into_iter()
                .map(|g| (kind.to_string(), g["id"].to_string(), g)),
        );
    }
    entries
}

/// The sweep's score estimators, recomputed: per model and mode, a target's estimate is
/// the least-squares line of truth on the score over the labelled targets of the model's
/// runs whose name differs (none below 3 points); each appears right after the target's
/// report methods. And scores.csv's in-sample R^2.
fn check_sweep_estimates(
    scores_csv: &Path,
    rows: &[Vec<String>],
    cells: &[(String, String, String)],
    reports: &[Value],
) {
    let ols = |pts: &[(f64, f64)]| -> Option<(f64, f64)> {
        if pts.len() < 3 || pts.iter().all(|p| p.0 == pts[0].0) {
            return None; // too few points, or a constant score
        }
        let n = pts.len() as f64;
        let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
        let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        Some((sxy / sxx, my - sxy / sxx * mx))
    };
    let mut checked = 0;
    for (method, score) in [("NuclearNorm", "nuclear_norm"), ("MaNo", "mano")] {
        for mode in ["raw", "ts"] {
            for (i, c) in cells.iter().enumerate() {
                let points: Vec<(String, f64, f64)> = cells
                    .iter()
                    .zip(reports)
                    .filter(|(d, _)| d.1 == c.1)
                    .flat_map(|(_, v)| v["targets"].as_array().unwrap().iter())
                    .filter_map(|t| {
                        Some((
                            t["name"].as_str()?.to_string(),
                            t["scores"][mode][score].as_f64()?,
                            t["true_accuracy"].as_f64()?,
                        ))
                    })
                    .collect();
                for t in reports[i]["targets"].as_array().unwrap() {
                    let name = t["name"].as_str().unwrap();
                    let fit: Vec<(f64, f64)> = points
                        .iter()
                        .filter(|p| p.0 != name)
                        .map(|p| (p.1, p.2))
                        .collect();
                    let x = t["scores"][mode][score].as_f64().unwrap();
                    let want = ols(&fit).map(|(b, a)| a + b * x);
                    let row = rows
                        .iter()
                        .find(|r| {
                            r[1] == c.1
                                && r[2] == c.2
                                && r[3] == mode
                                && r[4] == name
                                && r[5].is_empty()
                                && r[7] == method
                        })
                        .unwrap();
                    match want {
                        Some(w) => {
                            let got: f64 = row[10].parse().unwrap();
                            assert!((got - w).abs() < 1e-12, "{c:?} {mode} {name} {method}");
                            checked += 1;
                        }
                        None => assert_eq!(row[10], "", "{c:?} {mode} {name}: too few points"),
                    }
                }
            }
        }
    }
    assert!(checked > 0);
    // scores.csv: model a's raw nuclear-norm fit over all 9 labelled points.
    let scores = csv_rows(scores_csv);
    assert_eq!(
        scores[0].join(","),
        "dataset,model,mode,score,points,r2,spearman"
    );
    let pts: Vec<(f64, f64)> = cells
        .iter()
        .zip(reports)
        .filter(|(c, _)| c.1 == "a")
        .flat_map(|(_, v)| v["targets"].as_array().unwrap().iter())
        .filter_map(|t| {
            Some((
                t["scores"]["raw"]["nuclear_norm"].as_f64()?,
                t["true_accuracy"].as_f64()?,
            ))
        })
        .collect();
    let (b, a) = ols(&pts).unwrap();
    let my = pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64;
    let ss_tot: f64 = pts.iter().map(|p| (p.1 - my).powi(2)).sum();
    let ss_res: f64 = pts.iter().map(|p| (p.1 - a - b * p.0).powi(2)).sum();
    let row = scores
        .iter()
        .find(|r| r[1] == "a" && r[2] == "raw" && r[3] == "nuclear_norm")
        .unwrap();
    assert_eq!(row[4], pts.len().to_string());
    let r2: f64 = row[5].parse().unwrap();
    assert!((r2 - (1.0 - ss_res / ss_tot)).abs() < 1e-12);
    let rho: f64 = row[6].parse().unwrap();
    assert!((-1.0..=1.0).contains(&rho));
}

#[test]
fn sweep_cells_equal_evaluate_and_the_csv_files_follow_the_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("root"), tmp.path().join("out"));
    let cells = layout(&root);
    let o = sweep(&root, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Each cell's report is evaluate's.
    let mut reports = Vec::new();
    for c in &cells {
        let cell = read_json(&cell_path(&out, c));
        assert!(cell["meta"]["fingerprint"].is_string());
        let json = tmp.path().join("e.json");
        let dir = root.join(&c.0).join(&c.1).join(&c.2);
        let mut args = vec!["evaluate", "--data", s(&dir), "--json", s(&json)];
        args.extend(OPTS);
        run_ok(&args);
        assert_eq!(
            without_run_fields(read_json(&json)),
            without_run_fields(cell.clone()),
            "{c:?}"
        );
        reports.push(cell);
    }

    // results.csv: the header, then per cell (runs in numeric order), mode, target (by
    // name), the target's row before its groups, one row per method in order.
    let rows = csv_rows(&out.join("results.csv"));
    assert_eq!(
        rows[0].join(","),
        "dataset,model,run,mode,target,group_kind,group_id,method,n,n_labelled,estimate,true_accuracy,error,abs_error,lo,hi"
    );
    let mut want = Vec::new();
    for (c, v) in cells.iter().zip(&reports) {
        let mut targets: Vec<&Value> = v["targets"].as_array().unwrap().iter().collect();
        targets.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        for mode in ["raw", "ts"] {
            for t in &targets {
                let entries = entries_of(t);
                for (kind, id, e) in entries {
                    for m in METHODS {
                        let est = e["estimates"][mode][m].as_f64();
                        let truth = e["true_accuracy"].as_f64();
                        let f = |x: Option<f64>| x.map(|x| format!("{x}")).unwrap_or_default();
                        let err = est.zip(truth).map(|(a, b)| a - b);
                        let ci = &e["ci"][mode][m];
                        want.push(vec![
                            c.0.clone(),
                            c.1.clone(),
                            c.2.clone(),
                            mode.to_string(),
                            t["name"].as_str().unwrap().to_string(),
                            kind.clone(),
                            id.clone(),
                            m.to_string(),
                            e["n"].to_string(),
                            e["n_labelled"].to_string(),
                            f(est),
                            f(truth),
                            f(err),
                            f(err.map(f64::abs)),
                            f(ci[0].as_f64()),
                            f(ci[1].as_f64()),
                        ]);
                    }
                }
            }
        }
    }
    // The report's methods' rows, exactly; the sweep's own (NuclearNorm, MaNo) follow
    // each target's rows and are checked below.
    let sweep_methods = ["GDE", "NuclearNorm", "MaNo"];
    let report_rows: Vec<Vec<String>> = rows[1..]
        .iter()
        .filter(|r| !sweep_methods.contains(&r[7].as_str()))
        .cloned()
        .collect();
    assert_eq!(report_rows.len(), want.len());
    assert_eq!(&report_rows[..], &want[..]);
    check_sweep_estimates(&out.join("scores.csv"), &rows, &cells, &reports);
    assert_eq!(
        report_rows.iter().filter(|r| r[2] == "10").count(),
        want.len() / 4
    );
    // Numeric run order: run 10 after run 1.
    let runs: Vec<&str> = rows[1..].iter().map(|r| r[2].as_str()).collect();
    assert!(runs.iter().position(|&r| r == "10") > runs.iter().rposition(|&r| r == "1"));

    // conformal.csv: the same order, one row per conformal entry of the report.
    let conformal = csv_rows(&out.join("conformal.csv"));
    assert_eq!(
        conformal[0].join(","),
        "dataset,model,run,mode,target,group_kind,group_id,score,class_conditional,alpha,n,n_labelled,qhat,coverage,mean_set_size,singleton_rate,empty_rate,sscv,covgap"
    );
    let mut want = Vec::new();
    for (c, v) in cells.iter().zip(&reports) {
        let mut targets: Vec<&Value> = v["targets"].as_array().unwrap().iter().collect();
        targets.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        for mode in ["raw", "ts"] {
            for t in &targets {
                let entries = entries_of(t);
                for (kind, id, e) in entries {
                    let list = e["conformal"][mode].as_array().unwrap();
                    assert_eq!(list.len(), 8, "2 scores x (marginal, Mondrian) x 2 levels");
                    for x in list {
                        let f = |k: &str| x[k].as_f64().map(|v| format!("{v}")).unwrap_or_default();
                        want.push(vec![
                            c.0.clone(),
                            c.1.clone(),
                            c.2.clone(),
                            mode.to_string(),
                            t["name"].as_str().unwrap().to_string(),
                            kind.clone(),
                            id.clone(),
                            x["score"].as_str().unwrap().to_string(),
                            x["class_conditional"].to_string(),
                            f("alpha"),
                            e["n"].to_string(),
                            e["n_labelled"].to_string(),
                            f("qhat"),
                            f("coverage"),
                            f("mean_set_size"),
                            f("singleton_rate"),
                            f("empty_rate"),
                            f("sscv"),
                            f("covgap"),
                        ]);
                    }
                }
            }
        }
    }
    assert_eq!(&conformal[1..], &want[..]);
    assert!(conformal[1..]
        .iter()
        .any(|r| r[7] == "aps" && r[8] == "true"));

    // summary.csv: model a's `ts` MAE of CPC is the mean and sample std of its 3 runs'.
    let summary = csv_rows(&out.join("summary.csv"));
    assert_eq!(
        summary[0].join(","),
        "dataset,model,mae_key,method,runs,mae_mean,mae_std,bias_mean,bias_std"
    );
    let row = summary
        .iter()
        .find(|r| r[1] == "a" && r[2] == "ts" && r[3] == "CPC")
        .unwrap();
    let maes: Vec<f64> = reports[..3]
        .iter()
        .map(|v| v["mae"]["ts"]["CPC"].as_f64().unwrap())
        .collect();
    let mean = maes.iter().sum::<f64>() / 3.0;
    let std = (maes.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 2.0).sqrt();
    assert_eq!(row[4], "3");
    assert_eq!(row[5], format!("{mean}"));
    assert_eq!(row[6], format!("{std}"));
    let b = summary
        .iter()
        .find(|r| r[1] == "b" && r[2] == "ts" && r[3] == "CPC")
        .unwrap();
    assert_eq!((b[4].as_str(), b[6].as_str()), ("1", ""), "one run: no std");

    // paired.csv: over the 4 (model, run) cells of dataset cam, `ts` MAE of CPC minus
    // CPC-APS: mean, 95% Student-t interval (t(0.975, 3) = 3.182446305284263, from the
    // tables), wins, losses, ties.
    let paired = csv_rows(&out.join("paired.csv"));
    assert_eq!(
        paired[0].join(","),
        "dataset,mae_key,method_a,method_b,cells,mean_diff,lo,hi,wins,losses,ties"
    );
    let row = paired
        .iter()
        .find(|r| r[1] == "ts" && r[2] == "CPC" && r[3] == "CPC-APS")
        .unwrap();
    let pairs: Vec<(f64, f64)> = reports
        .iter()
        .map(|v| {
            let m = &v["mae"]["ts"];
            (m["CPC"].as_f64().unwrap(), m["CPC-APS"].as_f64().unwrap())
        })
        .collect();
    let d: Vec<f64> = pairs.iter().map(|(a, b)| a - b).collect();
    let mean = d.iter().sum::<f64>() / 4.0;
    let sd = (d.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 3.0).sqrt();
    let half = 3.182446305284263 * sd / 2.0;
    assert_eq!(row[4], "4");
    assert_eq!(row[5], format!("{mean}"));
    let lo: f64 = row[6].parse().unwrap();
    let hi: f64 = row[7].parse().unwrap();
    assert!((lo - (mean - half)).abs() < 1e-12 && (hi - (mean + half)).abs() < 1e-12);
    let wins = pairs.iter().filter(|(a, b)| a < b).count();
    let losses = pairs.iter().filter(|(a, b)| a > b).count();
    assert_eq!(
        (row[8].clone(), row[9].clone()),
        (wins.to_string(), losses.to_string())
    );
    assert_eq!(row[10], (4 - wins - losses).to_string());
    // Pairs in method order, a before b; no pair of a method with itself.
    let all: Vec<&str> = METHODS
        .iter()
        .copied()
        .chain(["GDE", "NuclearNorm", "MaNo"])
        .collect();
    let order = |m: &str| all.iter().position(|x| *x == m).unwrap();
    assert!(
        paired[1..].iter().any(|r| r[3] == "NuclearNorm"),
        "the sweep's own methods pair too"
    );
    assert!(paired[1..].iter().all(|r| order(&r[2]) < order(&r[3])));
    // The scatter plots of each mode.
    for mode in ["raw", "ts"] {
        let svg = std::fs::read_to_string(out.join(format!("scatter_cam_{mode}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("CPC-APS") && svg.contains("model b"));
    }

    // A rerun keeps every cell (same bytes) and rewrites the CSV files byte for byte,
    // removing what a killed run left.
    let before: Vec<Vec<u8>> = cells
        .iter()
        .map(|c| std::fs::read(cell_path(&out, c)).unwrap())
        .collect();
    let results = std::fs::read(out.join("results.csv")).unwrap();
    let leftover = out.join(".results.csv.tmp.1.0");
    std::fs::write(&leftover, b"half").unwrap();
    std::fs::remove_file(out.join("summary.csv")).unwrap();
    assert!(sweep(&root, &out).status.success());
    assert!(!leftover.exists());
    for (c, b) in cells.iter().zip(&before) {
        assert_eq!(
            &std::fs::read(cell_path(&out, c)).unwrap(),
            b,
            "{c:?} redone"
        );
    }
    assert_eq!(std::fs::read(out.join("results.csv")).unwrap(), results);
    assert!(out.join("summary.csv").exists());

    // A changed input redoes its cell only.
    let a0 = root.join("cam/a/0/test.npz");
    std::fs::copy(root.join("cam/b/0/test.npz"), &a0).unwrap();
    assert!(sweep(&root, &out).status.success());
    assert_ne!(
        std::fs::read(cell_path(&out, &cells[0])).unwrap(),
        before[0]
    );
    assert_eq!(
        std::fs::read(cell_path(&out, &cells[1])).unwrap(),
        before[1]
    );
}

#[test]
fn failed_cells_are_listed_and_a_held_lock_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("root"), tmp.path().join("out"));
    let cells = layout(&root);
    assert!(sweep(&root, &out).status.success());
    // Cell b/0 breaks: its source is no longer a prediction set.
    std::fs::write(root.join("cam/b/0/id_val.npz"), b"not a zip").unwrap();
    let o = sweep(&root, &out);
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("cam/b/0"));
    let failures = csv_rows(&out.join("failures.csv"));
    assert_eq!(failures.len(), 2);
    assert_eq!(&failures[1][..4], &["cam", "b", "0", "4"]);
    assert!(!cell_path(&out, &cells[3]).exists(), "stale report removed");
    assert!(cell_path(&out, &cells[0]).exists());
    let rows = csv_rows(&out.join("results.csv"));
    assert!(rows[1..].iter().all(|r| r[1] == "a"));

    // Another process holds the lock: exit 8, nothing changed.
    let lock = std::fs::File::create(out.join(".sweep.lock")).unwrap();
    lock.lock().unwrap();
    let o = sweep(&root, &out);
    assert_eq!(
        o.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    drop(lock);
}

/// kill -9 at several points of a sweep (seeded delays from just after the start to
/// well into the cells), then a rerun: results.csv and summary.csv equal a clean sweep's
/// byte for byte, and no temporary file is left.
#[test]
fn killed_sweeps_rerun_to_the_same_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    layout(&root);
    let clean = tmp.path().join("clean");
    assert!(sweep(&root, &clean).status.success());
    let out = tmp.path().join("killed");
    let mut x = 0x9e37_79b9u64;
    for _ in 0..6 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay_ms = 5 + (x >> 33) % 300;
        let mut args = vec!["sweep", "--data", s(&root), "--out", s(&out)];
        args.extend(OPTS);
        let mut child = bin()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    let o = sweep(&root, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["results.csv", "summary.csv"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(clean.join(f)).unwrap(),
            "{f}"
        );
    }
    let mut stack = vec![out.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".tmp."), "left over: {name}");
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

/// GDE: three runs of one model on the same rows (`test` with seeded noise added to each
/// run's logits, the other sets identical): each run's GDE estimate of a target is its
/// mean agreement with the other two, recomputed here from the files; identical sets
/// agree everywhere (1); pair counts land in `pairs/`, and a damaged pair file is
/// recomputed to the same results.
#[test]
fn gde_is_the_mean_agreement_with_the_other_runs() {
    use conformal_gpu::data::npz::{load_npz, save_npz};
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("root"), tmp.path().join("out"));
    let base = root.join("cam").join("m").join("0");
    run_ok(&[
        "generate",
        "--out",
        s(&base),
        "--scale",
        "0.002",
        "--seed",
        "4",
    ]);
    let mut yhat: Vec<Vec<usize>> = Vec::new();
    for run in 0..3u64 {
        let dir = root.join("cam").join("m").join(run.to_string());
        if run > 0 {
            std::fs::create_dir_all(&dir).unwrap();
            for e in std::fs::read_dir(&base).unwrap().flatten() {
                std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
            }
        }
        let path = dir.join("test.npz");
        let mut set = load_npz(&path).unwrap();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(run + 10);
        set.logits
            .mapv_inplace(|z| z + r.random_range(-1.5f32..1.5));
        save_npz(&path, &set, true).unwrap();
        let set = load_npz(&path).unwrap();
        yhat.push(
            set.logits
                .rows()
                .into_iter()
                .map(|row| {
                    (0..row.len()).fold(0, |best, k| if row[k] > row[best] { k } else { best })
                })
                .collect(),
        );
    }
    let sweep = || {
        run_ok(&[
            "sweep",
            "--data",
            s(&root),
            "--out",
            s(&out),
            "--device",
            "cpu",
        ])
    };
    sweep();
    let agree = |a: usize, b: usize| {
        let n = yhat[a].len();
        (0..n).filter(|&i| yhat[a][i] == yhat[b][i]).count() as f64 / n as f64
    };
    let rows = csv_rows(&out.join("results.csv"));
    let gde = |run: &str, target: &str, mode: &str| -> String {
        rows.iter()
            .find(|r| {
                r[2] == run && r[3] == mode && r[4] == target && r[5].is_empty() && r[7] == "GDE"
            })
            .unwrap()[10]
            .clone()
    };
    for (run, others) in [(0, [1, 2]), (1, [0, 2]), (2, [0, 1])] {
        let want = (agree(run, others[0]) + agree(run, others[1])) / 2.0;
        for mode in ["raw", "ts"] {
            let got: f64 = gde(&run.to_string(), "test", mode).parse().unwrap();
            assert!(
                (got - want).abs() < 1e-12,
                "run {run} {mode}: {got} vs {want}"
            );
            assert_eq!(gde(&run.to_string(), "ood_val", mode), "1");
        }
    }
    assert!(agree(0, 1) < 1.0, "the noise changes some predictions");
    let pair = out.join("pairs/cam/m/test/0__1.json");
    let text = std::fs::read_to_string(&pair).unwrap();
    let before = std::fs::read(out.join("results.csv")).unwrap();
    // A damaged pair file (more agreements than rows) is recomputed.
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["agree"] = serde_json::json!(1_000_000_000u64);
    std::fs::write(&pair, v.to_string()).unwrap();
    sweep();
    assert_eq!(std::fs::read(out.join("results.csv")).unwrap(), before);
    assert_eq!(std::fs::read_to_string(&pair).unwrap(), text);
}

/// `generate --grid`: the documented layout (datasets x 3 models x 5 runs), the same bytes
/// for the same seed, the scanner targets one file each; its sweep runs every cell with
/// every target and its groups; an unknown dataset is refused before anything is written.
#[test]
fn the_grid_generates_the_layout_and_sweeps() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for dir in [&a, &b] {
        // Scale 0.02: DMIST's sets are 40 and 50 rows (10+ per class of K = 4),
        // Fitzpatrick's 38 and 78: most of K = 114 classes have no source row, which every
        // estimator must survive.
        run_ok(&[
            "generate",
            "--grid",
            "--datasets",
            "dmist,fitzpatrick17k",
            "--scale",
            "0.02",
            "--seed",
            "3",
            "--out",
            s(dir),
        ]);
    }
    let mut files = Vec::new();
    for d in ["dmist", "fitzpatrick17k"] {
        for m in ["densenet121", "resnet50", "vit_b16"] {
            for r in 0..5 {
                let dir = a.join(d).join(m).join(r.to_string());
                let mut names: Vec<String> = std::fs::read_dir(&dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                let want: &[&str] = if d == "dmist" {
                    &[
                        "id_val.npz",
                        "scanner_0.npz",
                        "scanner_1.npz",
                        "scanner_2.npz",
                        "scanner_3.npz",
                    ]
                } else {
                    &["atlas_dermatologico.npz", "id_val.npz", "test.npz"]
                };
                assert_eq!(names, want, "{}", dir.display());
                files.extend(names.iter().map(|n| dir.join(n)));
            }
        }
    }
    for f in &files {
        let twin = b.join(f.strip_prefix(&a).unwrap());
        assert_eq!(std::fs::read(f).unwrap(), std::fs::read(twin).unwrap());
    }
    assert!(!a.join("camelyon17").exists() && !a.join("cifar10").exists());

    let out = tmp.path().join("out");
    let o = sweep(&a, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = csv_rows(&out.join("results.csv"));
    let header = &rows[0];
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    for (d, targets, kinds) in [
        (
            "dmist",
            &["scanner_0", "scanner_1", "scanner_2", "scanner_3"][..],
            "hospital",
        ),
        (
            "fitzpatrick17k",
            &["atlas_dermatologico", "test"][..],
            "hospital",
        ),
    ] {
        for t in targets {
            let cells: std::collections::BTreeSet<(&str, &str)> = rows[1..]
                .iter()
                .filter(|r| r[col("dataset")] == d && r[col("target")] == *t)
                .map(|r| (r[col("model")].as_str(), r[col("run")].as_str()))
                .collect();
            assert_eq!(cells.len(), 15, "{d}/{t}: every model and run");
            assert!(rows[1..].iter().any(|r| r[col("dataset")] == d
                && r[col("target")] == *t
                && r[col("group_kind")] == kinds
                && r[col("method")] == "CPC"
                && !r[col("estimate")].is_empty()));
        }
    }

    let bad = tmp.path().join("bad");
    let o = run(&[
        "generate",
        "--grid",
        "--datasets",
        "dmist,mnist",
        "--out",
        s(&bad),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"mnist\""));
    assert!(!bad.join("dmist").exists(), "nothing written");
}

/// Options that would fail every cell fail the sweep at once (exit 2), before `--out` is
/// made.
#[test]
fn bad_options_fail_before_any_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    layout(&root);
    for (flag, value, said) in [
        ("--alpha", "0.1,1.5", "alpha = 1.5"),
        ("--score", "lac,nonsense", "nonsense"),
        ("--temperature", "-1", "temperature"),
        ("--exclude", "[", "--exclude"),
    ] {
        let out = tmp.path().join("out");
        let o = run(&[
            "sweep",
            "--data",
            s(&root),
            "--out",
            s(&out),
            "--device",
            "cpu",
            flag,
            value,
        ]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(said),
            "{flag} {value}"
        );
        assert!(!out.exists(), "{flag} {value}: nothing written");
    }
}
