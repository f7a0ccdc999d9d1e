"""The simulator and what is built on it: a day of load replayed in seconds through the very same policies,
loop and runtime batching rules, experiments over policies and windows, and their reports.

    simulator   the entry point: `simulate(spec, trace, policy, ...)`
    service     service-time distributions fitted to a profile point (p50, p99, mean)
    cluster     replicas, their routing and how a decision is carried out (reconfiguration costs)
    engine      the discrete-event loop: clock, event heap, requests through stages, the runtime's batching
    metrics     per-second columns from per-request outcomes
    experiment  every policy on the same window (`ipa experiment`)
    report      the per-second CSVs, summaries and plots of an experiment

Never imports `executors` or `kubernetes`: a simulation touches nothing outside this process (`.importlinter`).
"""
