"""What every experiment shares: its result record, the training recipe (:func:`fit`), figure saving and
markdown tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np

from ..core import optim, train, validate
from ..core.io import atomic_write

matplotlib.use("Agg")

SIZES = ("quick", "full")


@dataclass
class ExperimentResult:
    """What an experiment measured: a markdown summary (with its table), the figures it wrote,
    and the headline numbers as floats (so tests and the tour's summary table can read them)."""

    name: str
    title: str
    summary: str
    figures: list[Path] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def savefig(fig, out_dir, filename: str) -> Path:
    """Save a matplotlib figure with ``core.io.atomic_write`` (format from the file's suffix) and close it."""
    import matplotlib.pyplot as plt

    path = Path(out_dir) / filename
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or None,
                                                 dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def fit(loss_and_grads, params: dict, next_batch, *, steps: int, lr: float, rng: np.random.Generator,
        weight_decay: float = 0.0, warmup_steps: int | None = None, clip_norm: float | None = 1.0,
        eval_fn=None, eval_every: int | None = None, progress: bool = True, desc: str | None = None):
    """The one training recipe of the experiments: AdamW (Loshchilov & Hutter 2019) with linear warm-up
    then cosine decay to 0 (``core.optim.warmup_cosine``), global grad-norm clipping, the loop of
    ``core.train.train`` and its evaluation hook. Trains ``params`` in place; returns the History
    (``history.wall_time``: seconds spent training, evaluation included).

    loss_and_grads(params, batch, rng) -> (loss, grads); next_batch(rng, step) -> batch.
    warmup_steps: default min(50, steps // 10). clip_norm: None for no clipping. eval_fn(params) ->
    {metric: float}, called every ``eval_every`` steps (None: only after the last step).
    """
    steps = validate.positive_int(steps, "steps")
    lr = validate.positive(lr, "lr")
    warmup_steps = min(50, steps // 10) if warmup_steps is None else warmup_steps
    warmup_steps = validate.integer(warmup_steps, "warmup_steps", low=0, high=steps)
    eval_every = 0 if eval_every is None else validate.positive_int(eval_every, "eval_every")
    opt = optim.AdamW(lr=lr, weight_decay=weight_decay)
    return train.train(loss_and_grads, params, opt, next_batch, steps=steps, rng=rng,
                       lr_schedule=lambda s: optim.warmup_cosine(s, base_lr=lr, warmup_steps=warmup_steps,
                                                                 total_steps=steps),
                       clip_norm=clip_norm, eval_fn=eval_fn, eval_every=eval_every, progress=progress,
                       desc="train" if desc is None else desc)


def mean_loss(params, config, inputs, targets, *, linears=None, batch=64) -> float:
    """Mean next-token cross-entropy (nats per scored token, targets != -100) of a transformer
    (``models.transformer``) over a fixed evaluation set, evaluated ``batch`` rows at a time.
    linears: the model's projection overrides (e.g. LoRA adapters)."""
    from ..core.layers import cross_entropy_forward
    from ..models import transformer as tf

    total, count = 0.0, 0
    for s in range(0, len(inputs), batch):
        logits, _ = tf.forward(params, config, inputs[s:s + batch], linears=linears)
        t = targets[s:s + batch]
        n = int(np.sum(t != -100))
        if n:
            loss, _ = cross_entropy_forward(logits, t, reduction="sum")
            total += loss
            count += n
    return total / max(count, 1)


def _cell(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table; floats printed with 4 significant digits."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
