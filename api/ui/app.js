// fluxplane web UI: the fleet's compliance at a glance, a paged cluster × configuration grid, drill-down into one
// configuration or cluster, and live updates. Dependency-free ES2020; every piece of API data reaches the page through
// textContent or attributes, never through innerHTML.
"use strict";

const FLEET_API = "2026-01-01";
const FLUX_API = "2025-04-01";
const STATES = ["Compliant", "Non-Compliant", "Pending", "Suspended", "Unknown"];
// A glyph per state, so that the grid does not rely on colour alone.
const GLYPHS = { Compliant: "✓", "Non-Compliant": "✕", Pending: "…", Suspended: "‖", Unknown: "?" };
const FRESHNESS = ["fresh", "stale", "offline"];
const PAGE_SIZE = 100;
const HOUR = 3600 * 1000;
const HISTORY_POINTS = 12;
const STORAGE_TOKEN = "fluxplane.token";
const STORAGE_SUBSCRIPTION = "fluxplane.subscription";
const SVG_NS = "http://www.w3.org/2000/svg";
const EMPTY_FILTERS = Object.freeze({ clusterGroup: "", policyAssignment: "", tagSelector: "", commit: "", complianceState: "" });

// epoch counts sign-ins and sign-outs, so that work started for one session never lands in the next.
const session = { token: "", subscription: "", epoch: 0 };

const view = {
  filters: { ...EMPTY_FILTERS },
  summary: { seq: 0, startedAt: 0, timer: 0 },
  history: { seq: 0, points: null, width: 0 },
  // offset: position of the page's first cluster; stack: the pages before it, as {url, offset}.
  grid: { seq: 0, url: "", offset: 0, stack: [], nextLink: null, rows: [], cells: new Map(), active: { row: 0, col: 0 } },
  // reconciled: the last "Reconcile now" of this panel, {id, text}
  drill: { seq: 0, target: null, opener: null, timer: 0, reconciled: null },
  receivers: { seq: 0, timer: 0 },
  live: { controller: null, timer: 0, lastEventId: "", failures: 0 },
  errors: new Map(),
  firstView: false,
};

// What each grid cell shows: {cluster, name, cfg}; cfg is undefined for a cluster without that configuration.
const cellData = new WeakMap();

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------------------------
// DOM helpers

function h(tag, props, ...children) {
  return build(document.createElement(tag), props, children);
}

function svg(tag, props, ...children) {
  return build(document.createElementNS(SVG_NS, tag), props, children);
}

function build(node, props, children) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(...children.flat(Infinity).filter((child) => child != null && child !== false));
  return node;
}

// ---------------------------------------------------------------------------------------------------------------
// Formatting

const clockFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const secondsFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "short", hour: "2-digit", minute: "2-digit" });

const formatClock = (ms) => clockFormat.format(ms);
const formatSeconds = (ms) => secondsFormat.format(ms);

// Seconds for today, the weekday otherwise: a 24-hour list crosses midnight.
function formatEventTime(iso) {
  const ms = Date.parse(iso);
  return new Date(ms).toDateString() === new Date().toDateString() ? formatSeconds(ms) : dayFormat.format(ms);
}

function formatDateTime(iso) {
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? String(iso) : dateTimeFormat.format(ms);
}

function formatAgo(iso) {
  const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (Number.isNaN(seconds)) return "";
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

// How far ahead a time is (a retry's next attempt).
function formatUntil(iso) {
  const seconds = Math.round((Date.parse(iso) - Date.now()) / 1000);
  if (Number.isNaN(seconds)) return "";
  if (seconds <= 0) return "now";
  if (seconds < 60) return `in ${seconds} s`;
  if (seconds < 3600) return `in ${Math.ceil(seconds / 60)} min`;
  return `in ${Math.ceil(seconds / 3600)} h`;
}

// RFC 3339 without milliseconds, the form the API documents.
const rfc3339 = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");

function percent(part, whole) {
  return whole > 0 ? `${((part / whole) * 100).toFixed(1)}%` : "–";
}

// "main@sha1:4f2a9c1e8d…" → "main@sha1:4f2a9c1": keep any ref prefix, shorten the hash.
function shortCommit(commit) {
  const match = /^(.*?)([0-9a-f]{12,})$/i.exec(commit || "");
  return match ? match[1] + match[2].slice(0, 7) : commit || "";
}

function stateSlug(state) {
  return STATES.includes(state) ? state.toLowerCase() : "unknown";
}

const lastSegment = (id) => String(id || "").split("/").filter(Boolean).pop() || "";

// ---------------------------------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function authHeaders() {
  return { Authorization: `Bearer ${session.token}` };
}

function query(params) {
  return Object.entries(params)
    .filter(([, value]) => value != null && value !== "")
    .map(([key, value]) => `${key}=${encodeURIComponent(value)}`)
    .join("&");
}

function fleetUrl(resource, params = {}) {
  const subscription = encodeURIComponent(session.subscription);
  return `/subscriptions/${subscription}/providers/Fluxplane.Fleet/${resource}?${query({ "api-version": FLEET_API, ...params })}`;
}

const summaryFilters = (f) => ({
  tagSelector: f.tagSelector,
  clusterGroup: f.clusterGroup,
  policyAssignment: f.policyAssignment,
  sourceSyncedCommitId: f.commit,
});

function summaryUrl(asOf) {
  return fleetUrl("complianceSummary", { groupBy: "complianceState", ...summaryFilters(view.filters), asOf });
}

function firstGridUrl() {
  const params = { $top: PAGE_SIZE, ...summaryFilters(view.filters), complianceState: view.filters.complianceState };
  return fleetUrl("clusterCompliance", params);
}

