"""Label statistics of a dataset directory, streamed (labels column only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlc.data.collate import list_parts
from xlc.data.reader import iter_tables, label_counts
from xlc.data.schema import LABELS, read_meta

QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)


@dataclass
class DatasetStats:
    """Counts over train and test; `label_frequency_quantiles` maps q -> train count of the label at that
    quantile (labels with no train row included); head/tail split at the labels covering half the train
    label occurrences."""

    num_train: int
    num_test: int
    num_labels: int
    labels_per_sample: float  # mean over train rows
    max_labels_per_sample: int
    rows_without_labels: int
    labels_unseen_in_train: int
    test_labels_unseen_in_train: int  # test label occurrences whose label has no train row
    label_frequency_quantiles: dict[float, int]
    head_labels_for_half_mass: int  # fewest labels that carry 50% of train label occurrences


def dataset_stats(directory: str | Path, batch_size: int = 65536) -> DatasetStats:
    meta = read_meta(directory)
    counts = label_counts(directory)  # [L]
    per_split = {}
    for split in ("train", "test"):
        rows = total = empty = unseen = longest = 0
        for table in iter_tables(directory, split, batch_size, columns=[LABELS], validate=False):
            offsets, labels = list_parts(table.column(LABELS))
            lengths = np.diff(offsets)
            rows += len(lengths)
            total += len(labels)
            empty += int((lengths == 0).sum())
            longest = max(longest, int(lengths.max(initial=0)))
            unseen += int((counts[labels] == 0).sum())
        per_split[split] = (rows, total, empty, unseen, longest)
    n_train, total, empty, _, longest = per_split["train"]
    sorted_counts = np.sort(counts)[::-1]
    cum = np.cumsum(sorted_counts)
    return DatasetStats(
        num_train=n_train,
        num_test=per_split["test"][0],
        num_labels=meta.num_labels,
        labels_per_sample=total / max(n_train, 1),
        max_labels_per_sample=longest,
        rows_without_labels=empty,
        labels_unseen_in_train=int((counts == 0).sum()),
        test_labels_unseen_in_train=per_split["test"][3],
        label_frequency_quantiles={q: int(np.quantile(counts, q, method="lower")) for q in QUANTILES},
        head_labels_for_half_mass=int(np.searchsorted(cum, cum[-1] / 2) + 1) if cum[-1] else 0,
    )
