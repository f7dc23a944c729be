"""The deploy manifests start on a real cluster as written: every document is valid against Kubernetes' own schemas
(kubernetes-validate bundles them: no network), the pods run the image the Dockerfile builds as its non-root user
and can read the secrets they mount, the server and agent are wired the way their flags expect, no agent holds the
user-token key, and what the agent writes is valid against the FluxConfig CRD. That the agent's RBAC covers each
request its kube target makes is checked by the agent's own tests (agent/src/targets/kube/tests/rbac.rs), against
its fake API server."""

import fnmatch
import json
import pathlib
import re
import shlex
import subprocess
import time
import tomllib
import urllib.request

import jsonschema
import kubernetes_validate
import pytest
import yaml

import support

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# The Kubernetes versions every manifest is validated for: the API the agent is built against (k8s-openapi's v1_33
# feature in agent/Cargo.toml) and the newest kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.33", "1.37")
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
IMAGE = f"fluxplane:{VERSION}"


def documents():
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path, document


def deployment(folder):
    return next(d for p, d in documents() if d["kind"] == "Deployment" and p.parent.name == folder)


def test_every_manifest_parses_as_kubernetes_objects():
    found = list(documents())
    assert {p.relative_to(DEPLOY).as_posix() for p, _ in found} >= {
        "kubernetes/control-plane.yaml", "agent/agent.yaml", "crds/fluxconfigs.fluxplane.io.yaml"}
    for path, document in found:
        assert document.get("apiVersion") and document.get("kind"), f"{path}: {document}"
        assert document["metadata"].get("name"), path


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version):
    validated = []
    for path, document in documents():
        # strict: a field the schema does not name (a typo, a field in the wrong place) is an error, not ignored
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(p) for p in error.path)
            pytest.fail(f"{path.relative_to(ROOT)}: {document['kind']} {document['metadata']['name']}: "
                        f"{where}: {error.message}")
        validated.append(document["kind"])
    # no kind was skipped for want of a schema: deploy/ holds no custom resource (the FluxConfig test below checks what
    # the agent writes against its CRD)
    assert {"Namespace", "Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
            "CustomResourceDefinition"} <= set(validated)


def test_the_validation_refuses_what_an_api_server_refuses():
    _, agent = next((p, d) for p, d in documents() if d["kind"] == "Deployment" and p.parent.name == "agent")
    broken = json.loads(json.dumps(agent))
    broken["spec"]["template"]["spec"]["securityContext"]["fsgroup"] = 10001  # misspelt: silently dropped by kubectl
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
    broken = json.loads(json.dumps(agent))
    broken["spec"]["replicas"] = "1"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def pod_containers():
    for path, document in documents():
        if document["kind"] == "Deployment":
            pod = document["spec"]["template"]["spec"]
            for container in pod["containers"]:
                yield path, pod, container


def identity_of(pod, container):
    """The user and groups the container's processes run with (pod security context, overridden per container)."""
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    groups = {context.get("runAsGroup"), *pod.get("securityContext", {}).get("supplementalGroups", [])}
    if "fsGroup" in pod.get("securityContext", {}):
        groups.add(pod["securityContext"]["fsGroup"])
    return context.get("runAsUser"), groups


