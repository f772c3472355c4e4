"""Synthetic multi-task text datasets with planted task structure.

Each row is a short support-ticket-like text generated from a few *latent features* (the
product concerned, the severity, the contact channel, ...), each taking one of ``classes``
values. The text contains one *cue word* per feature that reveals its value, e.g. in

    customer writes that the invoice page keeps freezing ; they describe it as urgent ;
    they reached out by phone ; a screenshot is attached .

"invoice" is a cue of product ``billing``, "urgent" of severity ``critical`` and "phone" of
channel ``phone``. Tasks are functions of one latent feature each, so tasks on the same feature
should be grouped together: that is the *planted grouping* a task-grouping method should
recover. Texts are plain lower-case words separated by single spaces (punctuation marks are
words too), all drawn from :func:`vocabulary`, so a word-level tokenizer for a tiny test model
can be built from it; a small transformer (or a bag-of-words classifier) learns the tasks.

Tasks on a feature (in this order, cycling when a feature has more than five tasks, with a
numeric suffix from the sixth on: ``product_flag_2``):

====================  =====================================  ===========================
name                  label                                  classes
====================  =====================================  ===========================
``<feature>``         the value's name                       ``classes`` (multi-class)
``<feature>_flag``    is it the first value?                 ``yes`` / ``no``
``<feature>_tier``    first ceil(classes/2) values or not    ``low`` / ``high``
``<feature>_alert``   is it the last value?                  ``yes`` / ``no``
``<feature>_parity``  even or odd position of the value      ``even`` / ``odd``
====================  =====================================  ===========================

Noise: with probability ``noise`` a row's cue word for a feature is replaced by a cue word of a
random *other* value of that feature (the text then points at the wrong value), and,
independently for every task and row, with probability ``noise`` the label is flipped to a
random other class of that task. Missing labels: for every task, ``round(missing * rows)``
rows chosen at random have no label.

Everything is deterministic for a seed. Texts and labels come from one random stream and the
choice of missing labels from another, so changing ``missing`` leaves texts and labels alone.

This module is light (numpy and pandas only).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "FEATURES",
    "MAX_CLASSES",
    "TEXT_COLUMN",
    "Feature",
    "SynthSpec",
    "generate",
    "task_names",
    "vocabulary",
    "write",
]

TEXT_COLUMN = "text"


@dataclass(frozen=True)
class Feature:
    """A latent feature: its values, the cue words of each value, and clause templates.

    ``templates`` hold one ``{}`` slot for the cue word; their other words are the same for
    every value, so only the cue word tells the value apart.
    """

    name: str
    values: tuple[tuple[str, tuple[str, ...]], ...]  # (value name, cue words)
    templates: tuple[str, ...]


FEATURES: tuple[Feature, ...] = (
    Feature(
        "product",
        (
            ("billing", ("invoice", "billing", "refund")),
            ("login", ("login", "password", "signin")),
            ("search", ("search", "filter", "lookup")),
            ("reports", ("report", "dashboard", "chart")),
            ("export", ("export", "download", "spreadsheet")),
            ("calendar", ("calendar", "schedule", "reminder")),
        ),
        (
            "the {} page keeps freezing",
            "the {} screen shows an error",
            "a problem with the {} module",
            "the {} feature stopped working",
        ),
    ),
    Feature(
        "severity",
        (
            ("critical", ("urgent", "critical", "blocking")),
            ("major", ("serious", "major", "severe")),
            ("minor", ("minor", "small", "annoying")),
            ("trivial", ("trivial", "tiny", "cosmetic")),
            ("question", ("unclear", "confusing", "puzzling")),
            ("request", ("optional", "desirable", "wishful")),
        ),
        (
            "they describe it as {}",
            "the impact seems {}",
            "the agent rates it {}",
        ),
    ),
    Feature(
        "channel",
        (
            ("email", ("email", "mail", "inbox")),
            ("phone", ("phone", "call", "hotline")),
            ("chat", ("chat", "livechat", "messenger")),
            ("web", ("website", "webform", "helpcenter")),
            ("social", ("twitter", "facebook", "forum")),
            ("store", ("store", "branch", "kiosk")),
        ),
        (
            "they reached out by {}",
            "the message came through {}",
            "first contact was via {}",
        ),
    ),
    Feature(
        "region",
        (
            ("europe", ("berlin", "paris", "madrid")),
            ("america", ("boston", "chicago", "toronto")),
            ("asia", ("tokyo", "seoul", "singapore")),
            ("africa", ("lagos", "nairobi", "cairo")),
            ("oceania", ("sydney", "auckland", "perth")),
            ("latam", ("lima", "bogota", "santiago")),
        ),
        (
            "the customer is based in {}",
            "their office in {} is affected",
            "users near {} see it",
        ),
    ),
    Feature(
        "device",
        (
            ("windows", ("windows", "pc", "desktop")),
            ("mac", ("mac", "macbook", "imac")),
            ("android", ("android", "pixel", "galaxy")),
            ("ios", ("iphone", "ipad", "ios")),
            ("linux", ("linux", "ubuntu", "debian")),
            ("tablet", ("tablet", "kindle", "chromebook")),
        ),
        (
            "it happens on their {}",
            "they are using a {}",
            "the {} client is affected",
        ),
    ),
    Feature(
        "plan",
        (
            ("free", ("free", "trial", "basic")),
            ("pro", ("pro", "premium", "plus")),
            ("team", ("team", "business", "group")),
            ("enterprise", ("enterprise", "corporate", "unlimited")),
            ("education", ("student", "academic", "campus")),
            ("nonprofit", ("nonprofit", "charity", "volunteer")),
        ),
        (
            "they are on the {} plan",
            "the account has a {} subscription",
            "the account shows the {} tier",
        ),
    ),
    Feature(
        "mood",
        (
            ("angry", ("furious", "angry", "upset")),
            ("calm", ("calm", "patient", "polite")),
            ("happy", ("happy", "grateful", "pleased")),
            ("confused", ("confused", "lost", "unsure")),
            ("sad", ("disappointed", "sad", "unhappy")),
            ("impatient", ("impatient", "frustrated", "restless")),
        ),
        (
            "the customer sounds {}",
            "they seem {} about it",
            "the tone of the message is {}",
        ),
    ),
    Feature(
        "symptom",
        (
            ("crash", ("crashing", "crashed", "shutdown")),
            ("slowness", ("slow", "sluggish", "lagging")),
            ("failure", ("exception", "failure", "timeout")),
            ("dataloss", ("deleted", "vanished", "erased")),
            ("display", ("blurry", "flickering", "garbled")),
            ("sync", ("unsynced", "outdated", "stale")),
        ),
        (
            "the app looks {} since then",
            "everything ends up {}",
            "the result is {} every time",
        ),
    ),
    Feature(
        "tenure",
        (
            ("new", ("newcomer", "beginner", "signup")),
            ("loyal", ("loyal", "veteran", "longtime")),
            ("leaving", ("cancelling", "leaving", "switching")),
            ("returning", ("returning", "repeat", "regular")),
            ("dormant", ("dormant", "inactive", "idle")),
            ("partner", ("partner", "reseller", "affiliate")),
        ),
        (
            "the requester is a {} customer",
            "records show a {} user",
            "sales lists them as {}",
        ),
    ),
    Feature(
        "timing",
        (
            ("morning", ("morning", "dawn", "breakfast")),
            ("afternoon", ("afternoon", "noon", "lunch")),
            ("evening", ("evening", "dusk", "dinner")),
            ("night", ("night", "midnight", "overnight")),
            ("weekend", ("weekend", "saturday", "sunday")),
            ("holiday", ("holiday", "christmas", "vacation")),
        ),
        (
            "it started during the {}",
            "the trouble began around {}",
            "they noticed it at {}",
        ),
    ),
)

#: The largest supported ``classes`` (values per feature).
MAX_CLASSES = min(len(f.values) for f in FEATURES)

_OPENINGS: tuple[str, ...] = (
    "customer writes that",
    "user reports that",
    "ticket says",
    "new ticket :",
    "a client explains that",
    "support note :",
)

#: Shared filler clauses: no cue words, no information about any feature.
_FILLERS: tuple[str, ...] = (
    "they contacted support twice",
    "a screenshot is attached",
    "they already tried restarting",
    "please advise",
    "the issue is reproducible",
    "nothing useful in the logs",
    "thanks in advance",
    "they would like an answer soon",
    "a colleague has the same problem",
    "clearing the cache did not help",
    "this worked fine last week",
    "they are waiting for a reply",
    "more details will follow",
    "the workaround from the docs failed",
)

_SEPARATORS: tuple[str, ...] = (";", ",", "and", ".")
_END = "."

_VARIANTS: tuple[str, ...] = ("", "_flag", "_tier", "_alert", "_parity")


def _check_banks() -> None:
    """Cue words are single lower-case words, distinct across all values and features, and
    never appear in templates, openings or fillers (so only a cue word carries a value)."""
    cues: list[str] = [w for f in FEATURES for _, words in f.values for w in words]
    if len(cues) != len(set(cues)):
        raise AssertionError("cue words must be distinct")
    carriers = set()
    for text in (*_OPENINGS, *_FILLERS, *(t for f in FEATURES for t in f.templates)):
        carriers.update(text.replace("{}", " ").split())
    for word in cues:
        if word != word.lower() or not word.isalpha() or word in carriers:
            raise AssertionError(f"bad cue word {word!r}")
    names = [f.name for f in FEATURES]
    if len(names) != len(set(names)) or TEXT_COLUMN in names:
        raise AssertionError("feature names must be distinct and differ from the text column")


_check_banks()


@dataclass(frozen=True)
class SynthSpec:
    """What to generate.

    Attributes:
        rows: Number of rows.
        features: One entry per latent feature (taken in the order of :data:`FEATURES`): how
            many tasks depend on it. A 0 gives a distractor feature: its cue word is in the
            text but no task uses it.
        classes: Values per latent feature (2 to :data:`MAX_CLASSES`).
        noise: In ``[0, 1)``: probability that a row's cue word for a feature points at a
            random other value, and (independently per task) that a label is flipped to a
            random other class.
        seed: Random seed; the same spec gives the same dataset.
        missing: In ``[0, 1)``: share of labels left missing per task.
    """

    rows: int = 800
    features: tuple[int, ...] = (2, 2, 1)
    classes: int = 3
    noise: float = 0.1
    seed: int = 0
    missing: float = 0.0

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"rows must be at least 1, got {self.rows}")
        if not self.features:
            raise ValueError("features must have at least one entry")
        if len(self.features) > len(FEATURES):
            raise ValueError(f"at most {len(FEATURES)} features, got {len(self.features)}")
        if any(n < 0 for n in self.features) or sum(self.features) < 1:
            raise ValueError(f"features must be >= 0 with at least one task: {self.features}")
        if not 2 <= self.classes <= MAX_CLASSES:
            raise ValueError(f"classes must be between 2 and {MAX_CLASSES}, got {self.classes}")
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        if not 0.0 <= self.missing < 1.0:
            raise ValueError(f"missing must be in [0, 1), got {self.missing}")

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data (``features`` as a list)."""
        data = dataclasses.asdict(self)
        data["features"] = list(self.features)
        return data


