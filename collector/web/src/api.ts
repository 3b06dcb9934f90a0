// Requests to the collector's API (same origin). Every request carries the
// stored API token, if there is one, as `Authorization: Bearer`; a 401 asks
// for a token (the login box); any failure becomes an ApiError with the
// server's one-sentence message (`{"error": "..."}`).

import { get, set } from "./store";

const TOKEN_KEY = "etcdmon.token";
const NAME_KEY = "etcdmon.name";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

let memoryToken = "";

export function token(): string {
  try {
    return localStorage.getItem(TOKEN_KEY) ?? memoryToken;
  } catch {
    return memoryToken;
  }
}

export function setToken(t: string): void {
  try {
    if (t) localStorage.setItem(TOKEN_KEY, t);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: the token lasts until the page is reloaded.
    memoryToken = t;
  }
}

/** The headers every request carries. */
export function authHeaders(): Record<string, string> {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

/** The name acknowledgements and silences are recorded under when the
 * caller has no token (anonymous access): the API needs one. */
export function actorName(): string {
  try {
    return localStorage.getItem(NAME_KEY) ?? "";
  } catch {
    return "";
  }
}

export function setActorName(n: string): void {
  try {
    if (n) localStorage.setItem(NAME_KEY, n);
    else localStorage.removeItem(NAME_KEY);
  } catch {
    // Not kept then.
  }
}

/** `by` / `created_by` for a change: empty for a token (the API then uses
 * the token's name), else the name the user gave, or "anonymous". */
export function actorField(): string {
  const me = get().whoami;
  if (me && me.via !== "anonymous") return "";
  return actorName().trim() || me?.name || "anonymous";
}

/** Calls the API; resolves to the parsed JSON (undefined for 204). */
export async function api<T>(path: string, init: RequestInit = {}): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json", ...authHeaders() };
  if (init.body !== undefined) headers["Content-Type"] = "application/json";
  let res: Response;
  try {
    res = await fetch(path, { ...init, headers: { ...headers, ...(init.headers as Record<string, string>) } });
  } catch (e) {
    throw new ApiError(0, `cannot reach the collector (${(e as Error).message || "network error"})`);
  }
  if (res.status === 401) {
    const msg = await message(res);
    set({ needLogin: true, loginError: token() ? msg : "", live: false });
    throw new ApiError(401, msg);
  }
  if (!res.ok) throw new ApiError(res.status, await message(res));
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  if (!text) return undefined as T;
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new ApiError(res.status, `${path}: the answer is not JSON`);
  }
}

/** The server's message of a failed answer. */
async function message(res: Response): Promise<string> {
  try {
    const body = await res.text();
    const parsed = JSON.parse(body) as { error?: unknown };
    if (typeof parsed.error === "string" && parsed.error) return parsed.error;
  } catch {
    // Not the JSON error body: say what status it was.
  }
  return `HTTP ${res.status} ${res.statusText}`.trim();
}

/** A POST with a JSON body. */
export function post<T>(path: string, body: unknown): Promise<T> {
  return api<T>(path, { method: "POST", body: JSON.stringify(body) });
}

export function del<T>(path: string): Promise<T> {
  return api<T>(path, { method: "DELETE" });
}

/** A query string from the given parameters, leaving out empty ones. */
export function qs(params: Record<string, string | number | undefined | null>): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") p.set(k, String(v));
  }
  const s = p.toString();
  return s ? `?${s}` : "";
}

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