def secret_files(pod, container):
    """Each file of a secret the container mounts: (path in the container, owner, group, mode) as the kubelet
    writes it: owned by root; with fsGroup, given that group and made group-readable."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    fs_group = pod.get("securityContext", {}).get("fsGroup")
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        default = secret.get("defaultMode", 0o644)
        for item in secret.get("items") or [{"key": "*", "path": "*"}]:
            mode = item.get("mode", default)
            group = 0
            if fs_group is not None:
                group, mode = fs_group, mode | 0o040
            yield f"{mount['mountPath']}/{item['path']}", 0, group, mode


def mounted(path, pod, container):
    """Whether `path` is a file of a secret the container mounts."""
    return any(fnmatch.fnmatch(path, file) for file, *_ in secret_files(pod, container))


def can_read(uid, groups, owner, group, mode):
    return uid == 0 or (uid == owner and mode & 0o400) or (group in groups and mode & 0o040) or bool(mode & 0o004)


def test_pods_run_as_the_images_non_root_user_on_a_read_only_root():
    user = re.search(r"useradd [^\n]*--uid (\d+)", DOCKERFILE.read_text())
    group = re.search(r"groupadd [^\n]*--gid (\d+)", DOCKERFILE.read_text())
    assert user and group, "the Dockerfile makes its user and group with fixed ids"
    for path, pod, container in pod_containers():
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert context.get("runAsNonRoot") is True, path
        assert context.get("runAsUser") == int(user.group(1)), path
        assert context.get("runAsGroup") == int(group.group(1)), path
        assert context.get("allowPrivilegeEscalation") is False, path
        assert context.get("readOnlyRootFilesystem") is True, path
        assert context.get("capabilities", {}).get("drop") == ["ALL"], path


def test_each_process_can_read_the_secrets_it_mounts_and_no_one_else_can():
    for path, pod, container in pod_containers():
        uid, groups = identity_of(pod, container)
        files = list(secret_files(pod, container))
        assert files, f"{path}: the container mounts its secret"
        for file, owner, group, mode in files:
            assert can_read(uid, groups, owner, group, mode), f"{path}: {file} unreadable by {uid} {groups}"
            assert not mode & 0o007, f"{path}: {file} readable by everyone"


def test_the_old_manifests_unreadable_mounts_are_caught():
    # mode 0400 and no fsGroup, as the manifests once were: root's file, which user 10001 cannot read
    pod = {"securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
           "volumes": [{"name": "keys", "secret": {"secretName": "s", "defaultMode": 0o400}}]}
    container = {"volumeMounts": [{"name": "keys", "mountPath": "/keys"}]}
    uid, groups = identity_of(pod, container)
    [(_, owner, group, mode)] = secret_files(pod, container)
    assert not can_read(uid, groups, owner, group, mode)


def test_images_are_the_versioned_image_the_dockerfile_builds():
    dockerfile = DOCKERFILE.read_text()
    assert "cargo build --release --locked --bin fluxplane" in dockerfile
    assert "COPY --from=build /src/target/release/fluxplane /usr/local/bin/fluxplane" in dockerfile
    assert 'ENTRYPOINT ["fluxplane"]' in dockerfile
    assert re.search(r"^USER 10001(:10001)?$", dockerfile, re.M), "a numeric user, which runAsNonRoot can verify"
    assert f"docker build -t {IMAGE} ." in dockerfile
    for path, _, container in pod_containers():
        assert container["image"] == IMAGE, path
        assert container["imagePullPolicy"] == "IfNotPresent", path
    compose = yaml.safe_load(COMPOSE.read_text())
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["image"] == IMAGE, name
    readme = (DEPLOY / "README.md").read_text()
    for step in (f"docker build -t {IMAGE} .", f"kind load docker-image {IMAGE}", f"minikube image load {IMAGE}",
                 f"k3d image import {IMAGE}", "docker push"):
        assert step in readme, step


def test_the_control_plane_probes_and_keys_match_the_server():
    container = deployment("kubernetes")["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    for name in ("FLUXPLANE_DATABASE_URL", "FLUXPLANE_JWT_SECRET_FILE", "FLUXPLANE_SECRETS_KEY_FILE"):
        assert name in env, name
    # the secrets key seals the server's own credentials (alert receivers'); configurations' secrets are sealed to
    # the agents, with no key of the server's
    assert "FLUXPLANE_SECRET_KEY_FILE" not in env
    pod = deployment("kubernetes")["spec"]["template"]["spec"]
    for name in ("FLUXPLANE_JWT_SECRET_FILE", "FLUXPLANE_SECRETS_KEY_FILE"):
        assert mounted(env[name]["value"], pod, container), name


def test_the_agent_reads_its_identity_from_its_secret_and_holds_no_user_token_key():
    agent = deployment("agent")
    pod = agent["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert args[:2] == ["agent", "run"] and args[args.index("--target") + 1] == "kube"
    assert mounted(args[args.index("--identity") + 1], pod, container)
    assert agent["spec"]["replicas"] == 1
    text = (DEPLOY / "agent" / "agent.yaml").read_text()
    assert "jwt-secret" not in text and "JWT" not in text


def test_the_compose_agent_registers_with_a_narrow_token_and_never_sees_the_signing_key():
    services = yaml.safe_load(COMPOSE.read_text())["services"]

    def command(service):
        return " ".join(service.get("entrypoint", []) + service.get("command", []))

    def mounts(service):
        return {volume.split(":")[0]: volume.split(":")[1] for volume in service.get("volumes", [])}

    agents = {name: s for name, s in services.items() if re.search(r"\bagent (run|register)\b", command(s))}
    for name, service in agents.items():
        assert "keys" not in mounts(service), f"{name} mounts the user-token key"
        assert "jwt" not in command(service).lower(), name
    assert {"agent", "agent-register"} <= set(agents)
    # the only services with the key: the one that makes it, the server, and the one that mints the registration
    # token, which is Contributor on one resource group for minutes
    holders = {name for name, s in services.items() if "keys" in mounts(s)}
    assert holders == {"keys", "fluxplane", "agent-token"}
    mint = shlex.split(command(services["agent-token"]).split("sh -c ", 1)[1])
    assert mint[mint.index("--role") + 1] == "Contributor"
    assert re.fullmatch(r"/subscriptions/[0-9a-f-]+/resourceGroups/[^/]+", mint[mint.index("--scope") + 1])
    assert mint[mint.index("--ttl") + 1] in ("5m", "10m", "15m")
    register = command(services["agent-register"])
    assert "/registration/token" in register and "rm -f /registration/token" in register
    assert "registration" not in mounts(services["agent"])
    run = services["agent"]["command"]
    assert run[:2] == ["agent", "run"]
    identity = run[run.index("--identity") + 1]
    assert identity.startswith(mounts(services["agent"])["agent"])
    assert identity in register


# What the agent writes against the FluxConfig CRD, as the API server would take it: a field the schema does not
# declare would be pruned (dropped without a word) by a real API server, so here it fails.

def structural(schema, root=False):
    """The CRD's OpenAPI v3 schema as a JSON Schema that refuses what the API server would prune."""
    schema = dict(schema)
    preserve = schema.pop("x-kubernetes-preserve-unknown-fields", False)
    for key in [k for k in schema if k.startswith("x-kubernetes-")]:
        schema.pop(key)
    if schema.pop("nullable", False):
        schema["type"] = [schema["type"], "null"]
    if "properties" in schema:
        schema["properties"] = {k: structural(v) for k, v in schema["properties"].items()}
        if root:
            schema["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"},
                                        metadata={"type": "object"})
        if not preserve and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = structural(schema["additionalProperties"])
    if "items" in schema:
        schema["items"] = structural(schema["items"])
    return schema


