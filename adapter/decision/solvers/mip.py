"""The MIP: the choice problem as a mixed-integer program solved by CBC (python-mip), under a time limit.

One binary x[s,j] per stage s and candidate configuration j, exactly one per stage; latency and cores are
linear in x. The pipeline accuracy, a product of stage accuracies, is linearised exactly (docs/formulation.md):
group a stage's rows by their accuracy a, u[s,a] = Σ_{j: acc j = a} x[s,j] (binary in effect), and chain the
partial products P_0 = Σ_a a·u[0,a], P_k = Σ_a a·y[k,a] with

    0 ≤ y[k,a] ≤ U_{k−1}·u[k,a],      Σ_a y[k,a] ≤ P_{k−1},

U_{k−1} the largest possible P_{k−1}. With u binary only the chosen a* keeps a y, and P_k ≤ a*·P_{k−1}; the
objective grows with P, so at the optimum every bound is tight and P_{S−1} is the exact product (a binary times
a bounded continuous variable is the case where McCormick's envelope is exact). No logarithm, no rounding.

The solver status is translated into our words by `map_status`; nothing here raises for an infeasible problem.
"""

from __future__ import annotations

from collections.abc import Callable

import mip
import numpy as np
from mip.cbc import cbc_set_parameter

from adapter.decision.solvers.choices import ChoiceProblem, Solution, SolutionStatus, StageChoices
from adapter.decision.solvers.pareto import nondominated


def map_status(status: mip.OptimizationStatus, has_solution: bool) -> SolutionStatus:
    """CBC's verdict in our words: a proven optimum, the best found before the time limit, none, or a failure."""
    if status == mip.OptimizationStatus.OPTIMAL:
        return "optimal"
    if status in (mip.OptimizationStatus.FEASIBLE, mip.OptimizationStatus.NO_SOLUTION_FOUND):
        return "timeout"
    if status in (mip.OptimizationStatus.INFEASIBLE, mip.OptimizationStatus.INT_INFEASIBLE):
        return "infeasible"
    return "timeout" if has_solution else "error"


def solve(cp: ChoiceProblem, *, max_seconds: float, timer: Callable[[], float]) -> Solution:
    """Solve with CBC; the time spent building the model counts against `max_seconds`."""
    start = timer()
    alpha = cp.weights.alpha
    m = mip.Model(sense=mip.MAXIMIZE, solver_name=mip.CBC)
    m.verbose = 0
    m.threads = 1
    m.max_mip_gap = 1e-9
    m.max_mip_gap_abs = 1e-10
    m.cuts = 0  # on these models CBC's cut rounds cost more than they save (benchmarks/solver.py)
    # CBC otherwise infers a minimum improvement from the objective's coefficients and stops up to ~1e-4 short
    # of the optimum, calling it optimal; an explicit tiny increment keeps the answer exact.
    cbc_set_parameter(m.solver, "increment", "1e-12")
    n_stages = len(cp.tables)
    xs: list[list[tuple[int, mip.Var]]] = []
    lat = mip.LinExpr()
    cores = mip.LinExpr()
    objective = mip.LinExpr()
    for s, t in enumerate(cp.tables):
        costs = cp.costs(t)
        row_vars = [
            (j, m.add_var(name=f"x_{s}_{j}", var_type=mip.BINARY)) for j in _useful_rows(cp, t, costs)
        ]
        if not row_vars:
            return Solution("infeasible", None, "mip", f"stage {t.stage.name}: no configuration fits alone")
        m.add_constr(mip.xsum(x for _, x in row_vars) == 1, name=f"one_{s}")
        lat.add_expr(mip.xsum(float(t.latency[j]) * x for j, x in row_vars))
        cores.add_expr(mip.xsum(float(t.cores[j]) * x for j, x in row_vars))
        objective.add_expr(mip.xsum(-float(costs[j]) * x for j, x in row_vars))
        if cp.accuracy == "mean":
            objective.add_expr(mip.xsum(alpha / n_stages * float(t.accuracy[j]) * x for j, x in row_vars))
        xs.append(row_vars)
    m.add_constr(lat <= cp.latency_limit_ms, name="slo")
    m.add_constr(cores <= cp.budget_cores, name="budget")
    if cp.accuracy == "product" and alpha > 0:
        objective.add_expr(alpha * _product(m, cp, xs))
    m.objective = objective
    left = max_seconds - (timer() - start)
    if left <= 0:
        return Solution("timeout", None, "mip", "the time limit passed while building the model")
    status = m.optimize(max_seconds=left)
    has = m.num_solutions > 0
    verdict = map_status(status, has)
    if not has or verdict in ("infeasible", "error"):
        return Solution(verdict, None, "mip", f"CBC status {status.name}")
    picks = tuple(max(row_vars, key=lambda jx: jx[1].x or 0.0)[0] for row_vars in xs)
    return Solution(verdict, picks, "mip", f"CBC status {status.name}")


def _useful_rows(cp: ChoiceProblem, t: StageChoices, costs: np.ndarray) -> list[int]:
    """Rows that fit alone and that no other row of the stage dominates (presolve; loses no optimum)."""
    fits = (t.latency <= cp.latency_limit_ms * (1 + 1e-9) + 1e-9) & (
        t.cores <= cp.budget_cores * (1 + 1e-9) + 1e-9
    )
    rows = np.nonzero(fits)[0]
    keep = nondominated(np.column_stack((t.latency[rows], t.cores[rows], -t.accuracy[rows], costs[rows])))
    return sorted(int(j) for j in rows[keep])


def _product(m: mip.Model, cp: ChoiceProblem, xs: list[list[tuple[int, mip.Var]]]) -> mip.LinExpr:
    """The exact product of the stage accuracies, as a linear expression over auxiliary variables."""
    partial: mip.LinExpr | None = None
    upper = 1.0
    for s, (t, row_vars) in enumerate(zip(cp.tables, xs, strict=True)):
        by_acc: dict[float, list[mip.Var]] = {}
        for j, x in row_vars:
            by_acc.setdefault(float(t.accuracy[j]), []).append(x)
        if partial is None:
            partial = mip.xsum(a * mip.xsum(v) for a, v in by_acc.items())
        else:
            ys = []
            for i, (a, v) in enumerate(by_acc.items()):
                y = m.add_var(name=f"y_{s}_{i}", lb=0.0, ub=upper)
                m.add_constr(y <= upper * mip.xsum(v))
                ys.append((a, y))
            m.add_constr(mip.xsum(y for _, y in ys) <= partial)
            partial = mip.xsum(a * y for a, y in ys)
        upper *= max(by_acc)
    assert partial is not None
    return partial
