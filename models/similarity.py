"""Representation similarity between models: linear CKA (stage 2 of the method), and the
partial CKA of two fine-tuned models given their shared pretrained encoder (:func:`partial_cka`,
which stage 4 reads with ``rep_measure`` "partial_cka").

Centred kernel alignment (CKA; Kornblith et al. 2019, "Similarity of Neural Network
Representations Revisited", ICML) compares two representations ``X`` (n x p) and ``Y`` (n x q) of
the *same* n inputs through their linear Gram matrices ``K = X X^T`` and ``L = Y Y^T``::

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))

It is invariant to orthogonal transforms and to isotropic scaling of either representation (but not
to arbitrary invertible linear maps), equals 1 for identical representations and does not need
``p == q``. Two estimators of the Hilbert-Schmidt independence criterion (HSIC) are provided:

* **biased** (Gretton et al. 2005): ``HSIC(K, L) = tr(K H L H) / (n - 1)^2`` with the centring
  matrix ``H = I - 11^T / n``. For linear kernels and column-centred ``X``, ``Y`` the biased CKA is
  ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``. It is biased upwards for small ``n`` relative to
  the feature dimension (two unrelated random representations get a CKA far from 0).
* **debiased** (default): the unbiased U-statistic estimator of Song et al. 2012 ("Feature
  Selection via Dependence Maximization", JMLR), computed on the Gram matrices with zeroed
  diagonals ``K~``, ``L~``::

      HSIC_u(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2))
                      - 2/(n-2) * 1^T K~ L~ 1] / (n (n-3))

  which needs ``n >= 4``. ``HSIC_u(K, L)`` is the inner product of the U-centred Gram matrices
  (Szekely & Rizzo 2014), so debiased CKA is still a cosine and lies in ``[-1, 1]``; unrelated
  representations get values near 0 whatever ``n`` and the dimensions.
* **minibatch** (Nguyen et al. 2021, "Do Wide and Deep Networks Learn the Same Things?", ICLR):
  the inputs are split into minibatches, the three HSIC terms ``HSIC(K, L)``, ``HSIC(K, K)`` and
  ``HSIC(L, L)`` are summed over the minibatches and CKA is formed once at the end. Only
  minibatch-sized Gram matrices are ever built (Gram memory ``O(T b^2)`` instead of
  ``O(T n^2)``; the float64 copy of the features themselves stays ``O(T n d)`` per layer). With
  the unbiased estimator the accumulated value is an unbiased estimate of the population HSIC for
  any batch size, but it is a *different* estimator from the full-data one (it only uses
  within-minibatch pairs), so the two agree only approximately unless ``batch_size >= n``.

Implementation notes
--------------------
Everything is computed in float64 whatever the input dtype (inputs are copied, never modified).
Each representation is column-centred (and, only if its largest absolute value is outside
``[1e-30, 1e30]``, first divided by it). Neither changes CKA (both estimators are invariant to
isotropic scaling and to adding a constant row vector to every input), but centring removes the
cancellation that offset features cause, and the rescaling keeps the fourth powers in the HSIC
terms away from float64 overflow/underflow. A representation whose centred norm is at most
``1e-12`` of its uncentred norm is rejected as constant (a test relative to scale).

All ``T (T - 1) / 2`` pairs (and all layers) are computed together: every statistic the
estimators need is a function of

* ``F[k, l] = <K~_k, K~_l>_F`` (Frobenius inner products of the diagonal-zeroed Gram matrices; the
  plain centred Gram matrices for the biased estimator),
* the row sums ``r_k = K~_k 1 = X_k (X_k^T 1) - diag(K_k)`` and their totals ``s_k = 1^T r_k``,

so ``HSIC_u = (F + s s^T / ((n-1)(n-2)) - 2/(n-2) R R^T) / (n (n-3))`` is a handful of ``T x T``
matrix operations (``R`` stacks the ``r_k``), and ``HSIC_biased = F / (n-1)^2`` on centred
features. Since the features are centred, ``X_k^T 1 = 0``, so ``r_k = -diag(K_k)`` (the squared
row norms, a by-product of the Gram computation) and ``s_k = -tr K_k``.
``F`` is obtained along one of two paths, whichever needs fewer flops:

* **Gram path** (``n`` small relative to ``T d``): the Gram matrices are produced one horizontal
  strip of ``b = _GRAM_BLOCK`` rows at a time, for all models and layers at once, and only the
  upper block triangle is formed: per strip, one batched GEMM for the diagonal ``b x b`` blocks
  and one for the blocks right of them. Each is flattened and accumulated as ``F += S S^T`` (one
  batched ``T x (b w)`` by ``(b w) x T`` GEMM; weight 2 for the off-diagonal part, which stands
  for its transpose too). This nearly halves the Gram cost, and the workspace is one strip,
  ``O(T b n)``, rather than ``O(T n^2)``.
* **Feature path** (``n`` large relative to ``T d``): ``F[k, l] = ||X_k^T X_l||_F^2`` from one
  GEMM of the concatenated features (``(T d) x n`` by ``n x (T d)``); the zeroed diagonal is
  removed afterwards by subtracting ``sum_i K_k[i, i] K_l[i, i]``.

Representations with different widths are zero-padded to the widest (zero columns do not change
``X X^T``). Layers are processed in chunks of a 32 MiB float64 buffer (see ``_CHUNK_BYTES``), each
chunk batched over its layers and all pairs.

The minibatch split is deterministic: consecutive, in input order, ``[0, b), [b, 2b), ...``; a
trailing minibatch of fewer than 4 inputs (the unbiased estimator's minimum) is merged into the
previous one. Each minibatch's HSIC estimate carries its own ``1 / (m (m - 3))`` factor (biased:
``1 / (m - 1)^2``, on features centred within the minibatch); the estimates are summed and CKA is
formed from the sums. A single minibatch (``batch_size >= n``, or ``n - batch_size < 4``) takes
the full-data code path, so it reproduces the full result bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "CKAError",
    "PartialCKA",
    "cross_cka",
    "layerwise_pairwise_cka",
    "linear_cka",
    "pairwise_cka",
    "partial_cka",
]

_F64 = torch.float64
#: Smallest number of inputs accepted (the unbiased HSIC estimator divides by n - 3).
MIN_INPUTS = 4
#: A representation is "constant" when the Frobenius norm of its column-centred version is at most
#: this fraction of its uncentred norm (a relative test: tiny but varying activations are valid).
_CONSTANT_RTOL = 1e-12
#: A self-HSIC is "degenerate" when it is at most this fraction of the magnitude of the terms it
#: is computed from (the estimate is then zero up to rounding, or negative).
_DEGENERATE_RTOL = 1e-10
#: Representations whose largest absolute value lies in this range are used at their own scale;
#: others are first divided by it, so that the fourth powers in the HSIC terms neither overflow nor
#: underflow in float64.
_SAFE_MAGNITUDE = (1e-30, 1e30)
#: Rows per strip on the Gram path (measured on a 2-core AVX-512 CPU: 64-256 perform alike).
_GRAM_BLOCK = 128
#: Size of the float64 copy of one chunk of groups (layers), in bytes; one buffer is reused for
#: all chunks. Layers are batched together up to this size: on the 2-core AVX-512 machine used for
#: tuning, chunks that stay in the last-level cache (32 MiB) were ~25% faster single-threaded
#: than one 176 MiB chunk for T=8 models x 7 layers x n=1024 x d=384 (fewer page faults, and the
#: element-wise passes of the standardisation hit the cache), and no slower with 2 threads.
_CHUNK_BYTES = 32 << 20
#: Largest ``(T d)^2`` float64 cross-covariance the feature-space path may build, in bytes.
_FEATURE_PATH_BYTES = 256 << 20

#: Maps (group index, member index) inside a batched computation to a human-readable name.
_Labeler = Callable[[int, int], str]
#: ``fill(out, g0)`` writes groups ``g0 .. g0 + len(out)`` of the input, converted to float64, into
#: ``out`` (shape ``(G, T, n, d)``), zero-padding narrower representations.
_Filler = Callable[[torch.Tensor, int], None]


class CKAError(ValueError):
    """Raised when CKA is undefined or the inputs are malformed.

    Covers: fewer than 4 inputs, inputs with different ``n``, wrong number of dimensions, complex,
    NaN or infinite values, representations without features, constant representations (all inputs
    map to the same vector), and, for the debiased estimator, a self-HSIC estimate that is not
    positive. The message names the offending input (e.g. ``reps[3] (layer 2)``).
    """


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, debiased: bool = True) -> float:
    """Linear CKA between two representations of the same inputs.

    Args:
        x: ``(n, p)`` tensor, row ``i`` is the representation of input ``i``. Any real dtype and
            device; the computation runs on ``x``'s device with float64 accumulation.
        y: ``(n, q)`` tensor of the same ``n`` inputs, in the same order (``q`` may differ from
            ``p``).
        debiased: use the unbiased HSIC estimator of Song et al. 2012 (default). With ``False`` the
            classical biased estimator ``tr(KHLH) / (n-1)^2`` of Kornblith et al. 2019 is used.

    Returns:
        The CKA similarity as a Python float: 1 for representations equal up to an orthogonal
        transform and an isotropic scaling, in ``[0, 1]`` for the biased estimator, in ``[-1, 1]``
        (near 0 for unrelated representations) for the debiased one.

    Raises:
        CKAError: ``n < 4``, mismatched ``n``, not 2-D, non-finite values, or a constant or
            (debiased) degenerate representation.
    """
    _check_tensor(x, "x", 2)
    _check_tensor(y, "y", 2)
    n = _common_n([("x", x.shape[0]), ("y", y.shape[0])])
    d = max(x.shape[1], y.shape[1])
    fill = _member_filler([x, y], feature_dim=1, layered=False)
    out = _batched_cka(fill, x.device, 1, 2, n, d, _names(["x", "y"], layered=False), debiased)
    return float(out[0, 0, 1])


def pairwise_cka(
    reps: Sequence[torch.Tensor] | torch.Tensor,
    *,
    debiased: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """CKA between every pair of ``T`` representations of the same ``n`` inputs.

    All pairs are computed together (see the module notes): each Gram matrix is built once (in
    strips), and all ``T x T`` Frobenius inner products come from batched GEMMs, so the cost is
    about that of ``T`` Gram matrices instead of ``T (T - 1)`` of them for a loop over pairs.

    Args:
        reps: a sequence of ``T`` tensors of shape ``(n, d_t)`` (the widths ``d_t`` may differ), or
            one ``(T, n, d)`` tensor. Computation runs on the device of the first entry.
        debiased: unbiased HSIC (default) or the biased estimator (see :func:`linear_cka`).
        batch_size: if given, use the minibatch estimator of Nguyen et al. 2021: the ``n`` inputs
            are split, in order, into consecutive minibatches of ``batch_size`` (a final minibatch
            with fewer than 4 inputs is merged into the previous one), the HSIC matrices of the
            minibatches are summed, and CKA is formed from the sums. Gram-matrix memory is then
            ``O(T * batch_size^2)``. ``batch_size >= n`` gives exactly the full-data result.

    Returns:
        ``(T, T)`` float64 CPU tensor, symmetric, with diagonal exactly 1.0.

    Raises:
        CKAError: see :class:`CKAError`; the message names the offending ``reps[i]``.
    """
    if isinstance(reps, torch.Tensor):
        _check_tensor(reps, "reps", 3)
        if reps.shape[0] == 0:
            raise CKAError("reps is empty: need at least one representation")
        t_count, n, d = reps.shape
        _check_n(n, "reps")
        stacked = reps

        def fill_stacked(out: torch.Tensor, g0: int) -> None:
            out[0].copy_(stacked)

        fill: _Filler = fill_stacked
        device = reps.device
    else:
        items = list(reps)
        if not items:
            raise CKAError("reps is empty: need at least one representation")
        for i, r in enumerate(items):
            _check_tensor(r, f"reps[{i}]", 2)
        t_count = len(items)
        n = _common_n([(f"reps[{i}]", r.shape[0]) for i, r in enumerate(items)])
        d = max(r.shape[1] for r in items)
        fill = _member_filler(items, feature_dim=1, layered=False)
        device = items[0].device
    names = _names([f"reps[{t}]" for t in range(t_count)], layered=False)
    return _batched_cka(fill, device, 1, t_count, n, d, names, debiased, batch_size)[0]


def layerwise_pairwise_cka(
    reps: Sequence[torch.Tensor] | torch.Tensor,
    *,
    debiased: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Pairwise CKA between ``T`` models at every layer.

    Layer ``l`` of model ``k`` is compared with layer ``l`` of every other model. All layers and
    all pairs are batched together, in chunks of as many layers as fit a 32 MiB float64 buffer
    (at least one layer; the buffer is reused), so the workspace stays small: 8 models x 7 layers
    x 2048 inputs x 384 features need about 50 MiB for the buffer plus 16 MiB for one Gram strip.

    Args:
        reps: a ``(T, L1, n, d)`` tensor (``T`` models, ``L1`` layers, e.g. embeddings plus ``L``
            transformer layers, ``n`` inputs, width ``d``), or a sequence of ``T`` tensors of shape
            ``(L1, n, d_t)``.
        debiased: unbiased HSIC (default) or the biased estimator.
        batch_size: minibatch estimator of Nguyen et al. 2021 (see :func:`pairwise_cka`).

    Returns:
        ``(L1, T, T)`` float64 CPU tensor; ``out[l]`` is ``pairwise_cka([r[l] for r in reps])``.

    Raises:
        CKAError: see :class:`CKAError`; the message names ``reps[k] (layer l)``.
    """
    if isinstance(reps, torch.Tensor):
        _check_tensor(reps, "reps", 4)
        t_count, n_layers, n, d = reps.shape
        if t_count == 0 or n_layers == 0:
            raise CKAError(f"reps has shape {tuple(reps.shape)}: need T >= 1 models and L1 >= 1")
        _check_n(n, "reps")
        stacked = reps

        def fill_stacked(out: torch.Tensor, g0: int) -> None:
            out.copy_(stacked[:, g0 : g0 + out.shape[0]].transpose(0, 1))

        fill: _Filler = fill_stacked
        device = reps.device
    else:
        items = list(reps)
        if not items:
            raise CKAError("reps is empty: need at least one model")
        for i, r in enumerate(items):
            _check_tensor(r, f"reps[{i}]", 3)
        t_count = len(items)
        n_layers = _common_size([(f"reps[{i}]", r.shape[0]) for i, r in enumerate(items)], "layers")
        if n_layers == 0:
            raise CKAError("reps have no layers (L1 == 0)")
        n = _common_n([(f"reps[{i}]", r.shape[1]) for i, r in enumerate(items)])
        d = max(r.shape[2] for r in items)
        fill = _member_filler(items, feature_dim=2, layered=True)
        device = items[0].device
    names = _names([f"reps[{t}]" for t in range(t_count)], layered=True)
    return _batched_cka(fill, device, n_layers, t_count, n, d, names, debiased, batch_size)


