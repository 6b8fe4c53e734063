//! `conformal_gpu._native`: the PyO3 + rust-numpy binding of the `conformal-gpu` crate.
//!
//! Arrays come in without a copy when they are C-contiguous and of the crate's own dtype
//! (float32 logits, int32 labels for a tally, int64 group ids); anything else is converted
//! once, as the crate's `.npz` reader converts (float16 exactly, float64 rounded to the
//! nearest float32). Every computation runs with the GIL released. Errors are the crate's,
//! raised as typed Python exceptions (see `errors`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use conformal_gpu::backend::Backend;
use conformal_gpu::data::npz::load_npz_hashed;
use conformal_gpu::data::PredictionSet;
use conformal_gpu::data::{binary_rows, LogitsShape};
use conformal_gpu::device::{DeviceChoice, Engine};
use conformal_gpu::methods::bootstrap::{check_confidence, BootstrapOptions};
use conformal_gpu::methods::calibration::{check_k, Calibration, CalibrationOptions, Temperature};
use conformal_gpu::methods::cot_passes::{CotPasses, PassPart, PassPlan, ShardCensus};
use conformal_gpu::methods::cot_reference::{CotPrior, CotReferenceOptions};
use conformal_gpu::methods::evaluate::{
    self as evaluation, Evaluation, EvaluationJob, Timings, TARGET_CHUNK_ROWS,
};
use conformal_gpu::methods::files::FileJob;
use conformal_gpu::methods::sets::{parse_scores, SetOptions};
use conformal_gpu::methods::tally::Tally;
use conformal_gpu::methods::target::{Labels as TargetLabels, TargetArrays, TargetInput};
use conformal_gpu::report::{self, InputFile, Meta};
use conformal_gpu::{with_backend, Error};
use ndarray::{Array1, Array2};
use numpy::{
    Element, PyArray1, PyArray2, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{
    PyFileNotFoundError, PyOSError, PyPermissionError, PyRuntimeError, PyUserWarning,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

mod errors {
    use pyo3::create_exception;
    use pyo3::exceptions::{PyRuntimeError, PyValueError};
    create_exception!(
        conformal_gpu,
        InvalidInput,
        PyValueError,
        "Bad arguments or data (the command line's exit codes 2 and 5): a bad alpha or temperature, NaN logits, a label out of range, lengths that disagree, tallies that do not fit together."
    );
    create_exception!(
        conformal_gpu,
        MalformedFile,
        InvalidInput,
        "A file that is not what it claims (exit code 4): a damaged .npz, calibration or tally."
    );
    create_exception!(
        conformal_gpu,
        GpuError,
        PyRuntimeError,
        "The GPU path failed (exit code 6): no adapter, out of memory, device lost."
    );
}
use errors::{GpuError, InvalidInput, MalformedFile};

/// The crate's error as a Python exception with its message and `exit_code`.
fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let code = e.exit_code();
    let msg = e.to_string();
    let err = match (&e, code) {
        (Error::Io { source, .. }, _) => match source.kind() {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
            std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
            _ => PyOSError::new_err(msg),
        },
        (_, 4) => MalformedFile::new_err(msg),
        (_, 6) => GpuError::new_err(msg),
        (_, 2) | (_, 5) => InvalidInput::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    };
    let _ = err.value(py).setattr("exit_code", code);
    err
}

trait IntoPy<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for conformal_gpu::Result<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

// ---------------------------------------------------------------- devices

/// Engines are opened once per process and choice (opening a GPU context, or probing for
/// one under `auto`, costs far more than a small call).
type EngineSlot = Arc<Engine>;
static ENGINES: OnceLock<Mutex<BTreeMap<u8, EngineSlot>>> = OnceLock::new();

fn parse_device(device: &str) -> conformal_gpu::Result<DeviceChoice> {
    device.parse()
}

fn engine(choice: DeviceChoice) -> conformal_gpu::Result<EngineSlot> {
    let key = match choice {
        DeviceChoice::Auto => 0,
        DeviceChoice::Gpu => 1,
        DeviceChoice::Cpu => 2,
    };
    let map = ENGINES.get_or_init(|| Mutex::new(BTreeMap::new()));
    let mut map = map.lock().map_err(|_| invalid("engine cache poisoned"))?;
    if let Some(e) = map.get(&key) {
        return Ok(Arc::clone(e));
    }
    let (engine, _note) = Engine::open(choice, false)?;
    let engine = Arc::new(engine);
    map.insert(key, Arc::clone(&engine));
    Ok(engine)
}

/// Runs `f` with the GIL released, on the engine of `device`.
macro_rules! on_device {
    ($py:expr, $device:expr, |$b:ident| $body:expr) => {{
        let choice = parse_device($device).py_err($py)?;
        $py.detach(|| -> conformal_gpu::Result<_> {
            let eng = engine(choice)?;
            with_backend!(&*eng, choice, |$b| $body)
        })
        .py_err($py)
    }};
}

// ---------------------------------------------------------------- arrays

/// Float32 rows: borrowed from a C-contiguous float32 array, or converted.
enum Rows<'py> {
    Borrowed(PyReadonlyArrayDyn<'py, f32>),
    Owned(Vec<f32>),
}

struct Logits<'py> {
    data: Rows<'py>,
    n: usize,
    k: usize,
}

impl Logits<'_> {
    fn slice(&self) -> &[f32] {
        match &self.data {
            // C-contiguous checked on the way in.
            Rows::Borrowed(a) => a.as_slice().unwrap_or(&[]),
            Rows::Owned(v) => v,
        }
    }
}

fn np_asarray<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let np = obj.py().import("numpy")?;
    np.call_method1("asarray", (obj,))
}

fn dtype_name(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("dtype")
        .and_then(|d| d.str())
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Values of any real array as f32 in C order (f16 exact, f64 rounded as the .npz reader
/// rounds).
fn convert_f32(arr: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f32>> {
    fn logical<T: Element + Copy>(a: &Bound<'_, PyAny>, f: impl Fn(T) -> f32) -> Option<Vec<f32>> {
        let a = a.cast::<PyArrayDyn<T>>().ok()?.readonly();
        Some(a.as_array().iter().map(|&v| f(v)).collect())
    }
    if let Some(v) = logical::<f32>(arr, |v| v) {
        return Ok(v);
    }
    if let Some(v) = logical::<f64>(arr, |v| v as f32) {
        return Ok(v);
    }
    if let Some(v) = logical::<half::f16>(arr, |v| v.to_f32()) {
        return Ok(v);
    }
    Err(to_py(
        arr.py(),
        invalid(format!(
            "{what}: dtype {} is not a float (float16, float32 or float64)",
            dtype_name(arr)
        )),
    ))
}

/// `[N, K]` logits, or `[N]` / `[N, 1]` binary logits read as rows `(0, z)`: the crate's
/// one rule (`data::LogitsShape`), as the .npz readers read them.
fn logits_arg<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Logits<'py>> {
    let arr = np_asarray(obj)?;
    let shape: Vec<usize> = arr.getattr("shape")?.extract()?;
    let bad_shape = || {
        to_py(
            obj.py(),
            invalid(format!(
                "{what}: logits must be [N, K] (or [N] binary logits), not shape {shape:?}"
            )),
        )
    };
    match LogitsShape::of(&shape) {
        LogitsShape::Rows { n, k } => {
            if let Ok(a) = arr.cast::<PyArrayDyn<f32>>() {
                if a.is_c_contiguous() {
                    return Ok(Logits {
                        data: Rows::Borrowed(a.readonly()),
                        n,
                        k,
                    });
                }
            }
            let v = convert_f32(&arr, what)?;
            Ok(Logits {
                data: Rows::Owned(v),
                n,
                k,
            })
        }
        LogitsShape::Binary { n } => {
            let z = convert_f32(&arr, what)?;
            Ok(Logits {
                data: Rows::Owned(binary_rows(z).collect()),
                n,
                k: 2,
            })
        }
        LogitsShape::TooFewClasses { k } => Err(to_py(
            obj.py(),
            Error::TooFewClasses {
                what: format!("{what}: logits"),
                k,
            },
        )),
        LogitsShape::Unreadable => Err(bad_shape()),
    }
}

fn is_int_dtype(arr: &Bound<'_, PyAny>) -> bool {
    arr.getattr("dtype")
        .and_then(|d| d.getattr("kind"))
        .and_then(|k| k.extract::<String>())
        .map(|k| k == "i" || k == "u")
        .unwrap_or(false)
}

/// A 1-D integer array as i64 (always a copy: the crate's sets own their arrays).
fn ids_i64(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    let arr = np_asarray(obj)?;
    let ndim: usize = arr.getattr("ndim")?.extract()?;
    if ndim != 1 || !is_int_dtype(&arr) {
        return Err(to_py(
            obj.py(),
            invalid(format!(
                "{what}: must be a 1-D integer array, not {}-D {}",
                ndim,
                dtype_name(&arr)
            )),
        ));
    }
    if let Ok(a) = arr.cast::<PyArrayDyn<i64>>() {
        return Ok(a.readonly().as_array().iter().copied().collect());
    }
    if let Ok(a) = arr.cast::<PyArrayDyn<i32>>() {
        return Ok(a.readonly().as_array().iter().map(|&v| v as i64).collect());
    }
    let a = arr.call_method1("astype", ("int64",))?;
    Ok(a.cast::<PyArrayDyn<i64>>()?
        .readonly()
        .as_array()
        .iter()
        .copied()
        .collect())
}

/// Group ids: borrowed when C-contiguous int64, else converted.
enum Ids<'py> {
    Borrowed(PyReadonlyArrayDyn<'py, i64>),
    Owned(Vec<i64>),
}

impl Ids<'_> {
    fn slice(&self) -> &[i64] {
        match self {
            Ids::Borrowed(a) => a.as_slice().unwrap_or(&[]),
            Ids::Owned(v) => v,
        }
    }
}

fn ids_arg<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Ids<'py>> {
    let arr = np_asarray(obj)?;
    if let Ok(a) = arr.cast::<PyArrayDyn<i64>>() {
        if a.ndim() == 1 && a.is_c_contiguous() {
            return Ok(Ids::Borrowed(a.readonly()));
        }
    }
    Ok(Ids::Owned(ids_i64(obj, what)?))
}

