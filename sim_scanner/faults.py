"""Fault plans for the replay simulator: which volume suffers which fault.

Spec syntax (comma- or semicolon-separated): `name=P` gives each volume probability P of that
fault; `name:i,j,k` names volumes explicitly (0-based temporal indices, as in the published
VolumeHeader.index). E.g. `drop=0.05,duplicate=0.05` or `drop:12,37;delay:5`. Each volume gets
at most one fault (explicit lists first, then probabilities in the order given), so every
volume's fate is known exactly and tests can account for it. `junk` adds a non-DICOM file next
to a volume and can be combined with anything.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from runtime.errors import UserError

FAULTS = ("drop", "duplicate", "reorder", "delay", "truncate", "corrupt")
EXTRAS = ("junk",)
LOST = frozenset({"drop", "truncate", "corrupt"})
"""Faults after which the volume can never be assembled: the streamer must report a gap."""


@dataclass
class FaultSpec:
    probabilities: dict[str, float] = field(default_factory=dict)
    explicit: dict[str, list[int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.probabilities or self.explicit)


def parse_fault_spec(text: str | None) -> FaultSpec:
    """Parse `--faults`; raise UserError naming the bad item."""
    spec = FaultSpec()
    if not text:
        return spec
    current: str | None = None  # the explicit list that bare integers extend
    for raw in re.split(r"[,;]", text):
        item = raw.strip()
        if not item:
            continue
        if item.isdigit():
            if current is None:
                raise UserError(f"--faults: '{item}' is not attached to a fault (expected e.g. drop:12,37)")
            spec.explicit[current].append(int(item))
            continue
        m = re.fullmatch(r"([a-z_]+)\s*([=:])\s*(.*)", item)
        if not m:
            raise UserError(f"--faults: cannot read '{item}' (expected name=probability or name:index,...)")
        name, sep, value = m.groups()
        if name not in FAULTS + EXTRAS:
            raise UserError(f"--faults: unknown fault '{name}' (expected one of {', '.join(FAULTS + EXTRAS)})")
        if sep == "=":
            current = None
            try:
                p = float(value)
            except ValueError:
                raise UserError(f"--faults: '{item}': probability must be a number in [0, 1]") from None
            if not 0.0 <= p <= 1.0:
                raise UserError(f"--faults: '{item}': probability must be in [0, 1]")
            spec.probabilities[name] = p
        else:
            if not value.isdigit():
                raise UserError(f"--faults: '{item}': expected a volume index after ':'")
            spec.explicit.setdefault(name, []).append(int(value))
            current = name
    total = sum(p for n, p in spec.probabilities.items() if n in FAULTS)
    if total > 1.0:
        raise UserError(f"--faults: probabilities add up to {total:.2f} > 1")
    return spec


def plan_faults(spec: FaultSpec, indices: list[int], seed: int = 0) -> tuple[dict[int, str], set[int]]:
    """Assign at most one fault per volume index; returns ({index: fault}, {indices with junk})."""
    rng = random.Random(seed)
    plan: dict[int, str] = {}
    present = set(indices)
    for name, idxs in spec.explicit.items():
        if name in EXTRAS:
            continue
        for i in idxs:
            if i in present:
                plan.setdefault(i, name)
    probs = [(n, p) for n, p in spec.probabilities.items() if n in FAULTS]
    for i in indices:
        u = rng.random()
        if i in plan:
            continue
        acc = 0.0
        for name, p in probs:
            acc += p
            if u < acc:
                plan[i] = name
                break
    # a reorder swaps with the next volume, which must then be clean and present
    order = sorted(indices)
    for pos, i in enumerate(order):
        if plan.get(i) == "reorder":
            nxt = order[pos + 1] if pos + 1 < len(order) else None
            if nxt is None or plan.get(nxt) not in (None,):
                del plan[i]
            else:
                plan[nxt] = "_reorder_partner"
    junk = {i for i in spec.explicit.get("junk", []) if i in present}
    p_junk = spec.probabilities.get("junk", 0.0)
    if p_junk:
        jr = random.Random(seed + 1)
        junk |= {i for i in indices if jr.random() < p_junk}
    return {i: f for i, f in plan.items()}, junk
