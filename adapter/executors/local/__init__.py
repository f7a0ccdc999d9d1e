"""The local executor: a pipeline's replicas as `mlserver start` processes on this machine, each in a CPU cgroup.

    cluster    `LocalCluster`, the executor: applies a decision, supervises replicas, keeps the router's table
    plan       the plan of a change: which running replicas match the decided ones, what starts and stops
    replica    one replica's process life cycle: folder, settings, start, readiness, in-place change, stop
    stages     what the cluster keeps per stage and the router's table built from it
    settings   how replicas are started, changed and stopped
    state      the cluster's state on disk (`ipa status`, Prometheus file targets)
    signals    SIGINT/SIGTERM of a foreground command turned into one orderly shutdown

Never imports `executors.kubernetes` or `kubernetes` (`.importlinter`).
"""
