// The run viewer: one thread's messages as a chat, its runs' event timelines, its new records live.
// Records are untrusted: their data reaches the page through textContent and attributes only.
import { sseEvents } from "./sse.js";

const TOKEN_KEY = "runevents.token"; // in sessionStorage: this tab only, never in the URL
const MESSAGE_PAGE = 50; // messages per page
const EVENT_PAGE = 500; // records per page of a run's timeline
const RETRY_MS = [500, 1000, 2000, 5000, 10000]; // waits before reconnecting a dropped stream

const byId = (id) => document.getElementById(id);

// The open thread: what the page shows of it, and the signal that stops every read of it.
let view = null;

// --- Reading the API -------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function threadUrl(thread, path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined) query.set(name, value);
  }
  const search = query.toString();
  return `/api/threads/${encodeURIComponent(thread)}${path}${search ? `?${search}` : ""}`;
}

async function api(current, path, params) {
  const response = await fetch(threadUrl(current.thread, path, params), {
    headers: authHeaders(),
    signal: current.stop.signal,
    cache: "no-store",
  });
  if (!response.ok) throw await httpError(response);
  return response.json();
}

async function httpError(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = Array.isArray(body.detail)
      ? body.detail.map((problem) => `${problem.loc.join(".")}: ${problem.msg}`).join("; ")
      : String(body.detail);
  } catch {
    // Not JSON: the status text says it.
  }
  return new HttpError(response.status, detail);
}

function describe(error) {
  if (!(error instanceof HttpError)) return `The server could not be reached (${error.message}).`;
  if (error.status === 401) {
    return "401 Unauthorized: this server needs a bearer token, and none or an unknown one was sent. "
      + "Enter a valid token above.";
  }
  if (error.status === 404) {
    return `404: ${error.detail}. A user's token sees only the threads that hold a message of theirs.`;
  }
  return `${error.status}: ${error.detail}`;
}

// A failure of a read of the open thread; one of a thread since closed is nobody's concern.
function fail(current, error) {
  if (current !== view || current.stop.signal.aborted) return;
  showProblem(describe(error));
}

// --- Small DOM pieces ------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function timeOf(iso) {
  const node = el("time", "", new Date(iso).toLocaleTimeString([], { hour12: false }));
  node.dateTime = iso;
  node.title = iso;
  return node;
}

// Insert `node` among `list`'s children in the order of their data-seq (live ones go last: fast).
function placeBySeq(list, node) {
  const seq = Number(node.dataset.seq);
  const last = list.lastElementChild;
  if (!last || Number(last.dataset.seq) < seq) {
    list.append(node);
    return;
  }
  const next = [...list.children].find((child) => Number(child.dataset.seq) > seq);
  list.insertBefore(node, next ?? null);
}

function showProblem(text) {
  const problem = byId("problem");
  problem.textContent = text;
  problem.hidden = !text;
}

const LIVE_TEXT = {
  off: "not live",
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  deleted: "thread deleted",
};

function setLive(state) {
  const live = byId("live");
  live.dataset.state = state;
  live.textContent = LIVE_TEXT[state];
}

// --- The chat --------------------------------------------------------------------------------

// A message's text: LangChain's content is a string or a list of parts ({type: "text", text}).
function textOf(body) {
  if (typeof body === "string") return body;
  if (Array.isArray(body)) {
    const text = (part) => (typeof part === "string" ? part : (part?.text ?? JSON.stringify(part)));
    return body.map(text).join("\n");
  }
  return body === undefined || body === null ? "" : JSON.stringify(body);
}

function bubble(record) {
  const content = record.content;
  const message = content && typeof content === "object" && !Array.isArray(content) ? content : { content };
  const kind = ["human", "ai", "tool"].includes(message.type) ? message.type : "other";
  const node = el("article", `bubble ${kind}`);
  node.dataset.seq = record.seq;
  node.dataset.kind = kind;
  const meta = el("header", "meta");
  const who = kind === "tool" && message.name ? `tool · ${message.name}` : message.type;
  meta.append(el("span", "who", String(who ?? record.event_type)), el("span", "seq", `#${record.seq}`));
  meta.append(el("span", "run", record.run_id), timeOf(record.created_at));
  node.append(meta, el("div", "text", textOf(message.content)));
  for (const call of Array.isArray(message.tool_calls) ? message.tool_calls : []) {
    node.append(el("div", "call", `calls ${call?.name}(${JSON.stringify(call?.args ?? {})})`));
  }
  return node;
}

