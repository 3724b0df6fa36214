"""ZCA whitening of whole images, as the paper's whitened CIFAR data.

The paper's official code trained on a CIFAR copy whitened with pylearn2's recipe
(``make_cifar10_gcn_whitened.py``): every image, flattened to its H*W*C values, first gets
global contrast normalisation (its own mean removed, then scaled to an L2 norm of 55), then ZCA:
the per-value mean over the training set is removed and the result multiplied by
``P = V diag(1 / sqrt(lambda + epsilon)) V^T``, where ``V, lambda`` are the eigenvectors and
eigenvalues of the training covariance and ``epsilon = 0.1`` (pylearn2's ``filter_bias``) keeps
the near-zero eigenvalues from blowing up noise. P is symmetric, so the whitened images stay
images (ZCA, unlike PCA, rotates back): each output pixel is a local, edge-enhancing filter of
its neighbourhood. ``docs/paper.md`` says which of the paper's tables used it.

    w = fit(train.images)                  # uint8 [N, H, W, C] -> Whitening (float64 fit)
    save(w, run_dir / "zca.safetensors")   # evaluation must reuse the training fit
    Augment(whiten=w)(batch, generator)    # crop/flip, then whiten each image

Here the whitening runs on the device after the random crop and flip, one matmul per batch, so
the data stays uint8; the paper whitened once and cropped the whitened images. Both are linear
maps of nearly shift-invariant statistics, so the two orders differ only at the borders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wrn.errors import UserError
from wrn.fsio import write_atomic

PAPER_EPSILON = 0.1  # pylearn2 ZCA filter_bias, added to every eigenvalue of the covariance
PAPER_GCN = 55.0  # pylearn2 global contrast normalisation: each image scaled to this L2 norm
# A D x D matrix for D = H*W*C values per image: 3072 for CIFAR (38 MB in float32). Beyond 64x64
# RGB the matrix (and its eigen-decomposition) stops being practical.
MAX_VALUES = 64 * 64 * 3
_MIN_DIVISOR = 1e-8  # as pylearn2: a constant image stays zero instead of dividing by 0


def contrast_normalize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Global contrast normalisation of flattened images ``[N, D]`` (float): each row minus its
    own mean, then scaled to L2 norm ``scale``."""
    x = x - x.mean(1, keepdim=True)
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True) / scale
    return x / torch.where(norm < _MIN_DIVISOR, torch.ones_like(norm), norm)


def _prepare(x: torch.Tensor, gcn: float) -> torch.Tensor:
    # The value space the matrix is fitted in: contrast-normalised pixels, or [0, 1] without GCN.
    return contrast_normalize(x, gcn) if gcn else x / 255.0