/// Labels of a tally: borrowed when C-contiguous int32; int64 narrowed to int32 (values
/// outside int32 are reported as the crate reports a label out of range).
enum Labels<'py> {
    Borrowed(PyReadonlyArrayDyn<'py, i32>),
    Wide(Vec<i64>),
}

fn labels_arg<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Labels<'py>> {
    let arr = np_asarray(obj)?;
    if let Ok(a) = arr.cast::<PyArrayDyn<i32>>() {
        if a.ndim() == 1 && a.is_c_contiguous() {
            return Ok(Labels::Borrowed(a.readonly()));
        }
    }
    Ok(Labels::Wide(ids_i64(obj, what)?))
}

fn groups_arg<'py>(
    groups: Option<&Bound<'py, PyAny>>,
    what: &str,
) -> PyResult<(Option<Ids<'py>>, Option<Ids<'py>>)> {
    let Some(g) = groups else {
        return Ok((None, None));
    };
    if g.is_none() {
        return Ok((None, None));
    }
    let g = g.cast::<PyDict>().map_err(|_| {
        to_py(
            g.py(),
            invalid(format!(
                "{what}: groups must be a dict such as {{\"slide\": ids, \"hospital\": ids}}"
            )),
        )
    })?;
    let (mut hospital, mut slide) = (None, None);
    for (key, value) in g.iter() {
        let key: String = key.extract()?;
        match key.as_str() {
            "hospital" => hospital = Some(ids_arg(&value, &format!("{what}: hospital"))?),
            "slide" => slide = Some(ids_arg(&value, &format!("{what}: slide"))?),
            other => {
                return Err(to_py(
                    g.py(),
                    invalid(format!(
                        "{what}: group array {other:?}: the groups are \"hospital\" and \"slide\""
                    )),
                ))
            }
        }
    }
    Ok((hospital, slide))
}

/// A whole labelled set (the source, or a temperature set), owned as the crate wants it.
fn prediction_set(
    name: &str,
    logits: &Bound<'_, PyAny>,
    labels: Option<&Bound<'_, PyAny>>,
    groups: Option<&Bound<'_, PyAny>>,
) -> PyResult<PredictionSet> {
    let py = logits.py();
    let l = logits_arg(logits, name)?;
    let data = match l.data {
        Rows::Borrowed(a) => a.as_slice()?.to_vec(),
        Rows::Owned(v) => v,
    };
    let arr =
        Array2::from_shape_vec((l.n, l.k), data).map_err(|e| to_py(py, invalid(e.to_string())))?;
    let mut set = PredictionSet::new(name, arr);
    if let Some(y) = labels.filter(|y| !y.is_none()) {
        set.labels = Some(Array1::from(ids_i64(y, &format!("{name}: labels"))?));
    }
    let (hospital, slide) = groups_arg(groups, name)?;
    set.hospital = hospital.map(|h| Array1::from(h.slice().to_vec()));
    set.slide = slide.map(|s| Array1::from(s.slice().to_vec()));
    Ok(set)
}

fn alphas_arg(alphas: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
    if let Ok(a) = alphas.extract::<f64>() {
        return Ok(vec![a]);
    }
    alphas.extract::<Vec<f64>>()
}

/// The bootstrap keywords (`bootstrap`, `confidence`, `seed`) as the crate's options,
/// checked by the crate (`BootstrapOptions::validate`) before any work. Python integers
/// are unbounded, so a negative or too large B or seed is refused here (the command
/// line's parser refuses them there), as `InvalidInput` naming the argument.
fn bootstrap_arg(
    py: Python<'_>,
    bootstrap: i128,
    confidence: f64,
    seed: i128,
) -> PyResult<BootstrapOptions> {
    let replicates = usize::try_from(bootstrap).map_err(|_| {
        to_py(
            py,
            invalid(format!(
                "bootstrap {bootstrap}: the number of replicates must be >= 0 (0 = no intervals)"
            )),
        )
    })?;
    let seed = u64::try_from(seed).map_err(|_| {
        to_py(
            py,
            invalid(format!("seed {seed}: must be an integer in 0..=2^64-1")),
        )
    })?;
    let options = BootstrapOptions {
        replicates,
        seed,
        confidence,
    };
    options.validate().py_err(py)?;
    Ok(options)
}

/// `score=`: a name, a comma list or a list of names.
fn score_names(py: Python<'_>, score: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = score.extract::<String>() {
        return Ok(parse_scores(&s));
    }
    score.extract::<Vec<String>>().map_err(|_| {
        to_py(
            py,
            invalid("score: expected a name, a comma list or a list of names"),
        )
    })
}

/// The conformal options of `fit` and `evaluate` (`score` a comma list or a list of
/// names), checked: a bad name or parameter is a ValueError naming it.
#[allow(clippy::too_many_arguments)]
fn sets_arg(
    py: Python<'_>,
    score: Option<&Bound<'_, PyAny>>,
    randomize: bool,
    seed: u64,
    raps_lambda: f64,
    raps_k_reg: i128,
    saps_lambda: f64,
    class_conditional: bool,
) -> PyResult<SetOptions> {
    let scores = if let Some(score) = score.filter(|s| !s.is_none()) {
        score_names(py, score)?
    } else {
        vec!["lac".to_string()]
    };
    let raps_k_reg = usize::try_from(raps_k_reg).map_err(|_| {
        to_py(
            py,
            invalid(format!("raps_k_reg {raps_k_reg}: must be an integer >= 0")),
        )
    })?;
    let options = SetOptions {
        scores,
        randomize,
        seed,
        raps_lambda,
        raps_k_reg,
        saps_lambda,
        class_conditional,
    };
    options.parsed().py_err(py)?;
    Ok(options)
}

