"""Type stubs of the compiled extension (conformal_gpu._native)."""

from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__version__: str

Device = Literal["auto", "gpu", "cpu"]
ArrayLike = npt.ArrayLike
Alphas = float | Sequence[float]
Groups = Mapping[Literal["hospital", "slide"], ArrayLike]
Temperature = Literal["fit"] | float | tuple[ArrayLike, ArrayLike]
SetSpec = Mapping[str, Any] | str | PathLike[str]

class InvalidInput(ValueError):
    """Bad arguments or data (exit codes 2 and 5)."""

    exit_code: int

class MalformedFile(InvalidInput):
    """A damaged .npz, calibration or tally (exit code 4)."""

class GpuError(RuntimeError):
    """The GPU path failed (exit code 6)."""

    exit_code: int

class Calibration:
    """What the source decides, fitted once; picklable (its versioned JSON)."""

    @staticmethod
    def fit(
        logits: ArrayLike,
        labels: ArrayLike,
        alphas: Alphas | None = (0.1,),
        temperature: Temperature | None = "fit",
        device: Device = "auto",
        groups: Groups | None = None,
        name: str = "source",
        bootstrap: int = 0,
        confidence: float = 0.95,
        seed: int = 0,
        score: str | Sequence[str] | None = "lac",
        randomize: bool = False,
        raps_lambda: float = 0.01,
        raps_k_reg: int = 1,
        saps_lambda: float = 0.2,
        class_conditional: bool = False,
        cot_reference: bool | Literal["source", "uniform"] | None = None,
        cott_reference_subsample: Sequence[int] | None = None,
    ) -> Calibration: ...
    def pvalues(
        self,
        logits: ArrayLike,
        mode: Literal["ts", "raw"] = "ts",
        device: Device | None = None,
        score: str = "lac",
        name: str = "target",
        row_offset: int = 0,
    ) -> npt.NDArray[np.float64]: ...
    def predict_sets(
        self,
        logits: ArrayLike,
        alpha: float | None = None,
        score: str = "lac",
        class_conditional: bool = False,
        mode: Literal["ts", "raw"] = "ts",
        name: str = "target",
        row_offset: int = 0,
        device: Device | None = None,
    ) -> np.ndarray[Any, np.dtype[np.bool_]]: ...
    def cot_files(
        self,
        files: Sequence[str | PathLike[str]],
        device: Device | None = None,
        sample_rows: int | None = None,
    ) -> dict[str, Any]: ...
    def cot_census(self, logits: ArrayLike, groups: Groups | None = None) -> CotCensus: ...
    def cot_passes(
        self, census: Sequence[CotCensus], sample_rows: int | None = None
    ) -> CotPasses: ...
    def tally(
        self,
        logits: ArrayLike,
        labels: ArrayLike | None = None,
        groups: Groups | None = None,
        row_offset: int = 0,
        device: Device | None = None,
        name: str = "target",
    ) -> Tally: ...
    def report(
        self,
        targets: Mapping[str, Tally | Iterable[Tally]],
        confidence: float | None = None,
        exclude: Sequence[str] | None = None,
    ) -> dict[str, Any]: ...
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(text: str, file: str = "<calibration>") -> Calibration: ...
    @staticmethod
    def _from_pickle(text: str, device: str) -> Calibration: ...
    @property
    def id(self) -> str: ...
    @property
    def k(self) -> int: ...
    @property
    def alphas(self) -> list[float]: ...
    @property
    def temperature(self) -> float: ...
    @property
    def device(self) -> str: ...
    @property
    def bootstrap(self) -> dict[str, Any] | None: ...
    @property
    def source(self) -> dict[str, Any]: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

class CotCensus:
    """One shard's rows and group ids, for COT's passes over shards; picklable."""

    @property
    def rows(self) -> int: ...
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(text: str) -> CotCensus: ...

class CotPasses:
    """The driver of COT's passes over a target's shards (``Calibration.cot_passes``)."""

    def plan(self) -> CotPassPlan | None: ...
    def advance(self, part: CotPassPart) -> None: ...
    @property
    def passes(self) -> int: ...
    @property
    def done(self) -> bool: ...
    def result(self) -> dict[str, Any]: ...

class CotPassPlan:
    """One pass of COT over shards, as each shard needs it; picklable."""

    @property
    def number(self) -> int: ...
    @property
    def k(self) -> int: ...
    def tally(
        self,
        shard: int,
        logits: ArrayLike,
        groups: Groups | None = None,
        device: Device | None = None,
    ) -> CotPassPart: ...
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(text: str) -> CotPassPlan: ...

class CotPassPart:
    """A pass's part over some shards; merges in any order; picklable."""

    def merge(self, other: CotPassPart) -> None: ...
    @property
    def shards(self) -> list[int]: ...
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(text: str) -> CotPassPart: ...

class Tally:
    """One target's integer counts under a calibration; merges exactly; picklable."""

    def merge(self, other: Tally) -> None: ...
    def __add__(self, other: Tally) -> Tally: ...
    def __iadd__(self, other: Tally) -> Tally: ...
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(text: str, file: str = "<tally>") -> Tally: ...
    @property
    def n(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def rows(self) -> list[tuple[int, int]]: ...
    @property
    def calibration_id(self) -> str: ...
    def __eq__(self, other: object) -> bool: ...

def evaluate(
    source: SetSpec,
    targets: Mapping[str, SetSpec],
    alphas: Alphas | None = (0.1,),
    device: Device = "auto",
    temperature: Temperature | None = "fit",
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    score: str | Sequence[str] | None = "lac",
    randomize: bool = False,
    raps_lambda: float = 0.01,
    raps_k_reg: int = 1,
    saps_lambda: float = 0.2,
    class_conditional: bool = False,
    exclude: Sequence[str] | None = None,
    cot_reference: bool | Literal["source", "uniform"] | None = None,
    cott_reference_subsample: Sequence[int] | None = None,
) -> dict[str, Any]: ...
def fit_temperature(
    logits: ArrayLike, labels: ArrayLike, device: Device = "auto"
) -> dict[str, Any]: ...
def softmax(
    logits: ArrayLike, t: float = 1.0, device: Device = "auto"
) -> np.ndarray[Any, np.dtype[np.float32]]: ...
def conformal_quantile(
    scores: ArrayLike, alphas: Alphas | None = (0.1,), device: Device = "auto"
) -> dict[str, Any]: ...
def cot_from_probabilities(
    probabilities: ArrayLike, class_counts: Sequence[int], device: Device = "auto"
) -> float: ...
def device_name(device: Device = "auto") -> str: ...
def pvalues(
    scores: ArrayLike, logits: ArrayLike, t: float = 1.0, device: Device = "auto"
) -> npt.NDArray[np.float64]: ...

def _sweep(args: Sequence[str]) -> tuple[int, int]:
    """`conformal-gpu sweep ARGS...` by the crate's parser and sweep: (cells, failed)."""
