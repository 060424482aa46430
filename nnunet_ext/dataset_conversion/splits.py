"""Subject-grouped splits: held-out test patients and nnU-Net folds in which no patient straddles folds.

nnU-Net's own default split (``nnUNetTrainer.do_split``) is a random 5-fold split of *cases*. When one
patient contributes several cases (M&Ms: an ED and an ES frame; the hippocampus stream: a left and a right
crop) that split leaks a patient into both training and validation. The functions here split *subjects*
and expand them to cases. The result is written as ``splits_final.json`` (a list of
``{"train": [...], "val": [...]}``, nnU-Net's format) into the raw dataset folder;
``nnUNetv2_plan_and_preprocess`` copies it into ``$nnUNet_preprocessed/DatasetXXX_Name/``, where
``nnUNetv2_train`` reads it (nnunetv2 2.8.1 ``ExperimentPlanner.__init__`` / ``_maybe_copy_splits_file``).

>>> folds = grouped_folds({"p1_ED": "p1", "p1_ES": "p1", "p2_ED": "p2", "p3_ED": "p3"}, num_folds=3, seed=0)
>>> sorted(len(f["val"]) for f in folds)
[1, 1, 2]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

#: folds of ``splits_final.json`` when the user does not ask for a number (nnU-Net's 5-fold cross-validation)
DEFAULT_FOLDS = 5


def _subjects(case_subject: Mapping[str, str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for case, subject in case_subject.items():
        groups[subject].append(case)
    return {s: sorted(c) for s, c in sorted(groups.items())}


def holdout_subjects(subjects: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded random ``fraction`` of ``subjects`` (at least one if fraction > 0 and there are >= 2).

    Raises:
        ValueError: ``fraction`` outside [0, 1).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"test fraction must be in [0, 1), got {fraction!r}")
    ordered = sorted(set(subjects))
    if fraction == 0 or len(ordered) < 2:
        return set()
    count = min(len(ordered) - 1, max(1, round(fraction * len(ordered))))
    rng = np.random.default_rng(seed)
    return {ordered[i] for i in rng.permutation(len(ordered))[:count]}


def grouped_folds(case_subject: Mapping[str, str], num_folds: int = 5, seed: int = 0) -> list[dict[str, list[str]]]:
    """Split cases into ``num_folds`` folds by subject, in nnU-Net's ``splits_final.json`` format.

    Subjects are shuffled with ``numpy.random.default_rng(seed)`` and dealt to folds so that fold sizes
    (in subjects) differ by at most one. With fewer subjects than folds, there is one fold per subject.

    Args:
        case_subject: case id -> subject id.
        num_folds: requested number of folds (>= 2).
        seed: shuffling seed.

    Returns:
        ``[{"train": [...], "val": [...]}, ...]`` with sorted case ids.

    Raises:
        ValueError: ``num_folds < 2`` or fewer than 2 subjects.
    """
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"num_folds must be an integer >= 2, got {num_folds!r}")
    groups = _subjects(case_subject)
    if len(groups) < 2:
        raise ValueError(
            f"need at least 2 training subjects for cross-validation, got {len(groups)} ({sorted(groups)}); "
            f"convert more patients of the source domain or lower --test-fraction"
        )
    names = list(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    k = min(num_folds, len(names))
    val_subjects: list[list[str]] = [[] for _ in range(k)]
    for position, index in enumerate(order):
        val_subjects[position % k].append(names[index])
    folds = []
    for fold_subjects in val_subjects:
        val = sorted(c for s in fold_subjects for c in groups[s])
        train = sorted(c for s in names if s not in fold_subjects for c in groups[s])
        folds.append({"train": train, "val": val})
    check_no_straddling(folds, case_subject)
    return folds


def requested_folds(case_subject: Mapping[str, str], num_folds: int | None, seed: int = 0
                    ) -> list[dict[str, list[str]]]:
    """:func:`grouped_folds` with exactly the folds asked for, or a refusal: never fewer folds in silence.

    Args:
        case_subject: case id -> subject id of the training cases.
        num_folds: folds asked for (``--folds``); None means :data:`DEFAULT_FOLDS`, or one fold per training
            subject when there are fewer subjects than that.
        seed: shuffling seed.

    Returns:
        The folds, ``len == num_folds`` when ``num_folds`` is given.

    Raises:
        ValueError: ``num_folds`` exceeds the number of training subjects (every fold needs at least one
            validation subject), or :func:`grouped_folds` refuses.

    >>> len(requested_folds({"a": "a", "b": "b", "c": "c"}, None))
    3
    >>> try:
    ...     requested_folds({"a": "a", "b": "b", "c": "c"}, 5)
    ... except ValueError as e:
    ...     print(str(e).split(":")[0])
    --folds 5 asks for more folds than there are training subjects (3)
    """
    subjects = len(set(case_subject.values()))
    if num_folds is None:
        return grouped_folds(case_subject, min(DEFAULT_FOLDS, max(subjects, 2)), seed)
    if isinstance(num_folds, int) and not isinstance(num_folds, bool) and subjects >= 2 and num_folds > subjects:
        raise ValueError(
            f"--folds {num_folds} asks for more folds than there are training subjects ({subjects}): every fold "
            f"needs at least one validation subject. Pass --folds {subjects} or fewer (at least 2), or leave "
            f"--folds out to get one fold per subject"
        )
    return grouped_folds(case_subject, num_folds, seed)


def check_no_straddling(folds: Sequence[Mapping[str, Sequence[str]]], case_subject: Mapping[str, str]) -> None:
    """Raise if any fold has a subject on both its train and its val side.

    Raises:
        ValueError: naming the fold, the subject and its cases on each side.
    """
    bad = []
    for i, fold in enumerate(folds):
        train = {case_subject[c] for c in fold["train"]}
        for c in fold["val"]:
            if case_subject[c] in train:
                bad.append(f"fold {i}: subject {case_subject[c]!r} ({c} in val, other cases in train)")
    if bad:
        raise ValueError("patients straddle folds:\n" + "\n".join(bad))


def stage_weights(num_sources: int, num_stages: int) -> np.ndarray:
    """Mixing weights, shape ``(num_stages, num_sources)``: a window sliding linearly along the sources.

    The weight of source ``i`` at stage ``k`` is ``max(0, 1 - |k (n - 1) / (S - 1) - i|)`` with ``n`` sources
    and ``S`` stages: pure source 0 at the first stage, pure source ``n - 1`` at the last; one stage mixes all
    sources equally. The shifting-source streams deal each source's units with these weights
    (:func:`deal_to_stages`).

    >>> stage_weights(2, 3).tolist()
    [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    """
    if num_stages == 1:
        return np.full((1, num_sources), 1.0 / num_sources)
    position = np.arange(num_stages)[:, None] * (num_sources - 1) / (num_stages - 1)
    return np.maximum(0.0, 1.0 - np.abs(position - np.arange(num_sources)[None, :]))


def deal_to_stages(units: Sequence[str], share: Sequence[float]) -> list[list[str]]:
    """Cut ``units`` (already shuffled) into consecutive stage groups whose sizes follow ``share``.

    Stage ``k`` gets ``units[round(c_{k-1} n) : round(c_k n)]`` with ``c_k`` the cumulative sum of ``share``
    normalised to 1 and ``n = len(units)``, so the groups partition ``units`` and no unit is in two stages.

    >>> deal_to_stages(["a", "b", "c", "d"], [0.5, 0.25, 0.25])
    [['a', 'b'], ['c'], ['d']]

    Raises:
        ValueError: ``share`` has a negative entry or sums to 0.
    """
    share = np.asarray(share, dtype=float)
    if share.ndim != 1 or (share < 0).any() or share.sum() <= 0:
        raise ValueError(f"share must be non-negative stage weights with a positive sum, got {share.tolist()}")
    bounds = np.round(np.cumsum(share / share.sum()) * len(units)).astype(int)
    groups, start = [], 0
    for stop in bounds:
        groups.append(list(units[start:stop]))
        start = stop
    return groups


def deal_stratified(units: Sequence[str], share: Sequence[float], seed: int = 0) -> list[list[str]]:
    """Like :func:`deal_to_stages`, but each stage's units are spread over the order of ``units``.

    ``units`` come sorted by a case attribute (e.g. the slab position in a brain). The group sizes are
    :func:`deal_to_stages`'s; unit ``i`` goes to the stage furthest behind its proportional quota
    ``size_k (i + 1) / n`` (ties broken in a seeded random order), so every stage samples the whole range
    of the attribute instead of a contiguous block of it.

    >>> deal_stratified(["z0", "z1", "z2", "z3", "z4", "z5"], [1, 1])
    [['z0', 'z2', 'z4'], ['z1', 'z3', 'z5']]

    Raises:
        ValueError: ``share`` has a negative entry or sums to 0.
    """
    sizes = [len(g) for g in deal_to_stages(units, share)]
    priority = np.random.default_rng(seed).permutation(len(sizes))
    groups: list[list[str]] = [[] for _ in sizes]
    n = len(units)
    for i, unit in enumerate(units):
        open_stages = [k for k in range(len(sizes)) if len(groups[k]) < sizes[k]]
        k = max(open_stages, key=lambda k: (sizes[k] * (i + 1) / n - len(groups[k]), -priority[k]))
        groups[k].append(unit)
    return groups
