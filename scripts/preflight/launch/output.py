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


# mpirun's boxed paragraphs (between lines of dashes) after a rank exits non-zero: explain.py
# says which rank and why in one line. Other boxes (a daemon that did not start) are shown.
RULE = re.compile(rb"^-{20,}$")
MPIRUN_EXIT_NOTES = (b"Primary job  terminated normally", b"mpirun detected that one or more "
                     b"processes exited", b"Primary job terminated normally")
# A rank's `error: WHAT; FIX` (the template's one line for a mistake): every rank may print the
# same; explain.py shows it once, at the end.
RANK_ERROR = re.compile(rb"^error: ")


class TidyOutput:
    """Feed it the job's bytes as they come; it returns what to show, whole lines only."""

    def __init__(self, raw: bool = False) -> None:
        self.raw = raw
        self.pending = b""
        self.box: list[bytes] | None = None  # an mpirun box's lines while it is open

    def feed(self, chunk: bytes) -> bytes:
        if self.raw:
            return chunk
        lines = (self.pending + chunk).split(b"\n")
        self.pending = lines.pop()
        return b"".join(self.tidy(line) for line in lines)

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        shown = b"" if self.raw or not rest else self.tidy(rest)
        box, self.box = self.box or [], None  # a box never closed: shown as it came
        return shown + b"".join(line + b"\n" for line in box)

    def tidy(self, line: bytes) -> bytes:
        shown = b""
        for text in line.split(b"\r"):  # a progress bar's redraws: each becomes a line
            for rank, part in parts(text):
                if rank is None and (self.box is not None or RULE.match(part.strip())):
                    shown += self.boxed(part.rstrip())
                elif part.strip() and not any(p.search(part) for p in NOISE) and not (
                        rank is not None and RANK_ERROR.match(part)):
                    shown += (part if rank in (None, 0) else b"[rank %d] %s" % (rank, part))
                    shown += b"\n"
        return shown

    def boxed(self, line: bytes) -> bytes:
        """Holds an mpirun box until its closing rule; shows it unless it is an exit note."""
        if self.box is None:
            self.box = [line]
            return b""
        self.box.append(line)
        if not RULE.match(line):
            return b""
        box, self.box = self.box, None
        if any(note in b" ".join(box) for note in MPIRUN_EXIT_NOTES):
            return b""
        return b"".join(part + b"\n" for part in box)


def parts(text: bytes) -> list[tuple[int | None, bytes]]:
    """(rank or None for untagged text, text) for each tagged stretch of a line."""
    found = [(None, 0, 0)] + [(int(m.group(1)), m.start(), m.end()) for m in TAG.finditer(text)]
    ends = [start for _, start, _ in found[1:]] + [len(text)]
    return [(rank, text[body:end]) for (rank, _, body), end in zip(found, ends)]