async function api(url) {
  let response;
  try {
    response = await fetch(url, { headers: { ...authHeaders(), Accept: "application/json" }, cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, "NetworkError", `The API could not be reached (${err.message}).`);
  }
  if (!response.ok) throw await apiError(response);
  return response.json();
}

// A POST of an action (no body); answers the JSON it returns.
async function apiPost(url) {
  let response;
  try {
    response = await fetch(url, { method: "POST", headers: { ...authHeaders(), Accept: "application/json" }, cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, "NetworkError", `The API could not be reached (${err.message}).`);
  }
  if (!response.ok) throw await apiError(response);
  return response.json();
}

// The ARM error of a failed response. A 401 also ends the session, wherever it happens.
async function apiError(response) {
  let code = `HTTP${response.status}`;
  let message = response.statusText || "The request failed.";
  try {
    const body = await response.json();
    code = body?.error?.code || code;
    message = body?.error?.message || message;
  } catch {
    // Not an ARM error body (a proxy's page, say): the status line is all there is.
  }
  const err = new ApiError(response.status, code, message);
  if (response.status === 401) expireSession(err);
  return err;
}

async function fetchAllPages(url, maxPages = 20) {
  const items = [];
  for (let page = 0; url && page < maxPages; page++) {
    const body = await api(url);
    items.push(...(body.value || []));
    url = body.nextLink;
  }
  return items;
}

function fetchHistory(resourceId, from, to) {
  return fetchAllPages(`${resourceId}/history?${query({ "api-version": FLEET_API, from: rfc3339(from), to: rfc3339(to) })}`);
}

// Runs task over items with at most `limit` requests in flight, so that a burst does not starve the browser's
// connection pool (the live stream holds one connection).
async function mapLimit(items, limit, task) {
  const results = new Array(items.length);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (next < items.length && !failed) {
      const index = next++;
      try {
        results[index] = await task(items[index]);
      } catch (err) {
        failed = true; // the first failure decides; do not send the rest
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

// ---------------------------------------------------------------------------------------------------------------
// Error banner: one entry per source (summary, grid), so that one recovering does not hide the other.

function showError(source, context, err) {
  if (err.status === 401) return; // the sign-in form says it
  view.errors.set(source, { context, err });
  renderErrors();
}

function clearError(source) {
  if (view.errors.delete(source)) renderErrors();
}

function renderErrors() {
  const banner = $("error");
  banner.hidden = view.errors.size === 0;
  const lines = [...view.errors.values()].map(({ context, err }) =>
    h("p", {}, h("strong", {}, `${context}: `), h("code", { class: "error-code" }, err.code), " ", err.message,
      err.status ? h("span", { class: "muted" }, ` (HTTP ${err.status})`) : null));
  banner.replaceChildren(...lines, h("button", { type: "button", class: "button", onclick: reloadAll }, "Retry"));
}

// ---------------------------------------------------------------------------------------------------------------
// Session

function meta(name) {
  return document.querySelector(`meta[name="${name}"]`)?.content.trim() || "";
}

function showSignIn(message) {
  $("overview").hidden = true;
  $("session").hidden = true;
  $("signin-view").hidden = false;
  $("signin-message").textContent = message;
  $("signin-message").hidden = !message;
  $("token").focus();
}

function onSignInSubmit(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  const subscription = $("subscription").value.trim();
  if (!token || !subscription) {
    showSignIn(!token ? "Enter a bearer token." : "Enter a subscription id.");
    (!token ? $("token") : $("subscription")).focus();
    return;
  }
  signIn(token, subscription);
}

function signIn(token, subscription) {
  session.token = token;
  session.subscription = subscription;
  sessionStorage.setItem(STORAGE_TOKEN, token);
  sessionStorage.setItem(STORAGE_SUBSCRIPTION, subscription);
  $("subscription-label").textContent = subscription;
  $("signin-view").hidden = true;
  $("session").hidden = false;
  $("overview").hidden = false;
  view.filters = readHashFilters();
  fillFilterForm();
  loadFirstView();
}

function signOut() {
  sessionStorage.clear();
  endSession();
  $("token").value = "";
  showSignIn("");
}

// A 401: the token is gone or expired. Keep the subscription so that signing in again is one paste.
function expireSession(err) {
  if (!session.token) return;
  sessionStorage.removeItem(STORAGE_TOKEN);
  endSession();
  $("token").value = "";
  showSignIn(`The API rejected the token (HTTP 401, ${err.code}: ${err.message}) Sign in again.`);
}

function endSession() {
  session.token = "";
  session.epoch++;
  stopLive();
  closeDrilldown(false);
  // Bumping the sequence numbers makes every response still in flight land nowhere.
  view.summary.seq++;
  view.history.seq++;
  view.grid.seq++;
  view.receivers.seq++;
  clearTimeout(view.summary.timer);
  view.summary.timer = 0;
  clearTimeout(view.receivers.timer);
  view.receivers.timer = 0;
  $("receivers").replaceChildren();
  $("receivers-updated").textContent = "";
  view.errors.clear();
  renderErrors();
  // Nothing of this session's fleet may linger on screen for the next one.
  view.history.points = null;
  view.grid.active = { row: 0, col: 0 };
  $("grid").replaceChildren();
  $("fleet-history").replaceChildren();
  buildCards();
  view.firstView = false;
  delete document.body.dataset.ready;
}

// What the token's roles claim grants ([{role, scope}]), to offer only the actions the server would allow (it
// checks every call itself). A token without such a claim offers none.
const ROLE_RANK = { Reader: 0, Contributor: 1, Owner: 2 };

function tokenRoles() {
  try {
    const payload = session.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const roles = JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, "="))).roles;
    return Array.isArray(roles) ? roles : [];
  } catch {
    return [];
  }
}

// Whether the session may act on resourceId with `role` or above: an assignment of it covers the resource's id.
function mayAct(resourceId, role) {
  const id = String(resourceId || "").toLowerCase();
  return tokenRoles().some((assignment) => {
    if (!(ROLE_RANK[assignment?.role] >= ROLE_RANK[role])) return false;
    const scope = String(assignment.scope || "").toLowerCase().replace(/\/+$/, "");
    return assignment.scope === "/" || (scope !== "" && (id === scope || id.startsWith(`${scope}/`)));
  });
}

// ---------------------------------------------------------------------------------------------------------------
// First view and reloads

// Summary and grid page 1 in parallel and nothing else: the live stream, the filter lists and the fleet history
// wait until both are on screen.
async function loadFirstView() {
  const epoch = session.epoch;
  const [summaryOk, gridOk] = await Promise.all([refreshSummary(), loadGridPage(firstGridUrl(), [], 0)]);
  if (session.epoch !== epoch || view.firstView) return;
  view.firstView = true;
  document.body.dataset.ready = summaryOk && gridOk ? "true" : "error";
  if (summaryOk && gridOk) performance.mark("fluxplane-first-view");
  startLive();
  loadFilterSources();
  scheduleFleetHistory();
  loadReceivers();
}

function reloadAll() {
  if (!view.firstView) {
    loadFirstView();
    return;
  }
  refreshSummary();
  loadGridPage(firstGridUrl(), [], 0);
  scheduleFleetHistory();
}

// ---------------------------------------------------------------------------------------------------------------
// Filters, kept in location.hash so that a reload (or a shared link) keeps them

const HASH_KEYS = { clusterGroup: "group", policyAssignment: "assignment", tagSelector: "tags", commit: "commit", complianceState: "state" };

function readHashFilters() {
  const params = new URLSearchParams(location.hash.slice(1));
  const filters = { ...EMPTY_FILTERS };
  for (const [key, name] of Object.entries(HASH_KEYS)) filters[key] = params.get(name) || "";
  return filters;
}

function hashOf(filters) {
  const params = new URLSearchParams();
  for (const [key, name] of Object.entries(HASH_KEYS)) if (filters[key]) params.set(name, filters[key]);
  return params.toString();
}

function writeHashFilters(filters) {
  const hash = hashOf(filters);
  if (hash === location.hash.slice(1)) return;
  // pushState rather than location.hash: it does not fire hashchange, and Back still restores the previous filters.
  history.pushState(null, "", hash ? `#${hash}` : location.pathname + location.search);
}

function onHashChange() {
  if (!session.token) return;
  const filters = readHashFilters();
  if (hashOf(filters) !== hashOf(view.filters)) applyFilters(filters, false);
}

function readFilterForm() {
  return {
    clusterGroup: $("f-group").value,
    policyAssignment: $("f-assignment").value,
    tagSelector: $("f-tags").value.trim(),
    commit: $("f-commit").value.trim(),
    complianceState: $("f-state").value,
  };
}

function fillFilterForm() {
  const f = view.filters;
  ensureOption($("f-group"), f.clusterGroup);
  ensureOption($("f-assignment"), f.policyAssignment);
  $("f-group").value = f.clusterGroup;
  $("f-assignment").value = f.policyAssignment;
  $("f-tags").value = f.tagSelector;
  $("f-commit").value = f.commit;
  $("f-state").value = f.complianceState;
  $("clear-filters").disabled = hashOf(f) === "";
  updateCardsPressed();
}

// A filter from the hash must show in its <select> before (or even if) the list of choices arrives.
function ensureOption(select, value) {
  if (value && ![...select.options].some((option) => option.value === value)) {
    select.append(h("option", { value }, lastSegment(value)));
  }
}

// Both Clear buttons vanish or turn disabled once pressed, dropping the focus: hand it to the first filter.
function clearFilters() {
  applyFilters({ ...EMPTY_FILTERS });
  $("f-group").focus();
}

function applyFilters(filters, pushHistory = true) {
  const summaryChanged = hashOf(summaryFilters(filters)) !== hashOf(summaryFilters(view.filters));
  view.filters = { ...filters };
  if (pushHistory) writeHashFilters(filters);
  fillFilterForm();
  loadGridPage(firstGridUrl(), [], 0);
  if (summaryChanged) {
    refreshSummary();
    scheduleFleetHistory();
  }
}

function fillSelect(select, allLabel, result, optionOf) {
  const current = select.value;
  const options = [h("option", { value: "" }, allLabel)];
  if (result.status === "fulfilled") options.push(...result.value.map(optionOf));
  select.replaceChildren(...options);
  ensureOption(select, current);
  select.value = current;
  const hint = $(select.getAttribute("aria-describedby"));
  hint.textContent = result.status === "rejected" ? `List unavailable (${result.reason.code})` : "";
}

// A resource directly under the subscription is named by its name; one in a resource group only by its ARM id.
function filterValue(item) {
  return /^\/subscriptions\/[^/]+\/providers\//i.test(item.id || "") ? item.name : item.id;
}

async function loadFilterSources() {
  const epoch = session.epoch;
  const [groups, assignments] = await Promise.allSettled([
    fetchAllPages(fleetUrl("clusterGroups")),
    fetchAllPages(fleetUrl("policyAssignments")),
  ]);
  if (session.epoch !== epoch) return;
  fillSelect($("f-group"), "All clusters", groups, (group) => {
    const members = group.properties?.memberCount;
    const label = members == null ? group.name : `${group.name} (${members})`;
    return h("option", { value: filterValue(group) }, label);
  });
  fillSelect($("f-assignment"), "All configurations", assignments, (assignment) => {
    const configuration = assignment.properties?.configurationName;
    const label = configuration ? `${assignment.name} → ${configuration}` : assignment.name;
    return h("option", { value: filterValue(assignment) }, label);
  });
}

function buildFilterForm() {
  $("f-group").append(h("option", { value: "" }, "All clusters"));
  $("f-assignment").append(h("option", { value: "" }, "All configurations"));
  $("f-state").append(h("option", { value: "" }, "All states"), ...STATES.map((state) => h("option", { value: state }, state)));
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    applyFilters(readFilterForm());
  });
  $("clear-filters").addEventListener("click", clearFilters);
}

