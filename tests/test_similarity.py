"""Tests for models.similarity (linear CKA, stage 2 of the method).

The reference implementations below are deliberately naive: explicit centring matrices
``H = I - 11^T / n`` and the textbook formulas, in numpy float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models import similarity
from models.similarity import (
    CKAError,
    cross_cka,
    layerwise_pairwise_cka,
    linear_cka,
    pairwise_cka,
    partial_cka,
)

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --------------------------------------------------------------------------------------------
# Textbook float64 references
# --------------------------------------------------------------------------------------------


def ref_hsic(k: np.ndarray, l: np.ndarray, debiased: bool) -> float:  # noqa: E741
    """HSIC of two n x n Gram matrices, straight from the formulas."""
    n = k.shape[0]
    if not debiased:
        h = np.eye(n) - np.ones((n, n)) / n
        return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)
    kt = k.copy()
    lt = l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    value = (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    )
    return float(value / (n * (n - 3)))


def ref_cka(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    k = x @ x.T
    l = y @ y.T  # noqa: E741
    return ref_hsic(k, l, debiased) / math.sqrt(ref_hsic(k, k, debiased) * ref_hsic(l, l, debiased))


def ref_minibatch_cka(reps: list[np.ndarray], batch_size: int, debiased: bool) -> np.ndarray:
    """Nguyen et al. 2021: sum the HSIC matrices over consecutive minibatches (a trailing
    minibatch of < 4 inputs merged into the previous one), normalise at the end."""
    n = reps[0].shape[0]
    starts = list(range(0, n, batch_size))
    bounds = [(s, min(s + batch_size, n)) for s in starts]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 4:
        bounds = [*bounds[:-2], (bounds[-2][0], n)]
    t = len(reps)
    acc = np.zeros((t, t))
    for start, stop in bounds:
        grams = [r[start:stop] @ r[start:stop].T for r in reps]
        for i in range(t):
            for j in range(t):
                acc[i, j] += ref_hsic(grams[i], grams[j], debiased)
    d = np.sqrt(np.diag(acc))
    return acc / np.outer(d, d)


def self_hsic_conditioning(x: np.ndarray) -> float:
    """Debiased self-HSIC relative to the magnitude of its terms (small = near-degenerate)."""
    xc = x - x.mean(axis=0)
    if np.linalg.norm(xc) <= 1e-6 * np.linalg.norm(x):
        return 0.0  # (numerically) constant
    k = xc @ xc.T
    n = k.shape[0]
    kt = k.copy()
    np.fill_diagonal(kt, 0.0)
    one = np.ones(n)
    terms = [
        np.trace(kt @ kt),
        (one @ kt @ one) ** 2 / ((n - 1) * (n - 2)),
        2.0 / (n - 2) * (one @ kt @ kt @ one),
    ]
    value = terms[0] + terms[1] - terms[2]
    return float(value / sum(abs(v) for v in terms)) if any(terms) else 0.0


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# Hypothesis strategies
# --------------------------------------------------------------------------------------------


@st.composite
def rep_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Two related, well-conditioned representations of the same n inputs, at varied scales,
    offsets, widths and signal strengths."""
    n = draw(st.integers(4, 24))
    p = draw(st.integers(1, 8))
    q = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = 10.0 ** draw(st.integers(-8, 8))
    offset = draw(st.sampled_from([0.0, 1.0, -30.0]))
    coupling = draw(st.floats(0.0, 3.0))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, p)) + offset) * scale
    y = coupling * (x / scale) @ rng.standard_normal((p, q)) + rng.standard_normal((n, q))
    if draw(st.booleans()):
        y = np.tanh(y)  # a nonlinear relation
    assume(self_hsic_conditioning(x) > 1e-3 and self_hsic_conditioning(y) > 1e-3)
    return x, y


def random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


