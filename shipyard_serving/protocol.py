"""Request parsing and response building for the two protocols the server speaks.

- Open Inference Protocol (V2): https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/
- MLflow scoring: `inputs`, `instances` or `dataframe_split` in, `{"predictions": ...}` out.

Every malformed request becomes a `RequestError` naming the field and what was expected.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import numpy as np

from shipyard_serving.model import ModelInfo


class RequestError(Exception):
    """A client error: HTTP status, message, and the offending field with its expectation."""

    def __init__(
        self, status: int, message: str, field: str | None = None, expected: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.expected = status, message, field, expected

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.field:
            out["field"] = self.field
        if self.expected:
            out["expected"] = self.expected
        return out


def _bad(message: str, field: str, expected: str) -> RequestError:
    return RequestError(400, f"{field}: {message}; expected {expected}", field, expected)


def _numbers(data: Any, field: str, expected: str) -> np.ndarray:
    """A non-empty numeric array from JSON lists, or a 400 naming `field`."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise _bad("rows of different lengths", field, expected) from None
    if array.size == 0 or array.ndim == 0:
        raise _bad("no list of values", field, f"non-empty {expected}")
    if array.dtype.kind not in "iuf":
        raise _bad(f"non-numeric values ({_sample(data)})", field, expected)
    return array


_DOT_CHECK_MAX = 8192
"""Values up to which `_finite` tries one dot product first (OpenBLAS threads larger ones)."""
# Its overflow is expected (an inf, or values past 1.8e19) and settled by the exact check.
warnings.filterwarnings(
    "ignore", "overflow encountered in dot", RuntimeWarning, r"shipyard_serving\.protocol"
)


def _finite(array: np.ndarray) -> bool:
    """No inf or NaN in `array`."""
    # The sum of squares, one BLAS dot without numpy's ufunc machinery (which cost about 6 µs of
    # a served request, BENCHMARKS.md), is finite only if every value is. Where it is not (an inf,
    # a NaN, or squares beyond the dtype's range), the exact check decides.
    flat = array.reshape(-1)
    if flat.size <= _DOT_CHECK_MAX and math.isfinite(flat.dot(flat)):
        return True
    # The ufunc's reduce itself: ndarray.all() goes through a Python wrapper in numpy.
    return bool(np.logical_and.reduce(np.isfinite(array), axis=None))


def _float32(array: np.ndarray, field: str) -> np.ndarray:
    # Every (u)int64 is finite in float32 (|x| < 2**64 < 3.4e38): only floats need the check. A
    # float64 beyond float32's range casts to inf (numpy warns once), which the check catches.
    if array.dtype.kind in "iu":
        return array.astype(np.float32)
    array = array.astype(np.float32, copy=False)
    if not _finite(array):
        raise _bad("values outside the float32 range", field, "finite float32 values")
    return array


@functools.cache
def _rows_of(features: tuple[int, ...]) -> str:
    return f"rows of {math.prod(features)} numbers" + (
        f" or of arrays shaped {list(features)}" if len(features) > 1 else ""
    )


def to_array(data: Any, field: str, info: ModelInfo, max_rows: int) -> np.ndarray:
    """Rows of numbers (flat or shaped) → float32 [N, *features], checked for type, shape, range."""
    features = info.feature_shape
    array = _numbers(data, field, _rows_of(features))
    if array.ndim == 1:
        array = array.reshape(1, -1)
    rows = array.shape[0]
    if rows > max_rows:
        raise RequestError(
            413,
            f"{field}: {rows} rows exceed the limit of {max_rows}; split the request",
            field,
            f"at most {max_rows} rows",
        )
    if array.shape[1:] != features:
        if math.prod(array.shape[1:]) != math.prod(features):
            raise _bad(f"shape {list(array.shape)}", field, f"[N, {', '.join(map(str, features))}]")
        array = array.reshape(rows, *features)
    return _float32(array, field)


