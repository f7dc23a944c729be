"""The resources the fuzz run puts in a fresh server, so that generated requests also reach existing ones, and puts
back whenever the fuzzer deletes or replaces them. Shared by run.py (the first seeding) and hooks.py (re-seeding,
agent tokens and the values that steer generation)."""

import base64
import json
import subprocess
import threading
import time
import urllib.parse

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

SUBSCRIPTION = "00000000-0000-0000-0000-00000000f022"
GROUP = "fuzz"
SUB = f"/subscriptions/{SUBSCRIPTION}"
RG = f"{SUB}/resourceGroups/{GROUP}"
CLUSTER_TYPE = "providers/Microsoft.Kubernetes/connectedClusters"
AGENT_CLUSTER = "fuzz-1"  # registered by `fluxplane agent register`; its agent reports through the agent API
PLAIN_CLUSTER = "fuzz-2"  # registered by hand, without an agent
CONFIG = "cfg-1"
FLEET = "providers/Fluxplane.Fleet"
CLUSTER_GROUP = "group-1"
ASSIGNMENT = "assign-1"
RECEIVER = "receiver-1"
RULE = "rule-1"
# the discard port, where nothing listens: the receiver's deliveries and tests fail fast, and are retried
RECEIVER_URL = "http://127.0.0.1:9/hooks/fuzz"
RECEIVER_KEY = "fuzz-signing-key-0123456789abcdef0123"
CLUSTER_VERSION = "2024-01-01"
FLUX_VERSION = "2025-04-01"
FLEET_VERSION = "2026-01-01"
AGENT_AUDIENCE = "fluxplane-agent"


def cluster_id(name):
    return f"{RG}/{CLUSTER_TYPE}/{name}"


def config_id(cluster, name):
    return f"{cluster_id(cluster)}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{name}"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ed25519_private_key(pem):
    """The agent's signing key from its PKCS#8 PEM. The agent writes version 2 (with the public key), which
    cryptography does not read: the seed is the OCTET STRING of 32 bytes inside the privateKey OCTET STRING."""
    der = base64.b64decode("".join(line for line in pem.splitlines() if not line.startswith("-----")))
    at = der.find(b"\x04\x22\x04\x20")
    if at < 0:
        raise ValueError("not an Ed25519 PKCS#8 key")
    return Ed25519PrivateKey.from_private_bytes(der[at + 4 : at + 36])


def config_body(secret):
    properties = {
        "namespace": "fuzz",
        "sourceKind": "GitRepository",
        "gitRepository": {"url": "https://example.invalid/fleet.git", "repositoryRef": {"branch": "main"}},
        "kustomizations": {
            "infra": {"path": "./infrastructure"},
            "apps": {"path": "./apps", "dependsOn": ["infra"], "prune": True},
        },
    }
    if secret:
        properties["configurationProtectedSettings"] = {"httpsKey": "c2VjcmV0"}
    return {"properties": properties}


TEMPLATE = {
    "namespace": "fleet",
    "gitRepository": {
        "url": "https://example.invalid/fleet.git",
        "repositoryRef": {"branch": "[parameters('branch')]"},
    },
    "kustomizations": {"infra": {"path": "./infrastructure"}},
}


