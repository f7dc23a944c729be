"""Azure's Python SDK for cluster extensions, `azure-mgmt-kubernetesconfiguration-extensions` (api-version
2025-03-01), unchanged, drives the `microsoft.flux` extension through its long-running operations, which a real
agent completes: create, read, list, update its settings, delete."""

import subprocess

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

import support

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000ee"
GROUP = "ext-rg"
CLUSTER = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Kubernetes/connectedClusters/ext"
WHERE = (GROUP, "Microsoft.Kubernetes", "connectedClusters", "ext")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """fluxplane serve, and one agent registered for CLUSTER running with a dir target."""
    data = tmp_path_factory.mktemp("fluxplane")
    server_process, server = support.start_server(data, "ext-user")
    identity = data / "agent.json"
    subprocess.run(
        [support.BINARY, "agent", "register", "--server", server["base_url"], "--token", server["token"],
         "--cluster", CLUSTER, "--identity", str(identity)],
        check=True, capture_output=True, text=True,
    )
    agent = support.start_logged(
        ["agent", "run", "--identity", str(identity), "--target", f"dir:{data / 'cluster'}", "--poll-wait", "5s"],
        data / "agent.log",
    )
    support.wait_for_log(data / "agent.log", "agent started", agent)
    yield server
    support.stop(agent)
    support.stop(server_process)


def test_the_flux_extension_through_its_whole_lifecycle(fleet):
    from azure.mgmt.kubernetesconfiguration.extensions import KubernetesConfigurationExtensionsMgmtClient, models

    client = support.client(KubernetesConfigurationExtensionsMgmtClient, fleet, SUBSCRIPTION)
    extension = models.Extension(
        properties=models.ExtensionProperties(
            extension_type="microsoft.flux",
            auto_upgrade_minor_version=True,
            configuration_settings={"multiTenancy.enforce": "false"},
            configuration_protected_settings={"token": "c2VjcmV0"},
        )
    )
    created = client.extensions.begin_create(*WHERE, "flux", extension).result()
    assert created.properties.provisioning_state == "Succeeded"
    assert created.properties.extension_type.lower() == "microsoft.flux"
    assert created.properties.configuration_settings == {"multiTenancy.enforce": "false"}
    assert not created.properties.configuration_protected_settings, "write-only"

    listed = list(client.extensions.list(*WHERE))
    assert [e.name for e in listed] == ["flux"]

    patch = models.PatchExtension(
        properties=models.PatchExtensionProperties(configuration_settings={"multiTenancy.enforce": "true"})
    )
    updated = client.extensions.begin_update(*WHERE, "flux", patch).result()
    assert updated.properties.configuration_settings["multiTenancy.enforce"] == "true"
    assert client.extensions.get(*WHERE, "flux").properties.provisioning_state == "Succeeded"

    other = models.Extension(properties=models.ExtensionProperties(extension_type="microsoft.azuremonitor.containers"))
    with pytest.raises(HttpResponseError) as refused:
        client.extensions.begin_create(*WHERE, "monitor", other).result()
    assert refused.value.status_code == 400

    client.extensions.begin_delete(*WHERE, "flux").result()
    with pytest.raises(ResourceNotFoundError):
        client.extensions.get(*WHERE, "flux")
