"""Sim health: is the retriever's Sim soft enough to carry a gradient, and sharp enough to say something?

Sim's mean row entropy, as a fraction of its maximum ln(B-1), is logged on every logged step
(`sim_entropy_fraction`). Over the last `HEALTH_WINDOW` logged steps (the whole run when it is shorter), a mean
below `ONE_HOT_BELOW` means Sim is (nearly) one-hot: the softmax is saturated and the retriever's gradient vanishes
(tau too small for the backbone's spread of cosines). A mean above `UNIFORM_ABOVE` means Sim is (nearly) uniform:
the LM sees every chunk alike and the retriever's signal is weak (tau too large). The console prints one line when
that happens, and the run report and the sweep's trial record carry the verdict (`sim_health`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

HEALTH_WINDOW = 20
"""Logged steps the verdict averages over: long enough that a few noisy steps do not raise an alarm."""
ONE_HOT_BELOW = 0.05
UNIFORM_ABOVE = 0.95
FIX_ONE_HOT = "set model.objective.temperature: auto (tau calibrated to the backbone), or a larger tau"
FIX_UNIFORM = "set model.objective.temperature: auto (tau calibrated to the backbone), or a smaller tau"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def entropy_fraction(row: dict, group_size: int | None = None) -> float | None:
    """A logged row's mean Sim entropy as a fraction of ln(B-1) (rows from before the fraction was logged: from
    `sim_entropy` and `group_size`)."""
    value = row.get("sim_entropy_fraction")
    if _finite(value):
        return float(value)
    if group_size and group_size > 2 and _finite(row.get("sim_entropy")):
        return float(row["sim_entropy"]) / math.log(group_size - 1)
    return None


def sim_health(rows: Iterable[dict], temperature: float | None = None, sim: str = "softmax",
               group_size: int | None = None) -> dict:
    """The verdict over the last HEALTH_WINDOW logged rows: {"status": "ok" | "one-hot" | "uniform" | "unknown",
    "mean_entropy_fraction": float | None, "temperature": float, "message": str}."""
    rows = list(rows)
    fractions = [f for f in (entropy_fraction(r, group_size) for r in rows) if f is not None][-HEALTH_WINDOW:]
    if temperature is None:
        temperature = next((float(r["temperature"]) for r in reversed(rows) if _finite(r.get("temperature"))),
                           math.nan)
    mean = sum(fractions) / len(fractions) if fractions else None
    tau = f"{temperature:.4g}"
    if sim == "uniform":
        return {"status": "uniform", "mean_entropy_fraction": mean, "temperature": temperature,
                "message": "Sim is uniform by design (model.objective.sim: uniform, a control): the retriever gets "
                           "no signal"}
    if mean is None:
        return {"status": "unknown", "mean_entropy_fraction": None, "temperature": temperature,
                "message": "no logged step with a Sim entropy (no step logged yet, or B=2: Sim has one entry)"}
    where = f"mean Sim entropy {mean:.1%} of ln(B-1) over the last {len(fractions)} logged steps at temperature {tau}"
    if mean < ONE_HOT_BELOW:
        status, message = "one-hot", (f"Sim is one-hot ({where}): the retriever gets almost no gradient; "
                                      f"{FIX_ONE_HOT}")
    elif mean > UNIFORM_ABOVE:
        status, message = "uniform", (f"Sim is nearly uniform ({where}): the retriever's signal is weak; "
                                      f"{FIX_UNIFORM}")
    else:
        status, message = "ok", f"{where}: in range ({ONE_HOT_BELOW:.0%}-{UNIFORM_ABOVE:.0%})"
    return {"status": status, "mean_entropy_fraction": mean, "temperature": temperature, "message": message}


class SimHealthWatch:
    """The console's watcher: fed every logged row, it gives ONE warning line the first time the last
    HEALTH_WINDOW rows are out of range (or, for a run shorter than the window, at its end), never more."""

    def __init__(self, sim: str = "softmax", group_size: int | None = None):
        self.sim, self.group_size = sim, group_size
        self.rows: list[dict] = []
        self.warned = False

    def _check(self) -> str | None:
        verdict = sim_health(self.rows, sim=self.sim, group_size=self.group_size)
        if self.warned or self.sim == "uniform" or verdict["status"] not in ("one-hot", "uniform"):
            return None
        self.warned = True
        return f"Sim health: {verdict['message']}"

    def add(self, row: dict) -> str | None:
        if entropy_fraction(row, self.group_size) is None:
            return None
        self.rows = [*self.rows, row][-HEALTH_WINDOW:]
        return self._check() if len(self.rows) >= HEALTH_WINDOW else None

    def finish(self) -> str | None:
        """At the end of the run: the verdict over what there is, when the window never filled."""
        return self._check() if self.rows else None
