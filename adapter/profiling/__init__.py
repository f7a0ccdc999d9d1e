"""Profiles: what each (variant, batch, cores) point of a stage costs and sustains, where it was measured, the
latency model fitted to it, and the profiler that measures it on this machine.

May import: `spec`, `errors`, `executors.cgroups` and `executors.local.replica` (the profiler runs one replica in
a CPU limit), the data plane's client. Never `decision`, `control`, `sim`, `kubernetes`.
"""