/// `cot_reference=` (None/False: off; True or "source": the source's label shares;
/// "uniform") and `cott_reference_subsample=` (the source rows of their COTT threshold).
fn cot_reference_arg(
    py: Python<'_>,
    cot_reference: Option<&Bound<'_, PyAny>>,
    subsample: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<CotReferenceOptions>> {
    let bad = || {
        to_py(
            py,
            invalid("cot_reference: expected None, a bool, \"source\" or \"uniform\""),
        )
    };
    let prior = match cot_reference.filter(|c| !c.is_none()) {
        None => None,
        Some(c) => {
            if let Ok(on) = c.extract::<bool>() {
                on.then_some(CotPrior::Source)
            } else if let Ok(name) = c.extract::<String>() {
                Some(CotPrior::parse(&name).map_err(|_| bad())?)
            } else {
                return Err(bad());
            }
        }
    };
    let subsample = subsample
        .filter(|s| !s.is_none())
        .map(|s| {
            s.extract::<Vec<i64>>()
                .map_err(|_| {
                    to_py(
                        py,
                        invalid("cott_reference_subsample: expected a sequence of row indices"),
                    )
                })?
                .into_iter()
                .map(|i| {
                    u64::try_from(i).map_err(|_| {
                        to_py(
                            py,
                            invalid(format!("cott_reference_subsample: index {i} is negative")),
                        )
                    })
                })
                .collect::<PyResult<Vec<u64>>>()
        })
        .transpose()?;
    match (prior, subsample) {
        (None, Some(_)) => Err(to_py(
            py,
            invalid("cott_reference_subsample is given but cot_reference is off"),
        )),
        (None, None) => Ok(None),
        (Some(prior), subsample) => Ok(Some(CotReferenceOptions { prior, subsample })),
    }
}

/// A serde_json value as the equivalent Python object (through `json.loads`, so floats
/// keep every bit of their shortest round-trip text).
fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(v).map_err(|e| to_py(py, invalid(e.to_string())))?;
    py.import("json")?.call_method1("loads", (text,))
}

// ---------------------------------------------------------------- Calibration

/// What the source decides, fitted once: see `Calibration.fit`.
#[pyclass(module = "conformal_gpu", name = "Calibration", frozen)]
struct PyCalibration {
    inner: Arc<Calibration>,
    /// The device it was fitted on (tallies default to it); `auto` after `from_json`.
    device: String,
}

/// One target's counts under a calibration: see `Calibration.tally`.
#[pyclass(module = "conformal_gpu", name = "Tally")]
struct PyTally {
    inner: Tally,
}

/// One shard's rows and group ids: see `Calibration.cot_census`.
#[pyclass(module = "conformal_gpu", name = "CotCensus", frozen)]
struct PyCotCensus {
    inner: ShardCensus,
}

/// The driver of COT's passes over shards: see `Calibration.cot_passes`.
#[pyclass(module = "conformal_gpu", name = "CotPasses")]
struct PyCotPasses {
    inner: CotPasses,
    calibration: String,
}

/// One pass of COT over shards, as each shard needs it: see `CotPasses.plan`.
#[pyclass(module = "conformal_gpu", name = "CotPassPlan", frozen)]
struct PyCotPassPlan {
    inner: PassPlan,
}

/// A pass's part over some shards, mergeable in any order: see `CotPassPlan.tally`.
#[pyclass(module = "conformal_gpu", name = "CotPassPart")]
struct PyCotPassPart {
    inner: PassPart,
}

/// `(f, (json,))` for `__reduce__`: `f` the package's `name` function.
fn reduce_json<'py>(py: Python<'py>, name: &str, json: String) -> PyResult<Bound<'py, PyTuple>> {
    let f = py.import("conformal_gpu")?.getattr(name)?;
    PyTuple::new(py, [f, (json,).into_pyobject(py)?.into_any()])
}

#[pymethods]
impl PyCotCensus {
    /// Rows of the shard.
    #[getter]
    fn rows(&self) -> u64 {
        self.inner.rows
    }

    /// The census as JSON.
    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        serde_json::to_string(&self.inner)
            .map_err(|e| to_py(py, invalid(format!("COT census: {e}"))))
    }

    /// A census read back from `to_json`.
    #[staticmethod]
    fn from_json(py: Python<'_>, text: &str) -> PyResult<Self> {
        let inner = serde_json::from_str(text)
            .map_err(|e| to_py(py, invalid(format!("COT census: not a census ({e})"))))?;
        Ok(PyCotCensus { inner })
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        reduce_json(py, "_cot_census_from_json", self.to_json(py)?)
    }
}

#[pymethods]
impl PyCotPasses {
    /// The next pass's plan; `None` when every pass is done.
    fn plan(&self) -> Option<PyCotPassPlan> {
        self.inner.plan().map(|inner| PyCotPassPlan { inner })
    }

    /// Takes the pass's part merged over every shard and takes the host's step between
    /// passes (the GIL released). A part of another pass, or one missing a shard, is an
    /// error that leaves the passes as they were.
    fn advance(&mut self, py: Python<'_>, part: &PyCotPassPart) -> PyResult<()> {
        let part = part.inner.clone();
        let inner = &mut self.inner;
        py.detach(|| inner.advance(part)).py_err(py)
    }

    /// Passes taken so far.
    #[getter]
    fn passes(&self) -> u64 {
        self.inner.passes()
    }

    /// Whether every pass is done.
    #[getter]
    fn done(&self) -> bool {
        self.inner.is_done()
    }

    /// COT raw and ts of the target and of each group, as `cot_files` gives them (less
    /// `files` and `device`): `calibration`, `n`, `passes`, `held_rows`, `cot`, `groups`.
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut v = self.inner.summary().py_err(py)?;
        v["calibration"] = self.calibration.clone().into();
        json_to_py(py, &v)
    }
}

#[pymethods]
impl PyCotPassPlan {
    /// The pass's number, from 1.
    #[getter]
    fn number(&self) -> u64 {
        self.inner.pass
    }

    /// Classes.
    #[getter]
    fn k(&self) -> usize {
        self.inner.k
    }

    /// Shard `shard`'s part of this pass: its logits (`[N, K]`, the rows of its census,
    /// in order) and its group ids (the census's arrays). The pass runs on `device`
    /// (default `auto`): K = 2's passes and K > 2's collect passes (K > 2's samples are
    /// kept on the host); the same part on every device.
    #[pyo3(signature = (shard, logits, groups = None, device = None))]
    fn tally(
        &self,
        py: Python<'_>,
        shard: usize,
        logits: &Bound<'_, PyAny>,
        groups: Option<&Bound<'_, PyAny>>,
        device: Option<&str>,
    ) -> PyResult<PyCotPassPart> {
        let what = format!("COT pass {}: shard {shard}", self.inner.pass);
        let l = logits_arg(logits, &what)?;
        if l.k != self.inner.k {
            return Err(to_py(
                py,
                Error::LengthMismatch {
                    what: format!("{what}: logits"),
                    detail: format!("K = {}, the plan's K = {}", l.k, self.inner.k),
                },
            ));
        }
        let (hospital, slide) = groups_arg(groups, &what)?;
        for (name, ids) in [("hospital", &hospital), ("slide", &slide)] {
            if let Some(ids) = ids {
                if ids.slice().len() != l.n {
                    return Err(to_py(
                        py,
                        Error::LengthMismatch {
                            what: format!("{what}: {name}"),
                            detail: format!("{} ids for {} rows", ids.slice().len(), l.n),
                        },
                    ));
                }
            }
        }
        let (logits, k) = (l.slice(), l.k);
        let groups = [
            hospital.as_ref().map(|h| h.slice()),
            slide.as_ref().map(|s| s.slice()),
        ];
        let device = device.unwrap_or("auto");
        let plan = &self.inner;
        let part = on_device!(py, device, |b| {
            let mut fold = plan.shard(shard)?;
            // In chunks, as a file is read (bounded device memory at K = 2).
            let rows = logits.len() / k;
            let mut at = 0;
            while at < rows {
                let end = (at + TARGET_CHUNK_ROWS).min(rows);
                let ids = groups.map(|g| g.map(|g| &g[at..end]));
                fold.add(b, &logits[at * k..end * k], ids)?;
                at = end;
            }
            fold.finish()
        })?;
        Ok(PyCotPassPart { inner: part })
    }

