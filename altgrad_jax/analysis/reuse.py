"""Reusing another study's finished run of the same program instead of training it again.

A study config may name other studies' record folders (``reuse_from``). Before a cell trains,
the sweep looks there for a completed record of the same name that ran the same program; if one
exists, it copies the record into this study (its ``stage`` set to this cell's, the source in
``reused_from``) and trains nothing. "The same program" is checked field by field, never
assumed:

- the same format, arm, seed and tuning factor (the name alone does not suffice);
- the same overrides (the source study's and its arm's, exactly as recorded);
- the same tuned field and value (``applied``), whatever tuning rule chose it;
- the same dropout implementation (the record's ``code`` facts);
- the same base config file and seed fields (the source study's ``plan.json``).

A record that fails any check is left alone and the cell trains. The copy keeps every measured
figure, the source's ``environment`` included (the machine that ran it).

Example:
  >>> reasons = mismatch({"status": "diverged"}, {"status": "completed"})
  >>> reasons
  ['status diverged']
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence

from altgrad_jax.analysis.records import load_records, read_json

# The fields of a record that must equal the expected record's for the run to be the same.
SAME = ("format", "arm", "seed", "factor", "overrides", "applied", "code")


def expected(spec, applied: dict, dropout_impl: str) -> dict:
    """What a record of ``spec`` trained with ``applied`` ({field, value, factor}) holds in the
    fields `SAME` checks."""
    return {**spec.to_dict(), "applied": dict(applied), "code": {"dropout_impl": dropout_impl},
            "status": "completed"}


def _equal(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, (int, float)) and isinstance(b, (int, float))
                and math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


def mismatch(rec: dict, want: dict) -> list[str]:
    """Why ``rec`` is not a run of the cell ``want`` describes (`expected`); empty if it is."""
    if rec.get("status") != "completed":
        return [f"status {rec.get('status')}"]
    return [k for k in SAME if k in want and not _equal(rec.get(k), want.get(k))]


class Sources:
    """The records of the studies a study may reuse (``reuse_from``), read once.

    Args:
      dirs: record folders of other studies (each with ``runs/`` and ``plan.json``).
      base_config, seed_fields: this study's; a source with another base config or other seed
        fields is never used (its ``plan.json`` says which it had).
    """

    def __init__(self, dirs: Sequence[str], *, base_config: str, seed_fields: Sequence[str]):
        self.usable: list[tuple[str, dict]] = []
        for d in dirs:
            plan_path = os.path.join(d, "plan.json")
            if not os.path.exists(plan_path):
                raise ValueError(f"reuse_from: {d} has no plan.json (not a study's record "
                                 "folder); name a folder sweep.py wrote")
            cfg = read_json(plan_path).get("config") or {}
            if (os.path.normpath(str(cfg.get("base_config"))) == os.path.normpath(base_config)
                    and tuple(cfg.get("seed_fields") or ()) == tuple(seed_fields)):
                self.usable.append((d, load_records(d)))

    def find(self, want: dict) -> tuple[str, dict] | None:
        """(source folder, record) of the first source whose record of ``want["name"]`` ran the
        same program, else None."""
        for d, recs in self.usable:
            rec = recs.get(want["name"])
            if rec is not None and not mismatch(rec, want):
                return d, rec
        return None


def reused_record(rec: dict, stage: str, source: str) -> dict:
    """A copy of ``rec`` for this study: its stage, and where it came from."""
    out = copy.deepcopy(rec)
    out["stage"] = stage
    out["reused_from"] = source
    return out
