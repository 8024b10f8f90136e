"""Learning-rate multipliers: pure functions of the step, so a resumed run needs no
scheduler state. Every warm-up starts at ``1/warmup`` (never at 0: a zero-LR step right
after a ReLoRA reset would leave ``B`` at zero and ``A``'s gradient with it)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at the end.

    Args:
        step: 0-based index of the optimizer step about to run.
        total_steps: length of the run.
        warmup_steps: steps of linear warm-up (0: none).
        min_lr_ratio: the multiplier reached at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def rewarm(step: int, start: int | None, rewarm_steps: int) -> float:
    """Linear re-warm-up factor ``min(1, (step − start + 1) / rewarm_steps)`` from ``start`` on.

    1 before ``start``, when ``start`` is None or when ``rewarm_steps`` is 0.
    """
    if start is None or step < start or rewarm_steps <= 0:
        return 1.0
    return min(1.0, (step - start + 1) / rewarm_steps)


def jagged_cosine(
    step: int,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float,
    *,
    start: int,
    cycle: int,
    restart_warmup: int,
) -> float:
    """ReLoRA's jagged schedule: :func:`warmup_cosine` times a re-warm-up after each restart.

    Restarts happen at ``start + j·cycle`` for ``j >= 1`` (and at ``start`` itself when
    ``start > 0``, i.e. after a full-rank warm start); each is followed by a linear
    re-warm-up over ``restart_warmup`` steps.
    """
    base = warmup_cosine(step, total_steps, warmup_steps, min_lr_ratio)
    if step < start:
        return base
    since = step - start
    if since < cycle and start == 0:
        return base  # the first cycle is covered by the initial warm-up
    return base * rewarm(since % cycle, 0, restart_warmup)
