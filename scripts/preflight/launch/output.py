"""What make train shows of the job's output: rank 0's lines as the ranks wrote them, other
ranks' lines behind `[rank N]`, and none of TensorFlow's start-up notes. The log that explain.py
reads keeps every byte as horovodrun wrote it; VERBOSE=1 shows that raw stream instead.

mpirun (static runs) tags each line `[1,R]<stdout>:`, Horovod's Gloo (elastic) `[R]<stdout>:`;
mpirun sometimes glues a tag to the end of the previous line, so tags are found anywhere.
"""

from __future__ import annotations

import re

TAG = re.compile(rb"\[(?:\d+,)?(\d+)\]<(?:stdout|stderr)>:")
# TensorFlow's C++ logging prints these once per process (horovodrun's own too) before Python
# can silence it: they are not the job's news. Anything else, warnings included, is shown.
NOISE = tuple(re.compile(p) for p in (
    rb"^WARNING: All log messages before absl::InitializeLog\(\) is called",
    rb"^I0000 [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on",
    rb"^I0000 [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    rb"^To enable the following instructions: .*rebuild TensorFlow",
    rb"Unable to register cu(DNN|FFT|BLAS) factory",
    rb"computation placer already registered",
    rb"TF-TRT Warning: Could not find TensorRT",
))


class TidyOutput:
    """Feed it the job's bytes as they come; it returns what to show, whole lines only."""

    def __init__(self, raw: bool = False) -> None:
        self.raw = raw
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if self.raw:
            return chunk
        lines = (self.pending + chunk).split(b"\n")
        self.pending = lines.pop()
        return b"".join(self.tidy(line) for line in lines)

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return b"" if self.raw or not rest else self.tidy(rest)

    def tidy(self, line: bytes) -> bytes:
        shown = b""
        for text in line.split(b"\r"):  # a progress bar's redraws: each becomes a line
            for rank, part in parts(text):
                if part.strip() and not any(p.search(part) for p in NOISE):
                    shown += (part if rank in (None, 0) else b"[rank %d] %s" % (rank, part))
                    shown += b"\n"
        return shown


def parts(text: bytes) -> list[tuple[int | None, bytes]]:
    """(rank or None for untagged text, text) for each tagged stretch of a line."""
    found = [(None, 0, 0)] + [(int(m.group(1)), m.start(), m.end()) for m in TAG.finditer(text)]
    ends = [start for _, start, _ in found[1:]] + [len(text)]
    return [(rank, text[body:end]) for (rank, _, body), end in zip(found, ends)]
