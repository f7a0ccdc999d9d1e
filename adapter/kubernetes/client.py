"""The adapter's only door to the Kubernetes API: the few calls the Kubernetes executor makes, async.

    client = KubernetesClient.from_config()           # in-cluster service account, else ~/.kube/config
    obj = await client.get_seldon_deployment("ns", "video")
    await client.patch_seldon_deployment("ns", "video", {"spec": ...})     # JSON merge patch
    pods = await client.list_pods("ns", "ipa/graph=video")
    await client.resize_pod("ns", "video-default-0-detector-abc", {...})  # PATCH pods/NAME/resize

It uses the official `kubernetes` client, whose calls block, in a worker thread each (`asyncio.to_thread`),
and hands back plain dicts (the JSON the API server sent), not the client's model classes. Every failure is
translated here, once, into `KubernetesError` with the HTTP status and the API server's reason and message:
404 the object is gone, 403 the service account lacks a permission (RBAC), 409 a conflict (read again and
retry), 422 the change was rejected (schema, admission webhook), 0 no answer at all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import kubernetes.client as k8s
import kubernetes.config
import urllib3

from adapter.errors import UsageError
from adapter.kubernetes.seldon import GROUP, PLURAL, VERSION

T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class KubernetesError(Exception):
    """A call to the API server that failed; `status` is its HTTP status (0: no answer), `target` the object."""

    def __init__(self, target: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{target}: {status} {reason}: {message}" if status else f"{target}: {message}")
        self.target, self.status, self.reason, self.message = target, status, reason, message

    @property
    def retryable(self) -> bool:
        """Worth trying again later: no answer, a conflict, throttling, a server-side error."""
        return self.status in (0, 409, 429) or self.status >= 500

    def describe(self) -> str:
        """What happened, in the words a platform engineer looks for."""
        what = {404: "not found (deleted?)", 403: "forbidden (missing RBAC permission?)", 409: "conflict",
                422: "rejected"}.get(self.status, self.reason or "error")
        return f"{self.status} {what}: {self.message}" if self.status else f"no answer: {self.message}"


def _translate(target: str, e: Exception) -> KubernetesError:
    if isinstance(e, k8s.exceptions.ApiException):
        status = int(e.status or 0)
        reason, message = str(e.reason or ""), ""
        try:
            body = json.loads(e.body or "{}")
            reason = str(body.get("reason") or reason)
            message = str(body.get("message") or "")
        except (ValueError, TypeError, AttributeError):
            message = str(e.body or "")[:300]
        return KubernetesError(target, status, reason, message or reason)
    return KubernetesError(target, 0, "Unreachable", f"{type(e).__name__}: {e}")


class KubernetesClient:
    """Async calls on one `kubernetes.client.ApiClient` (its connection pool is shared by the threads)."""

    def __init__(self, api_client: k8s.ApiClient, *, request_timeout_s: float = 15.0) -> None:
        self._api = api_client
        self._core = k8s.CoreV1Api(api_client)
        self._custom = k8s.CustomObjectsApi(api_client)
        self._timeout = request_timeout_s

    @classmethod
    def from_config(cls, kubeconfig: str | None = None, context: str | None = None) -> KubernetesClient:
        """The in-cluster service account when running in a pod (and no kubeconfig is named), else the
        kubeconfig (`KUBECONFIG`, ~/.kube/config); `UsageError` when there is neither."""
        configuration = k8s.Configuration()
        try:
            if kubeconfig is None and context is None:
                try:
                    kubernetes.config.load_incluster_config(client_configuration=configuration)
                    return cls._with(configuration)
                except kubernetes.config.ConfigException:
                    pass  # not in a pod: fall back to the kubeconfig
            kubernetes.config.load_kube_config(config_file=kubeconfig, context=context,
                                               client_configuration=configuration)
        except (kubernetes.config.ConfigException, OSError) as e:
            raise UsageError(f"no Kubernetes configuration: {e} (run in a pod with a service account, or set "
                             "KUBECONFIG)") from None
        return cls._with(configuration)

    @classmethod
    def for_url(cls, url: str) -> KubernetesClient:
        """A client for an API server that needs no credentials: `kubectl proxy`, or an emulator in tests."""
        configuration = k8s.Configuration()
        configuration.host = url.rstrip("/")
        return cls._with(configuration)

    @classmethod
    def _with(cls, configuration: k8s.Configuration) -> KubernetesClient:
        configuration.connection_pool_maxsize = 16  # one per concurrent worker thread, without pool warnings
        return cls(k8s.ApiClient(configuration))

    def close(self) -> None:
        self._api.close()

    async def _call(self, target: str, fn: Callable[[], Any]) -> Any:
        def run() -> Any:
            try:
                response = fn()
            except (k8s.exceptions.ApiException, urllib3.exceptions.HTTPError, OSError) as e:
                raise _translate(target, e) from e
            data = json.loads(response.data or b"null")
            return data if data is not None else {}
        return await asyncio.to_thread(run)

    async def get_seldon_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(await self._call(
            f"seldondeployment/{name}",
            lambda: self._custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _preload_content=False, _request_timeout=self._timeout)))

    async def patch_seldon_deployment(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (custom resources take no strategic merge patches)."""
        return dict(await self._call(
            f"seldondeployment/{name}",
            lambda: self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, dict(patch), _content_type=MERGE_PATCH,
                _preload_content=False, _request_timeout=self._timeout)))

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        data = await self._call(
            f"pods -l {label_selector}",
            lambda: self._core.list_namespaced_pod(
                namespace, label_selector=label_selector, _preload_content=False, _request_timeout=self._timeout))
        return [dict(item) for item in (data or {}).get("items") or []]

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(await self._call(
            f"pod/{name}",
            lambda: self._core.read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=self._timeout)))

    async def resize_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A strategic merge patch on the pod's `resize` subresource (Kubernetes >= 1.33): containers are
        matched by name, so only the CPU of the named container changes."""
        return dict(await self._call(
            f"pod/{name}",
            lambda: self._core.patch_namespaced_pod_resize(
                name, namespace, dict(patch), _content_type=STRATEGIC_MERGE_PATCH,
                _preload_content=False, _request_timeout=self._timeout)))
