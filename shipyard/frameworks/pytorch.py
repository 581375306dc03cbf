"""PyTorch: the module (its preprocessing in `forward`) is exported by `torch.onnx` with a
dynamic batch axis, wrapped so the graph ends in the served `label` and `probabilities`."""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shipyard.errors import ExportError, ProjectError
from shipyard.frameworks import PACKAGES
from shipyard.manifest import Framework, Manifest


class _Served(torch.nn.Module):
    """logits → (label, probabilities): the tail every served graph has."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = torch.softmax(self.model(x), dim=1)
        return torch.argmax(probabilities, dim=1), probabilities


class PytorchAdapter:
    packages: tuple[str, ...] = PACKAGES[Framework.PYTORCH]

    def check_model(self, model: Any, manifest: Manifest) -> None:
        if not isinstance(model, torch.nn.Module):
            raise ProjectError(
                f"entrypoints.train returned {type(model).__name__}: return a torch.nn.Module "
                "whose forward maps input [N, ...] to logits [N, n_labels]."
            )
        sample = torch.zeros((2, *manifest.input.feature_shape), dtype=torch.float32)
        with torch.no_grad():
            logits = model.eval()(sample)
        if tuple(logits.shape) != (2, len(manifest.labels)):
            raise ProjectError(
                f"The module maps input {tuple(sample.shape)} to {tuple(logits.shape)}; expected "
                f"logits (2, {len(manifest.labels)}) for the manifest's {len(manifest.labels)} labels."
            )

    def predict_proba(self, model: Any, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            _, probabilities = _Served(model).eval()(torch.from_numpy(x))
        return np.asarray(probabilities.numpy(), dtype=np.float32)

    def export(self, model: Any, manifest: Manifest, out: Path, opset: int) -> Path:
        served = _Served(model).eval()
        sample = torch.zeros((2, *manifest.input.feature_shape), dtype=torch.float32)
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # it warns about every absent optional op library
        try:
            with redirect_stdout(StringIO()), warnings.catch_warnings():  # it prints progress
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    served,
                    (sample,),
                    f=out,
                    input_names=[manifest.input.name],
                    output_names=["label", "probabilities"],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    opset_version=opset,
                    dynamo=True,
                    external_data=False,
                )
        except Exception as e:
            raise ExportError(
                f"torch.onnx cannot export {type(model).__name__}: {type(e).__name__}: {e}. "
                "Keep forward free of data-dependent Python control flow and of ops ONNX lacks."
            ) from e
        finally:
            quiet.setLevel(level)
        return out

    @contextmanager
    def deterministic(self, seed: int) -> Iterator[None]:
        # https://pytorch.org/docs/stable/notes/randomness.html
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        previous = torch.are_deterministic_algorithms_enabled()
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous)
