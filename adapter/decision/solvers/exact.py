"""The exact solver: dynamic programming over stages on Pareto sets of partial pipelines, with bounds.

After choosing configurations for the first k stages, a partial pipeline is summed up by its latency L, cores
K, accuracy A (product, or weighted sum in mean mode) and cost C. A partial that another one matches or beats in
all four can be dropped: whatever the remaining stages add, the other one ends at least as well (a product of
positive accuracies only grows with A). So the search is exact, and no latency is ever rounded in it. What keeps
the sets small is pruning that is also safe:

- feasibility: L plus the least latency the remaining stages can take must fit the SLO (the same for cores);
- an upper bound on what any completion can reach (`_Bound`); a partial whose bound is below a complete pipeline
  already found cannot lead to the optimum and goes;
- the first complete pipeline comes from a beam search over the same sets, ranked by the bound.

A dimension that cannot bind (the budget covers every choice, or the SLO does) is left out of the comparison.
The time limit is checked between blocks of work; when it strikes, the best pipeline found so far is returned
with status `timeout`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from adapter.decision.solvers.choices import ChoiceProblem, Solution
from adapter.decision.solvers.pareto import nondominated

_CHUNK = 400_000  # candidate partials examined at once (~40 MB of columns)
_BEAMS = (32, 256)  # widths of the quick passes that find a first pipeline to prune against
_NONE = -1e30  # "no completion fits": finite, so that the chord arithmetic never makes NaN


@dataclass
class _Stage:
    rows: np.ndarray  # indices into the original table
    lat: np.ndarray
    cores: np.ndarray
    acc: np.ndarray  # product mode: accuracy; mean mode: α·accuracy/S
    cost: np.ndarray


class _Deadline(Exception):
    pass


class _Bound:
    """An upper bound on what the stages after k can add, as a table over (θ, resource left).

    The resource is latency or cores: the bound keeps one constraint and drops the other (a relaxation).
    F_k(θ, r) = max over completions of stages k.. of θ·Π a − Σ c with Σ resource ≤ r, in product mode; in
    mean mode θ plays no part and the gain is Σ (α·a/S − c). The table is filled backwards,
    F_k(θ, r) = max_j F_{k+1}(θ·a_j, r − r_j) − c_j, on a grid, rounding only towards optimism: resource
    use is rounded down to the grid, and between two θ grid points F is read off the chord, which lies above F
    since F is convex in θ (a maximum of functions linear in θ). So every entry is ≥ the true value.
    """

    def __init__(
        self,
        stages: list[_Stage],
        resource: str,
        limit: float,
        alpha: float,
        product: bool,
        tick: Callable[[], None],
        points: int = 128,
        theta_points: int = 16,
    ) -> None:
        self.product = product and alpha > 0
        self.resource, self.alpha, self.points = resource, alpha, points
        self.step = max(limit, 1e-9) / (points - 1)
        if self.product:
            low = alpha * float(np.prod([s.acc.min() for s in stages]))
            self.theta = np.geomspace(low * (1 - 1e-9), alpha * (1 + 1e-9), theta_points)
        else:
            self.theta = np.zeros(1)
        table = np.repeat(self.theta[:, None], points, axis=1)  # nothing left to add: θ·1 − 0
        self.tables: list[np.ndarray] = [table]
        for k in range(len(stages) - 1, 0, -1):
            table = self._stage(stages[k], table, product)
            self.tables.append(table)
            tick()
        self.tables.reverse()  # tables[k]: what the stages after k can add

    def _stage(self, s: _Stage, table: np.ndarray, product: bool) -> np.ndarray:
        cost = s.cost
        use = s.lat if self.resource == "lat" else s.cores
        rows = nondominated(np.column_stack((use, -s.acc, cost)))  # the other resource plays no part here
        shift = np.floor(use[rows] / self.step * (1 + 1e-12)).astype(int)
        accs, costs = s.acc[rows], cost[rows]
        n = self.points
        # a column of _NONE on the left: reading r − r_j < 0 means "does not fit"
        padded = np.concatenate((np.full((table.shape[0], 1), _NONE), table), axis=1)
        new = np.full(table.shape, _NONE)
        for a in np.unique(accs):  # configurations of equal accuracy share the θ interpolation
            if self.product:
                lo, w = self._locate(self.theta * a)
                base = (1 - w)[:, None] * padded[lo] + w[:, None] * padded[lo + 1]
            else:  # mean mode: acc holds α·a/S; product mode with α = 0: accuracy counts for nothing
                base = padded + (0.0 if product else a)
            js = np.nonzero(accs == a)[0]
            index = np.maximum(np.arange(n)[None, :] - shift[js, None], -1) + 1  # J × n, 0 = the _NONE column
            np.maximum(new, (base[:, index] - costs[js, None]).max(axis=1), out=new)
        new[new < _NONE / 2] = _NONE
        return new

    def _locate(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = np.clip(np.searchsorted(self.theta, theta, side="right") - 1, 0, len(self.theta) - 2)
        t0, t1 = self.theta[lo], self.theta[lo + 1]
        return lo, np.clip((theta - t0) / (t1 - t0), 0.0, 1.0)

    def future(self, k: int, lat_left: np.ndarray, cores_left: np.ndarray, acc: np.ndarray) -> np.ndarray:
        """Upper bound on what stages k+1.. add (θ = α·acc), −inf where no completion fits what is left."""
        table = self.tables[k]
        left = lat_left if self.resource == "lat" else cores_left
        i = np.ceil(left / self.step * (1 - 1e-12)).astype(int)
        ok = i >= 0
        i = np.clip(i, 0, self.points - 1)
        if self.product:
            lo, w = self._locate(self.alpha * acc)
            val = (1 - w) * table[lo, i] + w * table[lo + 1, i]
        else:
            val = table[0, i]
        return np.where(ok & (val > _NONE / 2), val, -np.inf)


def solve(cp: ChoiceProblem, *, max_seconds: float, timer: Callable[[], float]) -> Solution:
    """The optimum of the choice problem, or the best found when `max_seconds` runs out."""
    deadline = timer() + max_seconds
    alpha = cp.weights.alpha
    product = cp.accuracy == "product"
    stages: list[_Stage] = []
    for t in cp.tables:
        acc = t.accuracy if product else t.accuracy * (alpha / len(cp.tables))
        ok = _within(t.latency, cp.latency_limit_ms) & _within(t.cores, cp.budget_cores)
        rows = np.nonzero(ok)[0]
        if len(rows) == 0:
            return Solution("infeasible", None, "exact", f"stage {t.stage.name}: no configuration fits alone")
        stages.append(_Stage(rows, t.latency[rows], t.cores[rows], acc[rows], cp.costs(t)[rows]))
    search = _Search(cp, stages, product, deadline, timer)
    try:
        search.prepare()
        best: tuple[float, list[int]] | None = None
        for width in (*_BEAMS, None):
            found = search.run(beam=width, incumbent=-np.inf if best is None else best[0])
            if found is not None and (best is None or found[0] >= best[0]):
                best = found
        status = "optimal" if best is not None else "infeasible"
    except _Deadline:
        best, status = search.found, "timeout"
    if best is None:
        return Solution("timeout" if status == "timeout" else "infeasible", None, "exact")
    picks = tuple(int(search.stages[i].rows[j]) for i, j in enumerate(best[1]))
    return Solution("timeout" if status == "timeout" else "optimal", picks, "exact")


def _within(x: np.ndarray, limit: float) -> np.ndarray:
    return x <= limit + 1e-9 * max(1.0, abs(limit))


class _Search:
    def __init__(
        self,
        cp: ChoiceProblem,
        stages: list[_Stage],
        product: bool,
        deadline: float,
        timer: Callable[[], float],
    ) -> None:
        self.cp, self.stages, self.product = cp, stages, product
        self.deadline, self.timer = deadline, timer
        self.alpha = cp.weights.alpha
        self.use_lat = sum(float(s.lat.max()) for s in stages) > cp.latency_limit_ms
        self.use_cores = sum(float(s.cores.max()) for s in stages) > cp.budget_cores
        self.found: tuple[float, list[int]] | None = None

    def _tick(self) -> None:
        if self.timer() > self.deadline:
            raise _Deadline

    def keys(self, lat: np.ndarray, cores: np.ndarray, acc: np.ndarray, cost: np.ndarray) -> np.ndarray:
        cols = []
        if self.use_lat:
            cols.append(lat)
        if self.use_cores:
            cols.append(cores)
        if not self.product:
            cols.append(cost - acc)  # mean: the objective is additive, one value column
        else:
            if self.alpha > 0:
                cols.append(-acc)
            cols.append(cost)
        return np.column_stack(cols)

    def prepare(self) -> None:
        """Drop dominated stage rows; suffix minima; the bounds (one per budget multiplier ν)."""
        for i, s in enumerate(self.stages):
            keep = nondominated(self.keys(s.lat, s.cores, s.acc, s.cost))
            self.stages[i] = _Stage(s.rows[keep], s.lat[keep], s.cores[keep], s.acc[keep], s.cost[keep])
        n = len(self.stages)
        self.min_lat = np.zeros(n + 1)
        self.min_cores = np.zeros(n + 1)
        for k in range(n - 1, -1, -1):
            self.min_lat[k] = self.min_lat[k + 1] + self.stages[k].lat.min()
            self.min_cores[k] = self.min_cores[k + 1] + self.stages[k].cores.min()
        # one bound keeps the SLO and drops the budget, the other the reverse; a partial must pass both
        self.bounds = []
        if self.use_lat or not self.use_cores:
            self.bounds.append(self._bound("lat", self.cp.latency_limit_ms))
        if self.use_cores:
            self.bounds.append(self._bound("cores", self.cp.budget_cores))

    def _bound(self, resource: str, limit: float) -> _Bound:
        return _Bound(self.stages, resource, limit, self.alpha, self.product, self._tick)

    def bound(
        self, k: int, lat: np.ndarray, cores: np.ndarray, acc: np.ndarray, cost: np.ndarray
    ) -> np.ndarray:
        """Best objective any completion of these partials (stages 0..k chosen) could reach."""
        lat_left = self.cp.latency_limit_ms - lat
        cores_left = self.cp.budget_cores - cores
        future = np.min([b.future(k, lat_left, cores_left, acc) for b in self.bounds], axis=0)
        return future - cost if self.product else acc - cost + future

    def run(self, beam: int | None, incumbent: float) -> tuple[float, list[int]] | None:
        """Forward over the stages; `beam` keeps only that many partials (a quick first answer) or all (exact)."""
        cp, n = self.cp, len(self.stages)
        lat, cores, cost = np.zeros(1), np.zeros(1), np.zeros(1)
        acc = np.ones(1) if self.product else np.zeros(1)
        parents: list[np.ndarray] = []
        choices: list[np.ndarray] = []
        best: tuple[float, list[int]] | None = None
        for k, s in enumerate(self.stages):
            m = len(s.lat)
            step = max(1, _CHUNK // m)
            parts: list[tuple[np.ndarray, ...]] = []
            for start in range(0, len(lat), step):
                self._tick()
                sl = slice(start, start + step)
                cl = (lat[sl, None] + s.lat[None, :]).ravel()
                ck = (cores[sl, None] + s.cores[None, :]).ravel()
                ca = (
                    acc[sl, None] * s.acc[None, :] if self.product else acc[sl, None] + s.acc[None, :]
                ).ravel()
                cc = (cost[sl, None] + s.cost[None, :]).ravel()
                ok = _within(cl + self.min_lat[k + 1], cp.latency_limit_ms) & _within(
                    ck + self.min_cores[k + 1], cp.budget_cores
                )
                idx = np.nonzero(ok)[0]
                ub = self.bound(k, cl[idx], ck[idx], ca[idx], cc[idx])
                good = ub >= incumbent - 1e-12 * max(1.0, abs(incumbent))
                idx, ub = idx[good], ub[good]
                if k == n - 1:  # complete pipelines: the bound is the value itself
                    if len(idx) and float(ub.max()) >= incumbent:
                        j = int(np.argmax(ub))
                        incumbent = float(ub[j])
                        parent, choice = divmod(int(idx[j]), m)
                        best = (incumbent, self._trace(parents, choices, parent + start, choice))
                        if self.found is None or incumbent >= self.found[0]:
                            self.found = best
                    continue
                if beam is None and len(idx) > 1:
                    keep = nondominated(self.keys(cl[idx], ck[idx], ca[idx], cc[idx]))
                    idx, ub = idx[keep], ub[keep]
                par, ch = np.divmod(idx, m)
                parts.append((cl[idx], ck[idx], ca[idx], cc[idx], par + start, ch, ub))
            if k == n - 1 or not parts:
                break
            lat, cores, acc, cost, par, ch, ub = (np.concatenate(p) for p in zip(*parts, strict=True))
            if beam is not None and len(lat) > beam:
                top = np.argpartition(-ub, beam)[:beam]
            elif beam is None and len(parts) > 1:
                top = nondominated(self.keys(lat, cores, acc, cost))
            else:
                top = np.arange(len(lat))
            lat, cores, acc, cost = lat[top], cores[top], acc[top], cost[top]
            parents.append(par[top])
            choices.append(ch[top])
        return best

    @staticmethod
    def _trace(parents: list[np.ndarray], choices: list[np.ndarray], parent: int, last: int) -> list[int]:
        picks = [last]
        for k in range(len(parents) - 1, -1, -1):
            picks.append(int(choices[k][parent]))
            parent = int(parents[k][parent])
        return picks[::-1]