def cross_cka(
    reps: torch.Tensor,
    ref: torch.Tensor,
    *,
    debiased: bool = True,
) -> torch.Tensor:
    """CKA of each model's layer ``l`` to a reference model's layer ``l`` (e.g. the pretrained
    backbone), i.e. how far fine-tuning moved each layer.

    Computed as one batched pairwise problem over the ``T + 1`` representations per layer (the
    extra model-model pairs cost only ``T x T`` inner products; each Gram matrix is built once).

    Args:
        reps: ``(T, L1, n, d)`` tensor of ``T`` models' layer representations.
        ref: ``(L1, n, d_ref)`` tensor of the reference model's representations of the same inputs
            (``d_ref`` may differ from ``d``).
        debiased: unbiased HSIC (default) or the biased estimator.

    Returns:
        ``(T, L1)`` float64 CPU tensor, ``out[k, l] = linear_cka(reps[k, l], ref[l])``.

    Raises:
        CKAError: see :class:`CKAError`; the message names ``reps[k] (layer l)`` or
            ``ref (layer l)``.
    """
    _check_tensor(reps, "reps", 4)
    _check_tensor(ref, "ref", 3)
    t_count, n_layers, n, d_model = reps.shape
    if t_count == 0 or n_layers == 0:
        raise CKAError(f"reps has shape {tuple(reps.shape)}: need T >= 1 models and L1 >= 1")
    if ref.shape[0] != n_layers:
        raise CKAError(f"ref has {ref.shape[0]} layers but reps has {n_layers}")
    n = _common_n([("reps", n), ("ref", ref.shape[1])])
    d = max(d_model, ref.shape[2])
    d_ref = ref.shape[2]

    def fill(out: torch.Tensor, g0: int) -> None:
        g1 = g0 + out.shape[0]
        out[:, :t_count, :, :d_model].copy_(reps[:, g0:g1].transpose(0, 1))
        out[:, t_count, :, :d_ref].copy_(ref[g0:g1])
        if d_model < d:
            out[:, :t_count, :, d_model:].zero_()
        if d_ref < d:
            out[:, t_count, :, d_ref:].zero_()

    names = _names([*(f"reps[{t}]" for t in range(t_count)), "ref"], layered=True)
    out = _batched_cka(fill, reps.device, n_layers, t_count + 1, n, d, names, debiased)
    return out[:, t_count, :t_count].transpose(0, 1).contiguous()