// ---------------------------------------------------------------------------------------------------------------
// Count cards. Built once and updated in place: the summary refreshes with live events, and re-creating the cards
// would take the keyboard focus away from a card button.

// A card's textContent is its label and its number only (the share is drawn by CSS from data-share), so that a
// test or a script reading a card gets one number out of it.
function buildCards() {
  const value = () => h("span", { class: "card-value", "data-value": "" }, "–");
  const plain = (testid, label, sub) => h("div", { class: "card", "data-testid": testid },
    h("span", { class: "card-label" }, label), " ", value(), " ", h("span", { class: "card-sub" }, sub));
  const stateCard = (state) => h("button", {
    type: "button", class: `card state s-${stateSlug(state)}`, "data-testid": `count-${state}`, "data-state": state,
    "aria-pressed": "false", "aria-describedby": "cards-hint", onclick: () => toggleStateFilter(state),
  },
  h("span", { class: "card-label" }, h("span", { class: "glyph", "aria-hidden": "true" }, GLYPHS[state]), state), " ", value(),
  h("span", { class: "card-sub", "data-share": "" }), h("span", { class: "meter", "aria-hidden": "true" }, h("span", { "data-meter": "" })));
  const freshness = h("div", { class: "card freshness" }, h("span", { class: "card-label" }, "Freshness"),
    h("dl", {}, FRESHNESS.map((key) => h("div", { class: `fresh-item f-${key}`, "data-testid": `count-${key}` },
      h("dt", {}, key), " ", h("dd", { "data-value": "" }, "–")))));
  $("cards").replaceChildren(plain("count-total", "Total instances", "all states"),
    plain("count-clusters", "Clusters", "with configurations"), ...STATES.map(stateCard), freshness);
}

function countsByState(summary) {
  const counts = Object.fromEntries(STATES.map((state) => [state, 0]));
  for (const group of summary.groups || []) {
    // A state this UI does not know (or a null key) is shown as Unknown rather than dropped from the totals.
    const state = STATES.includes(group.key) ? group.key : "Unknown";
    counts[state] += group.count || 0;
  }
  return counts;
}

function setCard(testid, value, share) {
  const card = document.querySelector(`[data-testid="${testid}"]`);
  card.querySelector("[data-value]").textContent = String(value);
  if (share == null) return;
  card.querySelector("[data-share]").dataset.share = share;
  card.querySelector("[data-meter]").style.width = share === "–" ? "0%" : share;
}

function renderCards(summary) {
  const total = summary.count || 0;
  const counts = countsByState(summary);
  setCard("count-total", total);
  setCard("count-clusters", summary.clusters || 0);
  for (const state of STATES) setCard(`count-${state}`, counts[state], percent(counts[state], total));
  for (const key of FRESHNESS) setCard(`count-${key}`, summary.freshness?.[key] ?? 0);
  $("summary-updated").textContent = `updated ${formatSeconds(Date.now())}`;
}

function updateCardsPressed() {
  for (const card of document.querySelectorAll(".card.state")) {
    card.setAttribute("aria-pressed", String(card.dataset.state === view.filters.complianceState));
  }
}

function toggleStateFilter(state) {
  const complianceState = view.filters.complianceState === state ? "" : state;
  applyFilters({ ...view.filters, complianceState });
}

async function refreshSummary() {
  const seq = ++view.summary.seq;
  view.summary.startedAt = Date.now();
  try {
    const summary = await api(summaryUrl());
    if (seq !== view.summary.seq) return true;
    renderCards(summary);
    $("cards").classList.remove("outdated");
    clearError("summary");
    return true;
  } catch (err) {
    if (seq !== view.summary.seq) return false;
    // The numbers on screen belong to the previous query: say so rather than let them pass for current.
    $("cards").classList.add("outdated");
    $("summary-updated").textContent = "not updated: see the error above";
    showError("summary", "Could not load the compliance summary", err);
    return false;
  }
}

// Live events may come in bursts; the summary is asked again at most once a second.
function scheduleSummaryRefresh() {
  if (view.summary.timer) return;
  const wait = Math.max(0, view.summary.startedAt + 1000 - Date.now());
  view.summary.timer = setTimeout(() => {
    view.summary.timer = 0;
    refreshSummary();
  }, wait);
}

// ---------------------------------------------------------------------------------------------------------------
// Fleet history chart: the summary asOf 12 points over the last 24 hours, as stacked bars

function scheduleFleetHistory() {
  const run = () => loadFleetHistory();
  if ("requestIdleCallback" in window) requestIdleCallback(run, { timeout: 1000 });
  else setTimeout(run, 50);
}

function setChartMessage(text, isError = false) {
  $("fleet-history").replaceChildren(h("p", { class: isError ? "chart-message error-text" : "chart-message muted" }, text));
}

async function loadFleetHistory() {
  const seq = ++view.history.seq;
  const now = Date.now();
  const times = Array.from({ length: HISTORY_POINTS }, (_, i) => now - (HISTORY_POINTS - 1 - i) * 2 * HOUR);
  if (!view.history.points) setChartMessage("Loading history…");
  try {
    const summaries = await mapLimit(times, 3, (time) => api(summaryUrl(rfc3339(time))));
    if (seq !== view.history.seq) return;
    view.history.points = times.map((time, i) => {
      const counts = countsByState(summaries[i]);
      return { time, counts, total: STATES.reduce((sum, state) => sum + counts[state], 0) };
    });
    renderFleetHistory();
  } catch (err) {
    if (seq !== view.history.seq || err.status === 401) return;
    view.history.points = null;
    setChartMessage(`History unavailable — ${err.code}: ${err.message}`, true);
  }
}

// 1, 2 or 5 times a power of ten: axis steps a reader can add up.
function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(Math.max(raw, 1)));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  return Math.max(1, step);
}

function renderFleetHistory() {
  const host = $("fleet-history");
  const points = view.history.points;
  if (!points) return;
  const max = Math.max(...points.map((p) => p.total));
  if (max === 0) {
    setChartMessage("No history yet: there were no configuration instances in the last 24 hours.");
    return;
  }
  view.history.width = host.clientWidth;
  host.replaceChildren(historyChart(points, max, Math.max(360, host.clientWidth)), stateLegend(false), historyTable(points));
}

