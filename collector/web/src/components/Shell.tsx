// The frame around every page: the header (navigation, live indicator,
// role, theme), the error banner and the login box.

import { useState } from "preact/hooks";
import { setToken, token } from "../api";
import { href, type Route } from "../router";
import { clearError, set, setTheme, useStore, type Theme } from "../store";

const NAV: { path: string; label: string }[] = [
  { path: "", label: "Overview" },
  { path: "alerts", label: "Alerts" },
  { path: "compare", label: "Compare" },
];

const NEXT_THEME: Record<Theme, Theme> = { auto: "dark", dark: "light", light: "auto" };

export function Header({ route, onSignOut }: { route: Route; onSignOut: () => void }) {
  const s = useStore();
  const here = route.path[0] ?? "";
  const firing = (s.alerts ?? []).filter((a) => a.state === "firing" && !a.acknowledged && !a.silenced_by?.length).length;
  return (
    <header class="top">
      <a class="skip" href="#main" onClick={(e) => {
        e.preventDefault();
        document.getElementById("main")?.focus();
      }}>
        Skip to content
      </a>
      <a class="brand" href={href([])}>
        etcd-monitor
      </a>
      <nav aria-label="Pages">
        {NAV.map((n) => (
          <a
            key={n.path}
            href={href(n.path ? [n.path] : [])}
            aria-current={here === n.path || (n.path === "" && here === "cluster") ? "page" : undefined}
          >
            {n.label}
            {n.path === "alerts" && firing > 0 ? <span class="count" aria-label={`${firing} unhandled`}>{firing}</span> : null}
          </a>
        ))}
      </nav>
      <div class="spacer" />
      <span
        class={`live ${s.live ? "on" : "off"}`}
        data-testid="live-indicator"
        role="status"
        title={s.live ? "Connected to the event stream" : "Event stream disconnected; polling every 5 s"}
      >
        {s.live ? "live" : "reconnecting"}
      </span>
      {s.whoami ? (
        <span class="who">
          <span class="muted">{s.whoami.name}</span>{" "}
          <span class={`badge role-${s.whoami.role}`} data-testid="whoami" title={`signed in as ${s.whoami.name} (${s.whoami.via})`}>
            {s.whoami.role}
          </span>
        </span>
      ) : null}
      <button
        type="button"
        class="ghost"
        onClick={() => setTheme(NEXT_THEME[s.theme])}
        title="Theme: follows the system, dark or light"
        aria-label={`Theme: ${s.theme}. Switch to ${NEXT_THEME[s.theme]}`}
      >
        {s.theme === "auto" ? "◐ auto" : s.theme === "dark" ? "☾ dark" : "☀ light"}
      </button>
      {token() ? (
        <button type="button" class="ghost" onClick={onSignOut}>
          Sign out
        </button>
      ) : null}
    </header>
  );
}

export function ErrorBanner() {
  const { errors } = useStore();
  const entries = Object.entries(errors);
  if (!entries.length) return null;
  return (
    <div class="banner" role="alert" data-testid="error">
      <ul>
        {entries.map(([k, msg]) => (
          <li key={k}>
            <span>{msg}</span>
            <button type="button" class="ghost small" onClick={() => clearError(k)} aria-label="Dismiss">
              ✕
            </button>
          </li>
        ))}
      </ul>
    </div>
  );
}

export function Login({ onSignIn }: { onSignIn: () => void }) {
  const { loginError } = useStore();
  const [value, setValue] = useState("");
  return (
    <section class="login card" aria-labelledby="login-title">
      <h1 id="login-title">Sign in</h1>
      <p class="muted">This collector needs an API token. Ask an admin for one (docs/api.md, "API tokens").</p>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          if (!value.trim()) return;
          setToken(value.trim());
          set({ needLogin: false, loginError: "" });
          onSignIn();
        }}
      >
        <label>
          API token
          <input
            type="password"
            autoComplete="current-password"
            value={value}
            onInput={(e) => setValue((e.target as HTMLInputElement).value)}
            data-testid="login-token"
            autoFocus
          />
        </label>
        {loginError ? <p class="error-text">{loginError}</p> : null}
        <button type="submit" data-testid="login-submit">
          Sign in
        </button>
      </form>
      <p class="muted small">The token is kept in this browser (localStorage) and sent with every request.</p>
    </section>
  );
}

/** A coloured word for a health or severity. */
export function Pill({ kind, children }: { kind: string; children: preact.ComponentChildren }) {
  return <span class={`pill pill-${kind}`}>{children}</span>;
}

/** Links to the same view with another `range` (aria-current on the chosen one). */
export function RangePicker({
  route,
  ranges,
  current,
  label = "Range",
}: {
  route: Route;
  ranges: readonly string[];
  current: string;
  label?: string;
}) {
  return (
    <nav class="seg" aria-label={label}>
      {ranges.map((r) => {
        const params: Record<string, string> = {};
        route.params.forEach((v, k) => (params[k] = v));
        params.range = r;
        return (
          <a key={r} href={href(route.path, params)} aria-current={r === current ? "true" : undefined}>
            {r}
          </a>
        );
      })}
    </nav>
  );
}
