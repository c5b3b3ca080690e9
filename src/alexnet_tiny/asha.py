"""Early stopping for a grid: asynchronous successive halving (ASHA; Li et al., 2020), the rule of Ray
Tune's `ASHAScheduler` with one bracket, written out for the local backend.

Rungs sit at epochs grace_period * reduction_factor**k below the grid's longest trial. When a trial
finishes the epoch of a rung, its validation accuracy there is compared with those recorded at that
rung before it: below the (1 - 1/reduction_factor) quantile of them (numpy's linear interpolation,
as Tune computes it) the trial stops; either way its value is recorded. The first trial at a rung
always goes on. Decisions depend on the order trials reach a rung. The local backend trains every
live trial to the next rung, then judges them in grid order. The Ray backend judges each result as
it arrives (ray_backend.AshaScheduler) and appends every decision to the grid folder's asha.jsonl:
with one trial at a time (--max-concurrent 1) that is grid order, and it stops the trials the local
backend stops; with trials side by side, the order they report in decides, so two runs of one grid
may stop different trials (no seed fixes that). A resumed Ray grid restores the recorded decisions
in their order, so no trial is judged twice at a rung.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import UserError

SCHEDULERS = ("none", "asha")


MAX_RUNGS = 100  # a factor just above 1 would ask for billions of rungs (and as many steps to list them)


@dataclass
class Asha:
    max_t: int
    grace_period: int = 1
    reduction_factor: float = 2.0
    recorded: dict[int, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self):
        if self.grace_period < 1:
            raise UserError(f"--grace-period {self.grace_period}: expected an integer >= 1")
        if not 1 < self.reduction_factor < math.inf:
            raise UserError(f"--reduction-factor {self.reduction_factor:g}: expected a number > 1")
        if self.grace_period > self.max_t:
            raise UserError(f"--grace-period {self.grace_period}: expected at most the grid's longest trial "
                            f"({self.max_t} epochs)")
        # Tune's count of rungs, computed as Tune does; a fractional milestone is reached at the epoch after it
        count = int(np.log(self.max_t / self.grace_period) / np.log(self.reduction_factor) + 1)
        if count > MAX_RUNGS:
            raise UserError(f"--reduction-factor {self.reduction_factor!r}: gives {count:,} rungs below epoch "
                            f"{self.max_t}; expected a factor that gives at most {MAX_RUNGS} (such as 2 or 3)")
        self.recorded = {math.ceil(round(self.grace_period * self.reduction_factor ** k, 9)): {} for k in range(count)}

    @property
    def rungs(self) -> list[int]:
        """The epochs at which trials are judged (ascending; a rung at max_t judges nobody)."""
        return [m for m in sorted(self.recorded) if m < self.max_t]

    def cutoff(self, rung: int) -> float | None:
        values = list(self.recorded[rung].values())
        return float(np.nanpercentile(values, (1 - 1 / self.reduction_factor) * 100)) if values else None

    def judge(self, name: str, rung: int, val_accuracy: float) -> str | None:
        """Record `name`'s validation accuracy at `rung`; the reason it stops there, or None to go on."""
        if name in self.recorded[rung]:
            raise ValueError(f"asha: {name} was already judged at epoch {rung}")
        cutoff = self.cutoff(rung)
        self.record(name, rung, val_accuracy)
        if cutoff is not None and val_accuracy < cutoff:
            return (f"stopped by ASHA at epoch {rung}: val {val_accuracy:.3f} below the cutoff {cutoff:.3f} "
                    f"of {len(self.recorded[rung]) - 1} trial(s) there before it")
        return None

    def record(self, name: str, rung: int, val_accuracy: float) -> None:
        """Count `name`'s value at `rung` for the cutoffs of those judged after it (a decision taken before)."""
        self.recorded[rung][name] = val_accuracy

    def planned_epochs(self, epochs: list[int], done: list[int] | None = None,
                       stopped: list[bool] | None = None) -> list[int]:
        """Each trial's epochs if successive halving keeps the planned share at every rung: of n
        trials reaching a rung, ceil(n / reduction_factor) go on. What a resumed grid already knows
        counts first: a trial past a rung (`done` epochs) went on there, a trial `stopped` at its
        last epoch stopped there; the other places go to the undecided trials in grid order (the
        first trial at a rung always goes on). ASHA's real decisions depend on the results."""
        done = done or [0] * len(epochs)
        stopped = stopped or [False] * len(epochs)
        planned, alive = list(epochs), list(range(len(epochs)))
        for rung in self.rungs:
            alive = [i for i in alive if epochs[i] > rung]
            went_on = [i for i in alive if done[i] > rung]
            open_ = [i for i in alive if done[i] <= rung and not (stopped[i] and done[i] == rung)]
            places = max(1, math.ceil(len(alive) / self.reduction_factor - 1e-9)) if alive else 0
            keep = set(went_on + open_[:max(0, places - len(went_on))])
            for i in alive:
                if i not in keep:
                    planned[i] = rung
            alive = [i for i in alive if i in keep]
        return planned

    def settings(self) -> dict:
        return {"max_t": self.max_t, "grace_period": self.grace_period, "reduction_factor": self.reduction_factor}

    def to_dict(self) -> dict:
        return {"scheduler": "asha", **self.settings()}