function historyChart(points, max, width) {
  const height = 190;
  const margin = { top: 12, right: 12, bottom: 44, left: 60 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const step = niceStep(max / 4);
  const yMax = Math.ceil(max / step) * step;
  const y = (value) => margin.top + plotH - (value / yMax) * plotH;
  const slot = plotW / points.length;
  const barW = Math.min(48, slot * 0.7);
  const labelEvery = slot < 64 ? 2 : 1;

  const gridLines = [];
  for (let value = 0; value <= yMax; value += step) {
    gridLines.push(svg("line", { class: "chart-grid", x1: margin.left, x2: width - margin.right, y1: y(value), y2: y(value) }),
      svg("text", { class: "chart-tick", x: margin.left - 8, y: y(value) + 4, "text-anchor": "end" }, String(value)));
  }
  const bars = points.map((point, i) => {
    const x = margin.left + i * slot + (slot - barW) / 2;
    let base = 0;
    const rects = STATES.filter((state) => point.counts[state] > 0).map((state) => {
      const value = point.counts[state];
      const rect = svg("rect", { class: `fill-${stateSlug(state)}`, x, width: barW, y: y(base + value), height: y(base) - y(base + value) });
      base += value;
      return rect;
    });
    const label = `${formatClock(point.time)}: ${STATES.map((state) => `${state} ${point.counts[state]}`).join(", ")}`;
    const tick = i % labelEvery === 0 || i === points.length - 1
      ? svg("text", { class: "chart-tick", x: x + barW / 2, y: height - margin.bottom + 16, "text-anchor": "middle" },
        i === points.length - 1 ? "now" : formatClock(point.time))
      : null;
    return svg("g", {}, svg("title", {}, label), rects, tick);
  });
  return svg("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "Configuration instances by compliance state over the last 24 hours; the table below has the numbers" },
  gridLines,
  svg("line", { class: "chart-axis", x1: margin.left, x2: width - margin.right, y1: y(0), y2: y(0) }),
  bars,
  svg("text", { class: "chart-title", x: 14, y: margin.top + plotH / 2, transform: `rotate(-90 14 ${margin.top + plotH / 2})`, "text-anchor": "middle" }, "Instances"),
  svg("text", { class: "chart-title", x: margin.left + plotW / 2, y: height - 6, "text-anchor": "middle" }, "Local time (2-hour steps)"));
}

// The chart's numbers for screen readers.
function historyTable(points) {
  return h("table", { class: "sr-only" },
    h("caption", {}, "Configuration instances by compliance state, every 2 hours"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Time"), STATES.map((state) => h("th", { scope: "col" }, state)))),
    h("tbody", {}, points.map((point) => h("tr", {}, h("th", { scope: "row" }, formatClock(point.time)),
      STATES.map((state) => h("td", {}, String(point.counts[state])))))));
}

function stateLegend(withFreshness) {
  const item = (chipClass, glyph, label) =>
    h("span", { class: "legend-item" }, h("span", { class: `chip ${chipClass}`, "aria-hidden": "true" }, glyph), label);
  return h("div", { class: "legend" },
    STATES.map((state) => item(`s-${stateSlug(state)}`, GLYPHS[state], state)),
    withFreshness ? [item("s-compliant f-stale", GLYPHS.Compliant, "stale (hatched)"),
      item("s-compliant f-offline", GLYPHS.Compliant, "offline (faded)"),
      item("s-non-compliant failed", GLYPHS["Non-Compliant"], "provisioning failed (underlined)"),
      item("none", "", "no configuration")] : null);
}

// ---------------------------------------------------------------------------------------------------------------
// Cluster grid

async function loadGridPage(url, stack, offset) {
  const seq = ++view.grid.seq;
  $("grid").setAttribute("aria-busy", "true");
  $("prev-page").disabled = true;
  $("next-page").disabled = true;
  try {
    const page = await api(url);
    if (seq !== view.grid.seq) return true;
    Object.assign(view.grid, { url, stack, offset, nextLink: page.nextLink || null });
    renderGrid(page.value || []);
    $("grid").classList.remove("outdated");
    clearError("grid");
    return true;
  } catch (err) {
    if (seq !== view.grid.seq) return false;
    $("grid").classList.add("outdated");
    showError("grid", "Could not load the clusters", err);
    return false;
  } finally {
    if (seq === view.grid.seq) {
      $("grid").removeAttribute("aria-busy");
      updatePager();
    }
  }
}

function cellKey(clusterId, configurationName) {
  return `${String(clusterId).toLowerCase()}|${configurationName}`;
}

function renderGrid(clusters) {
  const columns = [...new Set(clusters.flatMap((c) => (c.configurations || []).map((cfg) => cfg.name)))].sort();
  const hadFocus = $("grid").contains(document.activeElement);
  view.grid.rows = clusters;
  view.grid.cells = new Map();
  const head = h("thead", {}, h("tr", {}, h("th", { scope: "col", class: "cluster-col" }, "Cluster"),
    columns.map((name) => h("th", { scope: "col", title: name }, h("span", { class: "col-name" }, name)))));
  const body = h("tbody", {}, clusters.map((cluster) => gridRow(cluster, columns)));
  $("grid").replaceChildren(head, body);
  restoreActiveCell(hadFocus);
  renderEmptyState(clusters.length, columns.length);
}

function gridRow(cluster, columns) {
  const byName = new Map((cluster.configurations || []).map((cfg) => [cfg.name, cfg]));
  const row = h("tr", {}, clusterCell(cluster));
  for (const name of columns) {
    const cell = h("td", { tabindex: "-1" });
    paintCell(cell, cluster, name, byName.get(name));
    view.grid.cells.set(cellKey(cluster.id, name), cell);
    row.append(cell);
  }
  return row;
}

function clusterCell(cluster) {
  const connectivity = cluster.connectivityStatus || "Unknown";
  const tags = Object.entries(cluster.tags || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  const seen = cluster.lastConnectivityTime ? `last seen ${formatDateTime(cluster.lastConnectivityTime)}` : "never seen";
  return h("th", { scope: "row", class: "cluster-cell", tabindex: "-1",
    "aria-label": `${cluster.name}, ${connectivity}, resource group ${cluster.resourceGroup}`,
    title: `${cluster.name} (${cluster.resourceGroup}) — ${connectivity}, ${seen}${tags ? `\ntags: ${tags}` : ""}\nEnter: cluster history` },
  h("span", { class: `conn conn-${connectivity.toLowerCase()}`, "aria-hidden": "true" }),
  h("span", { class: "cluster-name" }, cluster.name),
  h("span", { class: connectivity === "Connected" ? "sr-only" : "conn-text" }, connectivity),
  h("span", { class: "cluster-rg" }, cluster.resourceGroup));
}

function cellLabel(cluster, cfg) {
  const parts = [cfg.complianceState || "Unknown"];
  if (cfg.freshness && cfg.freshness !== "fresh") parts.push(cfg.freshness);
  if (cfg.provisioningState && cfg.provisioningState !== "Succeeded") parts.push(`provisioning ${cfg.provisioningState}`);
  if (cfg.sourceSyncedCommitId) parts.push(`at ${shortCommit(cfg.sourceSyncedCommitId)}`);
  return `${cluster.name} / ${cfg.name}: ${parts.join(", ")}`;
}

function paintCell(cell, cluster, name, cfg) {
  cellData.set(cell, { cluster, name, cfg });
  if (!cfg) {
    // A live "Deleted" turns a configured cell into an empty one: nothing of the old state may remain.
    cell.className = "cell none";
    for (const key of ["cluster", "configuration", "state", "freshness"]) delete cell.dataset[key];
    cell.removeAttribute("title");
    cell.setAttribute("aria-label", `${cluster.name} / ${name}: no configuration`);
    cell.replaceChildren();
    return;
  }
  const freshness = cfg.freshness || "fresh";
  const label = cellLabel(cluster, cfg);
  cell.className = "cell";
  Object.assign(cell.dataset, { cluster: cluster.name, configuration: name, state: cfg.complianceState || "Unknown", freshness });
  cell.setAttribute("aria-label", label);
  cell.title = label;
  const failed = cfg.provisioningState === "Failed" ? " failed" : "";
  cell.replaceChildren(h("span", { class: `chip s-${stateSlug(cfg.complianceState)} f-${freshness}${failed}`, "aria-hidden": "true" },
    GLYPHS[cfg.complianceState] || GLYPHS.Unknown));
}

function renderEmptyState(rowCount, columnCount) {
  const empty = rowCount === 0 && view.grid.stack.length === 0;
  $("empty").hidden = !empty;
  $("grid-scroll").hidden = empty;
  $("grid-legend").hidden = empty;
  const note = $("grid-note");
  note.hidden = empty || columnCount > 0;
  note.textContent = "These clusters have no Flux configurations yet.";
  if (!empty) return;
  const filtered = hashOf(view.filters) !== "";
  $("empty").replaceChildren(...(filtered
    ? [h("h3", {}, "No clusters match these filters"),
      h("p", {}, "Nothing in this subscription matches the cluster group, assignment, tag selector or state chosen above."),
      h("button", { type: "button", class: "button", onclick: clearFilters }, "Clear filters")]
    : [h("h3", {}, "No clusters yet"),
      h("p", {}, "Register a cluster (", h("code", {}, "fluxplane agent register"), ", or ",
        h("code", {}, "PUT …/Microsoft.Kubernetes/connectedClusters/{name}?api-version=2024-01-01"),
        ") and give it a Flux configuration; it will show here within seconds.")]));
}

function updatePager() {
  const { offset, rows, stack, nextLink } = view.grid;
  const page = stack.length + 1;
  $("grid-position").textContent = rows.length
    ? `clusters ${offset + 1}–${offset + rows.length} · page ${page}${nextLink ? "" : " (last)"}`
    : stack.length ? `page ${page} is empty` : "";
  $("prev-page").disabled = stack.length === 0;
  $("next-page").disabled = !nextLink;
}

async function goToPage(direction) {
  const { url, offset, rows, stack, nextLink } = view.grid;
  const button = direction > 0 ? $("next-page") : $("prev-page");
  const hadFocus = document.activeElement === button;
  if (direction > 0 && nextLink) {
    await loadGridPage(nextLink, [...stack, { url, offset }], offset + rows.length);
  } else if (direction < 0 && stack.length) {
    const previous = stack[stack.length - 1];
    await loadGridPage(previous.url, stack.slice(0, -1), previous.offset);
  }
  // At the first or last page the pressed button becomes disabled; keep the keyboard user on the pager.
  if (hadFocus && button.disabled) (direction > 0 ? $("prev-page") : $("next-page")).focus();
  else if (hadFocus) button.focus();
}

// Roving tabindex: exactly one body cell is in the tab order; the arrow keys move it.
function gridBodyRows() {
  return $("grid").tBodies[0]?.rows || [];
}

function setActiveCell(cell) {
  for (const other of $("grid").querySelectorAll('tbody [tabindex="0"]')) other.tabIndex = -1;
  cell.tabIndex = 0;
  view.grid.active = { row: cell.parentElement.sectionRowIndex, col: cell.cellIndex };
}

function restoreActiveCell(focus) {
  const rows = gridBodyRows();
  if (!rows.length) return;
  const row = rows[Math.min(view.grid.active.row, rows.length - 1)];
  const cell = row.cells[Math.min(view.grid.active.col, row.cells.length - 1)];
  setActiveCell(cell);
  if (focus) cell.focus();
}

function activeGridCell() {
  return $("grid").querySelector('tbody [tabindex="0"]');
}

function onGridKeydown(event) {
  const cell = event.target.closest("tbody td, tbody th");
  if (!cell) return;
  const rows = gridBodyRows();
  let row = cell.parentElement.sectionRowIndex;
  let col = cell.cellIndex;
  const lastCol = cell.parentElement.cells.length - 1;
  switch (event.key) {
    case "ArrowRight": col = Math.min(col + 1, lastCol); break;
    case "ArrowLeft": col = Math.max(col - 1, 0); break;
    case "ArrowDown": row = Math.min(row + 1, rows.length - 1); break;
    case "ArrowUp": row = Math.max(row - 1, 0); break;
    case "PageDown": row = Math.min(row + 10, rows.length - 1); break;
    case "PageUp": row = Math.max(row - 10, 0); break;
    case "Home": col = 0; if (event.ctrlKey) row = 0; break;
    case "End": col = lastCol; if (event.ctrlKey) row = rows.length - 1; break;
    case "Enter":
    case " ":
      event.preventDefault();
      openCell(cell);
      return;
    default:
      return;
  }
  event.preventDefault();
  const target = rows[row].cells[col];
  setActiveCell(target);
  target.focus();
}

function onGridClick(event) {
  const cell = event.target.closest("tbody td, tbody th");
  if (!cell) return;
  setActiveCell(cell);
  cell.focus();
  openCell(cell);
}

function openCell(cell) {
  if (cell.tagName === "TH") {
    showCluster(cell, view.grid.rows[cell.parentElement.sectionRowIndex]);
    return;
  }
  const data = cellData.get(cell);
  if (data?.cfg) showConfiguration(cell, data.cluster, data.cfg);
}

// ---------------------------------------------------------------------------------------------------------------
// Alert receivers: where alerts go and how their delivery fares (last success, last failure, backlog), read again
// every 30 seconds; a receiver's delivery log opens in the drill-down panel.

const RECEIVERS_EVERY = 30 * 1000;

async function loadReceivers() {
  const seq = ++view.receivers.seq;
  clearTimeout(view.receivers.timer);
  try {
    const receivers = await fetchAllPages(fleetUrl("alertReceivers", { $top: 100 }), 5);
    if (seq !== view.receivers.seq) return;
    renderReceivers(receivers);
    $("receivers-updated").textContent = `updated ${formatSeconds(Date.now())}`;
    clearError("receivers");
  } catch (err) {
    if (seq !== view.receivers.seq) return;
    $("receivers-updated").textContent = "not updated: see the error above";
    showError("receivers", "Could not load the alert receivers", err);
  }
  if (seq === view.receivers.seq) view.receivers.timer = setTimeout(loadReceivers, RECEIVERS_EVERY);
}

// How a receiver fares: failing when its latest failure is newer than its latest success.
function receiverHealth(state) {
  const failed = state.lastFailureAt ? Date.parse(state.lastFailureAt) : 0;
  const delivered = state.lastDeliveredAt ? Date.parse(state.lastDeliveredAt) : 0;
  if (failed > delivered) return h("span", { class: "badge prov-bad" }, "Failing");
  if (delivered) return h("span", { class: "badge prov-ok" }, "Delivering");
  return h("span", { class: "badge prov-busy" }, "Nothing sent yet");
}

function renderReceivers(receivers) {
  if (!receivers.length) {
    $("receivers").replaceChildren(h("p", { class: "muted" },
      "No alert receivers in this subscription. An Owner creates one with ",
      h("code", {}, "PUT …/providers/Fluxplane.Fleet/alertReceivers/{name}"), " (see the README's Alerts section)."));
    return;
  }
  $("receivers").replaceChildren(h("table", { class: "dd-table receivers" },
    h("thead", {}, h("tr", {}, ["Receiver", "Type", "Host", "State", "Last delivered", "Last failure", "Backlog", "Dropped"]
      .map((title) => h("th", { scope: "col" }, title)))),
    h("tbody", {}, receivers.map((receiver) => {
      const p = receiver.properties || {};
      const state = p.deliveryState || {};
      const failure = state.lastFailureAt
        ? h("span", {}, timeValue(state.lastFailureAt), h("br"),
          h("span", { class: "muted" }, [state.lastFailureStatusCode ? `HTTP ${state.lastFailureStatusCode}` : null, state.lastFailure]
            .filter(Boolean).join(" · ")))
        : "—";
      const backlog = state.backlog
        ? h("span", {}, String(state.backlog), state.nextAttemptAt ? h("span", { class: "muted" }, ` next ${formatUntil(state.nextAttemptAt)}`) : null)
        : "0";
      return h("tr", { "data-testid": `receiver-${receiver.name}` },
        h("td", {}, h("button", { type: "button", class: "link-button", onclick: (event) => openReceiver(receiver, event.currentTarget) }, receiver.name)),
        h("td", {}, p.receiverType),
        h("td", {}, h("code", {}, p.urlHost)),
        h("td", { "data-testid": "receiver-health" }, receiverHealth(state)),
        h("td", {}, timeValue(state.lastDeliveredAt) || "—"),
        h("td", {}, failure),
        h("td", { "data-testid": "receiver-backlog" }, backlog),
        h("td", {}, state.dropped ? h("strong", { title: state.lastDroppedAt || "" }, String(state.dropped)) : "0"));
    }))));
}

async function openReceiver(receiver, opener) {
  const seq = ++view.drill.seq;
  const p = receiver.properties || {};
  openPanel(receiver.name, `${p.receiverType} receiver · ${p.urlHost}`, opener, true);
  setPanelLoading();
  let deliveries;
  try {
    deliveries = (await api(`${receiver.id}/deliveries?${query({ "api-version": FLEET_API, $top: 50 })}`)).value || [];
  } catch (err) {
    if (seq === view.drill.seq) setPanelBody(errorNote("Delivery log unavailable", err));
    return;
  }
  if (seq !== view.drill.seq) return;
  setPanelBody(
    facts([
      ["Signed", p.hasSigningKey ? "yes (HMAC-SHA256)" : "no"],
      ["Rate limit", `${p.rateLimitPerMinute} a minute`],
      ["Backlog", String(p.deliveryState?.backlog ?? 0)],
    ]),
    section("Latest deliveries", deliveries.length ? h("table", { class: "dd-table" },
      h("thead", {}, h("tr", {}, ["When", "Event", "State", "Attempts", "Last answer"].map((title) => h("th", { scope: "col" }, title)))),
      h("tbody", {}, deliveries.map((d) => h("tr", { class: d.state === "Failed" ? "problem" : null },
        h("td", {}, timeValue(d.createdAt)),
        h("td", {}, h("strong", {}, d.eventType), h("br"), h("span", { class: "muted" }, d.summary),
          d.digest ? h("span", { class: "muted" }, ` (${d.digest.events} events)`) : null),
        h("td", {}, h("span", { class: `badge ${d.state === "Delivered" ? "prov-ok" : d.state === "Failed" ? "prov-bad" : "prov-busy"}` }, d.state),
          d.nextAttemptAt ? h("span", { class: "muted" }, ` next ${formatUntil(d.nextAttemptAt)}`) : null),
        h("td", {}, String(d.attempts)),
        h("td", {}, [d.lastStatusCode ? `HTTP ${d.lastStatusCode}` : null, d.lastError].filter(Boolean).join(" · ") || "—"))))) :
      h("p", { class: "muted" }, "No deliveries yet.")),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Drill-down panel

function openPanel(title, subtitle, opener, focus) {
  $("drilldown-title").textContent = title;
  $("drilldown-subtitle").textContent = subtitle;
  $("drilldown").hidden = false;
  view.drill.opener = opener;
  if (focus) $("drilldown-close").focus();
}

function closeDrilldown(restoreFocus = true) {
  if ($("drilldown").hidden) return;
  $("drilldown").hidden = true;
  view.drill.seq++;
  view.drill.target = null;
  view.drill.reconciled = null;
  clearTimeout(view.drill.timer);
  view.drill.timer = 0;
  if (!restoreFocus) return;
  const opener = view.drill.opener;
  (opener?.isConnected ? opener : activeGridCell())?.focus();
}

// A live refresh re-renders the body; it must not jump the reader back to the top, nor drop the keyboard focus
// (the body's structure is stable, so the n-th link or button is the same control after the refresh).
function setPanelBody(...children) {
  const body = $("drilldown-body");
  const controls = () => [...body.querySelectorAll("a[href], button")];
  const focused = controls().indexOf(document.activeElement);
  const scroll = body.scrollTop;
  body.replaceChildren(...children.flat().filter((child) => child != null));
  body.scrollTop = scroll;
  if (focused >= 0) (controls()[focused] || $("drilldown-close")).focus({ preventScroll: true });
}

function setPanelLoading() {
  $("drilldown-body").replaceChildren(h("p", { class: "muted" }, "Loading…"));
  $("drilldown-body").scrollTop = 0;
}

function section(title, ...children) {
  return h("section", { class: "dd-section" }, h("h3", {}, title), children);
}

function errorNote(what, err) {
  return h("p", { class: "banner error" }, h("strong", {}, `${what}: `), h("code", { class: "error-code" }, err.code), " ", err.message);
}

function badge(state) {
  return h("span", { class: `badge s-${stateSlug(state)}` }, h("span", { "aria-hidden": "true" }, GLYPHS[state] || GLYPHS.Unknown), ` ${state || "Unknown"}`);
}

function provisioningBadge(state) {
  const kind = state === "Succeeded" ? "ok" : state === "Failed" ? "bad" : "busy";
  return h("span", { class: `badge prov-${kind}` }, state || "—");
}

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(([, value]) => value != null && value !== "")
    .map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))));
}

