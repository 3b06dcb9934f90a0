// The page's entry: finds out who the caller is (asking for a token on 401),
// starts the live updates, and shows the view the URL's hash names.

import { render } from "preact";
import { useEffect } from "preact/hooks";
import { api, ApiError, errorText, setToken } from "./api";
import { ErrorBanner, Header, Login } from "./components/Shell";
import { refreshFleet, startLive, stopLive } from "./live";
import { Alerts } from "./pages/Alerts";
import { Cluster } from "./pages/Cluster";
import { Compare } from "./pages/Compare";
import { Overview } from "./pages/Overview";
import { href, useRoute, type Route } from "./router";
import { applyTheme, clearError, get, reportError, set, useStore } from "./store";
import "./style.css";
import type { WhoAmI } from "./types";

let retry: number | undefined;

/** Asks `/api/v1/whoami`; on success starts the live updates. */
async function boot(): Promise<void> {
  window.clearTimeout(retry);
  // The fleet is fetched alongside, so the overview renders after one round trip.
  const fleet = refreshFleet();
  try {
    const me = await api<WhoAmI>("/api/v1/whoami");
    clearError("whoami");
    set({ whoami: me, needLogin: false, loginError: "" });
    startLive();
    await fleet;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      stopLive();
      set({ whoami: null });
      return;
    }
    reportError("whoami", `GET /api/v1/whoami: ${errorText(e)}`);
    retry = window.setTimeout(boot, 5000);
  }
}

function signOut(): void {
  setToken("");
  stopLive();
  set({ whoami: null, clusters: null, alerts: null, errors: {} });
  void boot();
}

function View({ route }: { route: Route }) {
  const [page, arg] = route.path;
  switch (page) {
    case undefined:
      return <Overview route={route} />;
    case "cluster":
      return arg ? <Cluster key={arg} route={route} name={arg} /> : <Overview route={route} />;
    case "alerts":
      return <Alerts route={route} />;
    case "compare":
      return <Compare route={route} />;
    default:
      return (
        <div class="card empty">
          <h1>Not found</h1>
          <p>
            There is no page <code>#/{route.path.join("/")}</code>. <a href={href([])}>Go to the fleet overview</a>.
          </p>
        </div>
      );
  }
}

function App() {
  const route = useRoute();
  const s = useStore();
  useEffect(() => {
    // A 401 anywhere (an expired or revoked token) stops the updates until a
    // new token is given.
    if (s.needLogin) stopLive();
  }, [s.needLogin]);
  return (
    <>
      <Header route={route} onSignOut={signOut} />
      <ErrorBanner />
      <main id="main" tabIndex={-1}>
        {s.needLogin ? <Login onSignIn={() => void boot()} /> : s.whoami ? <View route={route} /> : <p class="muted">Connecting…</p>}
      </main>
    </>
  );
}

applyTheme(get().theme);
// Follow the system's theme live while the toggle says "auto" (charts pick
// their colours when drawn).
window.matchMedia?.("(prefers-color-scheme: dark)").addEventListener?.("change", () => {
  if (get().theme === "auto") set({});
});
render(<App />, document.getElementById("app")!);
void boot();
