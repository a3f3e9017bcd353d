"""Dataset directory (a local path or a pyarrow.fs URI: `location.py`): Parquet schema and meta, streamed reading,
collate into torch batches. No Ray here."""

from xlc.data.collate import Batch, collate
from xlc.data.location import Location, open_location
from xlc.data.reader import check_files, iter_batches, iter_tables, label_counts, label_names, split_files
from xlc.data.schema import DatasetMeta, read_meta, row_schema, validate_table

__all__ = [
    "Batch",
    "check_files",
    "DatasetMeta",
    "collate",
    "iter_batches",
    "iter_tables",
    "label_counts",
    "label_names",
    "Location",
    "open_location",
    "read_meta",
    "row_schema",
    "split_files",
    "validate_table",
]
