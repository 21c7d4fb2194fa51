"""The `Include <state>/ssh_config` block at the top of the launching user's ~/.ssh/config.

The marker and note lines keep the text the earlier bash version wrote, so clusters made by
either version can share the file and hand the notes on to each other. Every edit holds one
lock shared by all prefixes and goes through a temporary file and a rename, so concurrent
clusters never lose an edit and an interrupted run never leaves half a file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from .settings import SSH_CONFIG_LOCK, Settings
from .sshd import launch_home, launch_user
from .system import locked, warn

NOTE_FILE = "# (cluster.sh created this file; 'cluster.sh down' removes it when empty)"
NOTE_DIR = "# (cluster.sh created this directory; 'cluster.sh down' removes it when empty)"
ANY_BEGIN_RE = re.compile(r"# >>> [a-z][a-z0-9]* cluster \(scripts/cluster\.sh\) >>>")


def markers(prefix: str) -> tuple[str, str]:
    return f"# >>> {prefix} cluster (scripts/cluster.sh) >>>", f"# <<< {prefix} cluster <<<"


def _read_lines(path: Path) -> list[str]:
    text = path.read_text()
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n") if text else []


def _block_has(lines: list[str], prefix: str, wanted: str) -> bool:
    """Whether `wanted` is a line inside this prefix's block (not another prefix's)."""
    begin, end = markers(prefix)
    inside = False
    for line in lines:
        if line in (begin, end):
            inside = line == begin
        elif inside and line == wanted:
            return True
    return False


def _strip_block(lines: list[str], prefix: str) -> list[str]:
    begin, end = markers(prefix)
    kept, skip = [], False
    for line in lines:
        if line in (begin, end):
            skip = line == begin
        elif not skip:
            kept.append(line)
    return kept


def _rewrite(path: Path, lines: list[str]) -> None:
    """Replaces the file with `lines`, keeping its owner and mode."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".hvsim.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(line + "\n" for line in lines))
    try:
        st = path.stat()
        os.chmod(tmp, st.st_mode & 0o7777)
        os.chown(tmp, st.st_uid, st.st_gid)
    except OSError:
        os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _config_path(home: Path) -> Path:
    """~/.ssh/config, or the file it links to (the link itself is left in place)."""
    return Path(os.path.realpath(home / ".ssh" / "config"))


def _ensure_config(home: Path, user: str) -> tuple[Path, bool, bool]:
    """~/.ssh and its config, made for `user` where missing; says which ones were made."""
    sshdir, cfg = home / ".ssh", _config_path(home)
    made_dir = made_file = False
    if not sshdir.is_dir():
        sshdir.mkdir(mode=0o700)
        shutil.chown(sshdir, user=user)
        made_dir = True
    if not cfg.exists():
        cfg.touch(mode=0o600)
        cfg.chmod(0o600)
        shutil.chown(cfg, user=user)
        made_file = True
    return cfg, made_dir, made_file


def install_include(settings: Settings) -> None:
    user, home = launch_user(), launch_home()
    if home is None or not home.is_dir():
        warn(f"no home directory for {user}; ssh h1 needs -F {settings.state_dir}/ssh_config")
        return
    with locked(SSH_CONFIG_LOCK, 60, f"could not lock {SSH_CONFIG_LOCK}"):
        cfg, made_dir, made_file = _ensure_config(home, user)
        lines, prefix = _read_lines(cfg), settings.prefix
        # A block left from an earlier run keeps its notes, so the file is still removed later.
        made_file = made_file or _block_has(lines, prefix, NOTE_FILE)
        made_dir = made_dir or _block_has(lines, prefix, NOTE_DIR)
        begin, end = markers(prefix)
        notes = [n for n, made in ((NOTE_FILE, made_file), (NOTE_DIR, made_dir)) if made]
        block = [begin, *notes, f"Include {settings.state_dir}/ssh_config", end]
        _rewrite(cfg, block + _strip_block(lines, prefix))


def _hand_on_notes(rest: list[str], notes: list[str]) -> list[str]:
    """Another cluster's block still there inherits our notes, so whichever cluster goes down
    last still removes the file (and directory) that the first one created."""
    notes = [n for n in notes if n not in rest]
    first = next((i for i, line in enumerate(rest) if ANY_BEGIN_RE.fullmatch(line)), None)
    if not notes or first is None:
        return rest
    return rest[:first + 1] + notes + rest[first + 1:]


def remove_include(settings: Settings) -> list[str]:
    """Removes this prefix's block; returns what it did, one line each."""
    home = launch_home()
    if home is None:
        return []
    with locked(SSH_CONFIG_LOCK, 60, f"could not lock {SSH_CONFIG_LOCK}"):
        cfg = _config_path(home)
        if not cfg.is_file() or markers(settings.prefix)[0] not in _read_lines(cfg):
            return []
        lines, prefix = _read_lines(cfg), settings.prefix
        notes = [n for n in (NOTE_FILE, NOTE_DIR) if _block_has(lines, prefix, n)]
        made_file, made_dir = NOTE_FILE in notes, NOTE_DIR in notes
        _rewrite(cfg, _hand_on_notes(_strip_block(lines, prefix), notes))
        if made_file and cfg.stat().st_size == 0:
            cfg.unlink()
            if made_dir:
                with contextlib.suppress(OSError):
                    (home / ".ssh").rmdir()
    return [f"removed the {prefix} block from {cfg}"]
