"""The CLIP image tower exported to ONNX and run by ONNX Runtime on CPU.

Why: torch's eager CPU kernels leave much of the machine unused for a ViT (on AMD CPUs MKL
takes its AVX2 path), while ONNX Runtime's fused graph is up to ~2x faster with the same
numbers (docs/configuration.md, "Precision and runtime"). The export costs seconds to a
minute, so it is made once per weights and cached on disk, keyed by a hash of the weights
and the library versions; every load re-checks the cached graph against the eager model on a
fixed random batch, rebuilds it once if it fails (a corrupted file), and otherwise falls
back to eager torch with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from clip_service.models.precision import MIN_COSINE

logger = logging.getLogger(__name__)

ImageFeatures = Callable[[torch.Tensor], torch.Tensor]
_FILE = "image.onnx"
# Export with one batch size and check with another: the batch axis must really be dynamic.
_EXPORT_BATCH, _CHECK_BATCH = 2, 3


class OnnxImageTower:
    """(n, 3, H, W) float32 pixels -> (n, d) float32 features, by ONNX Runtime."""

    def __init__(self, path: Path, threads: int) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        (features,) = self.session.run(None, {self.input: pixels})
        return features


def weights_key(model: torch.nn.Module, precision: str, image_size: int) -> str:
    """Hash of every weight and buffer plus what shapes the exported graph."""
    digest = hashlib.sha256()
    versions = (torch.__version__, onnx.__version__, onnxruntime.__version__)
    digest.update(repr((versions, precision, image_size)).encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()[:32]


def load_onnx_image_tower(
    model: torch.nn.Module,
    features: ImageFeatures,
    image_size: int,
    precision: str,
    cache_dir: Path,
) -> OnnxImageTower | None:
    """The cached (or freshly exported) graph of ``features``, checked against it.

    ``model`` is the module whose weights ``features`` uses (fp32, on CPU). Returns None,
    after a warning, when the graph cannot be made to match eager torch.
    """
    pixels = torch.randn(
        _CHECK_BATCH, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        expected = features(pixels).float().numpy()
    folder = cache_dir / weights_key(model, precision, image_size)
    threads = torch.get_num_threads()
    problem = ""
    for attempt in ("cached", "rebuilt"):
        if attempt == "rebuilt" or not (folder / _FILE).is_file():
            shutil.rmtree(folder, ignore_errors=True)
            try:
                _build(model, features, image_size, precision, folder)
            except Exception as exc:  # an exporter failure must not stop the server
                problem = f"export failed: {' '.join(str(exc).split())[:300]}"
                break
        try:
            tower = OnnxImageTower(folder / _FILE, threads)
            cosine = min_cosine(tower(pixels.numpy()), expected)
        except Exception as exc:  # a corrupted file raises anything from protobuf to ORT
            problem = f"cannot run {folder / _FILE}: {' '.join(str(exc).split())[:300]}"
            continue
        if cosine >= MIN_COSINE[precision]:
            logger.info("ONNX Runtime image tower (%s, %s) cosine %.6f", precision, folder, cosine)
            return tower
        problem = f"cosine to eager torch {cosine:.6f} < {MIN_COSINE[precision]}"
    logger.warning("ONNX image tower not used (%s); the image tower runs in eager torch", problem)
    return None


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine similarity of two (n, d) arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    dots = (a * b).sum(-1)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return float((dots / np.maximum(norms, 1e-30)).min())


class _Features(torch.nn.Module):
    """``features`` as a module that owns ``model``, so the exporter sees its weights."""

    def __init__(self, model: torch.nn.Module, features: ImageFeatures) -> None:
        super().__init__()
        self.model, self.features = model, features

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.features(pixels)


def _build(
    model: torch.nn.Module, features: ImageFeatures, image_size: int, precision: str, folder: Path
) -> None:
    """Export (and for int8 quantise) into a scratch folder, then move it into place whole."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
    try:
        exported = scratch / ("fp32.onnx" if precision == "int8" else _FILE)
        example = torch.zeros(_EXPORT_BATCH, 3, image_size, image_size)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Features(model, features).eval(),
                (example,),
                str(exported),
                input_names=["pixels"],
                output_names=["features"],
                dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}},
                verbose=False,
            )
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            graph = onnx.load(exported)
            # The exporter's recorded intermediate shapes trip the quantiser's shape
            # inference; without them it infers its own.
            del graph.graph.value_info[:]
            quantize_dynamic(
                graph, scratch / _FILE, weight_type=QuantType.QInt8, use_external_data_format=True
            )
            for path in scratch.glob("fp32.onnx*"):
                path.unlink()
        try:
            os.rename(scratch, folder)
        except OSError:
            if not (folder / _FILE).is_file():  # another worker's build won the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