    /// The plan as JSON.
    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        self.inner.to_json().py_err(py)
    }

    /// A plan read back from `to_json` (its shapes checked).
    #[staticmethod]
    fn from_json(py: Python<'_>, text: &str) -> PyResult<Self> {
        Ok(PyCotPassPlan {
            inner: PassPlan::from_json(text).py_err(py)?,
        })
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        reduce_json(py, "_cot_pass_plan_from_json", self.to_json(py)?)
    }
}

#[pymethods]
impl PyCotPassPart {
    /// Adds another part of the same pass (other shards'; the GIL released); a shard in
    /// both, or a part of another plan, is an error that leaves this part as it was.
    fn merge(slf: &Bound<'_, Self>, other: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if slf.is(other) {
            return Err(to_py(
                py,
                invalid("COT pass: a part merged into itself (each shard once)"),
            ));
        }
        let mut this = slf.borrow_mut();
        let other = other.borrow();
        let (a, b) = (&mut this.inner, &other.inner);
        py.detach(|| a.merge(b)).py_err(py)
    }

    /// The shards folded in.
    #[getter]
    fn shards(&self) -> Vec<usize> {
        self.inner.shards.clone()
    }

    /// The part as JSON.
    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        self.inner.to_json().py_err(py)
    }

    /// A part read back from `to_json` (checked when merged and advanced).
    #[staticmethod]
    fn from_json(py: Python<'_>, text: &str) -> PyResult<Self> {
        Ok(PyCotPassPart {
            inner: PassPart::from_json(text).py_err(py)?,
        })
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        reduce_json(py, "_cot_pass_part_from_json", self.to_json(py)?)
    }
}

fn temperature_arg<'a>(
    temperature: &Bound<'_, PyAny>,
    other: &'a mut Option<PredictionSet>,
) -> PyResult<Temperature<'a>> {
    let py = temperature.py();
    if let Ok(s) = temperature.cast::<PyString>() {
        return match s.to_str()? {
            "fit" => Ok(Temperature::FitSource),
            other => Err(to_py(
                py,
                invalid(format!(
                    "temperature {other:?}: expected \"fit\", a number, or (logits, labels) of another set"
                )),
            )),
        };
    }
    if let Ok(t) = temperature.extract::<f64>() {
        conformal_gpu::methods::temperature::validate_temperature(t).py_err(py)?;
        return Ok(Temperature::Fixed(t));
    }
    if let Ok(t) = temperature.cast::<PyTuple>() {
        if t.len() == 2 {
            let set = prediction_set("temperature", &t.get_item(0)?, Some(&t.get_item(1)?), None)?;
            *other = Some(set);
            return Ok(Temperature::FitOn(other.as_ref().expect("just set")));
        }
    }
    Err(to_py(
        py,
        invalid(
            "temperature: expected \"fit\", a number, or a (logits, labels) tuple of another set",
        ),
    ))
}

#[allow(clippy::too_many_arguments)]
fn fit_calibration(
    py: Python<'_>,
    source: &PredictionSet,
    alphas: Vec<f64>,
    temperature: &Bound<'_, PyAny>,
    bootstrap: BootstrapOptions,
    sets: SetOptions,
    cot_reference: Option<CotReferenceOptions>,
    device: &str,
) -> PyResult<Calibration> {
    let mut other = None;
    let temperature = temperature_arg(temperature, &mut other)?;
    let options = CalibrationOptions {
        alphas,
        temperature,
        bootstrap,
        sets,
        cot_reference,
    };
    on_device!(py, device, |b| Calibration::fit(b, source, &options))
}

/// Borrowed numpy arrays of one target, alive while their [`TargetArrays`] view is used.
struct TargetNumpy<'py> {
    logits: Logits<'py>,
    labels: Option<Labels<'py>>,
    hospital: Option<Ids<'py>>,
    slide: Option<Ids<'py>>,
}

impl<'py> TargetNumpy<'py> {
    fn new(
        name: &str,
        logits: &Bound<'py, PyAny>,
        labels: Option<&Bound<'py, PyAny>>,
        groups: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Self> {
        let logits = logits_arg(logits, name)?;
        let labels = match labels.filter(|y| !y.is_none()) {
            Some(y) => Some(labels_arg(y, &format!("{name}: labels"))?),
            None => None,
        };
        let (hospital, slide) = groups_arg(groups, name)?;
        Ok(TargetNumpy {
            logits,
            labels,
            hospital,
            slide,
        })
    }

    /// The crate's view of these arrays as target `name`, its first row `row_offset`.
    fn view<'a>(&'a self, name: &'a str, row_offset: usize) -> PyResult<TargetArrays<'a>> {
        let labels = match &self.labels {
            Some(Labels::Borrowed(a)) => Some(TargetLabels::I32(a.as_slice()?)),
            Some(Labels::Wide(v)) => Some(TargetLabels::I64(v)),
            None => None,
        };
        Ok(TargetArrays {
            name,
            row_offset,
            k: self.logits.k,
            logits: self.logits.slice(),
            labels,
            hospital: self.hospital.as_ref().map(|h| h.slice()),
            slide: self.slide.as_ref().map(|s| s.slice()),
        })
    }
}

/// Tallies in-memory rows (borrowed) in chunks of `chunk` rows.
#[allow(clippy::too_many_arguments)]
fn tally_arrays(
    py: Python<'_>,
    cal: &Calibration,
    name: &str,
    logits: &Bound<'_, PyAny>,
    labels: Option<&Bound<'_, PyAny>>,
    groups: Option<&Bound<'_, PyAny>>,
    row_offset: usize,
    device: &str,
    chunk: usize,
) -> PyResult<Tally> {
    let arrays = TargetNumpy::new(name, logits, labels, groups)?;
    let view = arrays.view(name, row_offset)?;
    on_device!(py, device, |b| {
        check_k(name, view.k, cal)?;
        view.tally(b, cal, chunk)
    })
}

fn meta(inputs: Vec<InputFile>, device: &str) -> Meta {
    Meta {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: "python".into(),
        args: Vec::new(),
        seed: None,
        inputs,
        adapter: device.strip_prefix("gpu: ").map(str::to_string),
        ..Meta::default()
    }
}

/// The report dict of `cal` and its targets' merged tallies, as the CLI's JSON.
fn report_dict<'py>(
    py: Python<'py>,
    cal: &Calibration,
    tallies: &[(String, Tally)],
    timings: Timings,
    exclude: &[String],
) -> PyResult<Bound<'py, PyAny>> {
    let mut reports = Vec::with_capacity(tallies.len());
    let mut inputs = cal.inputs.clone();
    for (name, t) in tallies {
        reports.push(cal.report(name, t).py_err(py)?);
        inputs.extend(t.inputs.iter().cloned());
    }
    inputs.sort();
    inputs.dedup();
    let mut eval = Evaluation::assemble(cal, cal.device.clone(), reports, Vec::new(), timings);
    eval.exclude_from_mae(exclude).py_err(py)?;
    let value = report::to_json(&eval, &meta(inputs, &eval.device)).py_err(py)?;
    json_to_py(py, &value)
}

