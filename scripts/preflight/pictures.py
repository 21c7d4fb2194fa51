"""The --bandwidth matrices as one PNG next to the report: latency and bandwidth heatmaps.

preflight.json -> preflight-network.png: two heatmaps side by side, host names on both axes,
every cell annotated with its value (up to VALUES_UP_TO hosts). The colours are anchored to the
mpi checks' own baseline (checks/mpi.py: the median of each host's best link), not to the data's
range: a cell at the typical value is pale and one at the checks' "slow" threshold or past it is
dark red, so a healthy cluster looks pale however its figures spread, and a slow link stands
out. The cells the checks call slow are outlined as well; `slow_cells` picks them by the checks'
own rule.

matplotlib is imported only when a picture is drawn (it costs a few hundred ms, and only the
--bandwidth run draws), on the Agg backend (no display). The picture is a by-product: nothing
here may fail the preflight, so every error becomes a line of text instead.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .checks import mpi
from .report import write_atomic

Matrix = Mapping[str, Mapping[str, float]]
Cell = tuple[str, str]  # (row host, column host)
SUFFIX = "-network.png"
DPI = 110


@dataclass(frozen=True)
class Panel:
    """One heatmap: which matrix, how to read it, and which way is bad."""

    key: str  # in preflight.json's "matrices"
    title: str
    unit: str
    high_is_slow: bool  # latency: a high value is slow; bandwidth: a low one
    # The colour scale follows the checks' rule: a ratio for bandwidth (log), for latency a
    # ratio and a margin of 250 us, which on a LAN is the larger: linear.
    log_scale: bool


PANELS = (
    Panel("latency_us", "MPI latency, us (half round trip, 8 bytes)", "us", True, False),
    Panel("bandwidth_MBps", "MPI bandwidth, MB/s (row sends to column)", "MB/s", False, True),
)


VALUES_UP_TO = 40  # hosts: beyond, colours only (the report has the figures)
MAX_SIDE_IN = 16.0


def picture_path(report_path: Path) -> Path:
    """Where the picture goes: beside the report, named after it (preflight.json ->
    preflight-network.png), so that two reports in one folder keep two pictures."""
    report_path = Path(report_path)
    return report_path.with_name(report_path.stem + SUFFIX)


def matrix_of(matrices: Mapping, key: str) -> dict[str, dict[str, float]]:
    """One matrix, numbers only: whatever else preflight.json holds there is left out."""
    found = matrices.get(key) if isinstance(matrices, Mapping) else None
    if not isinstance(found, Mapping):
        return {}
    return {str(a): {str(b): float(v) for b, v in row.items()
                     if isinstance(v, (int, float)) and math.isfinite(v)}
            for a, row in found.items() if isinstance(row, Mapping)}


def hosts_of(matrices: Mapping, panels: Iterable[dict[str, dict[str, float]]]) -> list[str]:
    """The hosts in rank order (the order mpirun placed them, as the report lists them), then
    any other host a matrix names."""
    ranks = matrices.get("ranks") if isinstance(matrices, Mapping) else None
    order = [str(r) for r in ranks] if isinstance(ranks, list) else []
    named = [h for m in panels for a, row in m.items() for h in (a, *row)]
    return list(dict.fromkeys([*order, *sorted(set(named) - set(order))]))


def slow_limit(matrix: Matrix, high_is_slow: bool) -> tuple[float, float] | None:
    """(typical value, the value past which the mpi checks call a pair slow); None when the
    checks judge nothing (fewer than two pairs). The same rules as checks/mpi.slow_hosts."""
    if len({pair for pair, _ in mpi.pair_values(matrix)}) < 2:
        return None
    if high_is_slow:
        base = mpi.typical(matrix, min)
        return base, max(base * mpi.SLOW_LATENCY, base + mpi.SLOW_LATENCY_MARGIN_US)
    base = mpi.typical(matrix, max)
    return base, base / mpi.SLOW_BANDWIDTH


def slow_cells(matrix: Matrix, high_is_slow: bool) -> set[Cell]:
    """The cells to mark: the measurements the mpi checks call slow (latency far above the
    typical value, bandwidth far below it)."""
    limit = slow_limit(matrix, high_is_slow)
    if limit is None:
        return set()
    _, edge = limit
    return {(a, b) for a, row in matrix.items() for b, v in row.items()
            if (v > edge if high_is_slow else v < edge)}


def value_text(value: float) -> str:
    """Three significant figures at most, no exponent: 7.2, 48, 1210."""
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2g}"


def draw(matrices: Mapping, path: Path, title: str = "") -> Path:
    """Draws the picture and writes it (atomically: a reader never sees half a PNG); raises
    ImportError without matplotlib and ValueError when no host pair was measured."""
    found = [(p, matrix_of(matrices, p.key)) for p in PANELS]
    found = [(p, m) for p, m in found if any(m.values())]
    if not found:
        raise ValueError("no host pair was measured")
    import matplotlib

    matplotlib.use("Agg")  # no display; and the only backend sure to be there
    from matplotlib.figure import Figure  # not pyplot: no global state, nothing to close

    hosts = hosts_of(matrices, (m for _, m in found))
    # Inches per panel: room for names and values, up to a size a screen shows (1,000 hosts at
    # half an inch each would be a 50,000-pixel picture that takes minutes to draw).
    side = min(MAX_SIDE_IN, max(3.2, 0.5 * len(hosts) + 1.8))
    fig = Figure(figsize=(side * len(found) + 1.2 * len(found), side + 0.9), dpi=DPI,
                 layout="constrained")
    for ax, (panel, matrix) in zip(fig.subplots(1, len(found), squeeze=False)[0], found):
        heatmap(fig, ax, panel, matrix, hosts)
    fig.suptitle(title or "preflight: MPI between host pairs", fontsize=11)
    fig.text(0.5, 0.005, "outlined: pairs the mpi checks call slow (latency above "
             f"{mpi.SLOW_LATENCY:g}x the typical and +{mpi.SLOW_LATENCY_MARGIN_US:g} us; "
             f"bandwidth below 1/{mpi.SLOW_BANDWIDTH:g} of the typical); grey: no figure",
             ha="center", va="bottom", fontsize=7, color="0.3")
    return save(fig, Path(path))


def heatmap(fig, ax, panel: Panel, matrix: Matrix, hosts: list[str]) -> None:
    """One panel: colours from the typical value (pale) to the slow threshold (dark red), every
    cell's value written in it, the slow cells outlined."""
    from matplotlib import colormaps

    grid = grid_of(matrix, hosts)
    cmap = colormaps["OrRd" if panel.high_is_slow else "OrRd_r"].copy()
    cmap.set_bad("0.88")  # no figure: the diagonal, a pair that was not measured
    limit = slow_limit(matrix, panel.high_is_slow)
    norm = norm_for(limit, grid, panel.log_scale)
    image = ax.imshow(grid, cmap=cmap, norm=norm)
    colour_bar(fig.colorbar(image, ax=ax, shrink=0.8, extend="both" if limit else "neither"),
               panel.unit, limit, panel.log_scale)
    size = max(5.0, min(9.0, 110 / max(1, len(hosts))))  # smaller with more hosts
    annotate(ax, grid, hosts, slow_cells(matrix, panel.high_is_slow),
             lambda v: ink(cmap(norm(v))), size, values=len(hosts) <= VALUES_UP_TO)
    ax.set_title(panel.title, fontsize=9)
    step = max(1, len(hosts) // VALUES_UP_TO)  # beyond, every step-th name
    ticks = range(0, len(hosts), step)
    ax.set_xticks(ticks, [hosts[i] for i in ticks], rotation=90 if len(hosts) > 6 else 0,
                  fontsize=size)
    ax.set_yticks(ticks, [hosts[i] for i in ticks], fontsize=size)
    if not panel.high_is_slow:  # latency is the same both ways; bandwidth is not
        ax.set_xlabel("to")
        ax.set_ylabel("from")


def grid_of(matrix: Matrix, hosts: list[str]):
    """The matrix as a masked array in the order of `hosts`; cells without a figure masked."""
    import numpy as np

    grid = np.full((len(hosts), len(hosts)), np.nan)
    at = {h: i for i, h in enumerate(hosts)}
    for a, row in matrix.items():
        for b, v in row.items():
            grid[at[a], at[b]] = v
    return np.ma.masked_invalid(grid)


def norm_for(limit: tuple[float, float] | None, grid, log_scale: bool):
    """From the typical value to the slow threshold, clipped beyond; with nothing to compare
    (one pair), a plain scale around the values, so that no colour says "slow"."""
    from matplotlib.colors import LogNorm, Normalize

    if limit is not None and min(limit) > 0:
        kind = LogNorm if log_scale else Normalize
        return kind(vmin=min(limit), vmax=max(limit), clip=True)
    return Normalize(vmin=float(grid.min()) * 0.5, vmax=float(grid.max()) * 2)


def colour_bar(bar, unit: str, limit: tuple[float, float] | None, log_scale: bool) -> None:
    """The unit, and where the scale is the checks' own, its two ends named."""
    bar.set_label(unit)
    if limit is None or min(limit) <= 0:
        return
    base, edge = limit
    middle = math.sqrt(base * edge) if log_scale else (base + edge) / 2
    bar.minorticks_off()
    bar.set_ticks([base, middle, edge], labels=[
        f"{value_text(base)} typical", value_text(middle), f"{value_text(edge)} slow"])


def annotate(ax, grid, hosts: list[str], slow: set[Cell], colour: Callable[[float], str],
             size: float, values: bool = True) -> None:
    """Each cell's value in it (bold where slow; none when not `values`), and a frame around
    the slow cells."""
    from matplotlib.patches import Rectangle

    for i, row in enumerate(grid.tolist()):
        for j, value in enumerate(row):
            if value is None:  # masked: no figure
                continue
            marked = (hosts[i], hosts[j]) in slow
            if values:
                ax.text(j, i, value_text(value), ha="center", va="center", fontsize=size,
                        color=colour(value), fontweight="bold" if marked else "normal")
            if marked:
                ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False,
                                       edgecolor="#1f4fd1", linewidth=2.2))


def ink(rgba: tuple[float, ...]) -> str:
    """White text on a dark cell, black on a light one (by the cell's luminance)."""
    r, g, b = rgba[:3]
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"


def save(fig, path: Path) -> Path:
    """The PNG written as the report is: a temporary file renamed over the path."""
    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_atomic(path, png.getvalue())
    return path


def write_picture(matrices: Mapping, report_path: Path, say: Callable[[str], None],
                  title: str = "") -> Path | None:
    """The picture beside the report, or None, with one line through `say` about why not.
    Never raises: a picture that cannot be drawn must not fail the preflight."""
    path = picture_path(report_path)
    try:
        return draw(matrices, path, title)
    except ImportError:
        say(f"no network picture ({path.name}): it needs matplotlib, which make setup "
            "installs (requirements-dev.txt)")
    except ValueError as exc:
        say(f"no network picture: {exc}")
    except Exception as exc:  # a by-product: any bug here is worth a line, not a failure
        say(f"no network picture: drawing it failed ({type(exc).__name__}: {exc})")
    return None