@dataclass(frozen=True)
class PartialCKA:
    """A pair's partial CKA given the pretrained encoder (:func:`partial_cka`)."""

    per_layer: tuple[float, ...]  # every layer's value, counted or not
    layers: tuple[int, ...]  # the layers where both models moved at least ``move``
    min: float  # smallest value over ``layers``; 1.0 when none
    min_layer: int | None  # where it occurs; None when no layer counts


def partial_cka(
    pair: Sequence[float],
    to_pretrained_a: Sequence[float],
    to_pretrained_b: Sequence[float],
    *,
    move: float,
) -> PartialCKA:
    """How much of their drift from the pretrained encoder two fine-tuned models share, per layer.

    Reading CKA as a correlation, two models ``a`` and ``b`` that each drifted from the shared
    pretrained encoder ``p`` independently have ``CKA(a, b) ~ CKA(a, p) CKA(b, p)``: the raw CKA
    of two models that barely moved is high whatever their tasks. The partial form (the partial
    correlation of ``a`` and ``b`` given ``p``)::

        (C_ab - C_a C_b) / sqrt((1 - C_a^2)(1 - C_b^2))

    with ``C_a = CKA(a, p)`` at the same layer, is near 1 where they moved together and near 0
    or below where they moved apart. It is clipped to ``[-1, 1]`` (CKA is not exactly a
    correlation, so the form can stray a little outside).

    Only layers where *both* models moved at least ``move`` (``1 - C >= move``) count: where a
    model barely moved, its drift is too small to have a direction, and the denominator tends to
    0. A pair with no such layer gets ``min`` 1.0 (its models stayed by the shared encoder, so
    sharing one should not cost them) and ``min_layer`` None.

    Args:
        pair: the pair's CKA per layer (``L + 1`` values).
        to_pretrained_a, to_pretrained_b: each model's CKA to the pretrained encoder per layer.
        move: in ``(0, 1]``.

    Raises:
        ValueError: lengths differ, a value is not finite, or ``move`` is outside ``(0, 1]``.
    """
    if not 0.0 < move <= 1.0:
        raise ValueError(f"move is a drop in CKA and must lie in (0, 1], got {move}")
    if not len(pair) == len(to_pretrained_a) == len(to_pretrained_b):
        raise ValueError(
            f"per-layer CKAs differ in length: pair {len(pair)}, to_pretrained "
            f"{len(to_pretrained_a)} and {len(to_pretrained_b)}"
        )
    values: list[float] = []
    layers: list[int] = []
    for layer, (c, ca, cb) in enumerate(zip(pair, to_pretrained_a, to_pretrained_b, strict=True)):
        c, ca, cb = float(c), float(ca), float(cb)
        if not all(map(math.isfinite, (c, ca, cb))):
            raise ValueError(f"layer {layer}: a CKA is not finite ({c}, {ca}, {cb})")
        spread = math.sqrt(max((1.0 - ca * ca) * (1.0 - cb * cb), 1e-12))
        values.append(min(1.0, max(-1.0, (c - ca * cb) / spread)))
        if 1.0 - ca >= move and 1.0 - cb >= move:
            layers.append(layer)
    if not layers:
        return PartialCKA(tuple(values), (), 1.0, None)
    low = min(layers, key=lambda k: (values[k], k))
    return PartialCKA(tuple(values), tuple(layers), values[low], low)


