"""PNG plots of training curves, of accuracy against prompt length and of score against search time
(matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_training_curves(curves: dict[str, tuple[list[float], list[tuple[int, float]]]], path: str | Path) -> Path:
    """One panel of training losses and one of held-out scores, a line per run: {label: (losses, scores)}."""
    plt = _pyplot()
    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for label, (losses, scores) in curves.items():
        loss_axis.plot(range(1, len(losses) + 1), losses, label=label, alpha=0.8)
        if scores:
            steps, values = zip(*scores, strict=True)
            score_axis.plot(steps, values, marker="o", label=label)
    loss_axis.set(xlabel="step", ylabel="training loss", title="Training loss")
    score_axis.set(xlabel="step", ylabel="held-out score", title="Held-out score")
    for axis in (loss_axis, score_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    return _save(figure, path)


def plot_accuracy_vs_length(points: dict[str, list[tuple[int, float]]], path: str | Path) -> Path:
    """Held-out score against prompt length, a line per method: {label: [(num_virtual_tokens, score), ...]}."""
    lines = {label: tuple(zip(*sorted(values), strict=True)) for label, values in points.items()}
    return line_plot(lines, path, xlabel="prompt length (virtual tokens)", title="Score vs prompt length")


def plot_score_vs_seconds(curves: dict[str, tuple[list[float], list[float]]], path: str | Path,
                          title: str = "Score vs search time") -> Path:
    """Held-out score against search seconds, a line per run: {label: (seconds, scores)}, e.g. from a
    `DiscoveryResult`'s `score_seconds` and `score_history` — how to compare cheap-step and expensive-step
    methods."""
    return line_plot(curves, path, xlabel="search seconds (held-out scoring not counted)", title=title)


def line_plot(lines: dict[str, tuple], path: str | Path, xlabel: str, title: str, ylabel: str = "held-out score",
              xscale: str = "linear") -> Path:
    """A score against `xlabel`, a marked line per label: {label: (xs, scores)}."""
    figure, axis = _pyplot().subplots(figsize=(6, 4))
    for label, (xs, scores) in lines.items():
        axis.plot(xs, scores, marker="o", label=label)
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title, xscale=xscale)
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path)


def _pyplot():
    """matplotlib.pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    from ..distributed import is_main_process

    path = Path(path)
    if not is_main_process():
        plt.close(figure)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.writing{path.suffix}")
    figure.tight_layout()
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)
    return path