def _task_name(feature: str, variant: int) -> str:
    kind = variant % len(_VARIANTS)
    rnd = variant // len(_VARIANTS)
    suffix = _VARIANTS[kind]
    if rnd == 0:
        return feature + suffix
    return f"{feature}{suffix or '_value'}_{rnd + 1}"


def task_names(spec: SynthSpec) -> list[list[str]]:
    """The planted grouping of ``spec``: task names grouped by latent feature (features with
    no task left out), in column order."""
    return [
        [_task_name(FEATURES[f].name, v) for v in range(n)]
        for f, n in enumerate(spec.features)
        if n > 0
    ]


def _task_labels(
    values: np.ndarray, variant: int, feature: Feature, classes: int
) -> tuple[np.ndarray, list[str]]:
    """Class index per row and the class names, for task ``variant`` of a feature."""
    kind = variant % len(_VARIANTS)
    if kind == 0:
        return values.copy(), [name for name, _ in feature.values[:classes]]
    if kind == 1:
        return np.where(values == 0, 0, 1), ["yes", "no"]
    if kind == 2:
        return np.where(values < math.ceil(classes / 2), 0, 1), ["low", "high"]
    if kind == 3:
        return np.where(values == classes - 1, 0, 1), ["yes", "no"]
    return values % 2, ["even", "odd"]


