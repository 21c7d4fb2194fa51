"""`make train`: the horovodrun launcher, in four steps, one module each.

    config.py   make's variables -> one LaunchConfig, checked before anything runs
    command.py  the report's process count and interface -> horovodrun's argv and environment
    explain.py  a failed job's output -> one line: which process, where, how to go on
    run.py      the launch itself: choose the hostfile (running the preflight where the report
                does not vouch for one), start horovodrun, tee its output, explain a failure

The entry points are `python -m preflight.train` and `preflight-train`; the elastic discovery
that horovodrun calls back is preflight.discover.
"""
