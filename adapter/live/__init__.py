"""The real pipeline on this machine, measured beside the simulator on the very same arrivals: `ipa demo` (the
adaptive pipeline under a compressed bursty load) and the fidelity run (`benchmarks/fidelity.py`).

Not part of `sim/`: it starts real replicas through `control.embedded` and the local executor, which the
simulator must never import.
"""
