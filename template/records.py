"""Training data from files, each rank reading its own through tf.data, and the command that
writes data.py's in-memory set as such files (`make data-files`, or python template/records.py).

Formats (one per data set; `.gz` after the suffix means gzip):
- CSV (`.csv`): a header line; the column `label` is the target, every other column a number,
  the features in header order.
- TFRecord (`.tfrecord`): tf.train.Example records, `features` (a float list) and `label` (one
  float).
data.from_record() turns (features, label) into what the model takes.

DATA names a folder, a file or a glob. In a folder, files whose names start with `val` are the
validation set and the rest the training set; VAL_DATA names validation files elsewhere.
Sharding is by file: rank r reads files r, r+size, ... (disjoint, together all of them); with
fewer files than ranks every rank reads all files and keeps every size-th record.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# isort: off
import tfenv  # noqa: F401  (before TensorFlow)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
# isort: on

FORMATS = {".csv": "csv", ".tfrecord": "tfrecord"}
LABEL = "label"
FILES_IN_FLIGHT = 4  # files read at once by each rank (interleaved)
Example = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


class DataError(ValueError):
    """Files that cannot be read as a data set: the message names the file and the fix."""


@dataclass(frozen=True)
class FileSet:
    """Files of one format; for CSV the header they share."""

    files: tuple[str, ...]
    fmt: str  # "csv" or "tfrecord"
    gzipped: bool = False
    columns: tuple[str, ...] = ()

    def shard(self, rank: int, size: int) -> tuple[FileSet, bool]:
        """This rank's files, and whether it must shard by record instead (fewer files than
        ranks: it then reads all files and keeps every size-th record)."""
        if len(self.files) < size:
            return self, True
        return FileSet(self.files[rank::size], self.fmt, self.gzipped, self.columns), False


def format_of(path: str) -> tuple[str, bool] | None:
    """("csv" | "tfrecord", gzipped) from the name, or None for other files."""
    name = path[:-3] if path.endswith(".gz") else path
    fmt = FORMATS.get(Path(name).suffix)
    return None if fmt is None else (fmt, path.endswith(".gz"))


def find(spec: str) -> list[str]:
    """The data files a folder holds, a file is, or a glob matches, sorted."""
    path = Path(spec)
    found = [str(p) for p in path.iterdir()] if path.is_dir() else glob.glob(spec)
    return sorted(f for f in found if format_of(f) and Path(f).is_file())


def training_and_validation(data: str, val_data: str) -> tuple[FileSet, FileSet | None]:
    """DATA's training files and the validation files (VAL_DATA, else DATA's val* files)."""
    files = find(data)
    is_val = [Path(f).name.startswith("val") for f in files] if Path(data).is_dir() else []
    train = [f for i, f in enumerate(files) if not (is_val and is_val[i])]
    val = find(val_data) if val_data else [f for i, f in enumerate(files) if is_val and is_val[i]]
    if not train:
        raise DataError(f"DATA={data} holds no training files; give a folder, file or glob of "
                        ".csv or .tfrecord files (.gz too), e.g. from make data-files")
    if val_data and not val:
        raise DataError(f"VAL_DATA={val_data} holds no .csv or .tfrecord files")
    return file_set(train), file_set(val) if val else None


def file_set(files: list[str]) -> FileSet:
    formats = {format_of(f) for f in files}
    if len(formats) > 1:
        raise DataError(f"{files[0]} and others mix formats or compression ("
                        f"{', '.join(sorted(Path(f).name for f in files[:4]))}, ...): use one")
    fmt, gz = formats.pop()
    if fmt == "tfrecord":
        return FileSet(tuple(files), fmt, gz)
    headers = {f: header(f) for f in files}
    first = headers[files[0]]
    for f, columns in headers.items():
        if columns != first:
            raise DataError(f"{f} has the columns {list(columns)}, {files[0]} {list(first)}: "
                            "every file needs the same header")
    if LABEL not in first:
        raise DataError(f"{files[0]} has no column '{LABEL}' in its header {list(first)}")
    return FileSet(tuple(files), fmt, gz, first)


def open_text(path: str):
    return gzip.open(path, "rt") if path.endswith(".gz") else open(path)


def header(path: str) -> tuple[str, ...]:
    with open_text(path) as fh:
        return tuple(column.strip() for column in fh.readline().split(","))


def count(file_set: FileSet) -> int:
    """Records in the files: lines less headers for CSV, a pass over the records for TFRecord."""
    if file_set.fmt == "csv":
        total = 0
        for path in file_set.files:
            with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as fh:
                total += sum(1 for line in fh if line.strip()) - 1
        return total
    return sum(int(records(path, file_set).reduce(np.int64(0), lambda n, _: n + 1))
               for path in file_set.files)


def records(path: tf.Tensor | str, file_set: FileSet) -> tf.data.Dataset:
    """One file's raw records: CSV lines without the header, or serialized Examples."""
    compression = "GZIP" if file_set.gzipped else ""
    if file_set.fmt == "csv":
        return tf.data.TextLineDataset(path, compression_type=compression).skip(1)
    return tf.data.TFRecordDataset(path, compression_type=compression)