#[pymethods]
impl PyCalibration {
    /// Fits the calibration on a labelled source set; with `bootstrap` = B > 0 also the
    /// source's refit in B Poisson bootstrap replicates (weights seeded by `seed`), so
    /// its tallies carry per-replicate counts and its reports intervals at `confidence`.
    #[staticmethod]
    #[pyo3(signature = (logits, labels, alphas = None, temperature = None, device = "auto", groups = None, name = "source", bootstrap = 0, confidence = 0.95, seed = 0, score = None, randomize = false, raps_lambda = 0.01, raps_k_reg = 1, saps_lambda = 0.2, class_conditional = false, cot_reference = None, cott_reference_subsample = None))]
    #[allow(clippy::too_many_arguments)]
    fn fit(
        py: Python<'_>,
        logits: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
        alphas: Option<&Bound<'_, PyAny>>,
        temperature: Option<&Bound<'_, PyAny>>,
        device: &str,
        groups: Option<&Bound<'_, PyAny>>,
        name: &str,
        bootstrap: i128,
        confidence: f64,
        seed: i128,
        score: Option<&Bound<'_, PyAny>>,
        randomize: bool,
        raps_lambda: f64,
        raps_k_reg: i128,
        saps_lambda: f64,
        class_conditional: bool,
        cot_reference: Option<&Bound<'_, PyAny>>,
        cott_reference_subsample: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let cot_reference = cot_reference_arg(py, cot_reference, cott_reference_subsample)?;
        let alphas = alphas
            .map(alphas_arg)
            .transpose()?
            .unwrap_or_else(|| vec![0.1]);
        let boot = bootstrap_arg(py, bootstrap, confidence, seed)?;
        let sets = sets_arg(
            py,
            score,
            randomize,
            boot.seed,
            raps_lambda,
            raps_k_reg,
            saps_lambda,
            class_conditional,
        )?;
        let fit_str = PyString::new(py, "fit");
        let temperature = temperature.unwrap_or(fit_str.as_any());
        let source = prediction_set(name, logits, Some(labels), groups)?;
        let cal = fit_calibration(
            py,
            &source,
            alphas,
            temperature,
            boot,
            sets,
            cot_reference,
            device,
        )?;
        Ok(PyCalibration {
            inner: Arc::new(cal),
            device: device.to_string(),
        })
    }

