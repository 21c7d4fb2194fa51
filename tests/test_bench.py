"""The benchmarks' own logic that can go wrong quietly: reading workers' output, the arguments.
(The figures themselves come from `make bench`; no test times anything.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import common  # noqa: E402
import run  # noqa: E402


def test_a_workers_json_is_found_behind_and_before_mpiruns_tags():
    out = ('[1,0]<stdout>:starting\n'
           '[1,0]<stdout>:{"lib": "horovod", "rows": [1, 2]}[1,0]<stdout>:\n')
    assert common.last_json_line(out) == {"lib": "horovod", "rows": [1, 2]}


def test_no_json_at_all_is_an_error_not_an_empty_result():
    with pytest.raises(ValueError):
        common.last_json_line("[1,0]<stdout>:{not json\nnothing here\n")


def test_host_counts_are_sorted_unique_and_bounded():
    args = run.parse_args(["--hosts", "16,3,3,8"])
    assert args.hosts == (3, 8, 16)
    for bad in ("0,3", "129", "three"):
        with pytest.raises(SystemExit):
            run.parse_args(["--hosts", bad])


def test_one_cluster_is_as_large_as_the_largest_benchmark_asks():
    assert run.cluster_size(run.parse_args([])) == 16
    assert run.cluster_size(run.parse_args(["--only", "allreduce", "--allreduce-hosts", "3"])) == 3
    assert run.cluster_size(run.parse_args(["--only", "step"])) == 1


def test_callback_hook_times_are_summed_per_batch():
    import callback_cost

    # Two callbacks x two hooks per batch: each batch's four durations make one total.
    assert callback_cost.per_batch([1, 2, 3, 4, 10, 20, 30, 40], 4) == [10, 100]


def test_the_scaling_benchmark_gets_four_hosts_and_compares_fp16_to_plain_runs():
    import scaling_cost

    assert run.cluster_size(run.parse_args(["--only", "scaling"])) == 4
    rows = [{"rate": "100mbit", "hosts": 2, "mode": "plain", "measured_ms": 300.0,
             "predicted_ms": 330.0},
            {"rate": "100mbit", "hosts": 2, "mode": "fp16", "measured_ms": 200.0,
             "predicted_ms": 165.0}]
    (gain,) = scaling_cost.fp16_gains(rows)
    assert gain["measured"] == 1.5 and gain["predicted"] == 2.0
    assert round(gain["error"], 3) == 0.333
