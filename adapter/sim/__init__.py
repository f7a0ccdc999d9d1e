"""The simulator's parts; `adapter.simulator` is the entry point.

    service   service-time distributions fitted to a profile point (p50, p99, mean)
    cluster   replicas, their routing and how a decision is carried out (reconfiguration costs)
    engine    the discrete-event loop: clock, event heap, requests through stages, the runtime's batching
    metrics   per-second columns from per-request outcomes
"""