function timeValue(iso) {
  return iso ? h("time", { datetime: iso, title: iso }, `${formatDateTime(iso)} (${formatAgo(iso)})`) : null;
}

async function showConfiguration(opener, cluster, cfg, refresh = false) {
  const seq = ++view.drill.seq;
  view.drill.target = { kind: "configuration", id: cfg.id, cluster, cfg };
  openPanel(cfg.name, `configuration on ${cluster.name} · ${cluster.resourceGroup}`, opener, !refresh);
  if (!refresh) setPanelLoading();
  const to = Date.now();
  const from = to - 24 * HOUR;
  const [detail, events] = await Promise.allSettled([api(`${cfg.id}?api-version=${FLUX_API}`), fetchHistory(cfg.id, from, to)]);
  if (seq !== view.drill.seq) return;
  if (detail.status === "rejected") {
    setPanelBody(errorNote("Could not load the configuration", detail.reason), historySection(events, from, to));
    return;
  }
  const p = detail.value.properties || {};
  setPanelBody(
    reconcileControl(cfg.id, p.provisioningState),
    facts([
      ["Compliance", badge(p.complianceState)],
      ["Provisioning", provisioningBadge(p.provisioningState)],
      ["Freshness", cfg.freshness],
      ["Status updated", timeValue(p.statusUpdatedAt)],
      ["Policy assignment", cfg.policyAssignmentId ? lastSegment(cfg.policyAssignmentId) : null],
    ]),
    p.errorMessage ? h("p", { class: "banner error" }, h("strong", {}, "Error: "), p.errorMessage) : null,
    historySection(events, from, to),
    section("Objects", objectsTable(p.statuses || [])),
    section("Source", sourceFacts(p)),
    section("Kustomizations", kustomizationsTable(p.kustomizations || {})),
  );
}