def parser(file_set: FileSet) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """A raw record -> (float32 features, float32 label)."""
    if file_set.fmt == "csv":
        label_at = file_set.columns.index(LABEL)
        keep = [i for i in range(len(file_set.columns)) if i != label_at]

        def parse_line(line: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            values = tf.io.decode_csv(line, record_defaults=[[0.0]] * len(file_set.columns))
            return tf.stack([values[i] for i in keep]), values[label_at]
        return parse_line
    spec = {"features": tf.io.VarLenFeature(tf.float32),
            "label": tf.io.FixedLenFeature([], tf.float32)}

    def parse_example(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        example = tf.io.parse_single_example(serialized, spec)
        return tf.sparse.to_dense(example["features"]), example["label"]
    return parse_example


def dataset(file_set: FileSet, to_example: Example, batch_size: int, *, rank: int = 0,
            size: int = 1, by_record: bool = False, shuffle_seed: int | None = None,
            shuffle_buffer: int = 1) -> tf.data.Dataset:
    """Batches of (x, y) from this rank's files, streamed: a few files read at once
    (interleaved), records shuffled in a buffer, batches prefetched. With a shuffle seed (the
    training set) it repeats for ever: the caller sets the steps, the same on every rank."""
    training = shuffle_seed is not None
    files = tf.data.Dataset.from_tensor_slices(list(file_set.files))
    if training and not by_record:  # by record: every rank must read the files in one order
        files = files.shuffle(len(file_set.files), seed=shuffle_seed)
    ds = files.interleave(lambda path: records(path, file_set),
                          cycle_length=min(FILES_IN_FLIGHT, len(file_set.files)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=by_record)
    if by_record:
        ds = ds.shard(size, rank)
    ds = ds.map(parser(file_set), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed).repeat()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --- writing ---------------------------------------------------------------------------------

def write(folder: Path, prefix: str, x: np.ndarray, y: np.ndarray, fmt: str, files: int,
          gz: bool) -> list[Path]:
    """x (flattened per example) and y as `files` files PREFIX-0000i-of-0000n.{csv,tfrecord}."""
    flat = x.reshape(len(x), -1).astype("float32")
    suffix = f".{fmt}" + (".gz" if gz else "")
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(x)), files)):
        path = folder / f"{prefix}-{i:05d}-of-{files:05d}{suffix}"
        (write_csv if fmt == "csv" else write_tfrecord)(path, flat[part], y[part], gz)
        paths.append(path)
    return paths


def write_csv(path: Path, features: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    names = [f"f{i}" for i in range(features.shape[1])] + [LABEL]
    with gzip.open(path, "wt") if gz else open(path, "w") as fh:
        fh.write(",".join(names) + "\n")
        for row, label in zip(features, labels):
            fh.write(",".join(f"{v:.7g}" for v in row) + f",{label:.7g}\n")


def write_tfrecord(path: Path, features: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    options = tf.io.TFRecordOptions(compression_type="GZIP" if gz else "")
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for row, label in zip(features, labels):
            example = tf.train.Example(features=tf.train.Features(feature={
                "features": tf.train.Feature(float_list=tf.train.FloatList(value=row)),
                "label": tf.train.Feature(float_list=tf.train.FloatList(value=[float(label)]))}))
            writer.write(example.SerializeToString())


def main(argv: list[str] | None = None) -> int:
    parser_ = argparse.ArgumentParser(
        prog="make data-files", description="Write data.py's in-memory set (load()) as "
        "training files train-*.{csv,tfrecord} and validation files val-* in DEST, for make "
        "train DATA=DEST.")
    parser_.add_argument("dest", type=Path, help="a new or empty folder")
    parser_.add_argument("--format", choices=sorted(set(FORMATS.values())), default="csv")
    parser_.add_argument("--files", type=int, default=8, help="training files (default 8)")
    parser_.add_argument("--val-files", type=int, default=2, help="validation files (default 2)")
    parser_.add_argument("--gzip", action="store_true", help="gzip each file (.gz)")
    args = parser_.parse_args(argv)
    if args.files < 1 or args.val_files < 1:
        parser_.error("--files and --val-files must be at least 1")
    if args.dest.exists() and (not args.dest.is_dir() or any(args.dest.iterdir())):
        parser_.error(f"{args.dest} exists and is not an empty folder: pick a new one")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import config
    import data
    cfg = config.load([])
    x_train, y_train, x_val, y_val = data.load(cfg.val_fraction, cfg.seed)
    args.dest.mkdir(parents=True, exist_ok=True)
    written = (write(args.dest, "train", x_train, y_train, args.format, args.files, args.gzip)
               + write(args.dest, "val", x_val, y_val, args.format, args.val_files, args.gzip))
    print(f"{len(x_train)} training and {len(x_val)} validation records in {len(written)} "
          f"{args.format} files under {args.dest}; train on them with make train DATA={args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