estimators = pytest.mark.parametrize("debiased", [True, False], ids=["debiased", "biased"])


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@estimators
@PROPERTY_SETTINGS
@given(pair=rep_pairs())
def test_self_similarity_is_one(debiased: bool, pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = pair
    assert linear_cka(t64(x), t64(x), debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    mat = pairwise_cka([t64(x), t64(x)], debiased=debiased)
    assert float(mat[0, 1]) == pytest.approx(1.0, abs=1e-12)


@estimators
@PROPERTY_SETTINGS
@given(pair=rep_pairs())
def test_symmetric_and_finite(debiased: bool, pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = pair
    a = linear_cka(t64(x), t64(y), debiased=debiased)
    b = linear_cka(t64(y), t64(x), debiased=debiased)
    assert math.isfinite(a)
    assert a == pytest.approx(b, abs=1e-12)
    assert -1.0 <= a <= 1.0
    if not debiased:
        assert a >= 0.0
    mat = pairwise_cka([t64(x), t64(y)], debiased=debiased)
    assert torch.equal(mat, mat.T)
    assert bool(torch.isfinite(mat).all())


@estimators
@PROPERTY_SETTINGS
@given(pair=rep_pairs(), seed=st.integers(0, 2**32 - 1))
def test_invariant_to_orthogonal_transform(
    debiased: bool, pair: tuple[np.ndarray, np.ndarray], seed: int
) -> None:
    x, y = pair
    rng = np.random.default_rng(seed)
    base = linear_cka(t64(x), t64(y), debiased=debiased)
    qx = random_orthogonal(x.shape[1], rng)
    qy = random_orthogonal(y.shape[1], rng)
    assert linear_cka(t64(x @ qx), t64(y), debiased=debiased) == pytest.approx(base, abs=1e-9)
    assert linear_cka(t64(x @ qx), t64(y @ qy), debiased=debiased) == pytest.approx(base, abs=1e-9)


@estimators
@PROPERTY_SETTINGS
@given(
    pair=rep_pairs(),
    mantissa=st.floats(0.1, 10.0),
    exponent=st.integers(-40, 40),
    sign=st.sampled_from([1.0, -1.0]),
)
def test_invariant_to_isotropic_scaling(
    debiased: bool,
    pair: tuple[np.ndarray, np.ndarray],
    mantissa: float,
    exponent: int,
    sign: float,
) -> None:
    x, y = pair
    alpha = sign * mantissa * 10.0**exponent
    base = linear_cka(t64(x), t64(y), debiased=debiased)
    assert linear_cka(t64(alpha * x), t64(y), debiased=debiased) == pytest.approx(base, abs=1e-9)
    assert linear_cka(t64(x), t64(y * alpha), debiased=debiased) == pytest.approx(base, abs=1e-9)


@estimators
@PROPERTY_SETTINGS
@given(pair=rep_pairs())
def test_matches_textbook_reference(debiased: bool, pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = pair

    # The implementation gets the raw data; the naive reference (uncentred Gram matrices) gets
    # centred, unit-scale data, since it would lose digits to cancellation on offset inputs.
    def tidy(a: np.ndarray) -> np.ndarray:
        a = a - a.mean(axis=0)
        return a / np.abs(a).max()

    expected = ref_cka(tidy(x), tidy(y), debiased)
    assert linear_cka(t64(x), t64(y), debiased=debiased) == pytest.approx(expected, abs=1e-6)


@estimators
@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 9),
    p=st.integers(1, 4),
)
def test_any_finite_input_gives_finite_value_or_ckaerror(
    debiased: bool, data: st.DataObject, n: int, p: int
) -> None:
    """Arbitrary finite inputs (zeros, duplicates, 1e-300, 1e300, ...): never NaN."""
    elements = st.floats(allow_nan=False, allow_infinity=False, width=64)
    x = data.draw(hnp.arrays(np.float64, (n, p), elements=elements))
    y = data.draw(hnp.arrays(np.float64, (n, p + 1), elements=elements))
    try:
        value = linear_cka(t64(x), t64(y), debiased=debiased)
    except CKAError:
        return
    assert math.isfinite(value)
    assert -1.0 <= value <= 1.0


# --------------------------------------------------------------------------------------------
# Agreement with the reference on fixed cases
# --------------------------------------------------------------------------------------------


@estimators
@pytest.mark.parametrize(
    ("n", "p", "q"), [(4, 2, 3), (5, 1, 1), (17, 3, 40), (64, 16, 8), (300, 5, 7)]
)
def test_reference_fixed_cases(debiased: bool, n: int, p: int, q: int) -> None:
    rng = np.random.default_rng(n * 100 + p * 10 + q)
    x = rng.standard_normal((n, p)) + 0.5
    y = np.sin(x @ rng.standard_normal((p, q))) + 0.3 * rng.standard_normal((n, q))
    assert linear_cka(t64(x), t64(y), debiased=debiased) == pytest.approx(
        ref_cka(x, y, debiased), abs=1e-6
    )


@estimators
def test_biased_feature_space_identity(debiased: bool) -> None:
    """Biased CKA equals ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred features."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 6))
    y = x @ rng.standard_normal((6, 4)) + rng.standard_normal((50, 4))
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = np.linalg.norm(yc.T @ xc) ** 2 / (
        np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    )
    assert linear_cka(t64(x), t64(y), debiased=False) == pytest.approx(expected, abs=1e-12)


def test_debiased_is_near_zero_for_unrelated_wide_representations() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 512, generator=gen)
    y = torch.randn(64, 512, generator=gen)
    assert abs(linear_cka(x, y)) < 0.05
    assert linear_cka(x, y, debiased=False) > 0.5  # the biased estimator's known inflation


# --------------------------------------------------------------------------------------------
# Batched variants equal their loops
# --------------------------------------------------------------------------------------------


def make_models(t: int, layers: int, n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(layers, n, d, generator=gen, dtype=torch.float64)
    return torch.stack(
        [
            base + (0.3 + 0.4 * k) * torch.randn(layers, n, d, generator=gen, dtype=torch.float64)
            for k in range(t)
        ]
    )


def loop_pairwise(reps: list[torch.Tensor], debiased: bool) -> torch.Tensor:
    t = len(reps)
    out = torch.ones(t, t, dtype=torch.float64)
    for i in range(t):
        for j in range(t):
            if i != j:
                out[i, j] = linear_cka(reps[i], reps[j], debiased=debiased)
    return out


@estimators
@pytest.mark.parametrize(
    ("n", "widths"),
    [
        (40, [6, 6, 6, 6, 6]),  # equal widths, Gram path with a single strip
        (300, [5, 9, 1, 64, 5]),  # ragged widths (zero-padded), several strips (300 = 128+128+44)
        (2000, [3, 3, 2, 3]),  # n >> T d: feature-space path
    ],
)
def test_pairwise_equals_loop_of_linear_cka(debiased: bool, n: int, widths: list[int]) -> None:
    gen = torch.Generator().manual_seed(n)
    shared = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    reps = [
        torch.cat([shared, torch.randn(n, w, generator=gen, dtype=torch.float64)], 1)[:, :w]
        + 0.5 * torch.randn(n, w, generator=gen, dtype=torch.float64)
        for w in widths
    ]
    mat = pairwise_cka(reps, debiased=debiased)
    assert mat.dtype == torch.float64
    assert mat.device.type == "cpu"
    assert mat.shape == (len(reps), len(reps))
    assert torch.equal(mat, mat.T)
    assert torch.equal(mat.diagonal(), torch.ones(len(reps), dtype=torch.float64))
    torch.testing.assert_close(mat, loop_pairwise(reps, debiased), atol=1e-10, rtol=0)
    if len(set(widths)) == 1:
        torch.testing.assert_close(pairwise_cka(torch.stack(reps), debiased=debiased), mat)


@estimators
@pytest.mark.parametrize("feature_path", [True, False], ids=["feature-path", "gram-path"])
def test_both_inner_product_paths_agree_with_reference(
    debiased: bool, feature_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(similarity, "_use_feature_path", lambda t, n, d: feature_path)
    rng = np.random.default_rng(7)
    reps = [rng.standard_normal((150, w)) for w in (4, 4, 9)]
    reps[1] = reps[1] + reps[0]
    mat = pairwise_cka([t64(r) for r in reps], debiased=debiased).numpy()
    for i in range(3):
        for j in range(3):
            assert mat[i, j] == pytest.approx(ref_cka(reps[i], reps[j], debiased), abs=1e-10)


def test_pairwise_single_representation() -> None:
    out = pairwise_cka([torch.randn(10, 3)])
    assert torch.equal(out, torch.ones(1, 1, dtype=torch.float64))


@estimators
def test_layerwise_equals_loop_over_layers(debiased: bool) -> None:
    reps = make_models(t=4, layers=3, n=40, d=6)
    out = layerwise_pairwise_cka(reps, debiased=debiased)
    assert out.shape == (3, 4, 4)
    assert out.dtype == torch.float64
    for layer in range(3):
        expected = pairwise_cka([reps[k, layer] for k in range(4)], debiased=debiased)
        torch.testing.assert_close(out[layer], expected, atol=1e-12, rtol=0)
        torch.testing.assert_close(
            out[layer],
            loop_pairwise([reps[k, layer] for k in range(4)], debiased),
            atol=1e-10,
            rtol=0,
        )
    # Sequence input (here with ragged widths) gives the same as slicing per layer.
    ragged = [reps[k, :, :, : 6 - k] for k in range(4)]
    out_ragged = layerwise_pairwise_cka(ragged, debiased=debiased)
    for layer in range(3):
        expected = pairwise_cka([r[layer] for r in ragged], debiased=debiased)
        torch.testing.assert_close(out_ragged[layer], expected, atol=1e-12, rtol=0)


def test_layerwise_non_contiguous_input() -> None:
    reps = make_models(t=3, layers=2, n=20, d=5)
    permuted = reps.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    assert not permuted.is_contiguous()
    torch.testing.assert_close(layerwise_pairwise_cka(permuted), layerwise_pairwise_cka(reps))


@estimators
def test_cross_equals_loop(debiased: bool) -> None:
    reps = make_models(t=3, layers=4, n=30, d=5, seed=1)
    gen = torch.Generator().manual_seed(5)
    ref = reps[0, :, :, :4] + 0.2 * torch.randn(4, 30, 4, generator=gen, dtype=torch.float64)
    out = cross_cka(reps, ref, debiased=debiased)
    assert out.shape == (3, 4)
    assert out.dtype == torch.float64
    expected = torch.tensor(
        [
            [linear_cka(reps[k, layer], ref[layer], debiased=debiased) for layer in range(4)]
            for k in range(3)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)
    # A model identical to the reference has CKA 1 at every layer.
    same = cross_cka(reps, reps[2], debiased=debiased)
    torch.testing.assert_close(same[2], torch.ones(4, dtype=torch.float64), atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------
# Minibatch estimator (Nguyen et al. 2021)
# --------------------------------------------------------------------------------------------


@estimators
@pytest.mark.parametrize("batch_size", [4, 7, 8, 10, 16, 49])
def test_minibatch_matches_reference(debiased: bool, batch_size: int) -> None:
    # n = 50: batch 7 -> 7 x 7 + 1 (the 1 is merged), 8 -> 6 x 8 + 2 (merged), 16 -> 3 x 16 + 2,
    # 49 -> 49 + 1 -> one minibatch of 50 (the full estimator).
    rng = np.random.default_rng(batch_size)
    base = rng.standard_normal((50, 5))
    reps = [base + 0.7 * rng.standard_normal((50, 5)), rng.standard_normal((50, 3)), base[:, :2]]
    got = pairwise_cka([t64(r) for r in reps], debiased=debiased, batch_size=batch_size)
    expected = ref_minibatch_cka(reps, batch_size, debiased)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9, rtol=0)


@estimators
def test_minibatch_with_batch_at_least_n_is_exactly_full(debiased: bool) -> None:
    reps = make_models(t=4, layers=2, n=64, d=8)
    full = layerwise_pairwise_cka(reps, debiased=debiased)
    for batch_size in (64, 65, 1000, 62):  # 62 -> 62 + 2 -> merged into a single minibatch
        mb = layerwise_pairwise_cka(reps, debiased=debiased, batch_size=batch_size)
        assert torch.equal(mb, full)
    flat = [reps[k, 0] for k in range(4)]
    assert torch.equal(pairwise_cka(flat, debiased=debiased, batch_size=64), full[0])


def test_minibatch_approaches_full_estimator_as_batch_grows() -> None:
    reps = make_models(t=4, layers=1, n=1024, d=16, seed=3)[:, 0]
    full = pairwise_cka(list(reps))
    errors = [
        float((pairwise_cka(list(reps), batch_size=b) - full).abs().max()) for b in (16, 128, 512)
    ]
    assert errors[2] < errors[0]
    assert errors[2] < 0.02
    assert all(e > 0 for e in errors)


@estimators
def test_layerwise_minibatch_equals_loop(debiased: bool) -> None:
    reps = make_models(t=3, layers=3, n=45, d=4, seed=2)
    out = layerwise_pairwise_cka(reps, debiased=debiased, batch_size=10)
    for layer in range(3):
        expected = pairwise_cka(
            [reps[k, layer] for k in range(3)], debiased=debiased, batch_size=10
        )
        torch.testing.assert_close(out[layer], expected, atol=1e-12, rtol=0)


def test_minibatch_constant_within_one_batch_is_fine() -> None:
    """A representation that is constant inside one minibatch only contributes zero there."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    x[:10] = 1.0
    y = x + 0.1 * torch.randn(40, 3, generator=gen, dtype=torch.float64)
    out = pairwise_cka([x, y], batch_size=10)
    assert bool(torch.isfinite(out).all())
    assert 0.5 < float(out[0, 1]) <= 1.0


@pytest.mark.parametrize("batch_size", [3, 0, -5, 2.5, True])
def test_minibatch_rejects_bad_batch_size(batch_size: object) -> None:
    with pytest.raises(CKAError, match="batch_size"):
        pairwise_cka([torch.randn(20, 3), torch.randn(20, 3)], batch_size=batch_size)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Dtypes, scale, inputs untouched
# --------------------------------------------------------------------------------------------


@estimators
def test_float32_input_is_float64_accurate(debiased: bool) -> None:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(200, 30, generator=gen) + 3.0
    y = torch.tanh(x @ torch.randn(30, 20, generator=gen)) + 0.1 * torch.randn(
        200, 20, generator=gen
    )
    got = linear_cka(x, y, debiased=debiased)
    assert got == linear_cka(x.double(), y.double(), debiased=debiased)
    assert got == pytest.approx(ref_cka(x.double().numpy(), y.double().numpy(), debiased), abs=1e-9)
    reps = [x, y, x[:, :5]]
    torch.testing.assert_close(
        pairwise_cka(reps, debiased=debiased),
        pairwise_cka([r.double() for r in reps], debiased=debiased),
        atol=1e-14,
        rtol=0,
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_other_real_dtypes_are_accepted(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(32, 4, generator=gen) * 10).to(dtype)
    y = (torch.randn(32, 4, generator=gen) * 10).to(dtype)
    assert linear_cka(x, y) == pytest.approx(linear_cka(x.double(), y.double()), abs=1e-12)


def test_tiny_and_offset_representations_are_valid() -> None:
    """Constant detection is relative to scale: small or offset but varying inputs are fine."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(4, 3, generator=gen, dtype=torch.float64) + torch.randn(
        50, 3, generator=gen, dtype=torch.float64
    )
    base = linear_cka(x, y)
    tiny = (1e-30 * x).float()  # a valid float32 representation of norm ~1e-29
    assert linear_cka(tiny, y) == pytest.approx(base, abs=1e-6)  # float32 rounding of x only
    assert linear_cka(1e-300 * x, y) == pytest.approx(base, abs=1e-9)
    assert linear_cka(1e300 * x, y) == pytest.approx(base, abs=1e-9)
    assert linear_cka(1e4 + 1e-4 * x, y) == pytest.approx(base, abs=1e-6)


def test_inputs_are_not_modified() -> None:
    gen = torch.Generator().manual_seed(0)
    reps = make_models(t=3, layers=2, n=20, d=4)
    x = torch.randn(20, 4, generator=gen, dtype=torch.float64) + 5
    copies = (reps.clone(), x.clone())
    linear_cka(x, reps[0, 0])
    pairwise_cka([x, reps[1, 0]])
    pairwise_cka(reps[:, 0])
    layerwise_pairwise_cka(reps, batch_size=8)
    cross_cka(reps, reps[0])
    assert torch.equal(reps, copies[0])
    assert torch.equal(x, copies[1])


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@estimators
@pytest.mark.parametrize("n", [1, 2, 3])
def test_too_few_inputs(debiased: bool, n: int) -> None:
    with pytest.raises(CKAError, match=rf"n={n} inputs; CKA needs n >= 4"):
        linear_cka(torch.randn(n, 3), torch.randn(n, 2), debiased=debiased)
    with pytest.raises(CKAError, match="n >= 4"):
        pairwise_cka([torch.randn(n, 3), torch.randn(n, 3)], debiased=debiased)
    with pytest.raises(CKAError, match="n >= 4"):
        layerwise_pairwise_cka(torch.randn(2, 2, n, 3), debiased=debiased)


@estimators
@pytest.mark.parametrize(
    "constant",
    [
        torch.full((10, 3), 5.3),
        torch.zeros(10, 3),
        torch.tensor([[0.1, 7.3, -2e5]]).repeat(10, 1),
        torch.full((10, 1), 1e-30),
    ],
    ids=["fives", "zeros", "mixed-columns", "tiny"],
)
def test_constant_representation(debiased: bool, constant: torch.Tensor) -> None:
    other = torch.randn(10, 3)
    with pytest.raises(CKAError, match=r"^x is constant"):
        linear_cka(constant, other, debiased=debiased)
    with pytest.raises(CKAError, match=r"^y is constant"):
        linear_cka(other, constant.double(), debiased=debiased)
    with pytest.raises(CKAError, match=r"^reps\[2\] is constant"):
        pairwise_cka([other, other + 1, constant, other], debiased=debiased)


def test_constant_layer_is_named() -> None:
    reps = make_models(t=3, layers=4, n=12, d=3)
    reps[1, 2] = 7.0
    with pytest.raises(CKAError, match=r"^reps\[1\] \(layer 2\) is constant"):
        layerwise_pairwise_cka(reps)
    with pytest.raises(CKAError, match=r"^reps\[1\] \(layer 2\) is constant"):
        cross_cka(reps, reps[0])
    with pytest.raises(CKAError, match=r"^ref \(layer 2\) is constant"):
        cross_cka(reps[[0, 2]], reps[1])


def test_degenerate_debiased_self_hsic() -> None:
    """One-hot features with n == width: the U-centred Gram matrix is zero, so the unbiased
    self-HSIC is 0 (the biased estimator is still defined)."""
    x = torch.eye(6)
    y = torch.randn(6, 2)
    with pytest.raises(CKAError, match=r"^x is degenerate"):
        linear_cka(x, y)
    with pytest.raises(CKAError, match=r"^reps\[1\] is degenerate"):
        pairwise_cka([y, x])
    assert math.isfinite(linear_cka(x, y, debiased=False))


def test_mismatched_n() -> None:
    with pytest.raises(CKAError, match="mismatched number of inputs"):
        linear_cka(torch.randn(10, 3), torch.randn(11, 3))
    with pytest.raises(CKAError, match=r"reps\[1\] has 9 but reps\[0\] has 10"):
        pairwise_cka([torch.randn(10, 3), torch.randn(9, 3)])
    with pytest.raises(CKAError, match="mismatched number of inputs"):
        cross_cka(torch.randn(2, 3, 10, 4), torch.randn(3, 11, 4))
    with pytest.raises(CKAError, match="layers"):
        cross_cka(torch.randn(2, 3, 10, 4), torch.randn(2, 10, 4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values(bad: float) -> None:
    x = torch.randn(10, 3)
    x[4, 1] = bad
    with pytest.raises(CKAError, match=r"^x contains NaN or infinite"):
        linear_cka(x, torch.randn(10, 2))
    with pytest.raises(CKAError, match=r"^y contains NaN or infinite"):
        linear_cka(torch.randn(10, 2), x)
    with pytest.raises(CKAError, match=r"^reps\[1\] contains NaN"):
        pairwise_cka([torch.randn(10, 3), x])
    reps = torch.randn(2, 3, 10, 3)
    reps[1, 2] = x
    with pytest.raises(CKAError, match=r"^reps\[1\] \(layer 2\) contains NaN"):
        layerwise_pairwise_cka(reps)


def test_wrong_shapes_and_types() -> None:
    with pytest.raises(CKAError, match="2 dimensions"):
        linear_cka(torch.randn(10), torch.randn(10, 2))
    with pytest.raises(CKAError, match="no features"):
        linear_cka(torch.randn(10, 0), torch.randn(10, 2))
    with pytest.raises(CKAError, match=r"torch\.Tensor"):
        linear_cka(np.ones((10, 2)), torch.randn(10, 2))  # type: ignore[arg-type]
    with pytest.raises(CKAError, match="complex"):
        linear_cka(torch.randn(10, 2, dtype=torch.complex64), torch.randn(10, 2))
    with pytest.raises(CKAError, match="empty"):
        pairwise_cka([])
    with pytest.raises(CKAError, match="4 dimensions"):
        layerwise_pairwise_cka(torch.randn(3, 10, 4))
    with pytest.raises(CKAError, match=r"reps\[0\] must have 3 dimensions"):
        layerwise_pairwise_cka([torch.randn(10, 4)])


def test_ckaerror_is_a_valueerror() -> None:
    assert issubclass(CKAError, ValueError)


# --------------------------------------------------------------------------------------------
# Partial CKA given the pretrained encoder (stage 4's rep_measure "partial_cka")

drop = st.floats(-0.5, 1.0, allow_nan=False)


def test_partial_cka_is_the_share_of_the_drift_two_models_share() -> None:
    # Three layers; every model moved to CKA 0.6 from the pretrained encoder at layers 1 and 2.
    drift = [1.0, 0.6, 0.6]
    together = partial_cka([1.0, 1.0, 1.0], drift, drift, move=0.2)
    apart = partial_cka([1.0, 0.36, 0.68], drift, drift, move=0.2)
    assert together.min == pytest.approx(1.0) and together.layers == (1, 2)
    # 0.36 = 0.6 x 0.6: what two models that drifted independently share.
    assert apart.per_layer[1] == pytest.approx(0.0, abs=1e-12)
    assert apart.per_layer[2] == pytest.approx((0.68 - 0.36) / 0.64)
    assert (apart.min, apart.min_layer) == (pytest.approx(0.0, abs=1e-12), 1)
    # Layer 0 did not move: it is computed (guarded) but not read.
    assert 0 not in apart.layers and math.isfinite(apart.per_layer[0])
    # No layer where both moved 0.5: the models stayed by the shared encoder.
    still = partial_cka([1.0, 0.36, 0.68], drift, drift, move=0.5)
    assert (still.min, still.min_layer, still.layers) == (1.0, None, ())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(drop, drop, drop), min_size=1, max_size=8),
    st.floats(0.01, 1.0),
)
def test_partial_cka_is_symmetric_bounded_and_reads_only_layers_both_moved(
    layers: list[tuple[float, float, float]], move: float
) -> None:
    pair = [c for c, _, _ in layers]
    ca = [a for _, a, _ in layers]
    cb = [b for _, _, b in layers]
    out = partial_cka(pair, ca, cb, move=move)
    assert partial_cka(pair, cb, ca, move=move) == out
    assert all(-1.0 <= v <= 1.0 for v in out.per_layer)
    assert out.layers == tuple(
        k for k in range(len(pair)) if 1.0 - ca[k] >= move and 1.0 - cb[k] >= move
    )
    if out.layers:
        assert out.min == min(out.per_layer[k] for k in out.layers)
        assert out.min_layer in out.layers and out.per_layer[out.min_layer] == out.min
    else:
        assert (out.min, out.min_layer) == (1.0, None)


@settings(max_examples=100, deadline=None)
@given(st.floats(-0.5, 0.9), st.floats(-0.5, 0.9), st.floats(-1.0, 1.0), st.floats(-1.0, 1.0))
def test_partial_cka_rises_with_the_pair_cka(ca: float, cb: float, low: float, high: float) -> None:
    low, high = sorted((low, high))
    values = [partial_cka([v], [ca], [cb], move=0.1).min for v in (low, high)]
    assert values[0] <= values[1]


def test_partial_cka_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="move"):
        partial_cka([0.5], [0.5], [0.5], move=0.0)
    with pytest.raises(ValueError, match="differ in length"):
        partial_cka([0.5, 0.4], [0.5], [0.5], move=0.3)
    with pytest.raises(ValueError, match=r"layer 0.*not finite"):
        partial_cka([math.nan], [0.5], [0.5], move=0.3)