// "Reconcile now" for those who may (Contributor or above): asks the agent to re-check the source at once. What
// was asked stays shown while the panel shows that configuration, across its live refreshes.
function reconcileControl(id, provisioningState) {
  if (!mayAct(id, "Contributor") || provisioningState === "Deleting") return null;
  const asked = view.drill.reconciled?.id === id ? view.drill.reconciled : null;
  const note = h("span", { class: "muted", "data-testid": "reconcile-status", role: "status" },
    asked ? asked.text : "");
  const button = h("button", { type: "button", class: "button", "data-testid": "reconcile",
    title: "Ask the cluster's agent to check the source again now, rather than at its sync interval" }, "Reconcile now");
  button.onclick = async () => {
    button.disabled = true;
    note.textContent = "Asking…";
    let text;
    try {
      const answer = await apiPost(`${id}/reconcile?api-version=${FLEET_API}`);
      text = `Asked at ${formatDateTime(answer.reconcileRequestedAt)}: the agent re-checks the source now.`;
    } catch (err) {
      text = `Could not ask: ${err.code}: ${err.message}`;
    }
    view.drill.reconciled = { id, text };
    note.textContent = text;
    button.disabled = false;
  };
  return h("div", { class: "dd-actions" }, button, " ", note);
}

async function showCluster(opener, cluster, refresh = false) {
  const seq = ++view.drill.seq;
  view.drill.target = { kind: "cluster", id: cluster.id, cluster };
  openPanel(cluster.name, `cluster in ${cluster.resourceGroup}`, opener, !refresh);
  if (!refresh) setPanelLoading();
  const to = Date.now();
  const from = to - 24 * HOUR;
  const [events] = await Promise.allSettled([fetchHistory(cluster.id, from, to)]);
  if (seq !== view.drill.seq) return;
  const tags = Object.entries(cluster.tags || {});
  setPanelBody(
    facts([
      ["Connectivity", cluster.connectivityStatus],
      ["Last connected", timeValue(cluster.lastConnectivityTime)],
      ["Tags", tags.length ? h("span", { class: "tags" }, tags.map(([k, v]) => h("code", { class: "tag" }, `${k}=${v}`))) : "none"],
    ]),
    section("Configurations", clusterConfigurations(opener, cluster)),
    historySection(events, from, to),
  );
}

function clusterConfigurations(opener, cluster) {
  const configurations = cluster.configurations || [];
  if (!configurations.length) return h("p", { class: "muted" }, "No Flux configurations.");
  return h("ul", { class: "config-list" }, configurations.map((cfg) => h("li", {},
    h("button", { type: "button", class: "link-button", onclick: () => showConfiguration(opener, cluster, cfg) }, cfg.name),
    " ", badge(cfg.complianceState), cfg.freshness && cfg.freshness !== "fresh" ? h("span", { class: "muted" }, ` ${cfg.freshness}`) : null)));
}

