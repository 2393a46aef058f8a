"""The Kubernetes API client a service uses: from CLM_KUBECONFIG, or in-cluster."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config

from clm.runtime.settings import SettingsError


def api_client(kubeconfig: Path | None, service: str, *, connections: int = 4) -> client.ApiClient:
    """`connections`: how many requests the service sends at once (the client's pool size)."""
    configuration = client.Configuration()
    if kubeconfig is not None:
        if not kubeconfig.is_file():
            raise SettingsError(f"CLM_KUBECONFIG: no such file {str(kubeconfig)!r}")
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            raise SettingsError(
                f"no Kubernetes API configured: set CLM_KUBECONFIG to a kubeconfig file, or run the "
                f"{service} in a pod (in-cluster service account)"
            ) from None
    configuration.connection_pool_maxsize = max(connections, 1)
    return client.ApiClient(configuration)