# --------------------------------------------------------------------------------------------
# Validation and input plumbing
# --------------------------------------------------------------------------------------------


def _check_tensor(x: object, name: str, ndim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise CKAError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise CKAError(
            f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)} ({x.ndim} dimensions)"
        )
    if x.is_complex():
        raise CKAError(f"{name} is complex ({x.dtype}); CKA needs real representations")
    if x.shape[-1] == 0:
        raise CKAError(f"{name} has no features (shape {tuple(x.shape)})")


def _check_n(n: int, name: str) -> None:
    if n < MIN_INPUTS:
        raise CKAError(
            f"{name} has n={n} inputs; CKA needs n >= {MIN_INPUTS} "
            "(the unbiased HSIC estimator divides by n - 3)"
        )


def _common_size(sizes: list[tuple[str, int]], what: str) -> int:
    first_name, first = sizes[0]
    for name, size in sizes[1:]:
        if size != first:
            raise CKAError(
                f"mismatched number of {what}: {name} has {size} but {first_name} has {first}"
            )
    return first


def _common_n(sizes: list[tuple[str, int]]) -> int:
    n = _common_size(sizes, "inputs (n)")
    _check_n(n, sizes[0][0])
    return n


def _names(members: list[str], *, layered: bool) -> _Labeler:
    if layered:
        return lambda g, t: f"{members[t]} (layer {g})"
    return lambda g, t: members[t]


