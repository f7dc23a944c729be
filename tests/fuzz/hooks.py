"""Schemathesis hooks of the fuzz run (loaded through SCHEMATHESIS_HOOKS by run.py).

- Authentication: the user API gets the Owner token, the agent API (`/agent/v1/...`) a token the seeded agent
  signs, as a real agent does.
- Steering: parameters whose documented schema is a bare string but whose server accepts only a few values
  (api-version, cluster resource provider/type, groupBy...) or names a resource (subscription, cluster, group...)
  get a hint: an `enum` of valid or seeded values, next to the documented schema (`anyOf`), so that positive cases
  reach existing resources and not only 400/404 answers. api-version is narrowed to the versions its description
  lists: any other gets a 400 before anything else is looked at. Only request parameters are touched; responses
  are checked against the document as served.
- Bodies: the operations that take one also get a few valid bodies (`anyOf` of `const`s next to the documented
  schema), since the server checks much more than the document says (DNS labels, URLs, one source per kind...)
  and bodies generated from the schema alone are nearly all refused.
- The agent's long-poll waits up to `wait` seconds when `after` is not behind the cluster's revision: the wait is
  cut to one second.
- Re-seeding: when a generated request deletes or replaces a seeded resource, it is put back.
"""

import datetime
import json
import os
import re
import sys

import schemathesis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seed  # noqa: E402

with open(os.environ["FLUXPLANE_FUZZ_STATE"]) as _file:
    STATE = json.load(_file)
FLEET = seed.Fleet.from_state(STATE)
RESEED_LOG = os.environ.get("FLUXPLANE_FUZZ_RESEED_LOG")


def _hints():
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    times = [(now - datetime.timedelta(hours=1)).isoformat(), now.isoformat().replace("+00:00", "Z")]
    group_id = f"{seed.SUB}/{seed.FLEET}/clusterGroups/{seed.CLUSTER_GROUP}"
    assignment_id = f"{seed.SUB}/{seed.FLEET}/policyAssignments/{seed.ASSIGNMENT}"
    hints = {
        "subscriptionId": [seed.SUBSCRIPTION],
        "resourceGroupName": [seed.GROUP],
        "clusterName": [seed.AGENT_CLUSTER, seed.PLAIN_CLUSTER, "fuzz-3"],
        "clusterRp": ["Microsoft.Kubernetes", "Microsoft.ContainerService", "Microsoft.HybridContainerService"],
        "clusterResourceName": ["connectedClusters", "managedClusters", "provisionedClusters"],
        "fluxConfigurationName": [seed.CONFIG, "baseline-sub", "baseline-rg", "new-1"],
        "clusterGroupName": [seed.CLUSTER_GROUP, "group-2"],
        "policyAssignmentName": [seed.ASSIGNMENT, "assign-2"],
        "alertReceiverName": [seed.RECEIVER, "receiver-2"],
        "alertRuleName": [seed.RULE, "rule-2"],
        "$top": ["1", "2", "1000"],
        "groupBy": [
            "complianceState", "provisioningState", "freshness", "connectivityStatus", "cluster", "clusterGroup",
            "policyAssignment", "configuration",
        ],
        "complianceState": ["Compliant", "Non-Compliant", "Pending", "Suspended", "Unknown"],
        "tagSelector": ["env=fuzz", "env in (fuzz,prod),!gone", "agent"],
        "$filter": [
            "properties/complianceState eq 'Compliant'",
            "properties/provisioningState ne 'Succeeded' and not (name eq 'x')",
            "tags/env in ('fuzz', 'prod')",
        ],
        "clusterGroup": [seed.CLUSTER_GROUP, group_id],
        "policyAssignment": [seed.ASSIGNMENT, assignment_id],
        "asOf": times,
        "from": times[:1],
        "to": times[1:],
    }
    if FLEET.operation_id:
        hints["operationId"] = [FLEET.operation_id]
    if FLEET.skip_token:
        hints["$skipToken"] = [FLEET.skip_token]
    return hints


def _git(ref, **extra):
    return {"url": "https://example.invalid/fleet.git", "repositoryRef": ref, **extra}