def _sample(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_v2(body: Any, info: ModelInfo, max_rows: int) -> tuple[np.ndarray, set[str] | None, Any]:
    """A V2 inference request → (input array, requested outputs or None for all, request id)."""
    if not isinstance(body, dict):
        raise _bad(f"a JSON {type(body).__name__}", "body", "an object with `inputs`")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise _bad(
            f"{_sample(inputs)}", "inputs", f"a list of one tensor named {info.input_name!r}"
        )
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise _bad(f"{_sample(tensor)}", "inputs[0]", "an object with name, shape, datatype, data")
    if tensor.get("name") != info.input_name:
        raise _bad(f"unknown input {tensor.get('name')!r}", "inputs[0].name", repr(info.input_name))
    if tensor.get("datatype") != "FP32":
        raise _bad(f"datatype {tensor.get('datatype')!r}", "inputs[0].datatype", "'FP32'")
    shape = tensor.get("shape")
    full = ["N", *info.feature_shape]
    if (
        not isinstance(shape, list)
        or len(shape) != len(full)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or list(shape[1:]) != list(info.feature_shape)
        or shape[0] < 1
    ):
        raise _bad(f"shape {_sample(shape)}", "inputs[0].shape", f"[{', '.join(map(str, full))}]")
    if shape[0] > max_rows:
        raise RequestError(
            413,
            f"inputs[0].shape: {shape[0]} rows exceed the limit of {max_rows}",
            "inputs[0].shape",
            f"at most {max_rows} rows",
        )
    data = tensor.get("data")
    if not isinstance(data, list):
        raise _bad(f"{_sample(data)}", "inputs[0].data", "a list of numbers")
    array = _numbers(data, "inputs[0].data", f"{math.prod(shape)} numbers (row-major)")
    if array.size != math.prod(shape):
        raise _bad(
            f"{array.size} values for shape {shape}", "inputs[0].data", f"{math.prod(shape)} values"
        )
    array = _float32(array.reshape(shape), "inputs[0].data")
    requested = body.get("outputs")
    names: set[str] | None = None
    if requested is not None:
        if not isinstance(requested, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
        ):
            raise _bad(f"{_sample(requested)}", "outputs", 'a list of {"name": ...} objects')
        names = {o.get("name") for o in requested}
        unknown = names - set(OUTPUT_NAMES)
        if unknown:
            raise _bad(
                f"unknown output(s) {sorted(map(str, unknown))}",
                "outputs",
                f"names among {list(OUTPUT_NAMES)}",
            )
    return array, names, body.get("id")


OUTPUT_NAMES = ("label", "probabilities", "label_name")


def v2_response(
    info: ModelInfo,
    labels: np.ndarray,
    probabilities: np.ndarray,
    names: list[str] | None,
    wanted: set[str] | None,
    request_id: Any,
) -> dict[str, Any]:
    rows = len(labels)
    outputs = [
        {"name": "label", "datatype": "INT64", "shape": [rows], "data": labels},
        {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": list(probabilities.shape),
            "data": probabilities.reshape(-1),
        },
    ]
    if names is not None:
        outputs.append({"name": "label_name", "datatype": "BYTES", "shape": [rows], "data": names})
    if wanted is not None:
        outputs = [o for o in outputs if o["name"] in wanted]
    response: dict[str, Any] = {
        "model_name": info.name,
        "model_version": info.version,
        "outputs": outputs,
    }
    if request_id is not None:
        response["id"] = request_id
    return response


MLFLOW_KEYS = ("inputs", "instances", "dataframe_split")


# What is left of `{"inputs": [[...], ...]}` once the characters of numbers, arrays and
# whitespace are taken out: nothing else can be in the document then (no string, true, false or
# null, whose characters would remain).
_NUMERIC = b"0123456789+-.eE,[] \t\r\n"
_NUMERIC_INPUTS = b'{"inputs":}'


def _numeric_rows(rows: list[Any], info: ModelInfo, max_rows: int) -> np.ndarray | None:
    """Rows known to hold JSON numbers only → float32 [N, *features], converted directly (numpy's
    type discovery costs more than the conversion); None if anything is off: ragged or empty
    rows, another shape, too many rows, values beyond float32. `to_array` then names it."""
    try:
        array = np.asarray(rows, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        return None
    if (
        array.shape[1:] != info.feature_shape
        or not 0 < len(array) <= max_rows
        or not _finite(array)
    ):
        return None
    return array


def parse_mlflow(
    body: Any, info: ModelInfo, max_rows: int, text: bytes | None = None
) -> np.ndarray:
    """MLflow's scoring formats → input array. `text`, the body as sent, if given, lets a body
    of nothing but numeric rows skip the per-value type checks."""
    if text is not None and text.translate(None, _NUMERIC) == _NUMERIC_INPUTS:
        array = _numeric_rows(body["inputs"], info, max_rows)
        if array is not None:
            return array
    if not isinstance(body, dict):
        raise _bad(
            f"a JSON {type(body).__name__}",
            "body",
            "an object with one of `inputs`, `instances`, `dataframe_split`",
        )
    keys = list(filter(body.__contains__, MLFLOW_KEYS))
    if len(keys) != 1:
        raise _bad(
            f"keys {sorted(body)}",
            "body",
            "exactly one of `inputs`, `instances`, `dataframe_split`",
        )
    key = keys[0]
    value = body[key]
    if key == "dataframe_split":
        if not isinstance(value, dict) or "data" not in value:
            raise _bad(
                f"{_sample(value)}", "dataframe_split", "an object with `columns` and `data`"
            )
        columns = value.get("columns")
        if columns is not None and (
            not isinstance(columns, list) or len(columns) != math.prod(info.feature_shape)
        ):
            raise _bad(
                f"{len(columns) if isinstance(columns, list) else _sample(columns)} columns",
                "dataframe_split.columns",
                f"{math.prod(info.feature_shape)} columns",
            )
        return to_array(value["data"], "dataframe_split.data", info, max_rows)
    if isinstance(value, dict):  # named tensors: {"pixels": [...]}
        if set(value) != {info.input_name}:
            raise _bad(
                f"tensor names {sorted(value)}", key, f"one tensor named {info.input_name!r}"
            )
        value = value[info.input_name]
    if isinstance(value, list) and value and isinstance(value[0], dict):  # [{"pixels": row}, ...]
        if not all(isinstance(r, dict) and set(r) == {info.input_name} for r in value):
            raise _bad(
                "instances with other keys", key, f"objects with the key {info.input_name!r}"
            )
        value = [r[info.input_name] for r in value]
    if not isinstance(value, list):
        raise _bad(f"{_sample(value)}", key, "a list of rows")
    return to_array(value, key, info, max_rows)


def mlflow_response(
    labels: np.ndarray, probabilities: np.ndarray, names: list[str] | None
) -> dict[str, Any]:
    """The shape MLflow's ONNX pyfunc answers with, plus `label_name` where labels are known."""
    predictions: dict[str, Any] = {"label": labels, "probabilities": probabilities}
    if names is not None:
        predictions["label_name"] = names
    return {"predictions": predictions}


def model_metadata(info: ModelInfo, n_classes: int | None) -> dict[str, Any]:
    return {
        "name": info.name,
        "versions": [info.version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": info.input_name, "datatype": "FP32", "shape": [-1, *info.feature_shape]}
        ],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, n_classes or -1]},
            *([{"name": "label_name", "datatype": "BYTES", "shape": [-1]}] if info.labels else []),
        ],
        "parameters": {
            "version": info.version,
            "onnx_sha256": info.onnx_sha256,
            "labels": info.labels,
            **info.extra,
        },
    }