class Fleet:
    """A running fluxplane with the fuzz run's resources in it."""

    def __init__(self, base_url, user_token, identity_path):
        self.base_url = base_url
        self.user_token = user_token
        self.identity_path = identity_path
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {user_token}"
        self._lock = threading.Lock()
        self._identity = None
        self.operation_id = None
        self.skip_token = None

    # --- the agent's identity, written by `fluxplane agent register` ---

    def identity(self):
        if self._identity is None:
            with open(self.identity_path) as file:
                identity = json.load(file)
            key = ed25519_private_key(identity["privateKey"])
            encryption = X25519PrivateKey.from_private_bytes(base64.b64decode(identity["encryptionKey"]))
            self._identity = {"clusterId": identity["clusterId"], "key": key, "encryption": encryption}
        return self._identity

    def agent_public_key(self):
        der = self.identity()["key"].public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def encryption_public_key(self):
        raw = self.identity()["encryption"].public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()

    def agent_token(self):
        """An agent token as the agent signs it: EdDSA, the cluster's id as `sub`, 120 s of life."""
        identity = self.identity()
        now = int(time.time())
        header = b64url(json.dumps({"typ": "JWT", "alg": "EdDSA"}).encode())
        claims = b64url(
            json.dumps({"sub": identity["clusterId"], "aud": AGENT_AUDIENCE, "iat": now, "exp": now + 120}).encode()
        )
        signature = b64url(identity["key"].sign(f"{header}.{claims}".encode()))
        return f"{header}.{claims}.{signature}"

    # --- requests ---

    def call(self, method, path, version=None, body=None, agent=False, expect=(200, 201, 202, 204), **params):
        if version:
            params["api-version"] = version
        headers = {"Authorization": f"Bearer {self.agent_token()}"} if agent else {}
        response = self.http.request(
            method, self.base_url + path, params=params, json=body, headers=headers, timeout=30
        )
        if response.status_code not in expect:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response

    def put_config(self, cluster, name, secret):
        path = config_id(cluster, name)
        response = self.call("PUT", path, FLUX_VERSION, config_body(secret), expect=(200, 201, 409))
        if response.status_code == 409:
            # left Deleting by a fuzzed DELETE: remove it for good, then write it again
            self.call("DELETE", path, FLUX_VERSION, forceDelete="true", expect=(200, 202, 204, 404))
            response = self.call("PUT", path, FLUX_VERSION, config_body(secret))
        return response

    # --- seeding ---

    def seed(self):
        """Puts every seeded resource (back) as it was first written. Idempotent."""
        with self._lock:
            self._seed()

    def _seed(self):
        agent_cluster = {
            "location": "westeurope",
            "tags": {"env": "fuzz", "agent": "1"},
            "properties": {"agentPublicKeyCertificate": self.agent_public_key(), "distribution": "kind"},
        }
        self.call("PUT", cluster_id(AGENT_CLUSTER), CLUSTER_VERSION, agent_cluster)
        self.call("PUT", "/agent/v1/encryption-key", body={"publicKey": self.encryption_public_key()}, agent=True)
        plain_cluster = {
            "location": "northeurope",
            "tags": {"env": "prod"},
            "identity": {"type": "SystemAssigned"},
            "properties": {"agentPublicKeyCertificate": "a2V5"},
        }
        self.call("PUT", cluster_id(PLAIN_CLUSTER), CLUSTER_VERSION, plain_cluster)
        created = self.put_config(AGENT_CLUSTER, CONFIG, secret=True)
        operation = created.headers.get("Azure-AsyncOperation")
        if operation:
            self.operation_id = urllib.parse.urlsplit(operation).path.rstrip("/").rsplit("/", 1)[-1]
        self.put_config(PLAIN_CLUSTER, CONFIG, secret=False)
        for scope in (SUB, RG):
            self.call(
                "PUT",
                f"{scope}/{FLEET}/clusterGroups/{CLUSTER_GROUP}",
                FLEET_VERSION,
                {"properties": {"selector": {"matchLabels": {"env": "fuzz"}}}},
            )
            self.call(
                "PUT",
                f"{scope}/{FLEET}/policyAssignments/{ASSIGNMENT}",
                FLEET_VERSION,
                {
                    "properties": {
                        "clusterGroupId": f"{scope}/{FLEET}/clusterGroups/{CLUSTER_GROUP}",
                        "configurationName": f"baseline-{'sub' if scope == SUB else 'rg'}",
                        "configurationTemplate": TEMPLATE,
                        "parameters": {"branch": "main"},
                        "onUnmatch": "Delete",
                    }
                },
            )
        for scope in (SUB, RG):
            self.call(
                "PUT",
                f"{scope}/{FLEET}/alertReceivers/{RECEIVER}",
                FLEET_VERSION,
                {"properties": {"receiverType": "Webhook", "url": RECEIVER_URL, "signingKey": RECEIVER_KEY}},
            )
            self.call(
                "PUT",
                f"{scope}/{FLEET}/alertRules/{RULE}",
                FLEET_VERSION,
                {
                    "properties": {
                        "events": ["BecameNonCompliant", "ProvisioningFailed", "ClusterOffline"],
                        "receiverIds": [f"{scope}/{FLEET}/alertReceivers/{RECEIVER}"],
                        "clusterGroupId": f"{scope}/{FLEET}/clusterGroups/{CLUSTER_GROUP}",
                        "severity": "Error",
                    }
                },
            )
        # the agent reads its desired state and reports on it, so that clusters are Connected with the agent's
        # facts, configurations have a status and history has transitions
        desired = self.call("GET", "/agent/v1/desired-state", agent=True).json()
        reports = [
            {
                "name": configuration["name"],
                "generation": configuration["generation"],
                "outcome": "Applied",
                "complianceState": "Compliant",
                "sourceSyncedCommitId": "main@sha1:0ba6f0d30760d567de0bac86c8c4eec13ce1a590",
                "statuses": [
                    {
                        "name": configuration["name"],
                        "namespace": "fuzz",
                        "kind": "GitRepository",
                        "complianceState": "Compliant",
                        "statusConditions": [{"type": "Ready", "status": "True", "reason": "Succeeded"}],
                    }
                ],
            }
            for configuration in desired.get("configurations", [])
            if not configuration.get("deleting")
        ]
        self.call(
            "POST",
            "/agent/v1/status",
            body={
                "agent": {"agentVersion": "0.1.0-fuzz", "kubernetesVersion": "v1.31.2", "totalNodeCount": 3},
                "configurations": reports,
            },
            agent=True,
        )
        page = self.call("GET", f"{SUB}/{CLUSTER_TYPE}", CLUSTER_VERSION, **{"$top": "1"}).json()
        next_link = page.get("nextLink")
        if next_link:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(next_link).query)
            self.skip_token = query.get("$skipToken", [None])[0]

    def seeded_names(self):
        return {AGENT_CLUSTER, PLAIN_CLUSTER, CONFIG, CLUSTER_GROUP, ASSIGNMENT, RECEIVER, RULE}

    def state(self):
        return {
            "base_url": self.base_url,
            "user_token": self.user_token,
            "identity_path": str(self.identity_path),
            "operation_id": self.operation_id,
            "skip_token": self.skip_token,
        }

    @classmethod
    def from_state(cls, state):
        fleet = cls(state["base_url"], state["user_token"], state["identity_path"])
        fleet.operation_id = state.get("operation_id")
        fleet.skip_token = state.get("skip_token")
        return fleet


def register_agent(binary, base_url, user_token, identity_path):
    """`fluxplane agent register` for the agent cluster: a real key pair, the cluster created with its public half."""
    subprocess.run(
        [
            binary, "agent", "register",
            "--server", base_url,
            "--token", user_token,
            "--cluster", cluster_id(AGENT_CLUSTER),
            "--tag", "env=fuzz",
            "--location", "westeurope",
            "--identity", str(identity_path),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