    /// Per-row prediction sets: a boolean array [N, K] (True = the class is in the set)
    /// under the entry (score, class_conditional, alpha) of mode `mode` ("ts" or "raw");
    /// randomised scores draw by (seed, name, row_offset + row), as a tally does. The
    /// classes of the host's probabilities are ranked on `device` (default: the
    /// calibration's); every device gives the same sets.
    #[pyo3(signature = (logits, alpha = None, score = "lac", class_conditional = false, mode = "ts", name = "target", row_offset = 0, device = None))]
    #[allow(clippy::too_many_arguments)]
    fn predict_sets<'py>(
        &self,
        py: Python<'py>,
        logits: &Bound<'py, PyAny>,
        alpha: Option<f64>,
        score: &str,
        class_conditional: bool,
        mode: &str,
        name: &str,
        row_offset: u64,
        device: Option<&str>,
    ) -> PyResult<Bound<'py, PyArray2<bool>>> {
        let cal = self.inner.clone();
        let ts = match mode {
            "ts" => true,
            "raw" => false,
            other => {
                return Err(to_py(
                    py,
                    invalid(format!("mode {other:?}: expected \"ts\" or \"raw\"")),
                ))
            }
        };
        let alpha = alpha.unwrap_or(cal.alphas[0]);
        let l = logits_arg(logits, name)?;
        let (n, k) = (l.n, l.k);
        let slice = l.slice();
        let device = device.unwrap_or(&self.device);
        let out = on_device!(py, device, |b| {
            check_k(name, k, &cal)?;
            if let Some(i) = slice.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!("{name}: logits"),
                    row: row_offset as usize + i / k,
                    col: i % k,
                    value: slice[i],
                });
            }
            let sets = cal.sets.as_ref().ok_or_else(|| {
                invalid("this calibration has no prediction-set thresholds (written before scores)")
            })?;
            let t = if ts { cal.modes.ts.t } else { cal.modes.raw.t };
            sets.predict_sets(
                b,
                slice,
                k,
                t,
                ts,
                score,
                class_conditional,
                alpha,
                name,
                row_offset,
            )
        })?;
        let arr =
            Array2::from_shape_vec((n, k), out).map_err(|e| to_py(py, invalid(e.to_string())))?;
        Ok(PyArray2::from_owned_array(py, arr))
    }

    /// Conformal p-values (DESIGN.md 2.6) of every class of every row, float64 [N, K]:
    /// `(1 + #{i : s_i >= s(x, k)}) / (n + 1)` over the source's label scores of `score`
    /// at the temperature of `mode` ("ts" or "raw"), on `device` (default: the
    /// calibration's). LAC (`1 - p_k`) from the device's probabilities; the other scores
    /// of the calibration from the host's (the tallies'), their classes ranked on the
    /// device, their randomised draws keyed by `name` and `row_offset + i` as in a tally.
    #[pyo3(signature = (logits, mode = "ts", device = None, score = "lac", name = "target", row_offset = 0))]
    #[allow(clippy::too_many_arguments)]
    fn pvalues<'py>(
        &self,
        py: Python<'py>,
        logits: &Bound<'py, PyAny>,
        mode: &str,
        device: Option<&str>,
        score: &str,
        name: &str,
        row_offset: u64,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let m = match mode {
            "ts" => &self.inner.modes.ts,
            "raw" => &self.inner.modes.raw,
            other => {
                return Err(to_py(
                    py,
                    invalid(format!("mode {other:?}: expected \"ts\" or \"raw\"")),
                ))
            }
        };
        let l = logits_arg(logits, "logits")?;
        let (n, k) = (l.n, l.k);
        let slice = l.slice();
        let cal = Arc::clone(&self.inner);
        let device = device.unwrap_or(&self.device);
        let out = if score == "lac" {
            on_device!(py, device, |b| {
                check_k("logits", k, &cal)?;
                conformal_gpu::methods::row_outputs::pvalue_matrix(b, slice, k, m.t, &m.sorted_lac)
            })?
        } else {
            let ts = mode == "ts";
            on_device!(py, device, |b| {
                check_k("logits", k, &cal)?;
                if let Some(i) = slice.iter().position(|v| !v.is_finite()) {
                    return Err(Error::NonFinite {
                        what: "p-values: logits".into(),
                        row: i / k,
                        col: i % k,
                        value: slice[i],
                    });
                }
                let sets = cal.sets.as_ref().ok_or_else(|| {
                    invalid("this calibration was written before scores: LAC's p-values only")
                })?;
                sets.pvalues(b, slice, k, m.t, ts, score, name, row_offset)
            })?
        };
        let arr =
            Array2::from_shape_vec((n, k), out).map_err(|e| to_py(py, invalid(e.to_string())))?;
        Ok(PyArray2::from_owned_array(py, arr))
    }

    /// COT raw and ts of one target and of each of its groups, read from its `.npz`
    /// files (one file or its shards, any order) without holding the rows: the driver
    /// and the JSON of `conformal-gpu cot` (DESIGN.md 2.11's rounds), as a dict, with
    /// `calibration` the calibration's id. The passes run on `device` (K > 2: the
    /// collect passes; samples and solves on the host; `sample_rows`: the rounds'
    /// sample, default `max(2^21 / K, 4096)` rows).
    #[pyo3(signature = (files, device = None, sample_rows = None))]
    fn cot_files<'py>(
        &self,
        py: Python<'py>,
        files: Vec<PathBuf>,
        device: Option<&str>,
        sample_rows: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cal = self.inner.clone();
        let device = device.unwrap_or(&self.device);
        let value = on_device!(py, device, |b| {
            conformal_gpu::methods::cot_files::cot_of_files(
                b,
                &cal,
                &cal.id,
                &files,
                sample_rows,
                &|| {},
            )
        })?;
        json_to_py(py, &value)
    }

    /// One shard's census for COT's passes over shards (`cot_passes`): its rows (the
    /// logits' rows, K checked against the calibration's) and its group ids (`groups`:
    /// `{"hospital": ids, "slide": ids}`, either or both).
    #[pyo3(signature = (logits, groups = None))]
    fn cot_census(
        &self,
        py: Python<'_>,
        logits: &Bound<'_, PyAny>,
        groups: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyCotCensus> {
        let l = logits_arg(logits, "COT census")?;
        check_k("COT census", l.k, &self.inner).py_err(py)?;
        let (hospital, slide) = groups_arg(groups, "COT census")?;
        let mut census = ShardCensus::new([hospital.is_some(), slide.is_some()]);
        census
            .add(
                l.n,
                [
                    hospital.as_ref().map(|h| h.slice()),
                    slide.as_ref().map(|s| s.slice()),
                ],
            )
            .py_err(py)?;
        Ok(PyCotCensus { inner: census })
    }

    /// COT's passes over a target's shards (DESIGN.md 2.11's rounds as a protocol): the
    /// driver of the shards whose censuses are `census`, in the target's row order.
    /// `sample_rows`: K > 2's sample a set (default `max(2^21 / K, 4096)` rows).
    #[pyo3(signature = (census, sample_rows = None))]
    fn cot_passes(
        &self,
        py: Python<'_>,
        census: Vec<PyRef<'_, PyCotCensus>>,
        sample_rows: Option<u64>,
    ) -> PyResult<PyCotPasses> {
        let census: Vec<ShardCensus> = census.iter().map(|c| c.inner.clone()).collect();
        let inner = CotPasses::new(&self.inner, &self.inner.id, &census, sample_rows).py_err(py)?;
        Ok(PyCotPasses {
            inner,
            calibration: self.inner.id.clone(),
        })
    }

    /// Counts target rows (logits, optional labels and group ids) under this calibration.
    #[pyo3(signature = (logits, labels = None, groups = None, row_offset = 0, device = None, name = "target"))]
    #[allow(clippy::too_many_arguments)]
    fn tally(
        &self,
        py: Python<'_>,
        logits: &Bound<'_, PyAny>,
        labels: Option<&Bound<'_, PyAny>>,
        groups: Option<&Bound<'_, PyAny>>,
        row_offset: usize,
        device: Option<&str>,
        name: &str,
    ) -> PyResult<PyTally> {
        let device = device.unwrap_or(&self.device);
        let t = tally_arrays(
            py,
            &self.inner,
            name,
            logits,
            labels,
            groups,
            row_offset,
            device,
            TARGET_CHUNK_ROWS,
        )?;
        Ok(PyTally { inner: t })
    }

    /// The report of targets `{name: tally or [tallies]}` (tallies of a name are merged).
    /// `confidence` overrides the calibration's for the bootstrap intervals (as
    /// `conformal-gpu merge --confidence`); a calibration without replicates warns.
    #[pyo3(signature = (targets, confidence = None, exclude = None))]
    fn report<'py>(
        &self,
        py: Python<'py>,
        targets: &Bound<'py, PyDict>,
        confidence: Option<f64>,
        exclude: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let exclude = exclude.unwrap_or_default();
        let mut overridden = None;
        if let Some(c) = confidence {
            check_confidence(c).py_err(py)?;
            match &self.inner.bootstrap {
                Some(b) if b.confidence != c => {
                    let mut cal = (*self.inner).clone();
                    if let Some(b) = cal.bootstrap.as_mut() {
                        b.confidence = c;
                    }
                    overridden = Some(cal);
                }
                Some(_) => {}
                None => PyErr::warn(
                    py,
                    py.get_type::<PyUserWarning>().as_any(),
                    c"confidence: the calibration has no bootstrap replicates",
                    1,
                )?,
            }
        }
        let cal = overridden.as_ref().unwrap_or(&self.inner);
        let mut tallies = Vec::new();
        for (name, value) in targets.iter() {
            let name: String = name.extract()?;
            let parts: Vec<Tally> = if let Ok(t) = value.cast::<PyTally>() {
                vec![t.borrow().inner.clone()]
            } else {
                let mut v = Vec::new();
                for item in value.try_iter()? {
                    let item = item?;
                    let t = item.cast::<PyTally>().map_err(|_| {
                        to_py(
                            py,
                            invalid(format!(
                                "report: {name}: expected a Tally or a list of Tally"
                            )),
                        )
                    })?;
                    v.push(t.borrow().inner.clone());
                }
                v
            };
            let mut it = parts.into_iter();
            let Some(mut acc) = it.next() else {
                return Err(to_py(py, invalid(format!("report: {name}: no tally"))));
            };
            for t in it {
                acc.merge(&t).py_err(py)?;
            }
            tallies.push((name, acc));
        }
        let timings = Timings {
            temperature: cal.timings_ms.temperature,
            sort: cal.timings_ms.sort,
            ..Default::default()
        };
        report_dict(py, cal, &tallies, timings, &exclude)
    }

    /// The versioned JSON document (what `conformal-gpu calibrate` writes).
    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        self.inner.to_json().py_err(py)
    }

    /// Reads a calibration written by `to_json` (or by `conformal-gpu calibrate`).
    #[staticmethod]
    #[pyo3(signature = (text, file = "<calibration>"))]
    fn from_json(py: Python<'_>, text: &str, file: &str) -> PyResult<Self> {
        let cal = py
            .detach(|| Calibration::from_json(text, file))
            .py_err(py)?;
        Ok(PyCalibration {
            inner: Arc::new(cal),
            device: "auto".into(),
        })
    }

    /// Unpickling: the JSON and the device the calibration was fitted on.
    #[staticmethod]
    fn _from_pickle(py: Python<'_>, text: &str, device: &str) -> PyResult<Self> {
        let mut cal = Self::from_json(py, text, "<pickled calibration>")?;
        cal.device = device.to_string();
        Ok(cal)
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let f = py
            .import("conformal_gpu")?
            .getattr("_calibration_from_json")?;
        let args = (self.to_json(py)?, self.device.clone());
        PyTuple::new(py, [f, args.into_pyobject(py)?.into_any()])
    }

    /// The calibration's id (SHA-256 of its content).
    #[getter]
    fn id(&self) -> String {
        self.inner.id.clone()
    }
    /// Number of classes.
    #[getter]
    fn k(&self) -> usize {
        self.inner.k
    }
    /// Miscoverage levels.
    #[getter]
    fn alphas(&self) -> Vec<f64> {
        self.inner.alphas.clone()
    }
    /// The temperature of the `ts` mode.
    #[getter]
    fn temperature(&self) -> f64 {
        self.inner.source.temperature
    }
    /// Where it was fitted ("cpu" or "gpu: <adapter>").
    #[getter]
    fn device(&self) -> String {
        self.inner.device.clone()
    }
    /// The bootstrap settings `{"replicates", "confidence", "seed"}` (the report's
    /// `meta.bootstrap`), or None without replicates.
    #[getter]
    fn bootstrap<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(b) = &self.inner.bootstrap else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("replicates", b.replicates)?;
        d.set_item("confidence", b.confidence)?;
        d.set_item("seed", b.seed)?;
        Ok(Some(d.into_any()))
    }
    /// The source's summary, as in the report's `source`.
    #[getter]
    fn source<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = serde_json::to_value(&self.inner.source)
            .map_err(|e| to_py(py, invalid(e.to_string())))?;
        json_to_py(py, &v)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyCalibration>()
            .map(|o| o.get().inner.id == self.inner.id)
            .unwrap_or(false)
    }

    fn __hash__(&self) -> u64 {
        u64::from_str_radix(&self.inner.id[..16.min(self.inner.id.len())], 16).unwrap_or(0)
    }

    fn __repr__(&self) -> String {
        format!(
            "Calibration(id={}, source={:?}, n={}, k={}, alphas={:?}, T={}, device={:?})",
            &self.inner.id[..12.min(self.inner.id.len())],
            self.inner.source.name,
            self.inner.source.n,
            self.inner.k,
            self.inner.alphas,
            self.inner.source.temperature,
            self.inner.device
        )
    }
}

#[pymethods]
impl PyTally {
    /// Adds `other` in place (same calibration and target; disjoint rows): exact.
    fn merge(&mut self, py: Python<'_>, other: &Bound<'_, PyTally>) -> PyResult<()> {
        let other = other.borrow().inner.clone();
        self.inner.merge(&other).py_err(py)
    }

