"""How the local cluster starts, changes and stops replicas: its settings, one documented field each."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adapter.executors.local.state import ipa_home


@dataclass
class LocalClusterSettings:
    """How the local cluster starts, changes and stops replicas."""

    home: Path = field(default_factory=ipa_home)
    """Folder for replica folders and the state file (`<home>/<pipeline>/`); `$IPA_HOME` or `./.ipa`."""
    ready_timeout_s: float = 180.0
    """Longest wait for a new replica's server and model to be ready (a cold MLServer start takes seconds)."""
    drain_timeout_s: float = 30.0
    """Longest wait for a replica leaving the router to finish its outstanding requests before it is stopped."""
    stop_timeout_s: float = 10.0
    """Time between SIGTERM and SIGKILL when stopping a replica."""
    retries: int = 3
    """Attempts of each step of an apply (start, reconfigure, route) before it is reported as failed."""
    retry_delay_s: float = 1.0
    """Pause between attempts of a step, and between replacements of a replica that keeps crashing."""
    state_interval_s: float = 1.0
    """How often the state file is rewritten (besides after every change), to refresh outstanding counts."""
    token_file: Path | None = None
    """The pipeline's token file (`mlserver_ipa.auth`), passed to every replica as `$IPA_TOKEN_FILE` and sent
    with control changes; None: `$IPA_TOKEN_FILE` / `$IPA_TOKEN`, else a token per replica in its folder."""
    probe_interval_s: float = 2.0
    """Time between liveness probes of a serving replica (`/v2/health/ready` and `/metrics`; `liveness`)."""
    probe_timeout_s: float = 5.0
    """Longest wait for either route to answer before the probe counts as failed."""
    probe_failures: int = 3
    """Failed probes in a row after which a replica is taken out of the router, killed and replaced (about 20 s
    with the defaults; 0: never probed)."""
