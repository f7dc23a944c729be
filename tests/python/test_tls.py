"""Azure's SDKs with their own bearer-token policy, as the README shows them: it sends a token over https:// only, so
they talk to `fluxplane dev` serving HTTPS with a certificate from its own CA, trusted through `connection_verify` or
`REQUESTS_CA_BUNDLE`, and refuse a plain-HTTP server. azure-identity's own `ManagedIdentityCredential` gets their
token from dev's managed identity.
"""

import subprocess
import time

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

import support

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000bb"
GROUP = "tls-rg"


class FluxplaneToken:
    """A credential that hands Azure's bearer policy a fluxplane token, as the README's example does."""

    def __init__(self, token):
        self._token = token

    def get_token(self, *scopes, **kwargs):
        return AccessToken(self._token, int(time.time()) + 3600)


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    """`fluxplane dev` without agents, its API address, its Owner token and its CA file, read from its banner."""
    data = tmp_path_factory.mktemp("fluxplane-dev") / "data"
    with open(data.parent / "dev.log", "w") as log:
        process = subprocess.Popen(
            [support.BINARY, "dev", "--agents", "0", "--listen", "127.0.0.1:0", "--data-dir", str(data)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    banner = {}
    deadline = time.time() + 60
    while "stop" not in banner:
        line = process.stdout.readline()
        assert line and time.time() < deadline, f"dev printed no banner; its log: {(data.parent / 'dev.log').read_text()}"
        words = line.split()
        if line.startswith("  API:"):
            banner["api"] = words[-1]
        elif line.startswith("  export TOKEN="):
            banner["token"] = line.strip().removeprefix("export TOKEN=")
        elif line.startswith("  export IDENTITY_ENDPOINT="):
            banner["identity"] = dict(pair.split("=", 1) for pair in words[1:])
        elif line.startswith("  Stop with Ctrl-C."):
            banner["stop"] = True
    assert banner["api"].startswith("https://127.0.0.1:"), banner["api"]
    yield {
        "api": banner["api"],
        "token": banner["token"],
        "ca": str(data / "tls" / "ca.pem"),
        "identity": banner["identity"],
    }
    process.stdout.close()
    support.stop(process)


def clusters_client(api, token, **kwargs):
    from azure.mgmt.hybridkubernetes import ConnectedKubernetesClient

    return ConnectedKubernetesClient(FluxplaneToken(token), SUBSCRIPTION, base_url=api, polling_interval=0.1, **kwargs)


def register(client, name):
    from azure.mgmt.hybridkubernetes import models

    cluster = models.ConnectedCluster(
        location="westeurope",
        identity=models.ConnectedClusterIdentity(type="SystemAssigned"),
        properties=models.ConnectedClusterProperties(agent_public_key_certificate="a2V5"),
    )
    return client.connected_cluster.begin_create_or_replace(GROUP, name, cluster).result()


def test_the_sdks_own_bearer_policy_sends_the_token_over_https_to_a_server_trusted_through_its_ca(dev):
    clusters = clusters_client(dev["api"], dev["token"], connection_verify=dev["ca"])
    assert register(clusters, "tls-1").name == "tls-1"

    from azure.mgmt.kubernetesconfiguration.fluxconfigurations import (
        KubernetesConfigurationFluxConfigurationsMgmtClient,
    )

    flux = KubernetesConfigurationFluxConfigurationsMgmtClient(
        FluxplaneToken(dev["token"]), SUBSCRIPTION, base_url=dev["api"], connection_verify=dev["ca"]
    )
    listed = flux.flux_configurations.list(GROUP, "Microsoft.Kubernetes", "connectedClusters", "tls-1")
    assert list(listed) == []


def test_requests_ca_bundle_trusts_devs_ca_as_python_clients_and_az_read_it(dev, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", dev["ca"])
    assert register(clusters_client(dev["api"], dev["token"]), "tls-2").name == "tls-2"


def test_azure_identitys_managed_identity_credential_signs_the_sdks_in_with_devs_identity(dev, monkeypatch):
    # the environment dev's banner prints, as App Service sets it
    for name, value in dev["identity"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", dev["ca"])
    from azure.identity import ManagedIdentityCredential
    from azure.mgmt.hybridkubernetes import ConnectedKubernetesClient

    # the SDK asks for a token for the server's audience, as /metadata/endpoints announces it
    clusters = ConnectedKubernetesClient(
        ManagedIdentityCredential(),
        SUBSCRIPTION,
        base_url=dev["api"],
        credential_scopes=["fluxplane/.default"],
        polling_interval=0.1,
    )
    assert register(clusters, "identity-1").name == "identity-1"
    listed = [cluster.name for cluster in clusters.connected_cluster.list_by_resource_group(GROUP)]
    assert "identity-1" in listed

    # Azure's own audience is refused, and the reason reaches the caller
    with pytest.raises(ClientAuthenticationError, match="audience 'fluxplane' only"):
        ManagedIdentityCredential().get_token("https://management.azure.com/.default")


def test_without_devs_ca_the_sdk_refuses_the_certificate(dev, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with pytest.raises(ServiceRequestError, match="(?i)certificate"):
        register(clusters_client(dev["api"], dev["token"]), "tls-3")


def test_over_plain_http_the_sdks_bearer_policy_will_not_send_the_token(tmp_path):
    process, server = support.start_server(tmp_path, "plain")
    try:
        with pytest.raises(ServiceRequestError, match="(?i)non-TLS|https"):
            register(clusters_client(server["base_url"], server["token"]), "plain-1")
    finally:
        support.stop(process)
