//! Command-line arguments (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "conformal-gpu",
    version,
    about = "Accuracy estimation under shift with conformal prediction, on the GPU and the CPU",
    long_about = "Accuracy estimation under shift with conformal prediction, on the GPU and the CPU.\n\n\
                  With no subcommand: the main job. Generates the Camelyon17-shaped dataset \
                  (scale 1, seed 0) into a cache directory unless it is there, evaluates every \
                  estimator on it, prints a table and writes report.json and plots into \
                  ./conformal-gpu-report; then sweeps the default grid (generate --grid: 4 \
                  datasets x 3 models x 5 runs) into ./conformal-gpu-sweep and prints its \
                  MAE summary and where CPC and ATC differ."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The dataset and what the calibration is fitted with (`evaluate` and `calibrate`).
#[derive(clap::Args, Debug, Clone)]
pub struct SourceOpts {
    /// Directory of `.npz` prediction sets (`sweep`: the layout root, or a manifest
    /// `.toml` file, also as `--manifest`).
    #[arg(long, alias = "manifest")]
    pub data: PathBuf,
    /// Name of the source (calibration) set in DIR.
    #[arg(long, default_value = "id_val")]
    pub source: String,
    /// Miscoverage levels, comma-separated.
    #[arg(
        long,
        default_value = "0.1",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    pub alpha: Vec<String>,
    /// Use this temperature instead of fitting one.
    #[arg(
        long,
        conflicts_with = "temperature_source",
        allow_negative_numbers = true
    )]
    pub temperature: Option<f64>,
    /// Fit the temperature on this set of DIR instead of the source.
    #[arg(long)]
    pub temperature_source: Option<String>,
    /// Poisson-bootstrap replicates for confidence intervals (0 = none).
    #[arg(long, default_value_t = 0)]
    pub bootstrap: usize,
    /// Confidence of the bootstrap intervals.
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Seed of the bootstrap weights and of the randomised scores' draws: same seed,
    /// same intervals and sets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Conformal scores, comma-separated: lac, aps, raps, saps, topk.
    #[arg(long, default_value = "lac")]
    pub score: String,
    /// Randomised scores (one uniform draw per row from --seed), or deterministic.
    #[arg(
        long,
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub randomize: bool,
    /// RAPS penalty per rank past --raps-k-reg (>= 0).
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    pub raps_lambda: f64,
    /// RAPS ranks without penalty.
    #[arg(long, default_value_t = 1)]
    pub raps_k_reg: usize,
    /// SAPS weight of a rank (> 0).
    #[arg(long, default_value_t = 0.2, allow_negative_numbers = true)]
    pub saps_lambda: f64,
    /// Also report Mondrian (per-class) thresholds for every score.
    #[arg(long)]
    pub class_conditional: bool,
    /// Also report COT and COTT as the authors' code computes them (COT-ref, COTT-ref:
    /// their 10,000-row batches and seed replayed; ts, target level, out of the MAE).
    #[arg(long)]
    pub cot_reference: bool,
    /// The reference mode's label shares: source (the source's, their WILDS setting) or
    /// uniform (their CIFAR/ImageNet setting).
    #[arg(long, default_value = "source", requires = "cot_reference")]
    pub cot_prior: String,
    /// The reference mode with a source of more than 10,000 rows: a 1-D integer `.npy` of
    /// the 10,000 source rows their COTT threshold used (`torch.manual_seed(0);
    /// torch.randperm(n)[:10000]`); without it COTT-ref is null.
    #[arg(long, value_name = "FILE", requires = "cot_reference")]
    pub cott_reference_subsample: Option<PathBuf>,
    /// Targets kept out of the MAE rows (and the sweep's summaries): comma-separated
    /// globs of target names (`train,id_*`).
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,
}