    fn __add__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let Ok(other) = other.cast::<PyTally>() else {
            return Ok(py.NotImplemented());
        };
        let mut out = self.inner.clone();
        out.merge(&other.borrow().inner).py_err(py)?;
        Ok(Py::new(py, PyTally { inner: out })?.into_any())
    }

    fn __iadd__(&mut self, py: Python<'_>, other: &Bound<'_, PyTally>) -> PyResult<()> {
        self.merge(py, other)
    }

    /// The versioned JSON document (what `conformal-gpu tally` writes).
    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        self.inner.to_json().py_err(py)
    }

    /// Reads a tally written by `to_json` (or by `conformal-gpu tally`).
    #[staticmethod]
    #[pyo3(signature = (text, file = "<tally>"))]
    fn from_json(py: Python<'_>, text: &str, file: &str) -> PyResult<Self> {
        Ok(PyTally {
            inner: Tally::from_json(text, file).py_err(py)?,
        })
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let f = py.import("conformal_gpu")?.getattr("_tally_from_json")?;
        let args = (self.to_json(py)?,);
        PyTuple::new(py, [f, args.into_pyobject(py)?.into_any()])
    }

    /// Rows counted.
    #[getter]
    fn n(&self) -> u64 {
        self.inner.n()
    }
    /// The target's name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name.clone()
    }
    /// The half-open row ranges counted.
    #[getter]
    fn rows(&self) -> Vec<(u64, u64)> {
        self.inner.rows.iter().map(|r| (r[0], r[1])).collect()
    }
    /// The id of the calibration it was made with.
    #[getter]
    fn calibration_id(&self) -> String {
        self.inner.calibration.clone()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<PyTally>() {
            Ok(o) => {
                let (a, b) = (self.inner.to_json().ok(), o.borrow().inner.to_json().ok());
                a.is_some() && a == b
            }
            Err(_) => false,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Tally(name={:?}, n={}, rows={:?}, calibration={})",
            self.inner.name,
            self.inner.n(),
            self.inner.rows,
            &self.inner.calibration[..12.min(self.inner.calibration.len())]
        )
    }
}

// ---------------------------------------------------------------- evaluate

fn as_path(obj: &Bound<'_, PyAny>) -> Option<PathBuf> {
    if obj.is_instance_of::<PyDict>() {
        return None;
    }
    obj.extract::<PathBuf>().ok()
}

fn dict_get<'py>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    Ok(d.get_item(key)?.filter(|v| !v.is_none()))
}

/// The groups of a set given as a dict: `groups` (a dict), or `hospital` / `slide` keys.
fn dict_groups<'py>(d: &Bound<'py, PyDict>) -> PyResult<Option<Bound<'py, PyAny>>> {
    if let Some(g) = dict_get(d, "groups")? {
        return Ok(Some(g));
    }
    let g = PyDict::new(d.py());
    for key in ["hospital", "slide"] {
        if let Some(v) = dict_get(d, key)? {
            g.set_item(key, v)?;
        }
    }
    Ok((!g.is_empty()).then(|| g.into_any()))
}

fn need<'py>(d: &Bound<'py, PyDict>, key: &str, what: &str) -> PyResult<Bound<'py, PyAny>> {
    dict_get(d, key)?.ok_or_else(|| {
        to_py(
            d.py(),
            invalid(format!("{what}: the dict has no {key:?} array")),
        )
    })
}

/// Fit on `source`, tally every target (dicts borrowed, paths streamed), report; with
/// `bootstrap` = B > 0, Poisson bootstrap intervals at `confidence` (weights seeded by
/// `seed`), as `conformal-gpu evaluate --bootstrap B --confidence C --seed N`.
#[pyfunction]
#[pyo3(signature = (source, targets, alphas = None, device = "auto", temperature = None, bootstrap = 0, confidence = 0.95, seed = 0, score = None, randomize = false, raps_lambda = 0.01, raps_k_reg = 1, saps_lambda = 0.2, class_conditional = false, exclude = None, cot_reference = None, cott_reference_subsample = None))]
#[allow(clippy::too_many_arguments)]
fn evaluate<'py>(
    py: Python<'py>,
    source: &Bound<'py, PyAny>,
    targets: &Bound<'py, PyDict>,
    alphas: Option<&Bound<'py, PyAny>>,
    device: &str,
    temperature: Option<&Bound<'py, PyAny>>,
    bootstrap: i128,
    confidence: f64,
    seed: i128,
    score: Option<&Bound<'py, PyAny>>,
    randomize: bool,
    raps_lambda: f64,
    raps_k_reg: i128,
    saps_lambda: f64,
    class_conditional: bool,
    exclude: Option<Vec<String>>,
    cot_reference: Option<&Bound<'py, PyAny>>,
    cott_reference_subsample: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let started = Instant::now();
    let cot_reference = cot_reference_arg(py, cot_reference, cott_reference_subsample)?;
    let alphas = alphas
        .map(alphas_arg)
        .transpose()?
        .unwrap_or_else(|| vec![0.1]);
    let boot = bootstrap_arg(py, bootstrap, confidence, seed)?;
    let sets = sets_arg(
        py,
        score,
        randomize,
        boot.seed,
        raps_lambda,
        raps_k_reg,
        saps_lambda,
        class_conditional,
    )?;
    let choice = parse_device(device).py_err(py)?;
    // Targets are opened (paths: headers read and checked) before any work; dict targets
    // are borrowed numpy arrays.
    enum Target {
        /// An index into `held`.
        Arrays(usize),
        File(Box<FileJob>),
    }
    let mut held: Vec<(String, TargetNumpy<'py>)> = Vec::new();
    let mut list = Vec::new();
    for (name, value) in targets.iter() {
        let name: String = name.extract()?;
        let t = if let Ok(d) = value.cast::<PyDict>() {
            let arrays = TargetNumpy::new(
                &name,
                &need(d, "logits", &name)?,
                dict_get(d, "labels")?.as_ref(),
                dict_groups(d)?.as_ref(),
            )?;
            held.push((name, arrays));
            Target::Arrays(held.len() - 1)
        } else if let Some(p) = as_path(&value) {
            let job = py.detach(|| FileJob::open(&p, &name, None)).py_err(py)?;
            Target::File(Box::new(job))
        } else {
            return Err(to_py(
                py,
                invalid(format!(
                    "target {name:?}: expected a dict of arrays or an .npz path"
                )),
            ));
        };
        list.push(t);
    }
    if list.is_empty() {
        return Err(to_py(
            py,
            Error::Empty {
                what: "targets".into(),
                detail: "no target set to evaluate".into(),
            },
        ));
    }
    // The source: a dict of arrays, or a file (loaded whole and hashed, as the CLI does).
    let (source_set, source_input) = if let Some(p) = as_path(source) {
        let (set, input) = py
            .detach(|| {
                let (set, sha256) = load_npz_hashed(&p)?;
                let file = p.display().to_string();
                Ok::<_, Error>((set, InputFile { file, sha256 }))
            })
            .py_err(py)?;
        (set, Some(input))
    } else if let Ok(d) = source.cast::<PyDict>() {
        let name = match dict_get(d, "name")? {
            Some(n) => n.extract::<String>()?,
            None => "source".into(),
        };
        let set = prediction_set(
            &name,
            &need(d, "logits", "source")?,
            Some(&need(d, "labels", "source")?),
            dict_groups(d)?.as_ref(),
        )?;
        (set, None)
    } else {
        return Err(to_py(
            py,
            invalid("source: expected a dict of arrays or an .npz path"),
        ));
    };
    let fit_str = PyString::new(py, "fit");
    let temperature = temperature.unwrap_or(fit_str.as_any());
    let mut other = None;
    let temperature = temperature_arg(temperature, &mut other)?;
    let mut inputs = Vec::new();
    let mut targets = Vec::with_capacity(list.len());
    for t in list {
        targets.push(match t {
            Target::Arrays(i) => TargetInput::Arrays(held[i].1.view(&held[i].0, 0)?),
            Target::File(job) => TargetInput::File(job),
        });
    }
    inputs.extend(source_input);
    let job = EvaluationJob {
        source: &source_set,
        options: CalibrationOptions {
            alphas,
            temperature,
            bootstrap: boot,
            sets,
            cot_reference,
        },
        inputs,
        targets,
        rows: false,
        started,
    };
    let outcome = py
        .detach(|| -> conformal_gpu::Result<_> {
            let eng = engine(choice)?;
            evaluation::run(&eng, choice, job)
        })
        .py_err(py)?;
    let mut eval = outcome.evaluation;
    eval.exclude_from_mae(&exclude.unwrap_or_default())
        .py_err(py)?;
    let value = report::to_json(&eval, &meta(outcome.inputs, &eval.device)).py_err(py)?;
    json_to_py(py, &value)
}