function addMessage(current, record) {
  noteRun(current, record);
  if (current.messages.has(record.seq)) return;
  current.messages.add(record.seq);
  const chat = byId("chat");
  const atBottom = chat.scrollHeight - chat.scrollTop - chat.clientHeight < 40;
  placeBySeq(chat, bubble(record));
  if (atBottom) chat.scrollTop = chat.scrollHeight;
  byId("chat-empty").hidden = true;
}

// One page of `GET messages/page`: its messages, and whether an older page exists.
function showPage(current, page) {
  for (const record of page.data) addMessage(current, record);
  const older = byId("older");
  older.hidden = !page.has_more;
  older.dataset.before = page.next_before_seq ?? "";
  byId("chat-empty").hidden = current.messages.size > 0;
}

async function loadOlder() {
  const current = view;
  const older = byId("older");
  older.disabled = true;
  try {
    const params = { limit: MESSAGE_PAGE, before_seq: older.dataset.before };
    const page = await api(current, "/messages/page", params);
    if (current === view) showPage(current, page);
  } catch (error) {
    fail(current, error);
  } finally {
    older.disabled = false;
  }
}

// --- Runs and their timelines ----------------------------------------------------------------

// List the run of `record`, ordered by the earliest seq of it the page has seen.
function noteRun(current, record) {
  let button = current.runs.get(record.run_id);
  if (button && Number(button.dataset.seq) <= record.seq) return;
  if (!button) {
    button = el("button", "run", record.run_id);
    button.type = "button";
    button.dataset.run = record.run_id;
    button.classList.toggle("open", current.timeline?.run === record.run_id);
    button.addEventListener("click", () => {
      location.hash = hashOf(current.thread, record.run_id);
    });
    current.runs.set(record.run_id, button);
  }
  button.dataset.seq = record.seq;
  button.remove();
  placeBySeq(byId("runs"), button);
}

async function openRun(current, run) {
  if (current.timeline?.run === run) return;
  const timeline = { run, seqs: new Set(), groups: new Map() };
  current.timeline = timeline;
  for (const [id, button] of current.runs) button.classList.toggle("open", id === run);
  const title = byId("timeline-title");
  title.textContent = `Run ${run}`;
  title.hidden = false;
  byId("timeline").replaceChildren();
  let after = 0;
  try {
    for (;;) {
      const path = `/runs/${encodeURIComponent(run)}/events`;
      const records = await api(current, path, { limit: EVENT_PAGE, after_seq: after });
      if (current !== view || current.timeline !== timeline) return; // another run or thread opened since
      for (const record of records) addEvent(current, record);
      if (records.length < EVENT_PAGE) return;
      after = records.at(-1).seq;
    }
  } catch (error) {
    fail(current, error);
  }
}

function closeRun(current) {
  current.timeline = null;
  for (const button of current.runs.values()) button.classList.remove("open");
  byId("timeline-title").hidden = true;
  byId("timeline").replaceChildren();
}

// Show `record` in the open run's timeline (once), in its subagent task's group if it has one.
function addEvent(current, record) {
  const timeline = current.timeline;
  if (!timeline || record.run_id !== timeline.run || timeline.seqs.has(record.seq)) return;
  timeline.seqs.add(record.seq);
  const taskId = record.metadata?.task_id;
  if (typeof taskId !== "string") {
    placeBySeq(byId("timeline"), eventRow(record));
    return;
  }
  const group = taskGroup(timeline, taskId, record.seq);
  const steps = group.querySelector(".steps");
  placeBySeq(steps, eventRow(record));
  group.querySelector(".count").textContent = `${steps.children.length} records`;
}

// The group of a subagent's records (metadata.task_id), placed at the seq of its first record.
function taskGroup(timeline, taskId, seq) {
  let group = timeline.groups.get(taskId);
  if (!group) {
    group = el("details", "task");
    group.open = true;
    group.dataset.taskId = taskId;
    const summary = el("summary");
    summary.append(el("span", "label", "subagent task"), el("span", "task-id", taskId), el("span", "count"));
    group.append(summary, el("div", "steps"));
    timeline.groups.set(taskId, group);
  }
  if (!group.dataset.seq || seq < Number(group.dataset.seq)) {
    group.dataset.seq = seq;
    group.remove();
    placeBySeq(byId("timeline"), group);
  }
  return group;
}

