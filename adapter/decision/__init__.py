"""The decision: from a pipeline's problem (profiles, load, SLO, budget, weights) to a `Decision`, every interval.

    model          the `Decision` the optimizer returns (`ipa solve --json`)
    problem        the problem of docs/formulation.md: catalog of candidate configurations, weights
    solvers/       exact dynamic programming and CBC (python-mip), always returning a result
    policy_types   what every policy is given and carries (context, settings, config, state)
    policies       the optimizer (joint) and every baseline, one function each
    guards         the rules that wrap every policy alike (bounds, budget, cpu_step, hysteresis)

Pure: never imports `control`, `executors`, `kubernetes`, `sim`, HTTP clients or servers, or the Kubernetes
client; nothing reads a clock except the solver's timer (`.importlinter`).
"""
