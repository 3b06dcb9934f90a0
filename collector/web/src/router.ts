// Hash routing: the page lives at `/`, and the part after `#` says which view
// and with what selection, so links can be shared and the server serves only
// `/` and `/assets/*`.
//
//   #/                                   fleet overview (?region=&group=&tag=)
//   #/cluster/NAME?range=1h&member=M     one cluster
//   #/alerts?range=24h                   alerts, silences, maintenance, history
//   #/compare?clusters=a,b&metric=M&fn=F&q=Q&range=R   (or region=R instead of clusters)

import { useEffect, useState } from "preact/hooks";

export interface Route {
  /** Path segments after `#/`, decoded: `["cluster", "prod-eu-1"]`. */
  path: string[];
  params: URLSearchParams;
}

export function parseHash(hash: string = location.hash): Route {
  const raw = hash.replace(/^#/, "");
  const q = raw.indexOf("?");
  const pathPart = q < 0 ? raw : raw.slice(0, q);
  const query = q < 0 ? "" : raw.slice(q + 1);
  const path = pathPart
    .split("/")
    .filter((s) => s !== "")
    .map((s) => {
      try {
        return decodeURIComponent(s);
      } catch {
        return s;
      }
    });
  return { path, params: new URLSearchParams(query) };
}

/** A link target: `href(["cluster", name], {range: "1h"})` -> `#/cluster/NAME?range=1h`. */
export function href(path: string[], params: Record<string, string | undefined | null> = {}): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") p.set(k, v);
  }
  const query = p.toString();
  return `#/${path.map(encodeURIComponent).join("/")}${query ? `?${query}` : ""}`;
}

/** The current route's parameters with `changes` applied, as a link target. */
export function withParams(route: Route, changes: Record<string, string | undefined | null>): string {
  const params: Record<string, string> = {};
  route.params.forEach((v, k) => {
    params[k] = v;
  });
  for (const [k, v] of Object.entries(changes)) {
    if (v === undefined || v === null || v === "") delete params[k];
    else params[k] = v;
  }
  return href(route.path, params);
}

const ROUTE_EVENT = "etcdmon:route";

/** Goes to `target` (a `#/...` link); `replace` keeps the history entry
 * (for filters typed into a field). */
export function navigate(target: string, replace = false): void {
  if (target === location.hash) return;
  if (replace) history.replaceState(null, "", target);
  else history.pushState(null, "", target);
  window.dispatchEvent(new Event(ROUTE_EVENT));
}

/** The current route, re-rendering on change. */
export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseHash());
  useEffect(() => {
    const update = () => setRoute(parseHash());
    window.addEventListener("hashchange", update);
    window.addEventListener("popstate", update);
    window.addEventListener(ROUTE_EVENT, update);
    return () => {
      window.removeEventListener("hashchange", update);
      window.removeEventListener("popstate", update);
      window.removeEventListener(ROUTE_EVENT, update);
    };
  }, []);
  return route;
}

/** The chart ranges offered, and the API's `from` for each. */
export const RANGES = ["15m", "1h", "6h", "24h", "7d"] as const;
export type Range = (typeof RANGES)[number];

export function rangeParam(route: Route, fallback: Range = "1h"): Range {
  const r = route.params.get("range");
  return (RANGES as readonly string[]).includes(r ?? "") ? (r as Range) : fallback;
}

export function rangeMs(r: Range): number {
  const n = parseInt(r, 10);
  const unit = r.slice(String(n).length);
  return n * (unit === "m" ? 60_000 : unit === "h" ? 3_600_000 : 86_400_000);
}