// One record, folded: seq, time, category and type; its content and metadata when unfolded.
function eventRow(record) {
  const row = el("details", "event");
  row.dataset.seq = record.seq;
  row.dataset.category = record.category;
  const summary = el("summary");
  summary.append(el("span", "seq", String(record.seq)), timeOf(record.created_at));
  summary.append(el("span", "category", record.category), el("span", "type", record.event_type));
  const metadata = record.metadata ?? {};
  if (metadata.content_truncated) {
    row.classList.add("truncated");
    summary.append(el("span", "cut", `truncated (was ${metadata.original_byte_length ?? "?"} bytes)`));
  }
  const content = typeof record.content === "string"
    ? record.content
    : JSON.stringify(record.content, null, 2);
  row.append(summary, el("div", "label", "content"), el("pre", "content", content));
  row.append(el("div", "label", "metadata"), el("pre", "metadata", JSON.stringify(metadata, null, 2)));
  return row;
}

// --- Live: the thread's stream, read with fetch (sse.js) so that it can carry the Authorization header

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// Follow the thread from the last seq the page has, and again from there after every drop.
async function follow(current) {
  const signal = current.stop.signal;
  for (let attempt = 0; !signal.aborted; attempt++) {
    setLive(attempt ? "reconnecting" : "connecting");
    try {
      const url = threadUrl(current.thread, "/stream", { after_seq: current.lastSeq });
      const headers = { ...authHeaders(), Accept: "text/event-stream" };
      const response = await fetch(url, { headers, signal, cache: "no-store" });
      if (!response.ok) {
        const error = await httpError(response);
        if (error.status >= 500) throw error;
        fail(current, error); // a refusal: reconnecting would be refused again
        setLive("off");
        return;
      }
      setLive("live");
      attempt = 0;
      for await (const event of sseEvents(response.body)) {
        if (event.event === "record") {
          onLiveRecord(current, JSON.parse(event.data));
        } else if (event.event === "deleted") {
          setLive("deleted");
          showProblem("The thread was deleted; reopen it to follow what is written to it next.");
          return;
        } else if (event.event === "error") {
          break; // the store failed: reconnect and resume
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      console.warn("the stream dropped; resuming", error); // a network, a proxy, a restarted server
    }
    if (signal.aborted) return;
    setLive("reconnecting");
    await pause(RETRY_MS[Math.min(attempt, RETRY_MS.length - 1)], signal);
  }
}

function onLiveRecord(current, record) {
  current.lastSeq = Math.max(current.lastSeq, record.seq);
  if (record.category === "message") addMessage(current, record);
  else noteRun(current, record);
  addEvent(current, record);
}

// --- The thread, the URL hash and the forms --------------------------------------------------

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  return { thread: params.get("thread")?.trim() || null, run: params.get("run") || null };
}

function hashOf(thread, run) {
  return `#${new URLSearchParams(run ? { thread, run } : { thread })}`;
}

function closeThread() {
  view?.stop.abort();
  view = null;
  byId("chat").replaceChildren();
  byId("runs").replaceChildren();
  byId("timeline").replaceChildren();
  byId("timeline-title").hidden = true;
  byId("older").hidden = true;
  byId("chat-empty").hidden = true;
  showProblem("");
  setLive("off");
  document.title = "runevents · run viewer";
}

async function openThread(thread) {
  closeThread();
  const current = {
    thread,
    stop: new AbortController(), // aborts every read of this thread when another one opens
    messages: new Set(), // the seqs of the messages shown
    runs: new Map(), // run id -> its button
    timeline: null, // the open run: {run, seqs, groups}
    lastSeq: 0, // the highest seq the page has of the thread: where the stream resumes
  };
  view = current;
  byId("thread-id").value = thread;
  document.title = `${thread} · runevents`;
  try {
    const page = await api(current, "/messages/page", { limit: MESSAGE_PAGE });
    if (current !== view) return;
    showPage(current, page);
    current.lastSeq = Math.max(current.lastSeq, page.data.at(-1)?.seq ?? 0);
  } catch (error) {
    fail(current, error);
    return;
  }
  follow(current);
}

function route() {
  const { thread, run } = readHash();
  if (!thread) {
    closeThread();
    return;
  }
  if (view?.thread !== thread) openThread(thread);
  if (run) openRun(view, run);
  else closeRun(view);
}

function reopen() {
  closeThread();
  route();
}

byId("pick").addEventListener("submit", (event) => {
  event.preventDefault();
  const hash = hashOf(byId("thread-id").value.trim(), null);
  if (location.hash === hash) reopen(); // the same thread again: read it afresh
  else location.hash = hash;
});
byId("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = byId("token").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  reopen();
});
byId("forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  byId("token").value = "";
  reopen();
});
byId("older").addEventListener("click", loadOlder);
window.addEventListener("hashchange", route);
byId("token").value = sessionStorage.getItem(TOKEN_KEY) ?? "";
route();