@dataclass(eq=False)
class Whitening:
    """A fitted ZCA whitening: ``apply(x) = (prepare(x) - mean) @ matrix`` per flattened image.

    ``mean`` float32 ``[D]`` and ``matrix`` float32 ``[D, D]`` (symmetric) over the image values
    in H, W, C order (how the uint8 data is stored); ``shape`` is (H, W, C); ``gcn`` the contrast
    normalisation's L2 norm (0 = none: pixels / 255).
    """

    mean: torch.Tensor
    matrix: torch.Tensor
    shape: tuple[int, int, int]
    epsilon: float
    gcn: float
    _on_device: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        h, w, c = self.shape
        return f"Whitening({h}x{w}x{c}, epsilon={self.epsilon:g}, gcn={self.gcn:g})"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (0..255) ``[N, D]`` flattened HWC images -> whitened float32 ``[N, D]``."""
        d = self.mean.numel()
        if x.dim() != 2 or x.shape[1] != d:
            raise ValueError(f"expected flattened images [N, {d}] ({'x'.join(map(str, self.shape))}), got {tuple(x.shape)}")
        if x.device not in self._on_device:
            self._on_device[x.device] = (self.mean.to(x.device), self.matrix.to(x.device))
        mean, matrix = self._on_device[x.device]
        return (_prepare(x.float(), self.gcn) - mean) @ matrix

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "matrix": self.matrix}

    def metadata(self) -> dict[str, str]:
        return {"shape": ",".join(map(str, self.shape)), "epsilon": repr(self.epsilon), "gcn": repr(self.gcn)}


def fit(images: np.ndarray, epsilon: float = PAPER_EPSILON, *, gcn: float = PAPER_GCN,
        chunk: int = 2048) -> Whitening:
    """Fit ZCA on uint8 ``[N, H, W, C]`` training images (a memory map is fine: read in chunks).

    Covariance and eigen-decomposition in float64, in a fixed order: the same images give the
    same matrix bit for bit on the same machine. ``gcn=0`` skips contrast normalisation and
    whitens pixels / 255 (then ``epsilon`` is on that scale, e.g. 1e-2 .. 1e-5).
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 [N, H, W, C] images, got {getattr(images, 'dtype', type(images))} "
                         f"{getattr(images, 'shape', '')}")
    if not (epsilon > 0 and np.isfinite(epsilon)):
        raise ValueError(f"epsilon={epsilon!r} must be > 0: it regularises the smallest eigenvalues")
    if gcn < 0:
        raise ValueError(f"gcn={gcn!r} must be >= 0 (0 = no contrast normalisation)")
    n, h, w, c = images.shape
    d = h * w * c
    if d > MAX_VALUES:
        raise UserError(f"ZCA whitening of {w}x{h}x{c} images needs a {d}x{d} matrix: it is meant for small "
                        "images such as CIFAR's 32x32; use data.normalize=dataset")
    if n < 2:
        raise UserError(f"ZCA whitening needs at least 2 training images to fit, got {n}")

    def chunks():
        for start in range(0, n, chunk):
            block = np.array(images[start:start + chunk], dtype=np.float64).reshape(-1, d)
            yield _prepare(torch.from_numpy(block), gcn).numpy()

    # Two passes (mean, then centred products): no cancellation in E[xx^T] - mean mean^T.
    # numpy computes x.T @ x as a symmetric rank-k update, half the work of a general product
    # (the whole fit: 77 s for CIFAR-10's 50,000 images on a busy 2-core CPU, once per run).
    mean = np.zeros(d)
    for x in chunks():
        mean += x.sum(0)
    mean /= n
    cov = np.zeros((d, d))
    for x in chunks():
        x -= mean
        cov += x.T @ x
    cov /= n
    eigenvalues, vectors = np.linalg.eigh(cov)
    # Sign and order of eigenvectors do not matter: P is the same matrix for any choice.
    matrix = (vectors / np.sqrt(np.maximum(eigenvalues, 0.0) + epsilon)) @ vectors.T
    matrix = (matrix + matrix.T) / 2  # exactly symmetric, as P is in exact arithmetic
    mean, matrix = torch.from_numpy(mean), torch.from_numpy(matrix)
    return Whitening(mean.float(), matrix.float(), (h, w, c), float(epsilon), float(gcn))


def to_bytes(whitening: Whitening) -> bytes:
    """The fit as safetensors bytes (tensors ``mean``, ``matrix``; shape, epsilon, gcn as metadata),
    for a writer that places the file itself (e.g. beside the weights in a checkpoint)."""
    from safetensors.torch import save as st_save

    return st_save({k: v.contiguous() for k, v in whitening.tensors().items()}, metadata=whitening.metadata())


def save(whitening: Whitening, path: str | Path) -> None:
    """Write the fit as a safetensors file (atomic: the old file or the new one, never torn)."""
    write_atomic(Path(path), to_bytes(whitening))


def load(path: str | Path) -> Whitening:
    """Read a fit written by ``save``; a missing or damaged file is a one-line UserError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: the run's ZCA whitening is missing: the run cannot be evaluated or resumed without it")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        shape = tuple(int(v) for v in meta["shape"].split(","))
        whitening = Whitening(tensors["mean"], tensors["matrix"], shape, float(meta["epsilon"]), float(meta["gcn"]))
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise UserError(f"{path} is not a readable ZCA whitening file ({e}): it is damaged") from None
    d = int(np.prod(shape))
    if len(shape) != 3 or whitening.mean.shape != (d,) or whitening.matrix.shape != (d, d):
        raise UserError(f"{path} is not a readable ZCA whitening file (shapes do not match {shape}): it is damaged")
    return whitening
