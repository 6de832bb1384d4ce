// The dashboard: a hash router over five pages. Lists refresh every few seconds; a run's page
// follows the run's own WebSocket, so its DAG changes as events arrive.
import "./style.css";
import { Unavailable, api, runSocket } from "./api.js";
import { criticalPath, drawDag } from "./dag.js";
import { badge, bytes, el, seconds, summarise, when } from "./format.js";
import { drawTimeline } from "./timeline.js";

const REFRESH_MS = 2000;
const page = document.getElementById("page");
let cleanup = () => {};

function unavailable(error, what) {
  if (error instanceof Unavailable) {
    return el("p", { class: "unavailable" }, `${what} is not available on this head.`);
  }
  return el("p", { class: "error" }, `${what}: ${error.message}`);
}

// Calls render() now and every REFRESH_MS until the page changes.
function every(render) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    await render();
    if (!stopped) timer = setTimeout(tick, REFRESH_MS);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// --- runs ------------------------------------------------------------------------------

function runsPage() {
  const workflow = el("input", { id: "filter-workflow", placeholder: "workflow id" });
  const status = el(
    "select",
    { id: "filter-status" },
    ["", "running", "completed", "failed", "cancelled"].map((s) =>
      el("option", { value: s }, s || "any state"),
    ),
  );
  const table = el("div", { id: "runs" });
  page.replaceChildren(el("h1", {}, "Runs"), el("div", { class: "filters" }, workflow, status), table);
  const render = async () => {
    const query = new URLSearchParams();
    if (workflow.value) query.set("workflow_id", workflow.value.trim());
    if (status.value) query.set("status", status.value);
    let body;
    try {
      body = await api(`/runs?${query}`);
    } catch (error) {
      table.replaceChildren(unavailable(error, "The runs list"));
      return;
    }
    const rows = body.runs.map((r) =>
      el(
        "tr",
        { "data-run-id": r.run_id, "data-status": r.status },
        el("td", {}, el("a", { href: `#/run/${r.run_id}` }, r.run_id.slice(0, 8))),
        el("td", {}, r.workflow_id.slice(0, 8)),
        el("td", {}, badge(r.status)),
        el("td", {}, when(r.created_at)),
        el("td", {}, seconds(r.duration ?? (r.status === "running" ? Date.now() / 1000 - r.created_at : null))),
        el("td", {}, `${r.counts.completed || 0}/${r.task_count}`),
        el("td", {}, r.counts.failed ? el("span", { class: "state-failed-text" }, r.counts.failed) : "0"),
      ),
    );
    table.replaceChildren(
      el(
        "table",
        { id: "runs-table" },
        el("thead", {}, el("tr", {}, ["run", "workflow", "state", "started", "duration", "done", "failed"].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows),
      ),
      rows.length ? "" : el("p", { class: "muted" }, "No runs yet."),
    );
  };
  workflow.addEventListener("change", render);
  status.addEventListener("change", render);
  return every(render);
}

// --- one run ---------------------------------------------------------------------------

function taskPanel(panel, run, id, logs) {
  const t = run.tasks[id];
  const parts = [
    el("h2", {}, t.task_name || id),
    el("p", {}, badge(t.status), ` task ${id}`),
    el(
      "dl",
      {},
      el("dt", {}, "node"),
      el("dd", {}, t.node_id || "–"),
      el("dt", {}, "attempts"),
      el("dd", {}, String(t.attempt || 0)),
      el("dt", {}, "started"),
      el("dd", {}, when(t.started_at)),
      el("dt", {}, "ran for"),
      el("dd", {}, seconds(t.duration)),
      el("dt", {}, "cost"),
      el("dd", {}, t.cost !== undefined ? JSON.stringify(t.cost) : "not reported"),
    ),
  ];
  if (t.inputs !== undefined) parts.push(el("h3", {}, "Inputs"), el("pre", { class: "inputs" }, summarise(t.inputs)));
  if (t.status === "completed") parts.push(el("h3", {}, "Outputs"), el("pre", { class: "outputs" }, summarise(t.result)));
  if (t.error) {
    parts.push(
      el("h3", {}, "Error"),
      el("p", { class: "error" }, `${t.error.type}: ${t.error.message}`),
      el("pre", { class: "traceback" }, t.error.traceback || "(no traceback)"),
    );
  }
  if (t.reason) parts.push(el("h3", {}, "Skipped"), el("p", {}, t.reason));
  const logBox = el("pre", { class: "logs", id: "task-logs" }, "loading…");
  parts.push(el("h3", {}, "Logs"), logBox);
  panel.replaceChildren(...parts);
  panel.hidden = false;
  const live = logs.get(id) || [];
  api(`/runs/${run.run_id}/tasks/${id}/logs`)
    .then((body) => {
      const lines = (body.lines || body.logs || []).map((l) => (typeof l === "string" ? l : l.line ?? l.text ?? JSON.stringify(l)));
      logBox.textContent = [...lines, ...live].join("\n") || "(no output)";
    })
    .catch((error) => {
      logBox.textContent =
        error instanceof Unavailable && !live.length
          ? "Task logs are not available on this head."
          : live.join("\n") || "(no output)";
    });
}

const ENDS = {
  finish_task: "completed",
  task_exception: "failed",
  task_skipped: "skipped",
  task_cancelled: "cancelled",
};

function runPage(runId) {
  const head = el("div", { class: "run-head" }, "loading…");
  const dag = el("div", { class: "dag-box" });
  const timeline = el("div", { class: "timeline-box" });
  const panel = el("aside", { id: "task-panel", hidden: true });
  const barriers = el("div", { id: "run-barriers" });
  page.replaceChildren(
    el("h1", {}, "Run ", el("code", {}, runId.slice(0, 8))),
    head,
    barriers,
    el("div", { class: "run-body" }, el("div", { class: "run-main" }, el("h2", {}, "Graph"), dag, el("h2", {}, "Timeline"), timeline), panel),
  );
  let socket = null;
  let closed = false;
  let selected = null;
  let pendingDraw = false;
  const logs = new Map();
  let run = null;
  let view = null;
  let critical = new Set();

  const drawHead = () => {
    const counts = Object.entries(run.counts || {}).map(([k, n]) => `${n} ${k}`).join(", ");
    head.replaceChildren(
      badge(run.status),
      ` workflow ${run.workflow_id.slice(0, 8)} · started ${when(run.created_at)} · ${
        run.duration !== null && run.duration !== undefined ? seconds(run.duration) : "running"
      } · ${Object.keys(run.tasks).length} tasks (${counts})`,
      run.status === "running"
        ? el("button", { class: "cancel-run", onclick: () => api(`/runs/${runId}/cancel`, { method: "POST" }) }, "Cancel run")
        : "",
    );
  };
  // While events stream: the header once per frame, the timeline (a bar per attempt, all
  // redrawn) and the open panel at most every TIMELINE_MS, so a large run stays responsive.
  const TIMELINE_MS = 500;
  let lastTimeline = 0;
  let timelineTimer = null;
  const drawSlow = () => {
    timelineTimer = null;
    lastTimeline = performance.now();
    drawTimeline(timeline, run.tasks, run.created_at, critical);
    if (selected) taskPanel(panel, run, selected, logs);
  };
  const schedule = () => {
    if (timelineTimer === null) {
      timelineTimer = setTimeout(drawSlow, Math.max(0, TIMELINE_MS - (performance.now() - lastTimeline)));
    }
    if (pendingDraw) return;
    pendingDraw = true;
    requestAnimationFrame(() => {
      pendingDraw = false;
      drawHead();
    });
  };
  const recount = () => {
    const counts = {};
    for (const t of Object.values(run.tasks)) counts[t.status] = (counts[t.status] || 0) + 1;
    run.counts = counts;
  };
  const onMessage = (message) => {
    const data = message.data || {};
    const now = Date.now() / 1000;
    const task = data.task_id ? run.tasks[data.task_id] : null;
    if (message.type === "start_task" && task) {
      task.status = "running";
      task.node_id = data.node_id;
      task.attempt = data.attempt || 1;
      task.started_at = now;
      task.attempts = [...(task.attempts || []), { attempt: task.attempt, node_id: data.node_id, started_at: now }];
    } else if (ENDS[message.type] && task) {
      task.status = ENDS[message.type];
      task.ended_at = now;
      if (message.type === "finish_task") task.result = data.result;
      if (message.type === "task_exception") task.error = data.error;
      if (message.type === "task_skipped") task.reason = data.reason;
    } else if (message.type === "task_log" && data.task_id) {
      if (!logs.has(data.task_id)) logs.set(data.task_id, []);
      logs.get(data.task_id).push(data.line ?? data.text ?? JSON.stringify(data));
    } else if (message.type === "finish_workflow") {
      run.status = data.status;
      run.duration = now - run.created_at;
      critical = criticalPath(run.tasks, run.edges);
      view.markCritical(critical);
    } else if (message.type === "barrier_waiting" || message.type === "barrier_decided") {
      loadBarriers();
    }
    if (task) {
      view.setState(data.task_id, task.status);
      recount();
    }
    schedule();
  };
  const loadBarriers = async () => {
    try {
      const body = await api(`/runs/${runId}/barriers`);
      barriers.replaceChildren(...barrierRows(runId, body.barriers || [], loadBarriers));
    } catch (error) {
      barriers.replaceChildren(error instanceof Unavailable ? "" : unavailable(error, "Approvals"));
    }
  };
  (async () => {
    try {
      run = (await api(`/runs/${runId}`)).run;
    } catch (error) {
      head.replaceChildren(unavailable(error, "This run"));
      return;
    }
    run.edges = run.edges || [];
    view = drawDag(dag, run.tasks, run.edges, (id) => {
      selected = id;
      taskPanel(panel, run, id, logs);
    });
    if (run.status !== "running") {
      critical = criticalPath(run.tasks, run.edges);
      view.markCritical(critical);
    }
    drawHead();
    drawTimeline(timeline, run.tasks, run.created_at, critical);
    loadBarriers();
    if (run.status === "running" && !closed) {
      socket = runSocket(run.workflow_id, runId, run.events, onMessage, () => {});
    }
  })();
  return () => {
    closed = true;
    if (socket) socket.close();
  };
}

// --- approvals -------------------------------------------------------------------------

function barrierRows(runId, barriers, reload) {
  return barriers.map((b) => {
    const id = b.barrier_id || b.id;
    const decide = (decision) => async () => {
      await api(`/runs/${runId}/barriers/${id}`, {
        method: "POST",
        body: JSON.stringify({ decision, comment: "", by: "dashboard" }),
      });
      reload();
    };
    const waiting = !b.decision && (b.status === undefined || b.status === "waiting");
    return el(
      "div",
      { class: "barrier", "data-barrier-id": id },
      el("strong", {}, b.name || b.task_name || id),
      ` run ${runId.slice(0, 8)} · ${b.status || (b.decision ? "decided" : "waiting")} `,
      b.message || b.prompt || "",
      waiting ? el("button", { class: "approve", onclick: decide("approve") }, "Approve") : "",
      waiting ? el("button", { class: "reject", onclick: decide("reject") }, "Reject") : "",
    );
  });
}

function approvalsPage() {
  const box = el("div", { id: "approvals" });
  page.replaceChildren(el("h1", {}, "Approvals"), box);
  const render = async () => {
    let runs;
    try {
      runs = (await api("/runs?status=running")).runs;
    } catch (error) {
      box.replaceChildren(unavailable(error, "The runs list"));
      return;
    }
    const rows = [];
    for (const r of runs) {
      try {
        const body = await api(`/runs/${r.run_id}/barriers`);
        rows.push(...barrierRows(r.run_id, (body.barriers || []).filter((b) => !b.decision), render));
      } catch (error) {
        box.replaceChildren(unavailable(error, "Approvals"));
        return;
      }
    }
    box.replaceChildren(...(rows.length ? rows : [el("p", { class: "muted" }, "Nothing waits for approval.")]));
  };
  return every(render);
}

// --- queue -----------------------------------------------------------------------------

function queuePage() {
  const summary = el("div", { id: "queue-summary" });
  const table = el("div", { id: "queue" });
  page.replaceChildren(el("h1", {}, "Queue"), summary, table);
  const render = async () => {
    let status;
    let details;
    try {
      [status, details] = await Promise.all([api("/queue/status"), api("/queue/details")]);
    } catch (error) {
      table.replaceChildren(unavailable(error, "The queue"));
      return;
    }
    summary.replaceChildren(
      `${status.total} tasks · `,
      Object.entries(status.by_state).map(([k, n]) => `${k.replaceAll("_", " ")}: ${n}`).join(" · "),
    );
    const rows = details.tasks.map((t) =>
      el(
        "tr",
        { "data-task-id": t.task_id },
        el("td", {}, el("a", { href: `#/run/${t.run_id}` }, t.run_id.slice(0, 8))),
        el("td", {}, t.task_name),
        el("td", {}, t.priority_name),
        el("td", {}, t.state.replaceAll("_", " ")),
        el("td", {}, seconds(t.waited)),
        el("td", {}, t.reason || "–"),
        el(
          "td",
          {},
          t.state === "running"
            ? ""
            : el(
                "select",
                {
                  class: "priority",
                  onchange: (e) =>
                    api(`/queue/tasks/${t.task_id}/priority`, {
                      method: "PUT",
                      body: JSON.stringify({ priority: e.target.value, run_id: t.run_id }),
                    }).then(render),
                },
                ["critical", "high", "normal", "low", "idle"].map((p) =>
                  el("option", { value: p, selected: p === t.priority_name }, p),
                ),
              ),
          el(
            "button",
            {
              class: "cancel-task",
              onclick: () => api(`/queue/tasks/${t.task_id}?run_id=${t.run_id}`, { method: "DELETE" }).then(render),
            },
            "Cancel",
          ),
        ),
      ),
    );
    table.replaceChildren(
      el(
        "table",
        { id: "queue-table" },
        el("thead", {}, el("tr", {}, ["run", "task", "priority", "state", "waited", "why it waits", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows),
      ),
      rows.length ? "" : el("p", { class: "muted" }, "Nothing is queued."),
    );
  };
  return every(render);
}

// --- nodes -----------------------------------------------------------------------------

function nodesPage() {
  const table = el("div", { id: "nodes" });
  page.replaceChildren(el("h1", {}, "Nodes"), table);
  const render = async () => {
    let nodes;
    try {
      nodes = (await api("/nodes")).nodes;
    } catch (error) {
      table.replaceChildren(unavailable(error, "The nodes list"));
      return;
    }
    const rows = nodes.map((n) => {
      const gpus = Object.entries(n.total.gpus || {}).map(([id, g]) => {
        const free = (n.available.gpus || {})[id]?.gpu_mem_available ?? 0;
        return `GPU ${id}: ${bytes((g.gpu_mem_total - free) * 1024 * 1024)} of ${bytes(g.gpu_mem_total * 1024 * 1024)} reserved`;
      });
      const usedCpu = n.total.cpu - n.available.cpu;
      const usedMem = n.total.memory_bytes - n.available.memory_bytes;
      return el(
        "tr",
        { "data-node-id": n.node_id },
        el("td", {}, n.node_id.slice(0, 12)),
        el("td", {}, n.node_ip || "–"),
        el("td", {}, badge(n.state)),
        el("td", { class: "cpus" }, `${usedCpu} of ${n.total.cpu} reserved`),
        el("td", {}, `${bytes(usedMem)} of ${bytes(n.total.memory_bytes)} reserved`),
        el("td", {}, gpus.length ? gpus.join("; ") : "none"),
      );
    });
    table.replaceChildren(
      el(
        "table",
        { id: "nodes-table" },
        el("thead", {}, el("tr", {}, ["node", "address", "state", "CPU", "memory", "GPUs"].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows),
      ),
    );
  };
  return every(render);
}

// --- router ----------------------------------------------------------------------------

function route() {
  cleanup();
  const [, name, arg] = (location.hash || "#/runs").split("/");
  for (const a of document.querySelectorAll("nav a[data-page]")) {
    a.classList.toggle("active", a.dataset.page === (name === "run" ? "runs" : name));
  }
  const pages = { runs: runsPage, run: () => runPage(arg), approvals: approvalsPage, queue: queuePage, nodes: nodesPage };
  cleanup = (pages[name] || runsPage)();
}

window.addEventListener("hashchange", route);
route();
