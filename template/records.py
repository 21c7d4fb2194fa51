"""Training data from files, each rank reading its own through tf.data, and the command that
writes data.py's in-memory set as such files (`make data-files`, or python template/records.py).

Formats (one per data set; `.gz` after the suffix means gzip), each with one parser below that
turns a raw record into a dict of tensors, which data.from_record() turns into (x, y):
- CSV (`.csv`): a header line; every column by name, numbers unless data.RECORD.columns gives a
  column another default (a string: "").
- TFRecord (`.tfrecord`): tf.train.Example records parsed with data.RECORD.features (default: a
  float list `features` and one float `label`; the ImageNet layout is `image/encoded` bytes and
  `image/class/label` int64, decoded with decode_image()).
- Image folders: DATA is a folder with one subfolder per class of .jpg/.png files; each image
  decoded, resized to data.RECORD.image_size, scaled to [0, 1]: {"image", "label": the class's
  index among the sorted class folders}.

DATA names a folder, a file or a glob. In a folder, files (or, for images, a class-folder tree)
whose names start with `val` are the validation set and the rest the training set; VAL_DATA
names validation files elsewhere. Sharding is by file: rank r reads files r, r+size, ...
(disjoint, together all of them); with fewer files than ranks every rank reads all files and
keeps every size-th record.
"""

from __future__ import annotations

import argparse
import difflib
import glob
import gzip
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# isort: off
import tfenv  # noqa: F401  (before TensorFlow)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
# isort: on

FORMATS = {".csv": "csv", ".tfrecord": "tfrecord"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL = "label"
FILES_IN_FLIGHT = 4  # files read at once by each rank (interleaved)
Parsed = dict[str, tf.Tensor]
Example = Callable[[Parsed], tuple[tf.Tensor, tf.Tensor]]


class DataError(ValueError):
    """Files that cannot be read as a data set: the message names the file and the fix."""


def default_features() -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
    """make data-files' TFRecord layout: a float list and one float label."""
    return {"features": tf.io.VarLenFeature(tf.float32),
            LABEL: tf.io.FixedLenFeature([], tf.float32)}


@dataclass(frozen=True)
class Record:
    """How one record of your files is parsed (data.RECORD): the label's column or feature, the
    TFRecord feature spec, CSV columns that are not numbers, and the size images come in."""

    label: str = LABEL  # the CSV column or TFRecord feature that is the target
    features: Mapping[str, object] = field(default_factory=default_features)  # TFRecord spec
    columns: Mapping[str, object] = field(default_factory=dict)  # CSV: column -> default ("")
    image_size: tuple[int, int] = (224, 224)  # image folders: (height, width) after resizing
    channels: int = 3  # image folders: 1 grey, 3 RGB


@dataclass(frozen=True)
class FileSet:
    """Files of one format; for CSV the header they share, for images the class names."""

    files: tuple[str, ...]
    fmt: str  # "csv", "tfrecord" or "images"
    gzipped: bool = False
    columns: tuple[str, ...] = ()  # CSV: the header; images: the classes, sorted

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


def is_val(path: Path) -> bool:
    return path.name.startswith("val")


def training_and_validation(data: str, val_data: str,
                            record: Record | None = None) -> tuple[FileSet, FileSet | None]:
    """DATA's training files and the validation files (VAL_DATA, else DATA's val* files)."""
    record = record or Record()
    if not find(data) and class_folders(Path(data)):
        return image_folders(data, val_data)
    files = find(data)
    in_folder = Path(data).is_dir()
    train = [f for f in files if not (in_folder and is_val(Path(f)))]
    val = find(val_data) if val_data else [f for f in files if in_folder and is_val(Path(f))]
    if not train:
        raise DataError(f"DATA={data} holds no training files; give a folder, file or glob of "
                        ".csv or .tfrecord files (.gz too), e.g. from make data-files, or a "
                        "folder of class folders of .jpg/.png images")
    if val_data and not val:
        raise DataError(f"VAL_DATA={val_data} holds no .csv or .tfrecord files; give the "
                        "validation files' folder, file or quoted glob")
    return file_set(train, record), file_set(val, record) if val else None


def file_set(files: list[str], record: Record) -> FileSet:
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
    if record.label not in first:
        raise DataError(f"{files[0]} has no column '{record.label}' in its header "
                        f"{list(first)}{did_you_mean(record.label, first)}; name the target "
                        "column so, or set data.RECORD's label")
    return FileSet(tuple(files), fmt, gz, first)


def did_you_mean(name: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --- image folders ---------------------------------------------------------------------------

def class_folders(folder: Path) -> list[Path]:
    """The subfolders of folder that hold images (its val* folders left out), sorted."""
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and not is_val(d) and images_in(d))


def images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def image_folders(data: str, val_data: str) -> tuple[FileSet, FileSet | None]:
    """DATA's class folders; the validation set is VAL_DATA's, else DATA's val* folder, with
    class folders of the same names (the labels are indices among the training classes)."""
    classes = tuple(d.name for d in class_folders(Path(data)))
    train = image_set(Path(data), classes, "DATA")
    vals = [d for d in Path(data).iterdir() if d.is_dir() and is_val(d)]
    val_root = Path(val_data) if val_data else (vals[0] if vals else None)
    val = image_set(val_root, classes, "VAL_DATA") if val_root else None
    return train, val


def image_set(root: Path, classes: tuple[str, ...], name: str) -> FileSet:
    found = [d.name for d in class_folders(root)]
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{name}={root} has class folders {unknown} that the training set "
                        f"{list(classes)} lacks; use the same class folder names")
    files = [f for c in found for f in images_in(root / c)]
    if not files:
        raise DataError(f"{name}={root} holds no class folders of .jpg/.png images")
    return FileSet(tuple(files), "images", False, classes)