def _bodies():
    """A few valid request bodies per operationId (the same for its subscription and resource group forms)."""
    flux_put = [
        {"properties": {"namespace": "fuzz", "sourceKind": "GitRepository", "gitRepository": _git({"branch": "main"}),
                        "kustomizations": {"infra": {"path": "./infrastructure"},
                                           "apps": {"path": "./apps", "dependsOn": ["infra"], "prune": True}}}},
        {"properties": {"namespace": "fuzz", "suspend": True,
                        "gitRepository": _git({"tag": "v1.0.0"}, syncIntervalInSeconds=120),
                        "configurationProtectedSettings": {"httpsKey": "c2VjcmV0"}, "kustomizations": {}}},
        {"properties": {"namespace": "fuzz", "scope": "namespace", "sourceKind": "Bucket",
                        "bucket": {"url": "https://s3.example.invalid", "bucketName": "fleet", "localAuthRef": "auth"},
                        "kustomizations": {
                            "all": {"path": "./", "wait": False, "postBuild": {"substitute": {"a": "b"}}}}}},
        {"properties": {"namespace": "fuzz", "sourceKind": "OCIRepository",
                        "ociRepository": {"url": "oci://registry.example.invalid/fleet",
                                          "repositoryRef": {"tag": "latest"}},
                        "kustomizations": {"apps": {"path": "./apps"}}}},
        {"properties": {"namespace": "other", "sourceKind": "AzureBlob",
                        "azureBlob": {"url": "https://account.blob.example.invalid", "containerName": "fleet",
                                      "accountKey": "a2V5"}}},
    ]
    flux_patch = [
        {"properties": {"suspend": True}},
        {"properties": {"kustomizations": {"apps": None, "more": {"path": "./more"}}}},
        {"properties": {"gitRepository": {"repositoryRef": {"commit": "0ba6f0d30760d567de0bac86c8c4eec13ce1a590"}}}},
        {"properties": {"configurationProtectedSettings": {"httpsKey": "c2VjcmV0"}}},
    ]
    group_id = f"{seed.SUB}/{seed.FLEET}/clusterGroups/{seed.CLUSTER_GROUP}"
    assignment = [
        {"properties": {"clusterGroupId": group_id, "configurationName": "from-fuzz",
                        "configurationTemplate": seed.TEMPLATE, "parameters": {"branch": "main"},
                        "enforcementMode": "DoNotEnforce", "onUnmatch": "Orphan"}},
        {"properties": {"selector": {"matchExpressions": [{"key": "env", "operator": "In",
                                                           "values": ["fuzz", "prod"]}]},
                        "configurationName": "rolled", "configurationTemplate": seed.TEMPLATE,
                        "parameters": {"branch": "dev"},
                        "rollout": {"batchSize": "50%", "waitForCompliance": True, "maxFailures": 1,
                                    "batchTimeout": "PT10M"}}},
    ]
    receiver_id = f"{seed.SUB}/{seed.FLEET}/alertReceivers/{seed.RECEIVER}"
    return {
        "AlertReceivers_CreateOrUpdate": [
            {"properties": {"receiverType": "Webhook", "url": seed.RECEIVER_URL, "signingKey": seed.RECEIVER_KEY}},
            {"properties": {"receiverType": "Slack", "url": "http://127.0.0.1:9/services/T/B/x",
                            "rateLimitPerMinute": 30}},
            {"properties": {"receiverType": "MicrosoftTeams", "url": "http://127.0.0.1:9/workflows/x"}},
        ],
        "AlertRules_CreateOrUpdate": [
            {"properties": {"events": ["BecameNonCompliant", "BecameCompliant"], "receiverIds": [receiver_id]}},
            {"properties": {"events": ["RolloutHalted", "RolloutCompleted"], "receiverIds": [receiver_id],
                            "policyAssignmentId": f"{seed.SUB}/{seed.FLEET}/policyAssignments/{seed.ASSIGNMENT}",
                            "severity": "Critical", "minimumIntervalInSeconds": 0}},
            {"properties": {"events": ["ClusterOffline", "ClusterReconnected"], "receiverIds": [receiver_id],
                            "clusterSelector": {"matchLabels": {"env": "fuzz"}}, "configurationName": seed.CONFIG,
                            "enabled": False}},
        ],
        "ConnectedCluster_CreateOrReplace": [
            {"location": "westeurope", "tags": {"env": "fuzz"}, "properties": {"agentPublicKeyCertificate": "a2V5"}},
            {"location": "westeurope", "kind": "AWS", "identity": {"type": "None"},
             "properties": {"agentPublicKeyCertificate": "a2V5", "privateLinkState": "Disabled", "gateway": {}}},
        ],
        "ConnectedCluster_Update": [{"tags": {"env": "fuzz", "agent": "1"}}, {"properties": {"distribution": "k3s"}}],
        "FluxConfigurations_CreateOrUpdate": flux_put,
        "FluxConfigurations_Update": flux_patch,
        "ClusterGroups_CreateOrUpdate": [
            {"properties": {"selector": {}}},
            {"properties": {"selector": {"matchLabels": {"env": "prod"},
                                         "matchExpressions": [{"key": "agent", "operator": "DoesNotExist"}]}}},
        ],
        "PolicyAssignments_CreateOrUpdate": assignment,
        "PolicyAssignments_Plan": assignment,
        "Agent_RegisterEncryptionKey": [{"publicKey": FLEET.encryption_public_key()}],
        "Agent_ReportStatus": [
            {"agent": {"agentVersion": "0.2.0"}, "configurations": [
                {"name": seed.CONFIG, "generation": generation, "outcome": outcome, "complianceState": state,
                 "message": "from the fuzzer", "secretsVersion": generation}]}
            for generation, outcome, state in [(1, "Applied", "Non-Compliant"), (2, "Failed", "Unknown"),
                                               (99, "Removed", "Compliant")]
        ],
    }


