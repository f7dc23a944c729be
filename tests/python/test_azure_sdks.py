"""Azure's official Python SDKs, pointed at a real fluxplane server, do what they do against Azure.

The server is the real binary (FLUXPLANE_BIN, default target/debug/fluxplane) on the embedded store in a
temporary data directory; a user token comes from `fluxplane token` (see support.py).
"""

import json
import subprocess
import urllib.request

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

import support

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000aa"
GROUP = "sdk-rg"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process, server = support.start_server(tmp_path_factory.mktemp("fluxplane"), "sdk-user")
    yield server
    support.stop(process)


def client(cls, server, **kwargs):
    return support.client(cls, server, SUBSCRIPTION, **kwargs)


def raw_put(server, path, body, api_version):
    request = urllib.request.Request(
        f"{server['base_url']}{path}?api-version={api_version}",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {server['token']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        assert response.status in (200, 201)


@pytest.fixture(scope="module")
def clusters(server):
    from azure.mgmt.hybridkubernetes import ConnectedKubernetesClient

    return client(ConnectedKubernetesClient, server)


@pytest.fixture(scope="module")
def registered(clusters):
    from azure.mgmt.hybridkubernetes import models

    cluster = models.ConnectedCluster(
        location="westeurope",
        tags={"env": "prod"},
        identity=models.ConnectedClusterIdentity(type="SystemAssigned"),
        properties=models.ConnectedClusterProperties(agent_public_key_certificate="a2V5", distribution="k3s"),
    )
    return clusters.connected_cluster.begin_create_or_replace(GROUP, "sdk-cluster", cluster).result()


@pytest.fixture(scope="module")
def with_agent(server, registered, tmp_path_factory):
    """sdk-cluster with a fluxplane agent registered (not running): secrets are sealed to its encryption key."""
    cluster = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Kubernetes/"
               "connectedClusters/sdk-cluster")
    identity = tmp_path_factory.mktemp("agent") / "agent.json"
    subprocess.run(
        [support.BINARY, "agent", "register", "--server", server["base_url"], "--token", server["token"],
         "--cluster", cluster, "--identity", str(identity)],
        check=True, capture_output=True, text=True,
    )
    return identity


def test_hybridkubernetes_creates_gets_lists_updates_and_deletes_clusters(clusters, registered):
    from azure.mgmt.hybridkubernetes import models

    assert registered.name == "sdk-cluster"
    assert registered.properties.connectivity_status == "Connecting"
    assert registered.properties.provisioning_state == "Succeeded"
    assert registered.identity.type == "SystemAssigned"

    got = clusters.connected_cluster.get(GROUP, "sdk-cluster")
    assert got.properties.agent_public_key_certificate == "a2V5"
    assert got.system_data.created_by == "sdk-user"

    other = models.ConnectedCluster(
        location="westeurope",
        identity=models.ConnectedClusterIdentity(type="SystemAssigned"),
        properties=models.ConnectedClusterProperties(agent_public_key_certificate="a2V5"),
    )
    clusters.connected_cluster.begin_create_or_replace("other-rg", "sdk-other", other).result()
    in_group = [c.name for c in clusters.connected_cluster.list_by_resource_group(GROUP)]
    assert in_group == ["sdk-cluster"]
    in_subscription = sorted(c.name for c in clusters.connected_cluster.list_by_subscription())
    assert in_subscription == ["sdk-cluster", "sdk-other"]

    updated = clusters.connected_cluster.begin_update_async(
        GROUP, "sdk-cluster", models.ConnectedClusterPatch(tags={"env": "staging", "team": "blue"})
    ).result()
    assert updated.tags == {"env": "staging", "team": "blue"}
    assert updated.properties.distribution == "k3s"

    clusters.connected_cluster.begin_delete("other-rg", "sdk-other").result()
    with pytest.raises(ResourceNotFoundError):
        clusters.connected_cluster.get("other-rg", "sdk-other")


def flux_body(branch="main"):
    return {
        "properties": {
            "scope": "cluster",
            "namespace": "flux-system",
            "sourceKind": "GitRepository",
            "gitRepository": {
                "url": "https://github.com/Azure/arc-k8s-demo",
                "repositoryRef": {"branch": branch},
            },
            "kustomizations": {
                "infra": {"path": "./infra"},
                "apps": {"path": "./apps", "dependsOn": ["infra"], "prune": True},
            },
            "configurationProtectedSettings": {"httpsKey": "c2VjcmV0"},
        }
    }


def test_fluxconfigurations_sdk_creates_gets_lists_patches_and_deletes(server, with_agent):
    from azure.mgmt.kubernetesconfiguration.fluxconfigurations import (
        KubernetesConfigurationFluxConfigurationsMgmtClient,
        models,
    )

    flux = client(KubernetesConfigurationFluxConfigurationsMgmtClient, server).flux_configurations
    where = (GROUP, "Microsoft.Kubernetes", "connectedClusters", "sdk-cluster")

    config = models.FluxConfiguration(
        properties=models.FluxConfigurationProperties(
            namespace="flux-system",
            source_kind="GitRepository",
            git_repository=models.GitRepositoryDefinition(
                url="https://github.com/Azure/arc-k8s-demo",
                repository_ref=models.RepositoryRefDefinition(branch="main"),
            ),
            kustomizations={
                "infra": models.KustomizationDefinition(path="./infra"),
                "apps": models.KustomizationDefinition(path="./apps", depends_on=["infra"]),
            },
            configuration_protected_settings={"sshPrivateKey": "c2VjcmV0"},
        )
    )
    # The agent completes the operation; until then the initial answer is what the SDK has.
    created = flux.begin_create_or_update(*where, "sdk-config", config, polling=False).result()
    assert created.properties.provisioning_state == "Creating"
    assert created.properties.compliance_state == "Pending"
    assert created.properties.configuration_protected_settings in (None, {})

    got = flux.get(*where, "sdk-config")
    assert got.properties.git_repository.sync_interval_in_seconds == 600
    assert got.properties.kustomizations["apps"].depends_on == ["infra"]
    assert got.properties.kustomizations["apps"].wait is True

    patch = models.FluxConfigurationPatch(
        properties=models.FluxConfigurationPatchProperties(
            suspend=True,
            kustomizations={"apps": models.KustomizationPatchDefinition(prune=True)},
        )
    )
    patched = flux.begin_update(*where, "sdk-config", patch, polling=False).result()
    assert patched.properties.suspend is True
    assert patched.properties.kustomizations["apps"].prune is True
    assert patched.properties.kustomizations["apps"].path == "./apps"
    assert patched.properties.provisioning_state == "Updating"

    # more than one page: the server pages by 100 and the SDK follows nextLink
    for i in range(205):
        raw_put(server, f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Kubernetes/"
                f"connectedClusters/sdk-cluster/providers/Microsoft.KubernetesConfiguration/"
                f"fluxConfigurations/bulk-{i:03d}", flux_body(), "2025-04-01")
    names = [c.name for c in flux.list(*where)]
    assert len(names) == 206
    assert names == sorted(names)
    assert len(set(names)) == 206

    flux.begin_delete(*where, "bulk-000", polling=False).result()
    assert flux.get(*where, "bulk-000").properties.provisioning_state == "Deleting"
    flux.begin_delete(*where, "bulk-000", force_delete=True).result()
    with pytest.raises(ResourceNotFoundError):
        flux.get(*where, "bulk-000")

    with pytest.raises(HttpResponseError) as refused:
        flux.begin_create_or_update(
            *where,
            "Bad_Name",
            models.FluxConfiguration(properties=models.FluxConfigurationProperties()),
            polling=False,
        ).result()
    assert refused.value.status_code == 400
    assert refused.value.error.code == "InvalidParameter"


def test_kubernetesconfiguration_multi_api_sdk_reads_and_writes_flux_configurations(server, with_agent):
    from azure.mgmt.kubernetesconfiguration import SourceControlConfigurationClient
    from azure.mgmt.kubernetesconfiguration.v2023_05_01 import models

    flux = client(SourceControlConfigurationClient, server).flux_configurations
    where = (GROUP, "Microsoft.Kubernetes", "connectedClusters", "sdk-cluster")
    config = models.FluxConfiguration(
        source_kind="GitRepository",
        git_repository=models.GitRepositoryDefinition(
            url="https://github.com/Azure/arc-k8s-demo",
            repository_ref=models.RepositoryRefDefinition(tag="v1.0.0"),
        ),
        kustomizations={"root": models.KustomizationDefinition(path="./")},
    )
    created = flux.begin_create_or_update(*where, "legacy-sdk", config, polling=False).result()
    assert created.provisioning_state == "Creating"
    got = flux.get(*where, "legacy-sdk")
    assert got.git_repository.repository_ref.tag == "v1.0.0"
    assert got.kustomizations["root"].name == "root"
    names = [c.name for c in flux.list(*where)]
    assert "legacy-sdk" in names
    patched = flux.begin_update(
        *where, "legacy-sdk", models.FluxConfigurationPatch(suspend=True), polling=False
    ).result()
    assert patched.suspend is True
    flux.begin_delete(*where, "legacy-sdk", force_delete=True).result()
    with pytest.raises(ResourceNotFoundError):
        flux.get(*where, "legacy-sdk")