// ---------------------------------------------------------------- single steps

/// Fits a temperature on a labelled set: the CLI's `temperature --json` report.
#[pyfunction]
#[pyo3(signature = (logits, labels, device = "auto"))]
fn fit_temperature<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let set = prediction_set("data", logits, Some(labels), None)?;
    let report = on_device!(py, device, |b| {
        conformal_gpu::methods::temperature::temperature_report(b, &set)
    })?;
    let v = serde_json::to_value(&report).map_err(|e| to_py(py, invalid(e.to_string())))?;
    json_to_py(py, &v)
}

/// Softmax of `logits / t`, row by row, as float32 `[N, K]`.
#[pyfunction]
#[pyo3(signature = (logits, t = 1.0, device = "auto"))]
fn softmax<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    t: f64,
    device: &str,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    conformal_gpu::methods::temperature::validate_temperature(t).py_err(py)?;
    let l = logits_arg(logits, "logits")?;
    let (n, k) = (l.n, l.k);
    let slice = l.slice();
    let out: Vec<f32> = on_device!(py, device, |b| {
        if k < 2 {
            return Err(Error::TooFewClasses {
                what: "logits".into(),
                k,
            });
        }
        if let Some(i) = slice.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "logits".into(),
                row: i / k,
                col: i % k,
                value: slice[i],
            });
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        b.softmax(slice, k, t as f32)
    })?;
    let arr = Array2::from_shape_vec((n, k), out).map_err(|e| to_py(py, invalid(e.to_string())))?;
    Ok(PyArray2::from_owned_array(py, arr))
}

/// COT (DESIGN.md 2.11), exact: 1 - the optimal transport cost between the rows of
/// `probabilities` (float32 `[N, K]`, mass 1/N each) and the classes in the shares of
/// `class_counts` (the source's label counts), a row's cost to class k being `1 - p_k`.
/// At K = 2 on `device` (the mergeable passes of `kernel::cot_two_class`: the GPU kernel
/// or its CPU mirror, the same bits on every device); K > 2 by the host's exact solver.
#[pyfunction]
#[pyo3(signature = (probabilities, class_counts, device = "auto"))]
fn cot_from_probabilities(
    py: Python<'_>,
    probabilities: &Bound<'_, PyAny>,
    class_counts: Vec<u64>,
    device: &str,
) -> PyResult<f64> {
    let arr = np_asarray(probabilities)?;
    let shape: Vec<usize> = arr.getattr("shape")?.extract()?;
    let [_, k] = shape[..] else {
        return Err(to_py(
            py,
            invalid(format!("probabilities: need [N, K], not shape {shape:?}")),
        ));
    };
    let p = convert_f32(&arr, "probabilities")?;
    if k != 2 {
        // The host's solver on every device: no engine to open.
        parse_device(device).py_err(py)?;
        return py
            .detach(|| conformal_gpu::methods::cot::cot(&p, k, &class_counts))
            .py_err(py);
    }
    on_device!(py, device, |b| conformal_gpu::methods::cot::cot_on(
        b,
        &p,
        k,
        &class_counts
    ))
}

/// `scores` as a numpy array, refused unless 1-D.
fn scores_1d<'py>(py: Python<'py>, scores: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let arr = np_asarray(scores)?;
    let ndim: usize = arr.getattr("ndim")?.extract()?;
    if ndim != 1 {
        return Err(to_py(
            py,
            invalid(format!("scores: must be 1-D, not {ndim}-D")),
        ));
    }
    Ok(arr)
}

/// Conformal p-values (DESIGN.md 2.6) of every class of every row of `logits` at
/// temperature `t` against the calibration scores `scores` (any order; float32, e.g.
/// the source's `1 - p_y`), float64 [N, K]: `(1 + #{i : s_i >= 1 - p_k(x)}) / (n + 1)`.
#[pyfunction]
#[pyo3(signature = (scores, logits, t = 1.0, device = "auto"))]
fn pvalues<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    logits: &Bound<'py, PyAny>,
    t: f64,
    device: &str,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    conformal_gpu::methods::temperature::validate_temperature(t).py_err(py)?;
    let arr = scores_1d(py, scores)?;
    let mut sorted = convert_f32(&arr, "scores")?;
    let l = logits_arg(logits, "logits")?;
    let (n, k) = (l.n, l.k);
    let slice = l.slice();
    let out = on_device!(py, device, |b| {
        // NaN scores are refused by the kernel's check, after this sort puts them last.
        sorted.sort_unstable_by(f32::total_cmp);
        conformal_gpu::methods::row_outputs::pvalue_matrix(b, slice, k, t as f32, &sorted)
    })?;
    let arr = Array2::from_shape_vec((n, k), out).map_err(|e| to_py(py, invalid(e.to_string())))?;
    Ok(PyArray2::from_owned_array(py, arr))
}

/// The conformal quantile qhat of `scores` at each alpha: the CLI's `quantile --json`
/// report. float64 scores give their own float64 order statistic.
#[pyfunction]
#[pyo3(signature = (scores, alphas = None, device = "auto"))]
fn conformal_quantile<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    alphas: Option<&Bound<'py, PyAny>>,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let alphas = alphas
        .map(alphas_arg)
        .transpose()?
        .unwrap_or_else(|| vec![0.1]);
    let arr = scores_1d(py, scores)?;
    let report = if let Ok(a) = arr.cast::<PyArray1<f64>>() {
        let ro = a.readonly();
        let v = ro.as_array();
        let owned;
        let s: &[f64] = match v.as_slice() {
            Some(s) => s,
            None => {
                owned = v.to_vec();
                &owned
            }
        };
        py.detach(|| conformal_gpu::methods::quantile::quantile_report_f64(s, &alphas))
            .py_err(py)?
    } else {
        let v = convert_f32(&arr, "scores")?;
        on_device!(py, device, |b| {
            conformal_gpu::methods::quantile::quantile_report(b, &v, &alphas)
        })?
    };
    let v = serde_json::to_value(&report).map_err(|e| to_py(py, invalid(e.to_string())))?;
    json_to_py(py, &v)
}

/// Which device `device` resolves to: "cpu" or "gpu: <adapter>".
#[pyfunction]
#[pyo3(signature = (device = "auto"))]
fn device_name(py: Python<'_>, device: &str) -> PyResult<String> {
    on_device!(py, device, |b| Ok::<_, Error>(b.device_name()))
}

/// `conformal-gpu sweep ARGS...` (the arguments after `sweep`), run by the crate's own
/// parser and sweep with the GIL released: the same cells, files and fingerprints as the
/// command line. Returns `(cells, failed)`; a failed cell is not an error here (the
/// Python wrapper decides), a bad argument or manifest is `InvalidInput`.
#[pyfunction]
fn _sweep(py: Python<'_>, args: Vec<std::ffi::OsString>) -> PyResult<(usize, usize)> {
    let outcome = py
        .detach(|| conformal_gpu::cli::sweep::sweep_from_args(args))
        .py_err(py)?;
    Ok((outcome.cells, outcome.failed))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("InvalidInput", py.get_type::<InvalidInput>())?;
    m.add("MalformedFile", py.get_type::<MalformedFile>())?;
    m.add("GpuError", py.get_type::<GpuError>())?;
    m.add_class::<PyCalibration>()?;
    m.add_class::<PyTally>()?;
    m.add_class::<PyCotCensus>()?;
    m.add_class::<PyCotPasses>()?;
    m.add_class::<PyCotPassPlan>()?;
    m.add_class::<PyCotPassPart>()?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(fit_temperature, m)?)?;
    m.add_function(wrap_pyfunction!(softmax, m)?)?;
    m.add_function(wrap_pyfunction!(cot_from_probabilities, m)?)?;
    m.add_function(wrap_pyfunction!(conformal_quantile, m)?)?;
    m.add_function(wrap_pyfunction!(pvalues, m)?)?;
    m.add_function(wrap_pyfunction!(device_name, m)?)?;
    m.add_function(wrap_pyfunction!(_sweep, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