def _member_filler(items: list[torch.Tensor], *, feature_dim: int, layered: bool) -> _Filler:
    """Filler for a list of ``T`` tensors ``(n, d_t)`` (or ``(L1, n, d_t)`` when ``layered``)."""

    def fill(out: torch.Tensor, g0: int) -> None:
        d = out.shape[-1]
        for t, r in enumerate(items):
            width = r.shape[feature_dim]
            src = r[g0 : g0 + out.shape[0]] if layered else r
            out[:, t, :, :width].copy_(src)
            if width < d:
                out[:, t, :, width:].zero_()

    return fill


def _minibatch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` minibatches of ``batch_size`` inputs; a trailing minibatch
    with fewer than 4 inputs is merged into the previous one."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_INPUTS:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


# --------------------------------------------------------------------------------------------
# Batched core
# --------------------------------------------------------------------------------------------


def _batched_cka(
    fill: _Filler,
    device: torch.device,
    n_groups: int,
    t_count: int,
    n: int,
    d: int,
    label: _Labeler,
    debiased: bool,
    batch_size: int | None = None,
) -> torch.Tensor:
    """CKA matrices ``(n_groups, T, T)`` (float64, CPU) for ``n_groups`` independent sets
    (layers) of ``T`` representations each.

    Groups are processed in chunks whose float64 copy fits ``_CHUNK_BYTES`` (one buffer, reused);
    within a chunk everything is batched over groups and pairs.
    """
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise CKAError(f"batch_size must be an int or None, got {batch_size!r}")
        if batch_size < MIN_INPUTS:
            raise CKAError(f"batch_size={batch_size} is too small: minibatches need >= 4 inputs")
    bounds = _minibatch_bounds(n, batch_size) if batch_size is not None else [(0, n)]
    chunk = max(1, min(n_groups, _CHUNK_BYTES // (8 * t_count * n * d)))
    buffer = torch.empty((chunk, t_count, n, d), dtype=_F64, device=device)

    outputs = []
    for g0 in range(0, n_groups, chunk):
        x = buffer[: min(chunk, n_groups - g0)]
        fill(x, g0)
        chunk_label = _offset(label, g0)
        offset_sq = _standardise_(x, chunk_label)
        if len(bounds) == 1:
            hsic, scale, centred_sq = _hsic(x, debiased=debiased, center=False)
        else:
            centred_sq = torch.linalg.vector_norm(x, dim=(-2, -1)).square()
            hsic = x.new_zeros((x.shape[0], t_count, t_count))
            scale = torch.zeros_like(hsic)
            for start, stop in bounds:
                h_b, s_b, _ = _hsic(x[:, :, start:stop], debiased=debiased, center=True)
                hsic += h_b
                scale += s_b
        _check_not_constant(centred_sq, offset_sq, chunk_label, n)
        outputs.append(_normalise(hsic, scale, chunk_label, debiased))
    return torch.cat(outputs).cpu()


def _offset(label: _Labeler, g0: int) -> _Labeler:
    return lambda g, t: label(g0 + g, t)


def _standardise_(x: torch.Tensor, label: _Labeler) -> torch.Tensor:
    """In place on ``x`` ``(G, T, n, d)`` float64: reject non-finite values, bring magnitudes
    into a safe range (see ``_SAFE_MAGNITUDE``) and centre the columns.

    Returns ``n ||mean||^2`` per representation ``(G, T)``, the part of the squared Frobenius norm
    that centring removed (for :func:`_check_not_constant`).
    """
    n = x.shape[-2]
    flat = x.view(x.shape[0], x.shape[1], -1)
    # max |x| per representation; amax/amin propagate NaN (and are much faster than an inf-norm).
    amax = torch.maximum(flat.amax(dim=-1), -flat.amin(dim=-1))
    bad = ~torch.isfinite(amax)
    if bool(bad.any()):
        g, t = (int(i) for i in bad.nonzero()[0])
        raise CKAError(f"{label(g, t)} contains NaN or infinite values")
    lo, hi = _SAFE_MAGNITUDE
    if not bool(((amax >= lo) & (amax <= hi)).all()):
        x.div_(torch.where(amax > 0, amax, torch.ones_like(amax))[..., None, None])
    mean = x.mean(dim=-2, keepdim=True)
    x.sub_(mean)
    return n * mean.square().sum(dim=(-2, -1))


def _check_not_constant(
    centred_sq: torch.Tensor, offset_sq: torch.Tensor, label: _Labeler, n: int
) -> None:
    """Reject constant representations, relative to scale: the centred Frobenius norm must exceed
    ``_CONSTANT_RTOL`` times the uncentred one, ``sqrt(centred_sq + offset_sq)`` (so
    ``1e-30 * randn`` is valid and ``[c, c, ...]`` is not, even though rounding leaves a ~1e-16
    relative residue after centring)."""
    centred = centred_sq.sqrt()
    raw = (centred_sq + offset_sq).sqrt()
    bad = ~(centred > _CONSTANT_RTOL * raw)  # also true when raw == 0 (all-zero input)
    if bool(bad.any()):
        g, t = (int(i) for i in bad.nonzero()[0])
        spread = float(centred[g, t] / raw[g, t]) if raw[g, t] > 0 else 0.0
        raise CKAError(
            f"{label(g, t)} is constant: all n={n} inputs map to the same vector (relative "
            f"spread {spread:.1e}), so its centred Gram matrix is zero and CKA is undefined"
        )


def _use_feature_path(t_count: int, n: int, d: int) -> bool:
    """Pick the path with fewer flops: strips of the Gram matrices (``~T n^2 d / 2`` plus the
    ``T^2 n^2 / 2`` inner products) or one ``(T d) x n x (T d)`` feature-space GEMM; the latter
    only while its ``(T d)^2`` output stays small."""
    block = min(_GRAM_BLOCK, n)
    gram = t_count * n * (n + block) / 2 * (d + t_count)
    feature = n * (t_count * d) ** 2
    return feature < gram and 8 * (t_count * d) ** 2 <= _FEATURE_PATH_BYTES


def _hsic(
    x: torch.Tensor, *, debiased: bool, center: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSIC estimates between all members of each group.

    Args:
        x: ``(G, T, m, d)`` float64 representations (of the ``m`` inputs of one minibatch or of all
            inputs).
        debiased: unbiased (Song et al. 2012) or biased estimator.
        center: column-centre ``x`` first; pass ``False`` only when ``x`` is already centred.
            Both estimators are invariant to centring, and the formulas below use it: for centred
            ``x``, ``K 1 = 0``, so the row sums of ``K~`` are ``-diag(K)`` and
            ``1^T K~ 1 = -tr K``, and ``HSIC_u(K, L) = [<K~, L~> + tr K tr L / ((m-1)(m-2))
            - 2/(m-2) diag(K).diag(L)] / (m (m-3))``.

    Returns:
        ``(hsic, scale, trace)``: the ``(G, T, T)`` HSIC matrix, the ``(G, T, T)`` magnitude of the
        terms it was computed from (to decide when a self-HSIC is zero up to rounding), and the
        ``(G, T)`` traces ``tr K = ||x||_F^2``.
    """
    if center:
        x = x - x.mean(dim=-2, keepdim=True)
    m = x.shape[-2]
    products, diag = _gram_inner_products(x, zero_diagonal=debiased)
    trace = diag.sum(dim=-1)
    if not debiased:
        hsic = products / float((m - 1) ** 2)
        return hsic, hsic.abs(), trace
    # x is centred, so K 1 = x (x^T 1) = 0: the row sums of K~ are -diag(K) and 1^T K~ 1 = -tr K.
    outer = trace.unsqueeze(-1) * trace.unsqueeze(-2) / float((m - 1) * (m - 2))
    cross = (diag @ diag.transpose(-1, -2)) * (2.0 / (m - 2))
    norm = float(m * (m - 3))
    hsic = (products + outer - cross) / norm
    scale = (products.abs() + outer.abs() + cross.abs()) / norm
    return hsic, scale, trace


def _gram_inner_products(
    x: torch.Tensor, *, zero_diagonal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``F[g, k, l] = <K_gk, K_gl>_F`` with ``K_gk = x[g, k] x[g, k]^T`` (diagonal set to zero
    when ``zero_diagonal``), for all ``g, k, l``; ``x`` is ``(G, T, m, d)`` float64.

    Also returns the diagonals ``K_gk[i, i]`` as a ``(G, T, m)`` tensor."""
    n_groups, t_count, m, d = x.shape
    if _use_feature_path(t_count, m, d):
        feats = x.permute(0, 2, 1, 3).reshape(n_groups, m, t_count * d)
        cov = feats.transpose(1, 2) @ feats  # (G, T d, T d): blocks X_k^T X_l
        out = cov.view(n_groups, t_count, d, t_count, d).square_().sum(dim=(2, 4))
        diag = torch.linalg.vector_norm(x, dim=-1).square()  # (G, T, m)
        if zero_diagonal:
            out -= diag @ diag.transpose(1, 2)
    else:
        flat_x = x.reshape(n_groups * t_count, m, d)
        out = x.new_zeros((n_groups, t_count, t_count))
        diag = x.new_empty((n_groups * t_count, m))
        block = min(_GRAM_BLOCK, m)
        # Workspaces for one strip (diagonal block + the blocks right of it), reused.
        diag_space = x.new_empty(n_groups * t_count * block * block)
        off_space = x.new_empty(n_groups * t_count * block * max(m - block, 0))
        for start in range(0, m, block):
            stop = min(start + block, m)
            rows = flat_x[:, start:stop]
            width = stop - start
            # Diagonal block K[start:stop, start:stop] of every Gram matrix: counts once.
            diag_block = diag_space[: n_groups * t_count * width * width].view(-1, width, width)
            torch.bmm(rows, rows.transpose(1, 2), out=diag_block)
            block_diag = diag_block.diagonal(dim1=-2, dim2=-1)
            diag[:, start:stop] = block_diag
            if zero_diagonal:
                block_diag.zero_()
            flat = diag_block.view(n_groups, t_count, -1)
            out.baddbmm_(flat, flat.transpose(1, 2))
            if stop < m:
                # K[start:stop, stop:] (upper triangle): counts twice, for K[stop:, start:] too.
                off = off_space[: n_groups * t_count * width * (m - stop)].view(-1, width, m - stop)
                torch.bmm(rows, flat_x[:, stop:].transpose(1, 2), out=off)
                flat = off.view(n_groups, t_count, -1)
                out.baddbmm_(flat, flat.transpose(1, 2), alpha=2.0)
        diag = diag.view(n_groups, t_count, m)
    return 0.5 * (out + out.transpose(1, 2)), diag


def _normalise(
    hsic: torch.Tensor, scale: torch.Tensor, label: _Labeler, debiased: bool
) -> torch.Tensor:
    """CKA from HSIC matrices ``(G, T, T)``; raises on a non-positive (degenerate) self-HSIC."""
    self_hsic = hsic.diagonal(dim1=-2, dim2=-1)
    self_scale = scale.diagonal(dim1=-2, dim2=-1)
    bad = ~(self_hsic > _DEGENERATE_RTOL * self_scale)
    if bool(bad.any()):
        g, t = (int(i) for i in bad.nonzero()[0])
        estimator = "unbiased" if debiased else "biased"
        raise CKAError(
            f"{label(g, t)} is degenerate: its {estimator} self-HSIC estimate is "
            f"{float(self_hsic[g, t]):.3e} (not positive relative to its scale "
            f"{float(self_scale[g, t]):.3e}), so CKA is undefined. This happens when the "
            "centred Gram matrix has no structure beyond row/column effects (e.g. one-hot "
            "features with n equal to the width) or when n is very small"
        )
    inv = self_hsic.rsqrt()
    cka = hsic * inv.unsqueeze(-1) * inv.unsqueeze(-2)
    cka = 0.5 * (cka + cka.transpose(-1, -2))
    cka.clamp_(-1.0, 1.0)  # Cauchy-Schwarz holds exactly; only rounding can exceed it
    cka.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return cka