@schemathesis.hook
def before_load_schema(context, raw_schema):
    hints = _hints()
    bodies = _bodies()
    for item in raw_schema.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            operation_id = re.sub(r"(AtSubscription|BySubscription)$", "", operation.get("operationId", ""))
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content and operation_id in bodies:
                content["schema"] = {"anyOf": [*({"const": body} for body in bodies[operation_id]), content["schema"]]}
            for parameter in operation.get("parameters", []):
                if parameter.get("in") not in ("path", "query") or "schema" not in parameter:
                    continue
                name = parameter["name"]
                if name == "api-version":
                    versions = re.findall(r"\d{4}-\d{2}-\d{2}", parameter.get("description", ""))
                    if versions:
                        parameter["schema"] = {"type": "string", "enum": versions}
                elif name in hints:
                    parameter["schema"] = {"anyOf": [{"type": "string", "enum": hints[name]}, parameter["schema"]]}


@schemathesis.auth(refresh_interval=None)
class FluxplaneAuth:
    def get(self, case, context):
        if context.operation.path.startswith("/agent/"):
            return FLEET.agent_token()
        return STATE["user_token"]

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def _short_wait(value):
    return isinstance(value, int) and not isinstance(value, bool) and value <= 1


@schemathesis.hook
def map_case(context, case):
    if case.operation.path == "/agent/v1/desired-state" and isinstance(case.query, dict):
        if "after" in case.query and not _short_wait(case.query.get("wait", 30)):
            if "wait" not in case.query or isinstance(case.query["wait"], int):
                case.query = {**case.query, "wait": 1}
    return case


@schemathesis.hook
def after_call(context, case, response):
    if case.method.upper() not in ("PUT", "PATCH", "DELETE") or not 200 <= response.status_code < 300:
        return
    segments = {segment.lower() for segment in case.formatted_path.split("/")}
    seeded = {name.lower() for name in FLEET.seeded_names()}
    if not segments & seeded and not case.operation.path.startswith("/agent/"):
        return
    try:
        FLEET.seed()
        outcome = "ok"
    except Exception as error:  # reported, never fatal: the fuzzing goes on
        outcome = f"failed: {error}"
    if RESEED_LOG:
        with open(RESEED_LOG, "a") as log:
            log.write(f"{case.method} {case.formatted_path} -> {response.status_code}: re-seed {outcome}\n")
