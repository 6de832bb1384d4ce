// The timeline: one lane per node and slot (tasks that overlapped on a node take separate
// slots), one bar per task attempt, from when it started to when it ended (or now).
import { el, seconds } from "./format.js";

export function drawTimeline(container, tasks, runStart, critical) {
  const now = Date.now() / 1000;
  const bars = [];
  for (const [id, task] of Object.entries(tasks)) {
    const attempts = task.attempts || [];
    attempts.forEach((a, i) => {
      if (!a.started_at) return;
      const last = i === attempts.length - 1;
      const end = last ? task.ended_at || now : attempts[i + 1].started_at || now;
      bars.push({ id, node: a.node_id || "?", start: a.started_at, end, task, attempt: a.attempt });
    });
  }
  if (!bars.length) {
    container.replaceChildren(el("p", { class: "muted" }, "No task has started yet."));
    return;
  }
  const start = Math.min(runStart || Infinity, ...bars.map((b) => b.start));
  const span = Math.max(0.001, Math.max(...bars.map((b) => b.end)) - start);
  bars.sort((a, b) => a.start - b.start);
  const lanes = new Map(); // node -> [slot end times]
  const rows = new Map(); // "node / slot" -> bars
  for (const bar of bars) {
    const slots = lanes.get(bar.node) || [];
    let slot = slots.findIndex((endAt) => endAt <= bar.start);
    if (slot < 0) {
      slot = slots.length;
      slots.push(0);
    }
    slots[slot] = bar.end;
    lanes.set(bar.node, slots);
    const key = `${bar.node.slice(0, 12)} / ${slot}`;
    if (!rows.has(key)) rows.set(key, []);
    rows.get(key).push(bar);
  }
  const body = el("div", { class: "timeline" });
  for (const [key, laneBars] of [...rows].sort()) {
    const track = el("div", { class: "track" });
    for (const bar of laneBars) {
      const left = ((bar.start - start) / span) * 100;
      const width = Math.max(0.3, ((bar.end - bar.start) / span) * 100);
      track.append(
        el("div", {
          class: `bar state-${bar.task.status}${critical.has(bar.id) ? " critical" : ""}`,
          style: `left:${left}%;width:${width}%`,
          title: `${bar.task.task_name} attempt ${bar.attempt}: ${seconds(bar.end - bar.start)}`,
          "data-task-id": bar.id,
        }),
      );
    }
    body.append(el("div", { class: "lane" }, el("span", { class: "lane-name" }, key), track));
  }
  body.append(el("p", { class: "muted" }, `0 – ${seconds(span)}; outlined bars are on the critical path`));
  container.replaceChildren(body);
}
