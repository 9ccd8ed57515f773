"""PNG plots of a run: per-viewer fps, the latency CDF, and series such as RSS over time.

Drawn after the measurements (matplotlib's import and rendering cost seconds of
CPU that must not land inside a measured window), with the Agg backend.
"""

from __future__ import annotations

from pathlib import Path

from ._report import Results


def draw(results: Results, stem: Path) -> list[Path]:
    """Write the plots next to the results file; returns the paths written."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    scenarios: dict[str, list[dict]] = {}
    for load in results.loads:
        scenarios.setdefault(load["scenario"], []).append(load)
    if "fanout" in scenarios and "ceiling" in scenarios:  # the reference, drawn dashed
        scenarios["fanout"] += scenarios.pop("ceiling")

    for scenario, loads in scenarios.items():
        fig, ax = plt.subplots(figsize=(9, 5))
        for load in loads:
            fps = sorted((row["fps"] or 0.0) for row in load["rows"])
            if fps:
                ax.plot(
                    range(1, len(fps) + 1),
                    fps,
                    marker="." if len(fps) < 30 else None,
                    linestyle=_style(load),
                    label=load["run"],
                )
        ax.set_xlabel("viewer (sorted by fps)")
        ax.set_ylabel("frames per second received")
        ax.set_title(f"{scenario}: per-viewer fps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        path = stem.with_name(f"{stem.name}-{scenario}-fps.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

        fig, ax = plt.subplots(figsize=(9, 5))
        for load in loads:
            xs, ys = load["latency"].cdf()
            if xs:
                ax.step(xs, ys, where="post", linestyle=_style(load), label=load["run"])
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("capture → receive latency (ms, log scale)")
        ax.set_ylabel("fraction of frames")
        ax.set_title(f"{scenario}: latency CDF")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
        path = stem.with_name(f"{stem.name}-{scenario}-latency.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    for name, points in results.series.items():
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot([p[0] for p in points], [p[1] for p in points])
        ax.set_xlabel("seconds")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        path = stem.with_name(f"{stem.name}-{name.split(' ')[0]}.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _style(load: dict) -> str:
    return "--" if load["scenario"] == "ceiling" else "-"