/// Shared by every subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Where to run: auto (hardware GPU if present, else CPU), gpu (any adapter), cpu.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print the JSON report on stdout (`--json` or `--json -`) or write it to FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the seeded Camelyon17-shaped synthetic dataset (WILDS split sizes), or with
    /// --grid the sweep's grid (datasets x models x 5 runs) in the layout form.
    Generate {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Multiplies every split size (100 gives ~350M predictions).
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        scale: f64,
        /// Seed: same seed, same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write the grid OUT/DATASET/MODEL/RUN/*.npz: camelyon17 (K = 2), cifar10
        /// (K = 10), fitzpatrick17k (K = 114), dmist (K = 4, one target per scanner), each
        /// with models densenet121, resnet50, vit_b16 and runs 0..4.
        #[arg(long)]
        grid: bool,
        /// With --grid: only these datasets (comma-separated).
        #[arg(long, value_delimiter = ',', requires = "grid")]
        datasets: Vec<String>,
    },
    /// Evaluate every cell of ROOT/DATASET/MODEL/RUN/ (evaluate's options) into
    /// DIR/cells/, then results.csv, summary.csv, timings.csv and failures.csv; resumable.
    Sweep {
        /// `--data ROOT` (cells are ROOT/DATASET/MODEL/RUN/) and evaluate's options.
        #[command(flatten)]
        source: SourceOpts,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Where to run: auto (hardware GPU if present, else CPU), gpu (any adapter), cpu.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Estimate every target's accuracy (AC, DoC, ATC-MC, ATC-NE, CPC, COT, COTT, with and without TS).
    Evaluate {
        #[command(flatten)]
        source: SourceOpts,
        /// Write report.json, plots (and --rows files) into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write per-row outputs per target (`<name>_rows.npz` in --out).
        #[arg(long)]
        rows: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Fit everything the source decides, once; write it as a calibration file.
    Calibrate {
        #[command(flatten)]
        source: SourceOpts,
        /// Where to run: auto, gpu, cpu.
        #[arg(long, default_value = "auto")]
        device: String,
        /// The calibration file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Count one target file (or a row range of it) under a calibration; write a tally.
    Tally {
        /// The calibration file (from `calibrate`).
        #[arg(long)]
        calibration: PathBuf,
        /// The target `.npz`.
        #[arg(long)]
        data: PathBuf,
        /// Target name (tallies merge by name); default: the file stem.
        #[arg(long)]
        name: Option<String>,
        /// Only rows START:END (half-open, 0-based); the offset is kept.
        #[arg(long, value_name = "START:END")]
        rows: Option<String>,
        /// The file holds rows N.. of a larger target (tally each part of a target under
        /// one --name with its offset; with --rows A:B the rows are N+A..N+B).
        #[arg(long, value_name = "N", default_value_t = 0)]
        row_offset: usize,
        /// Where to run: auto, gpu, cpu.
        #[arg(long, default_value = "auto")]
        device: String,
        /// The tally file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Merge tallies (by target name) under their calibration; report as `evaluate` does.
    Merge {
        /// The calibration file the tallies were made with.
        #[arg(long)]
        calibration: PathBuf,
        /// Tally files.
        #[arg(required = true)]
        tallies: Vec<PathBuf>,
        /// Print the JSON report on stdout (`--json` or `--json -`) or write it to FILE.
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        json: Option<String>,
        /// Write report.json and plots into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Confidence of the bootstrap intervals (default: the calibration's).
        #[arg(long)]
        confidence: Option<f64>,
        /// Targets kept out of the MAE rows: comma-separated globs of target names.
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<String>,
    },
    /// COT of one target and its groups without holding its rows (its files re-read once
    /// a pass: K = 2 seven passes a mode, one chunk in memory; K > 2 the dual's rounds,
    /// two to four passes a mode, a sample and the rows near class boundaries in
    /// memory), under a calibration: the target's COT in a report, bit for bit; the
    /// target's shards in any order give the same value.
    Cot {
        /// The calibration file (from `calibrate`).
        #[arg(long)]
        calibration: PathBuf,
        /// The target's `.npz` files: one file, or its shards.
        #[arg(required = true)]
        data: Vec<PathBuf>,
        /// Where to run the passes: auto, gpu, cpu (K > 2: the collect passes; the samples
        /// and solves on the host).
        #[arg(long, default_value = "auto")]
        device: String,
        /// K > 2: rows the first pass samples from the largest set, the target (default
        /// 2^21 / K, at least 4096; its groups with the same stride); a set may then hold
        /// four samples' worth of rows near its class boundaries.
        #[arg(long)]
        sample_rows: Option<u64>,
        /// Print the JSON result on stdout (`--json` or `--json -`) or write it to FILE.
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        json: Option<String>,
    },
    /// COT over shards as files, step 1 (a command a shard): its rows and group ids.
    CotCensus {
        /// The calibration file (from `calibrate`).
        #[arg(long)]
        calibration: PathBuf,
        /// The shard's `.npz` file.
        file: PathBuf,
        /// Where to write the census (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// COT over shards as files, step 2 (after the censuses and after every pass): the
    /// next pass's plan (prints `pass N`) or, after the last, the result (prints `done`).
    CotPlan {
        /// The calibration file (from `calibrate`).
        #[arg(long)]
        calibration: PathBuf,
        /// Every shard's census, in the target's row order (shard i is the i-th).
        #[arg(long = "census", required = true, num_args = 1..)]
        census: Vec<PathBuf>,
        /// The merged part of each pass so far, in pass order.
        #[arg(long = "part", num_args = 1..)]
        parts: Vec<PathBuf>,
        /// K > 2: the rounds' sample (as for `cot`; the same at every call).
        #[arg(long)]
        sample_rows: Option<u64>,
        /// Where the next pass's plan goes (removed after the last pass).
        #[arg(long)]
        plan: PathBuf,
        /// Where the result goes after the last pass (removed while passes remain).
        #[arg(long)]
        json: PathBuf,
    },
    /// COT over shards as files, step 3 (a command a shard and pass): the shard's part
    /// of the plan's pass.
    CotPass {
        /// The pass's plan (from `cot-plan`).
        #[arg(long)]
        plan: PathBuf,
        /// The shard's number (its census's place in `cot-plan --census`).
        #[arg(long)]
        shard: usize,
        /// The shard's `.npz` file (the one its census read).
        file: PathBuf,
        /// Where to write the part (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Where to run the pass: auto, gpu, cpu.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// COT over shards as files, step 4: a pass's parts merged into one (any order).
    CotMerge {
        /// The parts (from `cot-pass` or `cot-merge`).
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        /// Where to write the merged part.
        #[arg(long)]
        out: PathBuf,
    },
    /// Conformal quantiles qhat(alpha) of a 1-D score array (`.npy`, float32 or float64).
    Quantile {
        /// The scores.
        #[arg(long)]
        scores: PathBuf,
        /// Miscoverage levels, comma-separated.
        #[arg(long, default_value = "0.1", value_delimiter = ',')]
        alpha: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Fit the temperature on a labelled set; report NLL and ECE before and after.
    Temperature {
        /// The `.npz` prediction set (every label known).
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}
