// Azure's JavaScript SDKs for connected clusters and Flux configurations, unchanged from npm, against a real
// fluxplane over HTTPS with its agents: each client at its own default api-version and at the newest one the
// server registers. Run by scripts/js-sdks, which starts `fluxplane dev` and sets the environment below.
//
//   FLUXPLANE_API    the server's base URL (https://...)
//   FLUXPLANE_TOKEN  an Owner token
//   FLUXPLANE_GIT    the URL of dev's demo repository, which dev's agents can fetch
//   NODE_EXTRA_CA_CERTS  dev's CA, so that Node trusts the server's certificate

"use strict";

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { ConnectedKubernetesClient } = require("@azure/arm-hybridkubernetes");
const { SourceControlConfigurationClient } = require("@azure/arm-kubernetesconfiguration");

const API = process.env.FLUXPLANE_API;
const TOKEN = process.env.FLUXPLANE_TOKEN;
const GIT = process.env.FLUXPLANE_GIT;
// dev's subscription and resource group, whose clusters dev-1 to dev-3 run an agent each
const SUBSCRIPTION = "00000000-0000-0000-0000-000000000000";
const DEV_GROUP = "dev";

// a credential as @azure/identity's would answer: the SDK's own bearer policy sends it (over HTTPS only)
const credential = {
  getToken: async () => ({ token: TOKEN, expiresOnTimestamp: Date.now() + 3600 * 1000 }),
};

