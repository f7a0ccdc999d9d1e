"""What a pipeline is asked to do: load traces (the web-service-datasets format and named presets), per-request
dynamic SLOs (Sponge's budgets from a bandwidth log), and the load generator that sends them to a live pipeline.

May import `spec` and `errors` only, and an HTTP client in `loadgen`.
"""
