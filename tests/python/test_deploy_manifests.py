"""The Kubernetes manifests in deploy/ parse and wire the server the way its flags and endpoints expect."""

import pathlib

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"


def documents():
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path, document


def test_every_manifest_parses_as_kubernetes_objects():
    found = list(documents())
    assert found, "deploy/ holds manifests"
    for path, document in found:
        assert document.get("apiVersion") and document.get("kind"), f"{path}: {document}"
        assert document["metadata"].get("name"), path


def test_the_control_plane_probes_and_keys_match_the_server():
    deployment = next(d for p, d in documents() if d["kind"] == "Deployment" and p.parent.name == "kubernetes")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    for name in ("FLUXPLANE_DATABASE_URL", "FLUXPLANE_JWT_SECRET_FILE"):
        assert name in env, name
    # the control plane has no key for secrets: they are sealed to the agents
    assert "FLUXPLANE_SECRET_KEY_FILE" not in env
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert pathlib.PurePath(env["FLUXPLANE_JWT_SECRET_FILE"]["value"]).parent.as_posix() in mounted


def test_the_fluxconfig_crd_matches_what_agents_write():
    crd = next(d for _, d in documents() if d["kind"] == "CustomResourceDefinition")
    assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.{crd['spec']['group']}"
    assert crd["spec"]["names"]["kind"] == "FluxConfig"
    version = crd["spec"]["versions"][0]
    # the dir target writes apiVersion fluxplane.io/v1alpha1 (agent/src/targets/dir.rs)
    assert f"{crd['spec']['group']}/{version['name']}" == "fluxplane.io/v1alpha1"
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for field in ("scope", "namespace", "sourceKind", "suspend", "gitRepository", "kustomizations"):
        assert field in spec, field


def test_the_agent_may_write_every_kind_the_kube_target_writes_and_reads_its_identity():
    role = next(d for _, d in documents() if d["kind"] == "ClusterRole")
    granted = {(group, resource) for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
               if {"get", "list", "patch", "delete"} <= set(rule["verbs"])}
    # the kinds of agent/src/targets/kube.rs (KINDS)
    for needed in [("fluxplane.io", "fluxconfigs"), ("source.toolkit.fluxcd.io", "gitrepositories"),
                   ("source.toolkit.fluxcd.io", "buckets"), ("source.toolkit.fluxcd.io", "ocirepositories"),
                   ("kustomize.toolkit.fluxcd.io", "kustomizations"), ("", "secrets")]:
        assert needed in granted, needed
    agent = next(d for p, d in documents() if d["kind"] == "Deployment" and p.parent.name == "agent")
    container = agent["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[:2] == ["agent", "run"] and args[args.index("--target") + 1] == "kube"
    identity = args[args.index("--identity") + 1]
    assert any(identity.startswith(m["mountPath"]) for m in container["volumeMounts"])
    assert agent["spec"]["replicas"] == 1
