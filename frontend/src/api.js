// Talking to the head: same origin, the token travels as the cookie GET /?token= set.

export class Unavailable extends Error {}

export async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    ...options,
  });
  if (response.status === 404 || response.status === 405) {
    let detail = "";
    try {
      detail = (await response.json()).detail || "";
    } catch {
      detail = "";
    }
    const error = new Unavailable(detail || `${path} is not available on this head`);
    error.status = response.status;
    throw error;
  }
  const body = await response.json();
  if (!response.ok) {
    throw new Error(body.detail ? JSON.stringify(body.detail) : `${response.status}`);
  }
  return body;
}

export function runSocket(workflowId, runId, fromSeq, onMessage, onClose) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/get_workflow_res/${workflowId}/${runId}?from_seq=${fromSeq}`;
  const socket = new WebSocket(url);
  socket.onmessage = (e) => onMessage(JSON.parse(e.data));
  socket.onclose = (e) => onClose(e);
  return socket;
}
