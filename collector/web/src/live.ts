// Keeps the fleet current without reloads:
//
//   GET /api/v1/stream (SSE, read with fetch so it can carry the token)
//     ├─ event / alert ─> debounced (200 ms) re-fetch of clusters + alerts,
//     │                   and feed listeners (the cluster page's timeline)
//     └─ lagged / reconnect ─> full re-fetch
//   every 5 s ─> re-fetch of clusters + alerts (fallback when the stream is down)
//
// The live indicator shows `live` while the stream is connected and
// `reconnecting` otherwise; reconnects back off from 1 s to 30 s.

import { api, authHeaders, errorText, ApiError } from "./api";
import { clearError, get, reportError, set } from "./store";
import type { Alert, ClusterState } from "./types";

/** One item of the stream: its `event:` name and parsed `data:`. */
export interface FeedItem {
  kind: string;
  data: unknown;
}

const feedListeners = new Set<(item: FeedItem) => void>();

/** Calls `fn` with every stream item; returns the unsubscribe function. */
export function onFeed(fn: (item: FeedItem) => void): () => void {
  feedListeners.add(fn);
  return () => feedListeners.delete(fn);
}

let refreshing: Promise<void> | null = null;
let again = false;

/** Fetches clusters and firing alerts now (one request of each at a time). */
export function refreshFleet(): Promise<void> {
  if (refreshing) {
    again = true;
    return refreshing;
  }
  refreshing = (async () => {
    const [clusters, alerts] = await Promise.allSettled([
      api<{ clusters: ClusterState[] }>("/api/v1/clusters"),
      api<{ alerts: Alert[] }>("/api/v1/alerts"),
    ]);
    const patch: { clusters?: ClusterState[]; alerts?: Alert[]; updatedMs: number } = { updatedMs: Date.now() };
    if (clusters.status === "fulfilled") {
      patch.clusters = clusters.value.clusters ?? [];
      clearError("clusters");
    } else if (!(clusters.reason instanceof ApiError && clusters.reason.status === 401)) {
      reportError("clusters", `GET /api/v1/clusters: ${errorText(clusters.reason)}`);
    }
    if (alerts.status === "fulfilled") {
      patch.alerts = alerts.value.alerts ?? [];
      clearError("alerts");
    } else if (!(alerts.reason instanceof ApiError && alerts.reason.status === 401)) {
      reportError("alerts", `GET /api/v1/alerts: ${errorText(alerts.reason)}`);
    }
    set(patch);
  })().finally(() => {
    refreshing = null;
    if (again) {
      again = false;
      void refreshFleet();
    }
  });
  return refreshing;
}

let debounce: number | undefined;
let followUp: number | undefined;

/** Re-fetches in ~200 ms, once for a burst of items. After an alert
 * transition also once more a little later: the alert list comes from the
 * alerter's store, which records the transition a moment after the stream
 * announced it. */
function scheduleRefresh(alert: boolean): void {
  if (debounce === undefined) {
    debounce = window.setTimeout(() => {
      debounce = undefined;
      void refreshFleet();
    }, 200);
  }
  if (alert) {
    window.clearTimeout(followUp);
    followUp = window.setTimeout(() => void refreshFleet(), 1500);
  }
}

let started = false;
let stopped = false;
let poller: number | undefined;
let controller: AbortController | null = null;

/** Starts polling and the stream (once the caller is known; the first
 * fetch of the fleet is the caller's, see main.tsx). */
export function startLive(): void {
  stopped = false;
  if (started) return;
  started = true;
  poller = window.setInterval(() => {
    if (!get().needLogin) void refreshFleet();
  }, 5000);
  void streamLoop();
}

/** Stops everything (credentials are needed again). */
export function stopLive(): void {
  stopped = true;
  started = false;
  window.clearInterval(poller);
  controller?.abort();
  set({ live: false });
}

const sleep = (ms: number) => new Promise((r) => window.setTimeout(r, ms));

async function streamLoop(): Promise<void> {
  let backoff = 1000;
  while (!stopped) {
    const ok = await streamOnce();
    set({ live: false });
    if (stopped) return;
    if (ok) backoff = 1000;
    // Jitter keeps many open pages from reconnecting in step.
    await sleep(backoff * (0.75 + Math.random() * 0.5));
    backoff = Math.min(backoff * 2, 30_000);
  }
}

/** A stream that sends nothing, not even its 15 s keep-alive, for this long is dead. */
const SILENCE_MS = 45_000;

/** One connection; true if it was established. */
async function streamOnce(): Promise<boolean> {
  controller = new AbortController();
  const ctl = controller;
  let watchdog: number | undefined;
  const arm = () => {
    window.clearTimeout(watchdog);
    watchdog = window.setTimeout(() => ctl.abort(), SILENCE_MS);
  };
  let connected = false;
  try {
    arm();
    const res = await fetch("/api/v1/stream", {
      headers: { Accept: "text/event-stream", ...authHeaders() },
      signal: ctl.signal,
      cache: "no-store",
    });
    if (res.status === 401) {
      set({ needLogin: true });
      stopLive();
      return false;
    }
    if (!res.ok || !res.body) return false;
    connected = true;
    set({ live: true });
    // Whatever happened while disconnected.
    scheduleRefresh(false);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser(dispatch);
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      arm();
      parser.push(decoder.decode(value, { stream: true }));
    }
  } catch {
    // Aborted, or the connection broke: reconnect.
  } finally {
    window.clearTimeout(watchdog);
  }
  return connected;
}

function dispatch(kind: string, data: string): void {
  let parsed: unknown = data;
  try {
    parsed = JSON.parse(data);
  } catch {
    // `lagged` carries a bare number; anything else stays text.
  }
  scheduleRefresh(kind === "alert" || kind === "lagged");
  for (const l of feedListeners) l({ kind, data: parsed });
}

/** Server-Sent Events framing: `event:` and `data:` lines, a blank line ends
 * an item, lines starting with `:` are comments (keep-alives). */
export class SseParser {
  private buf = "";
  private event = "";
  private data: string[] = [];

  constructor(private readonly emit: (kind: string, data: string) => void) {}

  push(chunk: string): void {
    this.buf += chunk;
    for (;;) {
      const nl = this.buf.search(/\r\n|\r|\n/);
      if (nl < 0) return;
      // A "\r" that ends the chunk may be the first half of "\r\n".
      if (this.buf[nl] === "\r" && nl === this.buf.length - 1) return;
      const line = this.buf.slice(0, nl);
      const len = this.buf.startsWith("\r\n", nl) ? 2 : 1;
      this.buf = this.buf.slice(nl + len);
      this.line(line);
    }
  }

  private line(line: string): void {
    if (line === "") {
      if (this.data.length) this.emit(this.event || "message", this.data.join("\n"));
      this.event = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
  }
}