def fluxconfig_validator():
    crd = next(d for _, d in documents() if d["kind"] == "CustomResourceDefinition")
    version = next(v for v in crd["spec"]["versions"] if v["storage"])
    return (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"],
            jsonschema.Draft7Validator(structural(version["schema"]["openAPIV3Schema"], root=True)))


def test_the_crd_schema_check_refuses_what_the_api_server_would_prune():
    _, _, validator = fluxconfig_validator()
    good = {"apiVersion": "fluxplane.io/v1alpha1", "kind": "FluxConfig", "metadata": {"name": "x"},
            "spec": {"sourceKind": "GitRepository", "gitRepository": {"url": "https://h/r", "anything": 1}}}
    validator.validate(good)
    for bad in ({**good, "spec": {**good["spec"], "sourcekind": "GitRepository"}},
                {**good, "spec": {**good["spec"], "sourceKind": "Helm"}},
                {**good, "spec": {**good["spec"], "suspend": "no"}}):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


SUBSCRIPTION = "00000000-0000-0000-0000-0000000000dd"
GROUP = "deploy-rg"
CLUSTER = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Kubernetes/connectedClusters/c1"


def arm(server, method, path, body=None):
    request = urllib.request.Request(
        f"{server['base_url']}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {server['token']}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_the_fluxconfig_an_agent_writes_is_valid_against_the_crd(tmp_path):
    """A real agent (dir target: the objects the kube target applies, as files) given a configuration with every
    part the CRD's spec declares; what it writes must be a FluxConfig the CRD keeps whole, and a valid Secret."""
    api_version, kind, validator = fluxconfig_validator()
    server_process, server = support.start_server(tmp_path, "deploy-user")
    agent = None
    try:
        identity = tmp_path / "agent.json"
        subprocess.run(
            [support.BINARY, "agent", "register", "--server", server["base_url"], "--token", server["token"],
             "--cluster", CLUSTER, "--identity", str(identity)],
            check=True, capture_output=True, text=True,
        )
        target = tmp_path / "cluster"
        agent = support.start_logged(["agent", "run", "--identity", str(identity), "--target", f"dir:{target}",
                                      "--poll-wait", "5s"], tmp_path / "agent.log")
        support.wait_for_log(tmp_path / "agent.log", "agent started", agent)
        arm(server, "PUT", f"{CLUSTER}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/full"
                           "?api-version=2025-04-01", {"properties": {
            "scope": "cluster", "namespace": "flux-system", "sourceKind": "GitRepository", "suspend": False,
            "gitRepository": {"url": "https://example.invalid/fleet.git", "repositoryRef": {"branch": "main"},
                              "httpsUser": "git", "syncIntervalInSeconds": 120},
            "configurationProtectedSettings": {"httpsKey": "cGFzc3dvcmQ="},
            "kustomizations": {"infra": {"path": "./infra", "prune": True},
                               "apps": {"path": "./apps", "dependsOn": ["infra"]}},
            "waitForReconciliation": False,
        }})
        written = target / "full" / "fluxconfig.yaml"
        deadline = time.time() + 30
        while not (written.exists() and (target / "full" / "secret.yaml").exists()) and time.time() < deadline:
            time.sleep(0.1)
        fluxconfig = yaml.safe_load(written.read_text())
        assert (fluxconfig["apiVersion"], fluxconfig["kind"]) == (api_version, kind)
        for field in ("scope", "namespace", "sourceKind", "gitRepository", "kustomizations"):
            assert field in fluxconfig["spec"], field
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(fluxconfig)]
        assert not errors, errors
        secret = yaml.safe_load((target / "full" / "secret.yaml").read_text())
        kubernetes_validate.validate(secret, KUBERNETES_VERSIONS[0], strict=True)
    finally:
        if agent is not None:
            support.stop(agent)
        support.stop(server_process)
