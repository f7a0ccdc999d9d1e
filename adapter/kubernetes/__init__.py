"""Kubernetes and Seldon Core: rendering a pipeline and a decision as a SeldonDeployment, the operator's own
rules, the patches that bring a live object to a plan, the API client, and the CRD and core schemas.

The only wing that imports the `kubernetes` client (`.importlinter`); everything else reaches the cluster
through `executors.kubernetes`, which uses this wing.
"""
