"""STAND-IN doctor (replaced by the real module at merge)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Check:
    name: str
    value: str
    recommended: str
    ok: bool
    fix: str


def checks() -> list[Check]:
    n = os.cpu_count() or 1
    return [Check("cpus", str(n), ">= 4", n >= 4, "run on a machine with more cores")]
