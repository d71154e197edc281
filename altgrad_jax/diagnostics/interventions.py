"""Host-side stability interventions: NaN patience, the format fallback controller, rule rewriting.

Plain Python (no JAX tracing): the training loop calls these at its log interval with values it
has already pulled to the host. Every piece of state is JSON-able (``state_dict`` /
``load_state_dict``) so it can be checkpointed with the run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from altgrad_jax.formats import FloatFormat, get_format
from altgrad_jax.quant import PrecisionRules

DEFAULT_FALLBACK_CHAIN: dict[str, str | None] = {
    "E7M0": "E5M2", "E1M6": "E3M4", "E0M7": "E3M4", "E3M4": "E5M2", "E5M2": None,
}
"""Where each format falls back to. ``None`` = unquantized float32; a format absent here has no
fallback (the run stops)."""


class NanPatience:
    """Counts consecutive non-finite losses; says stop after ``patience`` of them in a row.

    A single finite loss resets the count, so an isolated NaN step (e.g. one bad batch whose
    update the loop skipped) does not end a run.

    Example:
      >>> p = NanPatience(2)
      >>> [p.update(x) for x in (1.0, float("nan"), 1.0, float("nan"), float("inf"))]
      [False, False, False, False, True]
    """

    def __init__(self, patience: int = 3):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"NanPatience: patience must be an int >= 1, got {patience!r}")
        self.patience = patience
        self.consecutive = 0

    def update(self, loss: Any) -> bool:
        """Feeds one loss (a float or a scalar array); returns True when the run should stop."""
        value = float(np.asarray(loss))
        self.consecutive = 0 if math.isfinite(value) else self.consecutive + 1
        return self.consecutive >= self.patience

    def reset(self) -> None:
        self.consecutive = 0

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.consecutive = int(state["consecutive"])


@dataclasses.dataclass(frozen=True)
class FallbackEvent:
    """One format fallback: at ``step``, ``from_format`` -> ``to_format`` (None = float32)."""

    step: int
    from_format: str
    to_format: str | None
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _name(fmt: str | FloatFormat | None) -> str | None:
    if fmt is None:
        return None
    return fmt.name if isinstance(fmt, FloatFormat) else get_format(fmt).name


class FallbackController:
    """Decides when a run should switch to a more robust format, and to which.

    ``check(step, nan_stop, windowed_stall)`` returns a `FallbackEvent` when

    * ``nan_stop`` is True (e.g. `NanPatience` said stop): reason ``"nan"``; or
    * the window is full and ``windowed_stall > stall_threshold``: reason ``"stall"``;

    and in both cases only if ``step >= min_step`` (``min_step >= 1``, so never at step 0) and the
    current format has an entry in ``chain``. "The window is full" means ``window`` steps have passed
    since the start or the last fallback, so a stall ratio is only trusted once it covers a whole
    window of the current format. After an event the controller's current format is the new one;
    the loop must rebuild the model and optimizer with it, reset scaling state, the stall window and
    `NanPatience`. Events are kept in ``events`` (JSON-able via ``to_dict``).

    Args:
      initial_format: the run's format name (or `FloatFormat`).
      chain: ``{from: to}``; ``to=None`` falls back to unquantized float32.
      stall_threshold: windowed stall ratio above which a stall fallback fires.
      window: steps the windowed stall ratio covers (and the minimum steps in a format before a
        stall fallback).
      min_step: no fallback before this step (>= 1).
      max_fallbacks: at most this many events per run.

    Example:
      >>> fc = FallbackController("E3M4", window=100)
      >>> fc.check(0, nan_stop=True, windowed_stall=1.0) is None       # never at step 0
      True
      >>> fc.check(150, nan_stop=False, windowed_stall=0.995).to_format
      'E5M2'
    """

    def __init__(self, initial_format: str | FloatFormat, *,
                 chain: Mapping[str, str | None] | None = None, stall_threshold: float = 0.99,
                 window: int = 100, min_step: int = 1, max_fallbacks: int = 3):
        chain = DEFAULT_FALLBACK_CHAIN if chain is None else chain
        try:
            self.chain = {_name(k): _name(v) for k, v in chain.items()}
            self.current: str | None = _name(initial_format)
        except ValueError as e:
            raise ValueError(f"FallbackController: {e}") from e
        if not 0.0 < stall_threshold <= 1.0:
            raise ValueError(f"stall_threshold must be in (0, 1], got {stall_threshold!r}")
        for name, v, lo in (("window", window, 1), ("min_step", min_step, 1),
                            ("max_fallbacks", max_fallbacks, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"FallbackController: {name} must be an int >= {lo}, got {v!r}")
        self.stall_threshold = float(stall_threshold)
        self.window = window
        self.min_step = min_step
        self.max_fallbacks = max_fallbacks
        self.start_step = 0
        self.events: list[FallbackEvent] = []

    def next_format(self, fmt: str | None) -> tuple[bool, str | None]:
        """``(has_fallback, target)`` for a format name."""
        if fmt is None or fmt not in self.chain:
            return False, None
        return True, self.chain[fmt]

    def check(self, step: int, nan_stop: bool, windowed_stall: float | None
              ) -> FallbackEvent | None:
        """Returns the fallback to apply now, or None (see the class docstring)."""
        step = int(step)
        if step < self.min_step or len(self.events) >= self.max_fallbacks:
            return None
        has_next, target = self.next_format(self.current)
        if not has_next:
            return None
        reason, detail = None, ""
        if nan_stop:
            reason, detail = "nan", "non-finite loss beyond the NaN patience"
        elif windowed_stall is not None and step - self.start_step >= self.window:
            stall = float(np.asarray(windowed_stall))
            if math.isfinite(stall) and stall > self.stall_threshold:
                reason = "stall"
                detail = (f"windowed stall ratio {stall:.4f} > {self.stall_threshold} over the last "
                          f"{self.window} steps")
        if reason is None:
            return None
        event = FallbackEvent(step=step, from_format=self.current, to_format=target,
                              reason=reason, detail=detail)
        self.events.append(event)
        self.current = target
        self.start_step = step
        logging.warning("format fallback at step %d: %s -> %s (%s: %s)", step, event.from_format,
                        target or "float32", reason, detail)
        return event

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "start_step": self.start_step,
                "events": [e.to_dict() for e in self.events]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.current = state["current"]
        self.start_step = int(state["start_step"])
        self.events = [FallbackEvent(**e) for e in state["events"]]


def apply_fallback_to_rules(rules: PrecisionRules, old_fmt_name: str | FloatFormat,
                            new_fmt: str | FloatFormat | None) -> PrecisionRules:
    """New rules with every occurrence of ``old_fmt_name`` (rules and default) replaced.

    Formats are matched by value (`FloatFormat` equality ignores the display name, so ``"E4M3"``
    also matches ``"float8_e4m3fn"``); ``new_fmt=None`` makes those parameters unquantized.

    Example:
      >>> r = PrecisionRules.create([("head/", None), ("attn/", "E3M4")], default="E3M4")
      >>> r2 = apply_fallback_to_rules(r, "E3M4", "E5M2")
      >>> r2.lookup("block_0/attn/query/kernel").name, r2.default.name, r2.lookup("head/kernel")
      ('E5M2', 'E5M2', None)
    """
    old = get_format(old_fmt_name)
    new = None if new_fmt is None else get_format(new_fmt)

    def swap(fmt: FloatFormat | None) -> FloatFormat | None:
        return new if fmt is not None and fmt == old else fmt

    return dataclasses.replace(rules, rules=tuple((p, swap(f)) for p, f in rules.rules),
                               default=swap(rules.default))
