"""Ray Data streaming of the train split to the workers: the one definition `xlc train` and `xlc bench data` share.

The driver builds the dataset once (`read_train`); Ray Train splits it per worker (`streaming_split`), and each
worker pulls Arrow batches per epoch (`epoch_batches`) for `xlc.data.collate`. Nothing is materialised: Ray
Data reads Parquet blocks as the workers consume them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import ray.data

from xlc import data as xdata
from xlc.data.location import Location
from xlc.train.driver import train_columns

SHUFFLE_BATCHES = 8  # local shuffle buffer, in batches


def read_train(data_dir: str | Path | Location, backbone: str = "mlp") -> ray.data.Dataset:
    """The train split as a lazy Ray Dataset of the columns `backbone` reads (sparse features, text or image)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver prints its own progress
    # Parquet through Ray Data's V1 datasource: V2 first lists the files in a task of its own, which delays every
    # epoch's first batch; V1 starts reading at once.
    context.use_datasource_v2 = False
    files = xdata.split_files(data_dir, "train")  # on one filesystem: the dataset's (local, s3://, ...)
    return ray.data.read_parquet([f.path for f in files], filesystem=files[0].fs, columns=train_columns(backbone))


def epoch_batches(shard: ray.data.DataIterator, batch_size: int, *, seed: int, drop_last: bool = False
                  ) -> Iterator[pa.Table]:
    """One epoch of a worker's shard as Arrow tables of `batch_size` rows, shuffled within a local buffer."""
    return shard.iter_batches(
        batch_size=batch_size, batch_format="pyarrow", drop_last=drop_last,
        local_shuffle_buffer_size=batch_size * SHUFFLE_BATCHES, local_shuffle_seed=seed,
    )