function sourceFacts(p) {
  const source = p.gitRepository || p.bucket || p.azureBlob || p.ociRepository || {};
  const ref = source.repositoryRef || {};
  const reference = ref.commit ? `commit ${ref.commit}` : ref.tag ? `tag ${ref.tag}` : ref.semver ? `semver ${ref.semver}` : ref.branch ? `branch ${ref.branch}` : null;
  const url = source.url && /^https?:\/\//i.test(source.url)
    ? h("a", { href: source.url, target: "_blank", rel: "noopener noreferrer" }, source.url)
    : source.url;
  return facts([
    ["Kind", p.sourceKind],
    ["URL", url],
    ["Reference", reference],
    ["Synced commit", p.sourceSyncedCommitId ? h("code", { title: p.sourceSyncedCommitId }, shortCommit(p.sourceSyncedCommitId)) : "not synced yet"],
    ["Source updated", timeValue(p.sourceUpdatedAt)],
  ]);
}

function kustomizationsTable(kustomizations) {
  const entries = Object.entries(kustomizations);
  if (!entries.length) return h("p", { class: "muted" }, "None.");
  return h("table", { class: "dd-table" },
    h("thead", {}, h("tr", {}, ["Name", "Path", "Depends on"].map((title) => h("th", { scope: "col" }, title)))),
    h("tbody", {}, entries.map(([name, k]) => h("tr", {}, h("td", {}, name), h("td", {}, h("code", {}, k?.path || "./")),
      h("td", {}, (k?.dependsOn || []).join(", ") || "—")))));
}

const hasProblem = (status) =>
  status.complianceState === "Non-Compliant" || (status.statusConditions || []).some((c) => c.status === "False");

function objectsTable(statuses) {
  if (!statuses.length) return h("p", { class: "muted" }, "No objects reported yet.");
  // Objects with a problem first: that is what the reader opened the panel for.
  const sorted = [...statuses].sort((a, b) => Number(hasProblem(b)) - Number(hasProblem(a)));
  return h("table", { class: "dd-table objects" },
    h("thead", {}, h("tr", {}, ["Object", "State", "Conditions"].map((title) => h("th", { scope: "col" }, title)))),
    h("tbody", {}, sorted.map((status) => h("tr", { class: hasProblem(status) ? "problem" : null },
      h("td", {}, h("span", { class: "kind" }, status.kind), h("br"), h("code", {}, `${status.namespace ? `${status.namespace}/` : ""}${status.name}`),
        status.appliedBy ? h("span", { class: "muted applied-by" }, `applied by ${status.appliedBy.namespace}/${status.appliedBy.name}`) : null),
      h("td", {}, badge(status.complianceState)),
      h("td", {}, conditionList(status.statusConditions || []))))));
}

function conditionList(conditions) {
  if (!conditions.length) return h("span", { class: "muted" }, "—");
  return h("ul", { class: "conditions" }, conditions.map((c) => h("li", { class: c.status === "False" ? "false" : null },
    h("strong", {}, c.type), " ", h("span", { class: `cond-status cond-${String(c.status).toLowerCase()}` }, c.status),
    c.reason ? ` · ${c.reason}` : "",
    c.message ? h("span", { class: "cond-message" }, c.message) : null,
    c.lastTransitionTime ? h("time", { class: "muted", datetime: c.lastTransitionTime, title: c.lastTransitionTime }, formatAgo(c.lastTransitionTime)) : null)));
}

function historySection(result, from, to) {
  if (result.status === "rejected") return section("Last 24 hours", errorNote("History unavailable", result.reason));
  const events = result.value;
  return section("Last 24 hours", timeline(events, from, to), eventList(events));
}

// One lane per resource with status events (one for a configuration, one per configuration for a cluster),
// coloured by the state each status event starts; write events are ticks above the lanes.
function timeline(events, from, to) {
  const width = 560;
  const lanes = timelineLanes(events);
  const labelW = lanes.length > 1 ? 96 : 0;
  const laneH = 16;
  const top = 12;
  const lanesBottom = top + lanes.length * (laneH + 4);
  const height = lanesBottom + 20;
  const x = (ms) => labelW + ((Math.min(Math.max(ms, from), to) - from) / (to - from)) * (width - labelW - 4);
  const laneNodes = lanes.map((lane, i) => timelineLane(lane, top + i * (laneH + 4), laneH, x, from, to, labelW));
  const writes = events.filter((e) => e.kind === "write").map((e) => {
    const at = x(Date.parse(e.time));
    return svg("g", { class: "write-tick" }, svg("title", {}, `${formatDateTime(e.time)}: ${e.action || "write"} by ${e.actor || "unknown"} → ${e.statusCode ?? "?"}`),
      svg("path", { d: `M${at - 4} 1 L${at + 4} 1 L${at} 8 Z` }), svg("line", { x1: at, x2: at, y1: 8, y2: lanesBottom - 4 }));
  });
  const ticks = [0, 6, 12, 18, 24].map((hoursAgo) => {
    const ms = to - hoursAgo * HOUR;
    const anchor = hoursAgo === 24 ? "start" : hoursAgo === 0 ? "end" : "middle";
    return svg("text", { class: "chart-tick", x: x(ms), y: height - 4, "text-anchor": anchor }, hoursAgo === 0 ? "now" : formatClock(ms));
  });
  const statusCount = events.filter((e) => e.kind === "status").length;
  return svg("svg", { class: "timeline", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `Timeline of the last 24 hours: ${statusCount} status changes and ${events.length - statusCount} writes; the list below has the latest` },
  laneNodes, writes, ticks);
}

function timelineLanes(events) {
  const lanes = new Map();
  for (const event of events) {
    if (event.kind !== "status") continue;
    const key = String(event.resourceId || "").toLowerCase();
    if (!lanes.has(key)) lanes.set(key, { label: lastSegment(event.resourceId), events: [] });
    lanes.get(key).events.push(event);
  }
  return lanes.size ? [...lanes.values()].sort((a, b) => a.label.localeCompare(b.label)) : [{ label: "", events: [] }];
}

function timelineLane(lane, y, laneH, x, from, to, labelW) {
  const sorted = [...lane.events].sort((a, b) => Date.parse(a.time) - Date.parse(b.time));
  const firstAt = sorted.length ? Date.parse(sorted[0].time) : to;
  // Before the first status event in the window the state is not known here: drawn as "no data".
  const nodes = [svg("rect", { class: "seg-none", x: x(from), y, width: Math.max(0, x(firstAt) - x(from)), height: laneH },
    svg("title", {}, "No status reported in this part of the window"))];
  sorted.forEach((event, i) => {
    const start = Date.parse(event.time);
    const end = i + 1 < sorted.length ? Date.parse(sorted[i + 1].time) : to;
    const deleted = event.event === "Deleted";
    const fill = deleted ? "seg-none" : `fill-${stateSlug(event.complianceState)}`;
    const what = deleted ? "Deleted" : event.complianceState;
    nodes.push(svg("rect", { class: fill, x: x(start), y, width: Math.max(1, x(end) - x(start)), height: laneH },
      svg("title", {}, `${what} from ${formatDateTime(event.time)}${event.commit ? ` · ${shortCommit(event.commit)}` : ""}${event.message ? ` · ${event.message}` : ""}`)));
  });
  if (labelW) nodes.push(svg("text", { class: "lane-label", x: labelW - 6, y: y + laneH - 4, "text-anchor": "end" }, lane.label));
  return svg("g", {}, nodes);
}

function eventList(events) {
  if (!events.length) return h("p", { class: "muted" }, "No events in the last 24 hours.");
  const latest = events.slice(-10).reverse();
  return h("ol", { class: "events", "aria-label": "Latest events, newest first" }, latest.map((e) => h("li", {},
    h("time", { datetime: e.time, title: formatDateTime(e.time) }, formatEventTime(e.time)),
    // A status entry's own word (Created, Updated, Deleted) says more than "status".
    h("span", { class: `event-kind kind-${e.kind}` }, e.kind === "status" && e.event ? e.event : e.kind),
    e.kind === "status" ? statusEventText(e) : e.kind === "write" ? writeEventText(e) : h("span", {}, e.message || ""))));
}

