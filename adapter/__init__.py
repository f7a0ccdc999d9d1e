"""IPA's control plane, in wings whose names are the architecture (each wing's docstring says what it may import;
`.importlinter` checks it):

    spec, errors   the vocabulary every wing shares: the inference graph and the errors a user can cause
    profiling/     profiles (measured latency and throughput per variant, batch, cores), their latency model, the profiler
    decision/      the problem, the solvers, the policies and the shared guards: pure functions, no I/O
    forecast/      load predictors (reactive, EWMA, LSTM, oracle) and the LSTM's training
    control/       the live adapter: monitor → predict → decide → apply every interval, its REST API, `ipa up`'s pipeline
    executors/     bringing the world to a decision: the local cluster (processes + CPU cgroups), Kubernetes, dry run
    kubernetes/    SeldonDeployment rendering, the operator's rules, patches, the API client and schemas
    workloads/     load traces, per-request dynamic SLOs, the load generator
    sim/           the simulator, experiments over policies and their reports
    live/          runs of the real pipeline on this machine measured beside the simulator (`ipa demo`, fidelity)
    cli/           the `ipa` command, one thin module per subcommand
"""
