"""Pictures a person would rather look at than read: the curation funnel and the loss curve (PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display in pods or CI
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def funnel(stages: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Samples left after each stage, as horizontal bars, with the reasons for what each stage dropped."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(stages) + 1.2))
    names = [s["name"] for s in stages]
    kept = [s["output"] for s in stages]
    ax.barh(names, kept, color="#3b7dd8")
    for y, stage in enumerate(stages):
        dropped = ", ".join(f"-{n} {why}" for why, n in stage.get("dropped", {}).items() if n)
        ax.text(stage["output"], y, f" {stage['output']}  {dropped}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("items after the stage (documents, chunks or pairs)")
    ax.set_title(title)
    ax.set_xlim(0, max([*kept, 1]) * 1.6)
    return _save(plt, fig, path)


def loss_curve(losses: list[dict[str, float]], eval_losses: list[dict[str, float]], path: Path, title: str) -> Path:
    """Training loss per logged step, and the eval loss where it was measured."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p["step"] for p in losses], [p["loss"] for p in losses], label="train loss", color="#3b7dd8")
    if eval_losses:
        ax.plot(
            [p["step"] for p in eval_losses],
            [p["eval_loss"] for p in eval_losses],
            "o-",
            label="eval loss",
            color="#d8563b",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)