def decode_image(encoded: tf.Tensor, size: tuple[int, int], channels: int) -> tf.Tensor:
    """JPEG/PNG bytes -> float32 [height, width, channels] in [0, 1] (for TFRecords of encoded
    images too, e.g. the ImageNet layout's image/encoded)."""
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    image = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), size)
    return tf.ensure_shape(image, (*size, channels))


# --- reading ---------------------------------------------------------------------------------

def open_text(path: str):
    return gzip.open(path, "rt") if path.endswith(".gz") else open(path)


def header(path: str) -> tuple[str, ...]:
    with open_text(path) as fh:
        return tuple(column.strip() for column in fh.readline().split(","))


def count(file_set: FileSet) -> int:
    """Records in the files: lines less headers for CSV, a pass over the records for TFRecord,
    one per image."""
    if file_set.fmt == "images":
        return len(file_set.files)
    if file_set.fmt == "csv":
        total = 0
        for path in file_set.files:
            with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as fh:
                total += sum(1 for line in fh if line.strip()) - 1
        return total
    return sum(int(records(path, file_set).reduce(np.int64(0), lambda n, _: n + 1))
               for path in file_set.files)


def records(path: tf.Tensor | str, file_set: FileSet) -> tf.data.Dataset:
    """One file's raw records: CSV lines without the header, serialized Examples, or the
    image's own path (its parser reads the file)."""
    compression = "GZIP" if file_set.gzipped else ""
    if file_set.fmt == "images":
        return tf.data.Dataset.from_tensors(path)
    if file_set.fmt == "csv":
        return tf.data.TextLineDataset(path, compression_type=compression).skip(1)
    return tf.data.TFRecordDataset(path, compression_type=compression)


def csv_parser(file_set: FileSet, record: Record) -> Callable[[tf.Tensor], Parsed]:
    """A CSV line -> {column: value}: numbers, or the type of data.RECORD.columns' default."""
    defaults = [[record.columns.get(name, 0.0)] for name in file_set.columns]

    def parse_line(line: tf.Tensor) -> Parsed:
        return dict(zip(file_set.columns, tf.io.decode_csv(line, record_defaults=defaults)))
    return parse_line


def tfrecord_parser(file_set: FileSet, record: Record) -> Callable[[tf.Tensor], Parsed]:
    """A serialized Example -> {feature: value} by data.RECORD.features (a sparse list made
    dense)."""
    spec = dict(record.features)

    def parse_example(serialized: tf.Tensor) -> Parsed:
        example = tf.io.parse_single_example(serialized, spec)
        return {name: tf.sparse.to_dense(value) if isinstance(value, tf.SparseTensor) else value
                for name, value in example.items()}
    return parse_example


def image_parser(file_set: FileSet, record: Record) -> Callable[[tf.Tensor], Parsed]:
    """An image's path -> {"image": [height, width, channels] in [0, 1], "label": its class
    folder's index among the sorted classes}."""
    classes = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        list(file_set.columns), tf.range(len(file_set.columns), dtype=tf.int64)), -1)

    def parse_image(path: tf.Tensor) -> Parsed:
        folder = tf.strings.split(path, "/")[-2]
        return {"image": decode_image(tf.io.read_file(path), record.image_size, record.channels),
                record.label: classes.lookup(folder)}
    return parse_image


PARSERS = {"csv": csv_parser, "tfrecord": tfrecord_parser, "images": image_parser}


def parser(file_set: FileSet, record: Record | None = None) -> Callable[[tf.Tensor], Parsed]:
    """A raw record of this file set -> a dict of tensors (one parser per format)."""
    return PARSERS[file_set.fmt](file_set, record or Record())


def dataset(file_set: FileSet, to_example: Example, batch_size: int, *, rank: int = 0,
            size: int = 1, by_record: bool = False, shuffle_seed: int | None = None,
            shuffle_buffer: int = 1, record: Record | None = None) -> tf.data.Dataset:
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
    ds = ds.map(parser(file_set, record), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed).repeat()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


FIELD_RE = re.compile(r"Field (\d+) in record \d+ is not a valid (\w+): (.*)")


