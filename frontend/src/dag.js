// The run's DAG: laid out by dagre, drawn as SVG; one <g> per task whose class is its state.
import dagre from "@dagrejs/dagre";

const SVG = "http://www.w3.org/2000/svg";
const W = 150;
const H = 34;

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

export function drawDag(container, tasks, edges, onSelect) {
  const graph = new dagre.graphlib.Graph();
  graph.setGraph({ rankdir: "LR", nodesep: 12, ranksep: 50, marginx: 10, marginy: 10 });
  graph.setDefaultEdgeLabel(() => ({}));
  for (const id of Object.keys(tasks)) graph.setNode(id, { width: W, height: H });
  for (const [a, b] of edges) graph.setEdge(a, b);
  dagre.layout(graph);
  const { width, height } = graph.graph();
  const root = svg("svg", {
    id: "dag",
    width: Math.max(width, 200),
    height: Math.max(height, 60),
    viewBox: `0 0 ${Math.max(width, 200)} ${Math.max(height, 60)}`,
  });
  const edgeLayer = svg("g", { class: "edges" });
  for (const e of graph.edges()) {
    const points = graph.edge(e).points.map((p) => `${p.x},${p.y}`).join(" ");
    edgeLayer.append(svg("polyline", { points, class: "edge" }));
  }
  root.append(edgeLayer);
  const nodes = new Map();
  for (const id of graph.nodes()) {
    const pos = graph.node(id);
    const task = tasks[id];
    const g = svg("g", {
      class: `node state-${task.status}`,
      "data-task-id": id,
      "data-state": task.status,
      transform: `translate(${pos.x - W / 2},${pos.y - H / 2})`,
    });
    g.append(svg("rect", { width: W, height: H, rx: 6 }));
    const label = svg("text", { x: 8, y: H / 2 + 4 });
    const name = task.task_name || id.slice(0, 8);
    label.textContent = name.length > 20 ? `${name.slice(0, 19)}…` : name;
    g.append(label);
    const title = svg("title", {});
    title.textContent = `${name} (${task.status})`;
    g.append(title);
    g.addEventListener("click", () => onSelect(id));
    nodes.set(id, g);
  }
  const nodeLayer = svg("g", { class: "nodes" });
  nodeLayer.append(...nodes.values());
  root.append(nodeLayer);
  container.replaceChildren(root);
  return {
    setState(id, status) {
      const g = nodes.get(id);
      if (!g) return;
      g.setAttribute("class", `node state-${status}${g.classList.contains("critical") ? " critical" : ""}`);
      g.setAttribute("data-state", status);
    },
    markCritical(ids) {
      for (const [id, g] of nodes) g.classList.toggle("critical", ids.has(id));
    },
  };
}

// The critical path: the chain of dependent tasks whose ran-for times add up the most.
export function criticalPath(tasks, edges) {
  const preds = new Map();
  const indegree = new Map(Object.keys(tasks).map((id) => [id, 0]));
  for (const [a, b] of edges) {
    if (!preds.has(b)) preds.set(b, []);
    preds.get(b).push(a);
    indegree.set(b, (indegree.get(b) || 0) + 1);
  }
  const children = new Map();
  for (const [a, b] of edges) {
    if (!children.has(a)) children.set(a, []);
    children.get(a).push(b);
  }
  const order = [];
  const queue = [...indegree].filter(([, n]) => n === 0).map(([id]) => id);
  while (queue.length) {
    const id = queue.shift();
    order.push(id);
    for (const c of children.get(id) || []) {
      indegree.set(c, indegree.get(c) - 1);
      if (indegree.get(c) === 0) queue.push(c);
    }
  }
  const cost = new Map();
  const via = new Map();
  for (const id of order) {
    const t = tasks[id];
    const own = t.started_at && t.ended_at ? t.ended_at - t.started_at : 0;
    let best = 0;
    for (const p of preds.get(id) || []) {
      if (cost.get(p) > best) {
        best = cost.get(p);
        via.set(id, p);
      }
    }
    cost.set(id, best + own);
  }
  let end = null;
  for (const [id, c] of cost) if (end === null || c > cost.get(end)) end = id;
  const path = new Set();
  while (end) {
    path.add(end);
    end = via.get(end);
  }
  return path;
}
