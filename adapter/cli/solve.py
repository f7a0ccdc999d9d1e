"""`ipa solve GRAPH.yaml --load RPS`: the decision a policy takes for one load, as a table or as JSON.

The decision is exactly what the adaptation loop would get from `adapter.decision.policies.decide` (the policy under the
shared guards) for the first interval at that load; `--json` prints the Decision of DESIGN.md §3.
"""

from __future__ import annotations

import argparse
import math
import sys

from pydantic import ValidationError

from adapter.decision.model import Decision
from adapter.decision.policies import POLICIES, decide
from adapter.decision.policy_types import PolicyConfig, PolicyContext, PolicySettings
from adapter.decision.solvers import SOLVERS
from adapter.errors import UsageError
from adapter.spec import load_spec


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "solve",
        help="decide variants, batch, cores and replicas for a load",
        description="Decide, for every stage of GRAPH, the variant, batch size, cores per replica and replicas "
        "(and the load split, for infadapter) that a policy chooses for a predicted load. Policies: "
        + ", ".join(POLICIES)
        + ".",
    )
    p.add_argument("graph", metavar="GRAPH", help="inference-graph YAML file")
    p.add_argument("--load", required=True, metavar="RPS", help="predicted load, requests per second (>= 0)")
    p.add_argument(
        "--policy", default="joint", metavar="P", help="one of: " + ", ".join(POLICIES) + " (default joint)"
    )
    p.add_argument("--slo-ms", metavar="X", help="end-to-end p99 SLO in ms (default: the spec's)")
    for name, what in (
        ("alpha", "weight of pipeline accuracy"),
        ("beta", "cost of one core"),
        ("delta", "cost of one unit of batch size"),
        ("energy", "cost of one busy core"),
    ):
        p.add_argument(f"--{name}", metavar=name[0].upper(), help=f"{what} (default: the spec's)")
    p.add_argument(
        "--solver", default="auto", metavar="S", help="auto (exact), exact or mip (CBC); default auto"
    )
    p.add_argument("--time-limit", default="1", metavar="S", help="solver time limit in seconds (default 1)")
    p.add_argument(
        "--network-delay-ms", default="0", metavar="X", help="largest network delay observed (cl_max; sponge)"
    )
    p.add_argument("--json", action="store_true", help="print the decision as JSON (DESIGN.md §3)")
    p.set_defaults(func=run)


def _number(value: str | None, flag: str, *, positive: bool = False) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        raise UsageError(f"{flag} must be a number, got {value!r}") from None
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        raise UsageError(f"{flag} must be a number {'>' if positive else '>='} 0, got {value}")
    return x


def run(args: argparse.Namespace) -> int:
    load = _number(args.load, "--load")
    assert load is not None
    if args.policy not in POLICIES:
        raise UsageError(f"unknown policy {args.policy!r}; one of {', '.join(POLICIES)}")
    if args.solver not in SOLVERS:
        raise UsageError(f"unknown solver {args.solver!r}; one of {', '.join(SOLVERS)}")
    values = {
        "policy": args.policy,
        "solver": args.solver,
        "time_limit_s": _number(args.time_limit, "--time-limit", positive=True),
        "slo_ms": _number(args.slo_ms, "--slo-ms", positive=True),
        **{w: _number(getattr(args, w), f"--{w}") for w in ("alpha", "beta", "delta", "energy")},
    }
    delay = _number(args.network_delay_ms, "--network-delay-ms") or 0.0
    try:
        settings = PolicySettings(**values)  # type: ignore[arg-type]
    except ValidationError as e:
        err = e.errors()[0]
        raise UsageError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    spec = load_spec(args.graph)
    config = PolicyConfig.create(spec, settings=settings)
    decision, _ = decide(PolicyContext(now=0.0, predicted_load_rps=load, network_delay_ms=delay), config)
    if args.json:
        print(decision.model_dump_json(indent=2))
    else:
        print(render(decision, config))
    return 0


def render(d: Decision, config: PolicyConfig) -> str:
    """The decision as a readable table."""
    spec, w = config.spec, config.weights
    t = d.objective
    lines = [
        f"{spec.name}: policy {d.policy}, solver {d.solver}: {d.status} in {d.solve_time_ms:.1f} ms",
        f"load {d.load_rps:g} rps · predicted p99 {d.predicted_latency_ms:.1f} ms (SLO {d.slo_ms:g} ms) · "
        f"{t.cores:g} cores (budget {spec.budget_cores:g})",
        f"objective {t.value:.4f} = {w.alpha:g}·{t.accuracy:.4f} accuracy ({spec.accuracy}) − {w.beta:g}·{t.cores:g} "
        f"cores − {w.delta:g}·{t.batch:g} batch"
        + (f" − {w.energy:g}·{t.energy:.2f} busy cores" if w.energy else ""),
    ]
    if d.reason:
        lines.append(f"reason: {d.reason}")
    lines.extend(f"note: {n}" for n in d.notes)
    header = ("stage", "variant", "batch", "cores", "replicas", "share", "capacity", "p99", "accuracy")
    rows = [header]
    for s in d.stages:
        for i, g in enumerate(s.replicas):
            first = i == 0
            rows.append(
                (
                    s.name if first else "",
                    g.variant,
                    str(g.batch),
                    f"{g.cores:g}",
                    str(g.count),
                    f"{100 * g.load_share:.0f}%",
                    f"{s.capacity_rps:.1f} rps" if first else "",
                    f"{s.latency_ms:.1f} ms" if first else "",
                    f"{s.accuracy:.2f}" if first else "",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {2, 3, 4, 5, 6, 7, 8}
    for r in rows:
        lines.append(
            "  ".join(
                c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)
            ).rstrip()
        )
    return "\n".join(lines)


if __name__ == "__main__":
    from adapter.cli import main

    sys.exit(main(["solve", *sys.argv[1:]]))