// the newest api-version the server registers for a resource type: what `az provider show` would tell a user
async function newest(namespace, type) {
  const answer = await fetch(`${API}/subscriptions/${SUBSCRIPTION}/providers/${namespace}?api-version=2021-04-01`, {
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  assert.equal(answer.status, 200);
  const provider = await answer.json();
  return provider.resourceTypes.find((t) => t.resourceType === type).apiVersions[0];
}

async function all(iterator) {
  const items = [];
  for await (const item of iterator) items.push(item);
  return items;
}

async function clusterLifecycle(apiVersion) {
  const options = apiVersion ? { endpoint: API, apiVersion } : { endpoint: API };
  const client = new ConnectedKubernetesClient(credential, SUBSCRIPTION, options);
  const group = `js-${apiVersion || "default"}`;
  const created = await client.connectedClusterOperations.beginCreateAndWait(group, "Edge-1", {
    location: "westeurope",
    identity: { type: "SystemAssigned" },
    agentPublicKeyCertificate: "a2V5",
    tags: { env: "test" },
  });
  // the SDK sends /resourcegroups/ in lower case; the id keeps the case it was created with
  assert.equal(created.id, `/subscriptions/${SUBSCRIPTION}/resourceGroups/${group}/providers/Microsoft.Kubernetes/connectedClusters/Edge-1`);
  assert.equal(created.provisioningState, "Succeeded");

  const read = await client.connectedClusterOperations.get(group, "edge-1");
  assert.equal(read.name, "Edge-1");
  const patched = await client.connectedClusterOperations.update(group, "Edge-1", { tags: { env: "prod" } });
  assert.deepEqual(patched.tags, { env: "prod" });

  await client.connectedClusterOperations.beginCreateAndWait(group, "edge-2", {
    location: "westeurope",
    identity: { type: "SystemAssigned" },
    agentPublicKeyCertificate: "a2V5",
  });
  const inGroup = await all(client.connectedClusterOperations.listByResourceGroup(group));
  assert.deepEqual(inGroup.map((c) => c.name).sort(), ["Edge-1", "edge-2"]);
  const inSubscription = await all(client.connectedClusterOperations.listBySubscription());
  assert.ok(inSubscription.some((c) => c.name === "dev-1"), "dev's clusters are in the subscription too");

  await client.connectedClusterOperations.beginDeleteAndWait(group, "Edge-1");
  await client.connectedClusterOperations.beginDeleteAndWait(group, "edge-2");
  await assert.rejects(client.connectedClusterOperations.get(group, "Edge-1"), (err) => err.statusCode === 404);
}

test("connected clusters at the SDK's default api-version (2021-10-01)", () => clusterLifecycle(undefined));

test("connected clusters at the newest api-version the server registers", async () => {
  await clusterLifecycle(await newest("Microsoft.Kubernetes", "connectedClusters"));
});

async function configurationLifecycle(apiVersion) {
  const options = apiVersion ? { endpoint: API, apiVersion } : { endpoint: API };
  const client = new SourceControlConfigurationClient(credential, SUBSCRIPTION, options);
  const on = [DEV_GROUP, "Microsoft.Kubernetes", "connectedClusters", "dev-1"];
  const name = `js-${(apiVersion || "default").replace(/[^0-9a-z]/g, "")}`;
  const body = {
    namespace: name,
    sourceKind: "GitRepository",
    gitRepository: { url: GIT, repositoryRef: { branch: "main" } },
    kustomizations: { apps: { path: "./apps" } },
  };

  // the LRO ends when dev-1's agent has applied it, polled at the SDK's own interval (Retry-After)
  const created = await client.fluxConfigurations.beginCreateOrUpdateAndWait(...on, name, body);
  assert.equal(created.provisioningState, "Succeeded");
  assert.equal(created.complianceState, "Compliant");
  assert.match(created.sourceSyncedCommitId, /^main@sha1:[0-9a-f]{40}$/);

  const read = await client.fluxConfigurations.get(...on, name);
  assert.equal(read.gitRepository.url, GIT);

  const suspended = await client.fluxConfigurations.beginUpdateAndWait(...on, name, { suspend: true });
  assert.equal(suspended.suspend, true);
  assert.equal(suspended.provisioningState, "Succeeded");

  const listed = await all(client.fluxConfigurations.list(...on));
  assert.ok(listed.some((c) => c.name === name) && listed.some((c) => c.name === "demo"));

  // Flux v1 configurations were retired (their last version is 2023-05-01, the default): a cluster has none
  if (!apiVersion) assert.deepEqual(await all(client.sourceControlConfigurations.list(...on)), []);

  await client.fluxConfigurations.beginDeleteAndWait(...on, name);
  await assert.rejects(client.fluxConfigurations.get(...on, name), (err) => err.statusCode === 404);
}

test("Flux configurations at the SDK's default api-version (2023-05-01), each LRO to completion", () =>
  configurationLifecycle(undefined));

test("Flux configurations at the newest api-version the server registers", async () =>
  configurationLifecycle(await newest("Microsoft.KubernetesConfiguration", "fluxConfigurations")));

test("a cluster's configurations list across pages, and forceDelete removes one at once", async () => {
  const clusters = new ConnectedKubernetesClient(credential, SUBSCRIPTION, { endpoint: API });
  const client = new SourceControlConfigurationClient(credential, SUBSCRIPTION, { endpoint: API });
  await clusters.connectedClusterOperations.beginCreateAndWait("js-paging", "quiet", {
    location: "westeurope",
    identity: { type: "SystemAssigned" },
    agentPublicKeyCertificate: "a2V5",
  });
  const on = ["js-paging", "Microsoft.Kubernetes", "connectedClusters", "quiet"];
  const body = { gitRepository: { url: GIT, repositoryRef: { branch: "main" } } };
  // more than a page (100): the cluster has no agent, so each write's operation stays in progress
  for (let i = 0; i < 105; i++) {
    await client.fluxConfigurations.beginCreateOrUpdate(...on, `c${String(i).padStart(3, "0")}`, body);
  }
  const listed = await all(client.fluxConfigurations.list(...on));
  assert.equal(listed.length, 105);
  assert.equal(new Set(listed.map((c) => c.name)).size, 105);

  await client.fluxConfigurations.beginDeleteAndWait(...on, "c000", { forceDelete: true });
  await assert.rejects(client.fluxConfigurations.get(...on, "c000"), (err) => err.statusCode === 404);
  await clusters.connectedClusterOperations.beginDeleteAndWait("js-paging", "quiet");
});

test("the Flux extension a first configuration brought: listed, its settings updated through its LRO, other types refused", async () => {
  const client = new SourceControlConfigurationClient(credential, SUBSCRIPTION, { endpoint: API });
  const on = [DEV_GROUP, "Microsoft.Kubernetes", "connectedClusters", "dev-2"];
  // dev's demo configuration brought it, as Azure installs it with a cluster's first configuration
  const listed = await all(client.extensions.list(...on));
  assert.deepEqual(listed.map((e) => [e.name, e.extensionType, e.provisioningState]), [["flux", "microsoft.flux", "Succeeded"]]);
  const updated = await client.extensions.beginUpdateAndWait(...on, "flux", {
    configurationSettings: { "multiTenancy.enforce": "false" },
  });
  assert.equal(updated.configurationSettings["multiTenancy.enforce"], "false");
  assert.equal(updated.provisioningState, "Succeeded");
  await assert.rejects(
    client.extensions.beginCreateAndWait(...on, "monitor", { extensionType: "microsoft.azuremonitor.containers" }),
    (err) => err.statusCode === 400,
  );
});

test("the provider's operations list", async () => {
  const client = new SourceControlConfigurationClient(credential, SUBSCRIPTION, { endpoint: API });
  const operations = await all(client.operations.list());
  assert.ok(operations.some((o) => o.name === "Microsoft.KubernetesConfiguration/fluxConfigurations/write"));
});
