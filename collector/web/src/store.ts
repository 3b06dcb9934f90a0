// The page's shared state: who the caller is, the live fleet (clusters and
// firing alerts), the stream's status, and the errors to show. One small
// observable object; components re-render when it changes (useStore).
//
//   api.ts (requests) ──┐
//   live.ts (stream, polling) ──> set() ──> listeners ──> components
//   components (actions) ──┘

import { useEffect, useState } from "preact/hooks";
import type { Alert, ClusterState, WhoAmI } from "./types";

export type Theme = "auto" | "light" | "dark";

export interface State {
  /** The caller, once `/api/v1/whoami` answered. */
  whoami: WhoAmI | null;
  /** The API answered 401: credentials are needed (the login box shows). */
  needLogin: boolean;
  /** Why the last token was refused, for the login box. */
  loginError: string;
  /** Every cluster's live state; null until the first answer. */
  clusters: ClusterState[] | null;
  /** Alerts firing now; null until the first answer. */
  alerts: Alert[] | null;
  /** The event stream is connected. */
  live: boolean;
  /** Failed API calls by what made them, with the server's message. */
  errors: Record<string, string>;
  /** When clusters and alerts were last refreshed, ms. */
  updatedMs: number;
  theme: Theme;
}

const THEME_KEY = "etcdmon.theme";

function savedTheme(): Theme {
  try {
    const t = localStorage.getItem(THEME_KEY);
    if (t === "light" || t === "dark") return t;
  } catch {
    // Storage may be disabled; the system's preference applies.
  }
  return "auto";
}

let state: State = {
  whoami: null,
  needLogin: false,
  loginError: "",
  clusters: null,
  alerts: null,
  live: false,
  errors: {},
  updatedMs: 0,
  theme: savedTheme(),
};

const listeners = new Set<() => void>();

export function get(): State {
  return state;
}

export function set(patch: Partial<State>): void {
  state = { ...state, ...patch };
  for (const l of listeners) l();
}

export function subscribe(fn: () => void): () => void {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** The state, re-rendering the calling component when it changes. */
export function useStore(): State {
  const [, setTick] = useState(0);
  useEffect(() => subscribe(() => setTick((n) => n + 1)), []);
  return state;
}

/** Shows `message` in the error banner under `key` (replacing what was there). */
export function reportError(key: string, message: string): void {
  if (state.errors[key] === message) return;
  set({ errors: { ...state.errors, [key]: message } });
}

/** Removes the banner's entry `key` (its call succeeded since). */
export function clearError(key: string): void {
  if (!(key in state.errors)) return;
  const errors = { ...state.errors };
  delete errors[key];
  set({ errors });
}

export function setTheme(theme: Theme): void {
  try {
    if (theme === "auto") localStorage.removeItem(THEME_KEY);
    else localStorage.setItem(THEME_KEY, theme);
  } catch {
    // Not kept across reloads then.
  }
  applyTheme(theme);
  set({ theme });
}

/** Sets `data-theme` on the root element; "auto" leaves it to the system. */
export function applyTheme(theme: Theme): void {
  const root = document.documentElement;
  if (theme === "auto") root.removeAttribute("data-theme");
  else root.setAttribute("data-theme", theme);
}

/** Whether the page is dark now (the toggle's choice or the system's). */
export function isDark(): boolean {
  if (state.theme !== "auto") return state.theme === "dark";
  return window.matchMedia?.("(prefers-color-scheme: dark)").matches ?? false;
}

/** The caller may acknowledge, silence and open maintenance windows. */
export function canOperate(s: State = state): boolean {
  return s.whoami?.role === "operator" || s.whoami?.role === "admin";
}
