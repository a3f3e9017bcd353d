"""`xlc bench data`: XC conversion MB/s, rows/s streamed into torch batches, synthetic build peak RSS.

Each stage runs in a fresh spawned process so its peak RSS is its own. Targets on a 2-core machine:
convert >= 50 MB/s per core, stream >= 100k sparse rows/s per worker, synthetic 1M x 10M labels < 4 GB RSS.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def write_xc(path: Path, target_mb: float, num_labels: int, num_features: int, seed: int) -> int:
    """An XC text file of about `target_mb` MB from the synthetic generator's rows; returns its row count."""
    from data_tools.builders.synthetic import _chunk

    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_labels)
    lines: list[str] = []
    size = 0
    while size < target_mb * 1e6:
        lab_off, lab, f_off, f_idx, f_val = _chunk(rng, 10_000, perm, num_features, 3.0, 1.1, 8, 8)
        labs, idx, vals = lab.astype(str), f_idx.astype(str), np.char.mod("%.5f", f_val)
        pairs = np.char.add(np.char.add(idx, ":"), vals)
        for i in range(10_000):
            line = ",".join(labs[lab_off[i]:lab_off[i + 1]]) + " " + " ".join(pairs[f_off[i]:f_off[i + 1]])
            lines.append(line)
            size += len(line) + 1
    with open(path, "w") as f:
        f.write(f"{len(lines)} {num_features} {num_labels}\n")
        f.write("\n".join(lines) + "\n")
    return len(lines)


def make_xc_pair(work: str, mb: float) -> dict:
    write_xc(Path(work) / "train.txt", mb, 100_000, 100_000, seed=0)
    write_xc(Path(work) / "test.txt", 1, 100_000, 100_000, seed=1)
    return {}


def bench_convert(work: str) -> dict:
    importlib.import_module("pandas")  # pyarrow imports it on first use: a one-time cost, not throughput

    from data_tools.xc import convert_xc

    work = Path(work)
    train, test = work / "train.txt", work / "test.txt"
    size = train.stat().st_size + test.stat().st_size
    start, cpu = time.perf_counter(), time.process_time()
    convert_xc(train, test, work / "xc", overwrite=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    # per core: MB per CPU-second of this process (the wall figure also counts time other jobs held the cores)
    return {"convert_mb": size / 1e6, "convert_seconds": seconds, "convert_mb_per_s": size / 1e6 / seconds,
            "convert_mb_per_cpu_s": size / 1e6 / cpu, "convert_peak_rss_bytes": _peak_rss()}


def bench_stream(directory: str, batch_size: int) -> dict:
    from xlc.data import iter_batches

    rows, start, cpu = 0, time.perf_counter(), time.process_time()
    for batch in iter_batches(directory, "train", batch_size):
        rows += len(batch)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"stream_rows": rows, "stream_rows_per_s": rows / seconds, "stream_rows_per_cpu_s": rows / cpu,
            "stream_peak_rss_bytes": _peak_rss()}


def bench_ray_stream(directory: str, batch_size: int, epochs: int) -> dict:
    """One training worker's input path, as `xlc train` runs it (`xlc.train.stream`): Ray Data `read_parquet` ->
    `streaming_split` -> `iter_batches(pyarrow, local shuffle)` -> `collate`, for `epochs` passes over the split.

    The first epoch also pays for starting Ray Data's read workers; later epochs are what a long run sees.
    """
    import ray

    from xlc.data import collate, read_meta
    from xlc.train import stream

    meta = read_meta(directory)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        shard = stream.read_train(directory).streaming_split(1, equal=True)[0]
        rates, first_batch = [], 0.0
        for epoch in range(epochs):
            rows, start = 0, time.perf_counter()
            for table in stream.epoch_batches(shard, batch_size, seed=epoch):
                if epoch == 0 and rows == 0:
                    first_batch = time.perf_counter() - start
                rows += len(collate(table, meta.multi_label))
            rates.append(rows / (time.perf_counter() - start))
    finally:
        ray.shutdown()
    later = rates[1:] or rates
    return {"ray_first_batch_seconds": first_batch, "ray_first_epoch_rows_per_s": rates[0],
            "ray_stream_rows_per_s": sum(later) / len(later), "ray_stream_peak_rss_bytes": _peak_rss()}


def bench_synthetic(work: str, samples: int, labels: int) -> dict:
    from data_tools.builders.synthetic import build

    start = time.perf_counter()
    build(str(Path(work) / "synthetic"), samples=samples, labels=labels, labels_per_sample=3.0, overwrite=True)
    return {"synthetic_samples": samples, "synthetic_labels": labels,
            "synthetic_seconds": time.perf_counter() - start, "synthetic_peak_rss_bytes": _peak_rss()}


def _in_child(fn, *args) -> dict:
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xlc bench data", description=__doc__)
    parser.add_argument("--xc-mb", type=float, default=64, help="size of the generated XC train file (MB)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--ray", action="store_true", help="also stream through Ray Data, as a training worker does")
    parser.add_argument("--ray-epochs", type=int, default=3, help="passes over the split; the rate is the mean "
                        "of the passes after the first (which also starts Ray Data's workers)")
    parser.add_argument("--synthetic-samples", type=int, default=0, help="also build synthetic (e.g. 1000000)")
    parser.add_argument("--synthetic-labels", type=int, default=10_000_000)
    parser.add_argument("--work-dir", default=None, help="scratch dir (default: a temp dir, removed after)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        results = _in_child(make_xc_pair, work, args.xc_mb)  # generated apart so convert's RSS is its own
        results |= _in_child(bench_convert, work)
        results |= _in_child(bench_stream, str(Path(work) / "xc"), args.batch_size)
        if args.ray:
            results |= _in_child(bench_ray_stream, str(Path(work) / "xc"), args.batch_size, args.ray_epochs)
        if args.synthetic_samples:
            results |= _in_child(bench_synthetic, work, args.synthetic_samples, args.synthetic_labels)
    for key, value in results.items():
        print(f"{key:28s} {value:,.1f}" if isinstance(value, float) else f"{key:28s} {value:,}")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
