"""The live adapter: the adaptation loop (observe → predict → decide → apply), the monitor that reads the data
plane's metrics (directly or through Prometheus), the service that runs the loop on a clock, its REST API, and
the embedded pipeline `ipa up` starts (router, local cluster, adapter in one command).

`loop` and `observation` are pure (the simulator runs the very same loop); the rest does I/O. Never imports `sim`
or `kubernetes` rendering; it reaches executors only through the `Executor` protocol and the ones it builds.
"""
