"""What every training loop shares: how it ended, and when a step counts as diverged."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Outcome:
    """How the loop ended."""

    status: str = "completed"  # or "diverged"
    reason: str = ""
    diverged_step: int | None = None
    stopped_early: bool = False
    stop_reason: str = ""
    updates: int = 0
    cutoff: float | None = None


def check_divergence(outcome: Outcome, step: int, loss: float, finite: bool, vocab_size: int) -> bool:
    """Whether step ``step`` diverged (non-finite, or the loss above the cut-off); records it.

    The cut-off defaults to max(2 ln V, 2 × the first loss): far above anything training reaches.
    """
    if outcome.cutoff is None:
        outcome.cutoff = max(2 * math.log(vocab_size), 2 * loss)
    if not math.isfinite(loss) or not finite:
        outcome.status, outcome.reason = "diverged", "non-finite loss or logits"
    elif loss > outcome.cutoff:
        outcome.status, outcome.reason = "diverged", f"loss {loss:.3g} above cut-off {outcome.cutoff:.3g}"
    else:
        return False
    outcome.diverged_step = step
    return True
