"""The tuning rule: one factor per arm, chosen from the tuning stage's records (pure).

Every arm is tuned with the same budget: its tuned field (the lr for AdamW-direction arms, the
dimensionless ``c`` for the ULP arms) times each factor of ``tuning_factors`` (default 1/3, 1, 3),
on the tuning seed (0, never in the test analysis), on each tuning format. The score of a factor
is the mean over the tuning formats of the validation macro-F1 at the validation-tuned threshold
(``eval_tuned/macro_f1``); a diverged run scores -inf (the factor is never chosen over a finite
one). The chosen factor is the best score; ties go to the factor nearest 1 (in log scale).

An arm's choice is *pending* until every tuning cell of the arm has a final record (completed or
diverged), and *failed* when no factor has a finite score.

Bracket extension (``tuning_extensions`` in a study config, default 0): when the chosen factor is
the largest or the smallest tried, the arm's optimum may lie outside the bracket and the arm
would be under-tuned against the others. The bracket is then continued geometrically one factor
beyond that edge (after 1/3, 1, 3 a best of 3 adds 9; a best of 1/3 adds 1/9) on every tuning
format, the choice is pending until those runs finish, and the rule applies again, at most
``tuning_extensions`` factors per arm. The rule is fixed before any extension runs, so it is part
of the pre-registered protocol, not a choice made after seeing the test data (tuning uses the
validation split of seed 0 only).

Scope (``tuning_scope`` in a study config): ``"arm"`` (default) chooses one factor per arm,
shared by every format, from the mean over the tuning formats; ``"format"`` chooses one per
(arm, format) from that format's own tuning cells (key ``"<arm>@<format>"``), so that every
format is compared at each arm's own best step size; the bracket extension then applies per
(arm, format).
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from collections.abc import Iterable, Sequence

DEFAULT_METRIC = "eval_tuned/macro_f1"
SCOPES = ("arm", "format")


def choice_key(arm: str, fmt: str, scope: str = "arm") -> str:
    """The key of a tuning choice: the arm (scope ``"arm"``) or ``"<arm>@<format>"``.

    Example:
      >>> choice_key("ulp_sr", "E7M0"), choice_key("ulp_sr", "E7M0", "format")
      ('ulp_sr', 'ulp_sr@E7M0')
    """
    if scope not in SCOPES:
        raise ValueError(f"tuning_scope must be one of {SCOPES}, got {scope!r}")
    return arm if scope == "arm" else f"{arm}@{fmt}"


def choice_for(choices: dict, arm: str, fmt: str):
    """The choice (or chosen factor) that applies to a cell of ``arm`` on ``fmt``: its format's
    own (``"<arm>@<format>"``) if there is one, else the arm's; None when the arm is untuned."""
    return choices.get(f"{arm}@{fmt}", choices.get(arm))


@dataclasses.dataclass(frozen=True)
class Choice:
    """The tuning outcome of one arm (or of one arm on one format: ``tuning_scope="format"``).

    Attributes:
      arm: the choice's key (`choice_key`): the arm, or ``"<arm>@<format>"``.
      status: ``"chosen"``, ``"pending"`` (tuning cells without a final record) or ``"failed"``.
      factor: the chosen factor (``"1/3"``, ``"1"``, ``"3"``), None unless chosen.
      scores: ``{factor: mean score}`` over the factors with final records (-inf = diverged).
      missing: names of the tuning cells still without a final record.
    """

    arm: str
    status: str
    factor: str | None
    scores: dict
    missing: tuple[str, ...] = ()


def _score(rec: dict, metric: str) -> float:
    if rec.get("status") != "completed":
        return -math.inf
    v = (rec.get("metrics") or {}).get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def choose_factors(tuning_specs: Sequence, records: dict[str, dict], *,
                   metric: str = DEFAULT_METRIC, scope: str = "arm") -> dict[str, Choice]:
    """``{key: Choice}`` for every arm (scope ``"arm"``) or every (arm, format) (scope
    ``"format"``) with tuning cells; keys from `choice_key`.

    Args:
      tuning_specs: the tuning cells (`RunSpec` with ``factor`` set).
      records: ``{run name: record}`` (`altgrad_jax.analysis.records`); a record whose status is
        ``completed`` or ``diverged`` is final.
      metric: the selection metric (a key of the record's ``metrics``).
      scope: ``"arm"`` or ``"format"`` (module docstring).
    """
    by_key: dict[str, list] = {}
    for s in tuning_specs:
        if s.factor is not None:
            by_key.setdefault(choice_key(s.arm, s.format, scope), []).append(s)
    out = {}
    for key, specs in by_key.items():
        final = {s.name: records[s.name] for s in specs
                 if records.get(s.name, {}).get("status") in ("completed", "diverged")}
        missing = tuple(s.name for s in specs if s.name not in final)
        per_factor: dict[str, list[float]] = {}
        for s in specs:
            if s.name in final:
                per_factor.setdefault(s.factor, []).append(_score(final[s.name], metric))
        scores = {f: sum(v) / len(v) for f, v in per_factor.items()}
        if missing:
            out[key] = Choice(key, "pending", None, scores, missing)
            continue
        finite = {f: v for f, v in scores.items() if math.isfinite(v)}
        if not finite:
            out[key] = Choice(key, "failed", None, scores)
            continue
        best = max(finite.items(),
                   key=lambda kv: (kv[1], -abs(math.log(float(fractions.Fraction(kv[0]))))))
        out[key] = Choice(key, "chosen", best[0], scores)
    return out


def next_factor(tried: Iterable[str], best: str) -> str | None:
    """The factor one bracket step beyond ``best`` when it is the largest or the smallest of
    ``tried`` (the geometric continuation: ``best**2 / neighbour``), else None.

    Example:
      >>> next_factor(["1/3", "1", "3"], "3"), next_factor(["1/3", "1", "3"], "1/3")
      ('9', '1/9')
      >>> next_factor(["1/3", "1", "3"], "1") is None
      True
    """
    fs = sorted({fractions.Fraction(f) for f in tried})
    b = fractions.Fraction(best)
    if len(fs) < 2 or b not in (fs[0], fs[-1]):
        return None
    neighbour = fs[-2] if b == fs[-1] else fs[1]
    return str(b * b / neighbour)


def factors_to_add(tuning_specs: Sequence, records: dict[str, dict], *, max_factors: int,
                   metric: str = DEFAULT_METRIC, scope: str = "arm") -> dict[str, str]:
    """``{key: factor}`` to add to the bracket: choices that are made, at an edge of the
    factors tried, with fewer than ``max_factors`` factors tried (module docstring)."""
    out = {}
    for key, ch in choose_factors(tuning_specs, records, metric=metric, scope=scope).items():
        tried = {s.factor for s in tuning_specs if choice_key(s.arm, s.format, scope) == key}
        if ch.status == "chosen" and len(tried) < max_factors:
            nxt = next_factor(tried, ch.factor)
            if nxt is not None and nxt not in tried:
                out[key] = nxt
    return out


def chosen_factors(choices: Iterable[Choice]) -> dict[str, str]:
    """``{key: factor}`` of the choices that are made."""
    return {c.arm: c.factor for c in choices if c.status == "chosen"}