def generate(spec: SynthSpec) -> tuple[pd.DataFrame, list[list[str]]]:
    """Generate a dataset.

    Returns:
        A frame with column ``"text"`` and one string column per task (missing labels are
        missing values), and the planted grouping: the task names grouped by the latent
        feature they depend on.
    """
    text_seed, missing_seed = np.random.SeedSequence(spec.seed).spawn(2)
    rng = np.random.default_rng(text_seed)
    n, k = spec.rows, spec.classes
    features = FEATURES[: len(spec.features)]
    n_feat = len(features)

    # Latent values, and the value each row's cue word points at (noise: another value).
    values = rng.integers(0, k, size=(n, n_feat))
    shown = values.copy()
    corrupt = rng.random((n, n_feat)) < spec.noise
    shift = rng.integers(1, k, size=(n, n_feat))
    shown[corrupt] = (values[corrupt] + shift[corrupt]) % k

    texts = [_render(rng, features, shown[i]) for i in range(n)]
    frame: dict[str, Any] = {TEXT_COLUMN: texts}

    missing_rng = np.random.default_rng(missing_seed)
    n_missing = math.floor(spec.missing * n + 0.5)
    for f, (feature, n_tasks) in enumerate(zip(features, spec.features, strict=True)):
        for variant in range(n_tasks):
            index, names = _task_labels(values[:, f], variant, feature, k)
            n_cls = len(names)
            flip = rng.random(n) < spec.noise
            flip_by = rng.integers(1, n_cls, size=n)
            index = np.where(flip, (index + flip_by) % n_cls, index)
            labels: list[str | None] = [names[i] for i in index]
            for row in missing_rng.permutation(n)[:n_missing]:
                labels[row] = None
            frame[_task_name(feature.name, variant)] = pd.Series(labels, dtype="str")
    return pd.DataFrame(frame), task_names(spec)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _render(rng: np.random.Generator, features: tuple[Feature, ...], shown: np.ndarray) -> str:
    """One ticket text: an opening, one clause per feature and 0-1 filler in random order."""
    clauses = []
    for feature, value in zip(features, shown, strict=True):
        cues = feature.values[int(value)][1]
        clauses.append(_pick(rng, feature.templates).format(_pick(rng, cues)))
    n_fillers = int(rng.integers(0, 2))
    for j in rng.choice(len(_FILLERS), size=n_fillers, replace=False):
        clauses.append(_FILLERS[int(j)])
    order = rng.permutation(len(clauses))
    words = [_pick(rng, _OPENINGS)]
    for position, c in enumerate(order):
        if position:
            words.append(_pick(rng, _SEPARATORS))
        words.append(clauses[int(c)])
    words.append(_END)
    return " ".join(words)


def vocabulary() -> list[str]:
    """Every word the generator can emit, sorted (all lower-case; punctuation marks included).

    Texts are these words joined by single spaces, so ``text.split()`` only yields words of
    this list.
    """
    words: set[str] = set(_SEPARATORS) | {_END}
    for text in (*_OPENINGS, *_FILLERS):
        words.update(text.split())
    for feature in FEATURES:
        for template in feature.templates:
            words.update(template.replace("{}", " ").split())
        for _, cues in feature.values:
            words.update(cues)
    return sorted(words)


def write(spec: SynthSpec, out: Path) -> list[list[str]]:
    """Generate ``spec`` and write it to the CSV file ``out``, plus a sidecar
    ``<out stem>.planted.json`` holding ``{"grouping": [...], "spec": {...}}``.

    Returns:
        The planted grouping.
    """
    out = Path(out)
    frame, grouping = generate(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False, lineterminator="\n")
    sidecar = out.with_name(f"{out.stem}.planted.json")
    sidecar.write_text(
        json.dumps({"grouping": grouping, "spec": spec.to_dict()}, indent=2) + "\n",
        encoding="utf-8",
    )
    return grouping