def first_example(file_set: FileSet, to_example: Example,
                  record: Record | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """The first file's first record as the model takes it, or a DataError naming the file and
    what in it does not parse (a CSV column of strings: which column)."""
    first = FileSet(file_set.files[:1], file_set.fmt, file_set.gzipped, file_set.columns)
    try:
        for x, y in dataset(first, to_example, 1, record=record).take(1):
            return x[0], y[0]
    except (tf.errors.InvalidArgumentError, ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{first.files[0]}: {why_unparsed(exc, file_set)}") from None
    raise DataError(f"{first.files[0]} holds no records; remove it or fill it")


def why_unparsed(exc: Exception, file_set: FileSet) -> str:
    text = getattr(exc, "message", None) or str(exc)
    if m := FIELD_RE.search(text):
        column = file_set.columns[int(m.group(1))] if file_set.columns else m.group(1)
        return (f"column '{column}' holds {m.group(3).strip()!r}, not a {m.group(2)}; for "
                f"strings set data.RECORD's columns={{'{column}': ''}} and map them to numbers "
                "in from_record")
    return f"{last_line(text)}; fix the file, or data.py (RECORD, from_record)"


def last_line(text: str) -> str:
    """The line of an error that says what went wrong (TensorFlow's put it last)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "unknown error"


# --- writing ---------------------------------------------------------------------------------

def write(folder: Path, prefix: str, x: np.ndarray, y: np.ndarray, fmt: str, files: int,
          gz: bool) -> list[Path]:
    """x and y as `files` files PREFIX-0000i-of-0000n.{csv,tfrecord} (imagenet: TFRecords in the
    ImageNet layout)."""
    suffix = f".{FILE_SUFFIX[fmt]}" + (".gz" if gz else "")
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(x)), files)):
        path = folder / f"{prefix}-{i:05d}-of-{files:05d}{suffix}"
        WRITERS[fmt](path, x[part], y[part], gz)
        paths.append(path)
    return paths


def flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype("float32")


def write_csv(path: Path, x: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    features = flat(x)
    names = [f"f{i}" for i in range(features.shape[1])] + [LABEL]
    with gzip.open(path, "wt") if gz else open(path, "w") as fh:
        fh.write(",".join(names) + "\n")
        for row, label in zip(features, labels):
            fh.write(",".join(f"{v:.7g}" for v in row) + f",{label:.7g}\n")


def write_examples(path: Path, examples: list[dict[str, tf.train.Feature]], gz: bool) -> None:
    options = tf.io.TFRecordOptions(compression_type="GZIP" if gz else "")
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for feature in examples:
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def write_tfrecord(path: Path, x: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    write_examples(path, [
        {"features": tf.train.Feature(float_list=tf.train.FloatList(value=row)),
         LABEL: tf.train.Feature(float_list=tf.train.FloatList(value=[float(label)]))}
        for row, label in zip(flat(x), labels)], gz)


def write_imagenet(path: Path, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    """The ImageNet layout: image/encoded (JPEG bytes), image/class/label (int64, from 1)."""
    write_examples(path, [
        {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[encode(image, ".jpg")])),
         "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
             value=[int(label) + 1]))}
        for image, label in zip(images, labels)], gz)


def encode(image: np.ndarray, suffix: str) -> bytes:
    """An image in [0, 1], (height, width, channels), as PNG or JPEG bytes."""
    pixels = tf.convert_to_tensor(np.clip(image * 255 + 0.5, 0, 255).astype("uint8"))
    return (tf.io.encode_png if suffix == ".png" else tf.io.encode_jpeg)(pixels).numpy()


def write_images(folder: Path, x: np.ndarray, y: np.ndarray, suffix: str = ".png") -> int:
    """x as image files FOLDER/<label>/<n>.png, one folder per class, named by the label
    zero-padded (sorted, the folders keep the labels' order)."""
    width = len(str(int(y.max())))
    for n, (image, label) in enumerate(zip(x, y)):
        path = folder / f"{int(label):0{width}d}" / f"{n:06d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(image, suffix))
    return len(x)


WRITERS = {"csv": write_csv, "tfrecord": write_tfrecord, "imagenet": write_imagenet}
FILE_SUFFIX = {"csv": "csv", "tfrecord": "tfrecord", "imagenet": "tfrecord"}
WRITTEN = {"csv": "CSV files", "tfrecord": "TFRecord files", "images": "images in class folders "
           "(validation under val/)", "imagenet": "TFRecord files in the ImageNet layout (train "
           "on them with data.py's RECORD and from_record for it: its docstring has both)"}


def main(argv: list[str] | None = None) -> int:
    parser_ = argparse.ArgumentParser(
        prog="make data-files", description="Write data.py's in-memory set (load()) as "
        "training files train-* and validation files val-* in DEST (images: class folders, "
        "validation in DEST/val), for make train DATA=DEST.")
    parser_.add_argument("dest", type=Path, help="a new or empty folder")
    parser_.add_argument("--format", choices=sorted(WRITTEN), default="csv")
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
    if args.format == "images":
        write_images(args.dest, x_train, y_train)
        write_images(args.dest / "val", x_val, y_val)
    else:
        write(args.dest, "train", x_train, y_train, args.format, args.files, args.gzip)
        write(args.dest, "val", x_val, y_val, args.format, args.val_files, args.gzip)
    print(f"{len(x_train)} training and {len(x_val)} validation records as "
          f"{WRITTEN[args.format]} under {args.dest}; train on them with make train "
          f"DATA={args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
