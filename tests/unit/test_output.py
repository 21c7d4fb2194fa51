"""What make train shows of the job's output (preflight.launch.output): rank 0's lines bare,
other ranks' behind [rank N], TensorFlow's start-up notes left out, every byte kept raw."""

from __future__ import annotations

from preflight.launch import explain
from preflight.launch.output import TidyOutput

RAW = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
       b"[1,0]<stderr>:I0000 00:00:1795800930.253288   16820 port.cc:153] oneDNN custom "
       b"operations are on. You may see slightly different numerical results\n"
       b"[1,0]<stdout>:training on 2 processes, run directory runs/1[1,0]<stdout>:\n"
       b"[1,1]<stdout>:epoch   1/2  loss 1.0  4s left[1,0]<stdout>:epoch   1/2  loss 1.0\n"
       b"[1,1]<stderr>:Traceback (most recent call last):\n"
       b"[0]<stdout>:epoch   2/2  loss 0.5 (gloo)\n")


def feed_in_pieces(tidy: TidyOutput, raw: bytes, size: int) -> bytes:
    shown = b"".join(tidy.feed(raw[i:i + size]) for i in range(0, len(raw), size))
    return shown + tidy.flush()


def test_rank_zero_lines_are_bare_other_ranks_prefixed_and_start_up_notes_dropped() -> None:
    shown = feed_in_pieces(TidyOutput(), RAW, 7).decode()
    assert shown.splitlines() == [
        "training on 2 processes, run directory runs/1",  # the glued tag is split off
        "[rank 1] epoch   1/2  loss 1.0  4s left",
        "epoch   1/2  loss 1.0",
        "[rank 1] Traceback (most recent call last):",  # errors of any rank are shown
        "epoch   2/2  loss 0.5 (gloo)",  # Gloo's tag in elastic runs
    ]


def test_a_line_without_its_newline_yet_waits_and_the_end_flushes_it() -> None:
    tidy = TidyOutput()
    assert tidy.feed(b"[1,0]<stdout>:done: val_acc") == b""
    assert tidy.feed(b"uracy 0.97") == b""
    assert tidy.flush() == b"done: val_accuracy 0.97\n"


def test_verbose_shows_the_stream_as_it_came() -> None:
    assert feed_in_pieces(TidyOutput(raw=True), RAW, 5) == RAW


# What horovodrun printed when both ranks exited with the template's one-line error (mpirun
# 4.1, glued tag and all), and one box that is news.
RULE = b"-" * 74 + b"\n"
FAILED = (b"[1,0]<stderr>:error: DATA=d holds no files; give a folder[1,0]<stderr>:\n"
          + RULE +
          b"Primary job  terminated normally, but 1 process returned\n"
          b"a non-zero exit code. Per user-direction, the job has been aborted.\n"
          + RULE + b"[1,1]<stderr>:error: DATA=d holds no files; give a folder\n"
          + RULE + b"mpirun detected that one or more processes exited with non-zero status, thus "
          b"causing\nthe job to be terminated. The first process to do so was:\n\n"
          b"  Process name: [[7106,1],0]\n  Exit code:    2\n"
          + RULE + RULE + b"ORTE was unable to reliably start one or more daemons.\n" + RULE)


def test_a_ranks_error_and_mpiruns_exit_notes_are_left_to_the_one_line_at_the_end() -> None:
    shown = feed_in_pieces(TidyOutput(), FAILED, 11).decode()
    assert shown.splitlines() == ["-" * 74, "ORTE was unable to reliably start one or more "
                                  "daemons.", "-" * 74]  # news stays
    said = explain.failure(FAILED.decode(), ["h1", "h2"])
    assert said == "error: DATA=d holds no files; give a folder"  # once, not once per rank
