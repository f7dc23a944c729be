"""Azure's Python SDK waits through a whole long-running operation: `begin_create_or_update(...).result()`
returns once a real agent has applied the configuration of a real Git repository, and `begin_delete(...).result()`
once it has removed it."""

import functools
import http.server
import subprocess
import threading
import time

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport

import support

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000bb"
GROUP = "lro-rg"
CLUSTER = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Kubernetes/connectedClusters/lro"
MANIFEST = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n"


def git(cwd, *args):
    subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
             "PATH": "/usr/local/bin:/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """A Git repository served over HTTP (the dumb protocol) by a thread of this process."""
    root = tmp_path_factory.mktemp("git")
    work = root / "work"
    (work / "apps").mkdir(parents=True)
    (work / "apps" / "app.yaml").write_text(MANIFEST)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "initial")
    served = root / "served"
    served.mkdir()
    git(served, "clone", "-q", "--bare", str(work), "repo.git")
    git(served / "repo.git", "update-server-info")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/repo.git"
    httpd.shutdown()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """fluxplane serve, and one agent registered for CLUSTER running with a dir target."""
    data = tmp_path_factory.mktemp("fluxplane")
    server_process, server = support.start_server(data, "lro-user")
    identity = data / "agent.json"
    subprocess.run(
        [support.BINARY, "agent", "register", "--server", server["base_url"], "--token", server["token"],
         "--cluster", CLUSTER, "--tag", "env=test", "--identity", str(identity)],
        check=True, capture_output=True, text=True,
    )
    target = data / "cluster"
    agent = support.start_logged(
        ["agent", "run", "--identity", str(identity), "--target", f"dir:{target}", "--poll-wait", "5s"],
        data / "agent.log",
    )
    support.wait_for_log(data / "agent.log", "agent started", agent)
    yield {**server, "target": target}
    support.stop(agent)
    support.stop(server_process)


def test_create_and_delete_wait_for_the_agent(fleet, repository):
    from azure.mgmt.kubernetesconfiguration.fluxconfigurations import (
        KubernetesConfigurationFluxConfigurationsMgmtClient,
        models,
    )

    client = support.client(KubernetesConfigurationFluxConfigurationsMgmtClient, fleet, SUBSCRIPTION)
    where = (GROUP, "Microsoft.Kubernetes", "connectedClusters", "lro")
    config = models.FluxConfiguration(
        properties=models.FluxConfigurationProperties(
            namespace="flux-system",
            git_repository=models.GitRepositoryDefinition(
                url=repository, repository_ref=models.RepositoryRefDefinition(branch="main")
            ),
            kustomizations={"apps": models.KustomizationDefinition(path="./apps")},
        )
    )
    started = time.time()
    created = client.flux_configurations.begin_create_or_update(*where, "lro-config", config).result()
    assert created.properties.provisioning_state == "Succeeded"
    assert created.properties.compliance_state == "Compliant"
    assert created.properties.source_synced_commit_id.startswith("main@sha1:")
    assert time.time() - started < 10
    assert (fleet["target"] / "lro-config" / "fluxconfig.yaml").exists()

    client.flux_configurations.begin_delete(*where, "lro-config").result()
    with pytest.raises(ResourceNotFoundError):
        client.flux_configurations.get(*where, "lro-config")
    assert not (fleet["target"] / "lro-config").exists()


class RecordingTransport(RequestsTransport):
    """The SDK's own transport, noting how long its pollers choose to wait between status reads."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.waits = []

    def sleep(self, duration):
        self.waits.append(duration)
        super().sleep(duration)


def test_a_poller_with_its_default_interval_follows_retry_after(fleet, repository):
    from azure.mgmt.kubernetesconfiguration.fluxconfigurations import (
        KubernetesConfigurationFluxConfigurationsMgmtClient,
        models,
    )

    transport = RecordingTransport()
    # the client's own polling interval (30 s for ARM): only the server's Retry-After can make it poll sooner
    client = support.client(
        KubernetesConfigurationFluxConfigurationsMgmtClient, fleet, SUBSCRIPTION, polling_interval=30, transport=transport
    )
    where = (GROUP, "Microsoft.Kubernetes", "connectedClusters", "lro")
    config = models.FluxConfiguration(
        properties=models.FluxConfigurationProperties(
            namespace="flux-system",
            git_repository=models.GitRepositoryDefinition(
                url=repository, repository_ref=models.RepositoryRefDefinition(branch="main")
            ),
            kustomizations={"apps": models.KustomizationDefinition(path="./apps")},
        )
    )
    created = client.flux_configurations.begin_create_or_update(*where, "default-poller", config).result()
    assert created.properties.provisioning_state == "Succeeded"
    client.flux_configurations.begin_delete(*where, "default-poller").result()
    assert transport.waits, "the operations were polled"
    assert all(wait <= 1 for wait in transport.waits), transport.waits