function statusEventText(e) {
  return h("span", { class: "event-text" }, badge(e.complianceState), " ", provisioningBadge(e.provisioningState),
    e.generation != null ? ` gen ${e.generation}` : "",
    e.reportedGeneration != null && e.reportedGeneration !== e.generation ? ` (agent on ${e.reportedGeneration})` : "", e.commit ? h("code", { title: e.commit }, ` ${shortCommit(e.commit)}`) : "",
    configurationNote(e), e.message ? h("span", { class: "cond-message" }, e.message) : null);
}

function writeEventText(e) {
  return h("span", { class: "event-text" }, `${e.action || "write"} by ${e.actor || "unknown"} → ${e.statusCode ?? "?"}`, configurationNote(e));
}

// In a cluster's history, say which configuration an event is about.
function configurationNote(e) {
  return view.drill.target?.kind === "cluster" && e.resourceId ? h("span", { class: "muted" }, ` · ${lastSegment(e.resourceId)}`) : null;
}

function refreshDrilldownFor(resourceId) {
  const target = view.drill.target;
  if (!target || view.drill.timer) return;
  const id = String(resourceId || "").toLowerCase();
  const matches = target.kind === "configuration" ? id === target.id.toLowerCase() : id.startsWith(`${target.id.toLowerCase()}/`);
  if (!matches) return;
  view.drill.timer = setTimeout(() => {
    view.drill.timer = 0;
    const current = view.drill.target;
    if (!current) return;
    if (current.kind === "configuration") showConfiguration(view.drill.opener, current.cluster, current.cfg, true);
    else showCluster(view.drill.opener, current.cluster, true);
  }, 1500);
}

// ---------------------------------------------------------------------------------------------------------------
// Live updates: server-sent events over fetch, because EventSource cannot send the Authorization header

const LIVE_TEXT = { off: "", connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…" };

function setLive(state, detail = "") {
  const node = $("live");
  node.dataset.state = state;
  node.title = detail;
  $("live-text").textContent = LIVE_TEXT[state];
}

function startLive() {
  stopLive();
  view.live.failures = 0;
  connectLive();
}

function stopLive() {
  view.live.controller?.abort();
  view.live.controller = null;
  clearTimeout(view.live.timer);
  setLive("off");
}

async function connectLive() {
  const controller = new AbortController();
  view.live.controller = controller;
  setLive(view.live.lastEventId ? "reconnecting" : "connecting");
  let connected = false;
  let detail = "";
  try {
    const headers = { ...authHeaders(), Accept: "text/event-stream" };
    if (view.live.lastEventId) headers["Last-Event-ID"] = view.live.lastEventId;
    const response = await fetch(fleetUrl("events"), { headers, signal: controller.signal, cache: "no-store" });
    if (!response.ok) throw await apiError(response);
    connected = true;
    view.live.failures = 0;
    setLive("live");
    await readEventStream(response.body, handleLiveEvent, (id) => { view.live.lastEventId = id; });
    detail = "The event stream ended.";
  } catch (err) {
    if (controller.signal.aborted || err.status === 401) return;
    if (err.status === 400 && view.live.lastEventId) {
      // The server cannot resume after that id (its history moved on): start from now, and re-read what is on
      // screen, since events in between are lost.
      view.live.lastEventId = "";
      resync();
    }
    detail = err.code ? `${err.code}: ${err.message}` : String(err.message || err);
  }
  if (controller.signal.aborted || !session.token) return;
  // 2 s after a stream that was up; backing off to 30 s while the endpoint keeps failing.
  const delay = connected ? 2000 : Math.min(30000, 2000 * 2 ** view.live.failures++);
  setLive("reconnecting", `${detail} Retrying in ${delay / 1000} s.`);
  view.live.timer = setTimeout(connectLive, delay);
}

function resync() {
  refreshSummary();
  loadGridPage(view.grid.url || firstGridUrl(), view.grid.stack, view.grid.offset);
}

async function readEventStream(body, onEvent, onId) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = sseParser(onEvent, onId);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    parser(decoder.decode(value, { stream: true }));
  }
}

// The text/event-stream format: lines of "field: value"; a blank line ends a frame; ":" lines are comments.
function sseParser(onEvent, onId) {
  let buffer = "";
  let type = "";
  let data = [];
  const line = (text) => {
    if (text === "") {
      if (data.length) onEvent(type || "message", data.join("\n"));
      type = "";
      data = [];
      return;
    }
    if (text.startsWith(":")) return;
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id" && !value.includes("\0")) onId(value);
  };
  return (chunk) => {
    buffer += chunk;
    // A trailing "\r" may be the first half of a "\r\n" split across chunks: keep it for the next one.
    const lines = buffer.split(/\r\n|\n|\r(?!$)/);
    buffer = lines.pop();
    lines.forEach(line);
  };
}

function handleLiveEvent(type, data) {
  if (type !== "status") return;
  let event;
  try {
    event = JSON.parse(data);
  } catch {
    return; // one malformed frame must not end the stream
  }
  updateCellFromEvent(event);
  scheduleSummaryRefresh();
  refreshDrilldownFor(event.resourceId);
}

function updateCellFromEvent(event) {
  const [clusterFromId] = String(event.resourceId || "").split(/\/providers\/Microsoft\.KubernetesConfiguration\//i);
  const name = event.configurationName || lastSegment(event.resourceId);
  const cell = view.grid.cells.get(cellKey(event.clusterId || clusterFromId, name));
  if (!cell) return; // not on this page
  const { cluster, cfg: existing } = cellData.get(cell);
  const others = (cluster.configurations || []).filter((cfg) => cfg !== existing);
  if (event.event === "Deleted") {
    cluster.configurations = others;
    paintCell(cell, cluster, name, undefined);
  } else {
    const cfg = existing || { id: event.resourceId, name };
    cfg.complianceState = event.complianceState || cfg.complianceState;
    cfg.provisioningState = event.provisioningState || cfg.provisioningState;
    cfg.freshness = eventFreshness(event, cfg.freshness);
    cfg.sourceSyncedCommitId = event.commit || cfg.sourceSyncedCommitId;
    cluster.configurations = [...others, cfg].sort((a, b) => a.name.localeCompare(b.name));
    paintCell(cell, cluster, name, cfg);
  }
  flash(cell);
}

// As the grid counts it: fresh once the agent has reported on the current generation, else stale (or still
// offline: a write to a cluster whose agent is away does not bring the agent back).
function eventFreshness(event, previous) {
  const reported = event.reportedGeneration != null && event.reportedGeneration >= event.generation;
  if (reported) return "fresh";
  return previous === "offline" ? "offline" : "stale";
}

function flash(cell) {
  cell.classList.remove("flash");
  void cell.offsetWidth; // restart the animation when two events hit the same cell in a row
  cell.classList.add("flash");
  cell.addEventListener("animationend", () => cell.classList.remove("flash"), { once: true });
}

// ---------------------------------------------------------------------------------------------------------------
// Start-up

function bindEvents() {
  $("signin").addEventListener("submit", onSignInSubmit);
  $("sign-out").addEventListener("click", signOut);
  $("prev-page").addEventListener("click", () => goToPage(-1));
  $("next-page").addEventListener("click", () => goToPage(1));
  $("grid").addEventListener("keydown", onGridKeydown);
  $("grid").addEventListener("click", onGridClick);
  $("drilldown-close").addEventListener("click", () => closeDrilldown());
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !$("drilldown").hidden) {
      event.preventDefault();
      closeDrilldown();
    }
  });
  window.addEventListener("hashchange", onHashChange);
  window.addEventListener("popstate", onHashChange);
  // The chart is drawn at the width of its box; redraw it when that changes.
  new ResizeObserver(() => {
    if (view.history.points && $("fleet-history").clientWidth !== view.history.width) renderFleetHistory();
  }).observe($("fleet-history"));
}

function init() {
  buildCards();
  buildFilterForm();
  $("grid-legend").replaceWith(Object.assign(stateLegend(true), { id: "grid-legend" }));
  bindEvents();
  // Signed in earlier in this tab, else the dev server's token, else the form.
  const token = sessionStorage.getItem(STORAGE_TOKEN) || meta("fluxplane-dev-token");
  const subscription = sessionStorage.getItem(STORAGE_SUBSCRIPTION) || meta("fluxplane-dev-subscription");
  $("token").value = token;
  $("subscription").value = subscription;
  if (token && subscription) signIn(token, subscription);
  else showSignIn("");
}

init();
