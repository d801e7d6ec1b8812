// The live dashboard: initial state from the JSON APIs, then every change from SSE.
// EventSource reconnects by itself and sends Last-Event-ID, so the server replays
// whatever happened while the page was cut off; if the browser gives up (a 401 or
// a server that is down for long), we open a new one from the last id we saw.
(function () {
  "use strict";

  const urls = JSON.parse(document.getElementById("dashboard-urls").textContent);
  const MAX_ROWS = 50;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timeout"]);
  const STATUS_OF = {
    "execution.created": "pending", "execution.started": "running",
    "execution.completed": "succeeded", "execution.failed": "failed",
    "execution.cancelled": "cancelled", "execution.timeout": "timeout",
  };
  const WEBHOOK_OF = {
    "webhook.delivered": "delivered", "webhook.failed": "retrying",
    "webhook.dead_lettered": "dead", "webhook.redriven": "pending",
  };

  const executions = new Map();   // execution_id -> {doc, row, lastEventId}
  const nodes = new Map();        // node id -> {doc, row}
  const connection = document.getElementById("connection");
  const streamsOpen = { executions: false, nodes: false };

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function badge(value) {
    return value ? el("span", value, "badge status-" + value) : el("span", "–", "muted");
  }

  // The admin's own quoting of ids in URLs (django.contrib.admin.utils.quote).
  function adminQuote(value) {
    return String(value).replace(/[":/_#?;@&=+$,\[\]<>%\n\\]/g, function (c) {
      return "_" + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0");
    });
  }

  function executionCell(id) {
    const cell = el("td", undefined, "mono");
    if (!urls.execution_change) { cell.textContent = id; return cell; }
    const link = el("a", id);
    link.href = urls.execution_change.replace("ID", adminQuote(id));
    cell.appendChild(link);
    return cell;
  }

  function webhookCell(d) {
    const cell = el("td");
    if (d.webhook_error) {
      const refused = badge("refused");
      refused.title = d.webhook_error;   // why, on hover
      cell.appendChild(refused);
    } else if (d.webhook) {
      cell.appendChild(badge(d.webhook));
    } else {
      cell.appendChild(el("span", d.webhook_registered ? "pending" : "–", "muted"));
    }
    return cell;
  }

  // The time alone for today, the date too for any other day (rows either side of
  // midnight read out of order with the time alone).
  function timeOf(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function setConnection() {
    const open = streamsOpen.executions && streamsOpen.nodes;
    connection.textContent = open ? "live" : "reconnecting…";
    connection.className = "badge " + (open ? "live" : "connecting");
  }

  // --- executions ------------------------------------------------------------
  function renderExecution(entry, flash) {
    const d = entry.doc;
    const cells = [
      executionCell(d.execution_id),
      el("td", d.target || "–"),
      el("td"), webhookCell(d),
      el("td", d.duration_ms != null ? d.duration_ms + " ms" : "–"),
      el("td", timeOf(d.created_at)),
    ];
    cells[2].appendChild(badge(d.status));
    entry.row.replaceChildren(...cells);
    entry.row.dataset.status = d.status || "";
    if (flash) {
      entry.row.classList.remove("flash");
      void entry.row.offsetWidth;
      entry.row.classList.add("flash");
    }
  }

  function upsertExecution(id, changes, eventId) {
    const tbody = document.querySelector("#executions tbody");
    let entry = executions.get(id);
    if (!entry) {
      const row = el("tr");
      row.id = "exec-" + id;
      row.dataset.executionId = id;
      entry = { doc: { execution_id: id }, row: row, lastEventId: 0 };
      executions.set(id, entry);
      tbody.insertBefore(row, tbody.firstChild);
      while (tbody.children.length > MAX_ROWS) {
        const last = tbody.lastChild;
        executions.delete(last.dataset.executionId);
        tbody.removeChild(last);
      }
    }
    if (eventId) {
      // Events may arrive out of band with the initial fetch: keep the newest.
      if (eventId <= entry.lastEventId) return;
      entry.lastEventId = eventId;
    } else if (entry.lastEventId) {
      // An API snapshot never overrides what a newer event said.
      changes = Object.assign({}, changes, { status: entry.doc.status, webhook: entry.doc.webhook });
    }
    Object.assign(entry.doc, changes);
    renderExecution(entry, Boolean(eventId));
    document.getElementById("executions-empty").hidden = executions.size > 0;
  }

  function latestWebhook(events) {
    if (!events || !events.length) return undefined;
    const last = events[events.length - 1];
    return { delivered: "delivered", failed: "retrying", dead_lettered: "dead", dead: "dead" }[last.status] || last.status;
  }

  // --- live chart: finished executions per second, webhook outcomes ------------
  // Counted from the stream since the page opened, in BUCKET_SECONDS buckets over
  // the last WINDOW_SECONDS; drawn as SVG bars (no library, nothing from a CDN).
  const BUCKET_SECONDS = 5;
  const NODES_REFRESH_SECONDS = 10;
  const WINDOW_SECONDS = 300;
  const BUCKETS = WINDOW_SECONDS / BUCKET_SECONDS;
  const OUTCOME_OF = { "webhook.delivered": "delivered", "webhook.failed": "retrying", "webhook.dead_lettered": "dead" };
  const chart = { buckets: [], totals: { executions: 0, delivered: 0, retrying: 0, dead: 0 } };
  const seenForChart = new Set();   // event ids: a replay after a reconnect is not counted twice

  function bucketNow() {
    const start = Math.floor(Date.now() / 1000 / BUCKET_SECONDS) * BUCKET_SECONDS;
    let last = chart.buckets[chart.buckets.length - 1];
    if (!last || last.start !== start) {
      last = { start: start, executions: 0, delivered: 0, retrying: 0, dead: 0 };
      chart.buckets.push(last);
    }
    while (chart.buckets.length && chart.buckets[0].start <= start - WINDOW_SECONDS) chart.buckets.shift();
    return last;
  }

  function countForChart(doc) {
    let key = null;
    if (TERMINAL.has(STATUS_OF[doc.type])) key = "executions";
    else if (OUTCOME_OF[doc.type]) key = OUTCOME_OF[doc.type];
    if (!key || seenForChart.has(doc.id)) return;
    seenForChart.add(doc.id);
    bucketNow()[key] += 1;
    chart.totals[key] += 1;
    drawChart();
  }

  const SVG = "http://www.w3.org/2000/svg";
  function bars(svg, series, height) {
    const now = bucketNow().start;
    const width = svg.viewBox.baseVal.width / BUCKETS;
    const byStart = new Map(chart.buckets.map(function (b) { return [b.start, b]; }));
    let max = 1;
    for (const b of chart.buckets) max = Math.max(max, series.reduce(function (sum, s) { return sum + b[s.key]; }, 0));
    const shapes = [];
    for (let i = 0; i < BUCKETS; i++) {
      const b = byStart.get(now - (BUCKETS - 1 - i) * BUCKET_SECONDS);
      if (!b) continue;
      let y = height;
      for (const s of series) {
        const h = (b[s.key] / max) * (height - 4);
        if (h <= 0) continue;
        y -= h;
        const rect = document.createElementNS(SVG, "rect");
        rect.setAttribute("x", (i * width + 0.5).toFixed(1));
        rect.setAttribute("y", y.toFixed(1));
        rect.setAttribute("width", Math.max(width - 1, 1).toFixed(1));
        rect.setAttribute("height", h.toFixed(1));
        rect.setAttribute("class", "bar " + s.key);
        const title = document.createElementNS(SVG, "title");
        title.textContent = b[s.key] + " " + s.label;
        rect.appendChild(title);
        shapes.push(rect);
      }
    }
    svg.replaceChildren.apply(svg, shapes);
    return max;
  }

  function drawChart() {
    const rate = document.getElementById("chart-executions");
    const outcomes = document.getElementById("chart-deliveries");
    if (!rate || !outcomes) return;
    bars(rate, [{ key: "executions", label: "finished" }], 60);
    bars(outcomes, [
      { key: "delivered", label: "delivered" }, { key: "retrying", label: "failed, retrying" },
      { key: "dead", label: "dead-lettered" },
    ], 60);
    const last = chart.buckets.slice(-12);   // the last minute
    const perSecond = last.reduce(function (sum, b) { return sum + b.executions; }, 0) / (last.length * BUCKET_SECONDS || 1);
    document.getElementById("chart-rate").textContent = perSecond.toFixed(2) + " /s";
    for (const key of ["delivered", "retrying", "dead"]) {
      document.getElementById("chart-" + key).textContent = chart.totals[key];
    }
    rate.dataset.total = chart.totals.executions;
    outcomes.dataset.total = chart.totals.delivered + chart.totals.retrying + chart.totals.dead;
  }
  setInterval(drawChart, BUCKET_SECONDS * 1000);   // bars slide left as time passes

  function onExecutionEvent(doc) {
    countForChart(doc);   // subscription deliveries count too, with or without an execution
    if (!doc.execution_id) return;
    if (doc.type.startsWith("execution.")) {
      if (doc.type === "execution.log") return;
      const changes = { status: doc.status || STATUS_OF[doc.type] };
      const data = doc.data || {};
      if (data.target) changes.target = data.target;
      if (data.duration_ms != null) changes.duration_ms = data.duration_ms;
      if (data.webhook_registered) changes.webhook_registered = true;
      if (data.webhook_error) changes.webhook_error = data.webhook_error;
      if (doc.type === "execution.created") changes.created_at = doc.timestamp;
      upsertExecution(doc.execution_id, changes, doc.id);
    } else if (doc.type.startsWith("webhook.") && executions.has(doc.execution_id)) {
      const entry = executions.get(doc.execution_id);
      entry.doc.webhook = WEBHOOK_OF[doc.type] || doc.status;
      renderExecution(entry, true);
    }
    if (doc.type === "webhook.dead_lettered" || doc.type === "webhook.redriven") scheduleDlqRefresh();
  }

  // --- nodes -------------------------------------------------------------------
  function renderNodes() {
    const tbody = document.querySelector("#nodes tbody");
    const rows = [];
    let online = 0;
    for (const [id, doc] of [...nodes.entries()].sort()) {
      const state = doc.state;
      if (state === "online") online += 1;
      const tr = el("tr");
      tr.id = "node-" + id;
      const stateCell = el("td");
      stateCell.appendChild(badge(state));
      tr.append(el("td", id, "mono"), stateCell, el("td", doc.base_url || "–", "mono"), el("td", timeOf(doc.last_heartbeat)));
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
    document.getElementById("nodes-online").textContent = online;
    document.getElementById("nodes-total").textContent = nodes.size;
  }

  function onNodeEvent(doc) {
    const id = doc.agent_node_id;
    if (!id) return;
    if (doc.type === "node.removed") {
      nodes.delete(id);
    } else {
      const current = nodes.get(id) || {};
      current.state = doc.type === "node.offline" ? "offline" : "online";
      current.last_heartbeat = current.last_heartbeat || doc.timestamp;
      if (doc.data && doc.data.base_url) current.base_url = doc.data.base_url;
      nodes.set(id, current);
    }
    renderNodes();
  }

  // --- dead letters ------------------------------------------------------------
  let dlqTimer = null;
  function scheduleDlqRefresh() {
    if (dlqTimer) return;
    dlqTimer = setTimeout(function () { dlqTimer = null; loadDlq(); }, 300);
  }

  async function getJson(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(url + " -> " + response.status);
    return response.json();
  }

  async function loadDlq() {
    try {
      const body = await getJson(urls.dlq);
      document.getElementById("dlq-count").textContent = body.total_count;
    } catch (err) {
      document.getElementById("dlq-count").textContent = "n/a";
    }
  }

  async function loadExecutions() {
    try {
      const body = await getJson(urls.executions);
      const docs = body.results || body.executions || [];
      for (const doc of docs.slice().reverse()) {
        upsertExecution(doc.execution_id, {
          target: doc.target, status: doc.status, created_at: doc.created_at,
          duration_ms: doc.duration_ms, webhook_registered: doc.webhook_registered,
          webhook_error: doc.webhook_error,
          webhook: latestWebhook(doc.webhook_events),
        });
      }
    } catch (err) { /* the stream fills the table */ }
  }

  async function loadNodes() {
    try {
      const body = await getJson(urls.nodes);
      for (const doc of body.nodes || []) {
        const existing = nodes.get(doc.node_id) || {};
        nodes.set(doc.node_id, Object.assign({
          state: doc.health_status === "active" ? "online" : "offline",
        }, existing, { base_url: doc.base_url, last_heartbeat: doc.last_heartbeat }));
      }
      renderNodes();
    } catch (err) { /* the stream fills the table */ }
  }

  // --- streams -----------------------------------------------------------------
  function openStream(name, url, onEvent) {
    let lastId = null;
    let source = null;
    function connect() {
      const full = lastId === null ? url : url + (url.includes("?") ? "&" : "?") + "last_event_id=" + lastId;
      source = new EventSource(full, { withCredentials: true });
      source.onopen = function () { streamsOpen[name] = true; setConnection(); };
      source.onerror = function () {
        streamsOpen[name] = false;
        setConnection();
        if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
      };
      source.onmessage = null;
      const handle = function (message) {
        if (message.lastEventId) lastId = message.lastEventId;
        let doc;
        try { doc = JSON.parse(message.data); } catch (err) { return; }
        doc.type = message.type;   // the dotted name from `event:`
        document.getElementById("last-event").textContent = "#" + doc.id + " " + doc.type;
        onEvent(doc);
      };
      for (const type of name === "nodes"
        ? ["node.registered", "node.online", "node.offline", "node.removed", "stream.reset"]
        : ["execution.created", "execution.started", "execution.updated", "execution.completed",
           "execution.failed", "execution.cancelled", "execution.timeout", "execution.log",
           "webhook.delivered", "webhook.failed", "webhook.dead_lettered", "webhook.redriven", "stream.reset"]) {
        source.addEventListener(type, handle);
      }
    }
    connect();
  }

  openStream("executions", urls.execution_stream, onExecutionEvent);
  openStream("nodes", urls.node_stream, onNodeEvent);
  loadExecutions();
  loadNodes();
  // A heartbeat is no event (a beat every 2 s from every agent would flood every
  // stream): the node list is read again for its last-heartbeat times.
  setInterval(loadNodes, NODES_REFRESH_SECONDS * 1000);
  loadDlq();
  drawChart();
  window.agentfieldDashboard = { executions: executions, nodes: nodes, chart: chart, timeOf: timeOf };
})();
