// Alerts: what fires now (firing, acknowledged, silenced), the silences,
// maintenance windows, and the history of transitions and deliveries.
// URL: `#/alerts?range=24h` (the history's range).
//
// Operators and admins acknowledge, silence, expire silences and open and
// end maintenance windows here; viewers see the same lists without the
// buttons.

import { useEffect, useState } from "preact/hooks";
import { actorName, api, del, errorText, post, qs, setActorName } from "../api";
import { AlertTable, rowState, SilenceForm } from "../components/Alerts";
import { Pill, RangePicker } from "../components/Shell";
import { ago, dateTime, duration } from "../format";
import { onFeed, refreshFleet } from "../live";
import { href, rangeMs, rangeParam, type Range, type Route } from "../router";
import { canOperate, clearError, reportError, useStore } from "../store";
import type { AlertHistory, MaintenanceWindow, Silence } from "../types";

const HISTORY_RANGES = ["1h", "6h", "24h", "7d"] as const;

export function Alerts({ route }: { route: Route }) {
  const s = useStore();
  const operate = canOperate(s);
  const alerts = (s.alerts ?? []).filter((a) => a.state === "firing");
  const firing = alerts.filter((a) => rowState(a) === "firing");
  const acked = alerts.filter((a) => rowState(a) === "acknowledged");
  const silenced = alerts.filter((a) => rowState(a) === "silenced");
  const range = rangeParam(route, "24h");
  // Silences and windows change by this page's actions and by others': they
  // are fetched again whenever the fleet is (the stream and the 5 s poll).
  const tick = s.updatedMs;

  return (
    <>
      <div class="page-head">
        <h1>Alerts</h1>
        <p class="muted">
          {s.alerts === null
            ? "Loading…"
            : `${firing.length} firing · ${acked.length} acknowledged · ${silenced.length} silenced`}
        </p>
      </div>
      {operate && s.whoami?.via === "anonymous" ? <ActorName /> : null}

      <section aria-labelledby="firing-title">
        <h2 id="firing-title">Firing</h2>
        <AlertTable alerts={firing} empty="Nothing is firing that nobody has taken." />
      </section>
      <section aria-labelledby="acked-title">
        <h2 id="acked-title">Acknowledged</h2>
        <AlertTable alerts={acked} empty="No acknowledged alert is firing." />
      </section>
      <section aria-labelledby="silenced-title">
        <h2 id="silenced-title">Silenced</h2>
        <AlertTable alerts={silenced} empty="No firing alert is silenced." />
      </section>

      <Silences operate={operate} tick={tick} />
      <Maintenance operate={operate} tick={tick} />
      <History route={route} range={range} />
    </>
  );
}

/** For anonymous access (`etcdmon up` on loopback): the name recorded with
 * acknowledgements and silences. */
function ActorName() {
  const [name, setName] = useState(actorName());
  return (
    <p class="card small actor">
      <label>
        Acknowledgements and silences are recorded as{" "}
        <input
          type="text"
          value={name}
          placeholder="anonymous"
          size={16}
          onInput={(e) => {
            const v = (e.target as HTMLInputElement).value;
            setName(v);
            setActorName(v.trim());
          }}
        />
      </label>{" "}
      <span class="muted">(you have no token; this browser keeps the name)</span>
    </p>
  );
}

function Silences({ operate, tick }: { operate: boolean; tick: number }) {
  const [silences, setSilences] = useState<Silence[] | null>(null);
  const [creating, setCreating] = useState(false);
  const [mine, setMine] = useState(0);
  const [showExpired, setShowExpired] = useState(false);

  useEffect(() => {
    let cancelled = false;
    api<{ silences: Silence[] }>("/api/v1/silences")
      .then((r) => {
        if (cancelled) return;
        setSilences(r.silences ?? []);
        clearError("silences");
      })
      .catch((e) => !cancelled && reportError("silences", `GET /api/v1/silences: ${errorText(e)}`));
    return () => {
      cancelled = true;
    };
  }, [tick, mine]);

  const expire = async (id: string) => {
    try {
      await del(`/api/v1/silences/${encodeURIComponent(id)}`);
      clearError("action");
      setMine((n) => n + 1);
      await refreshFleet();
    } catch (e) {
      reportError("action", `Expiring silence ${id}: ${errorText(e)}`);
    }
  };

  // Maintenance windows are silences too; they have their own section.
  const list = (silences ?? []).filter((x) => !x.id.startsWith("mw-"));
  const shown = list.filter((x) => showExpired || x.state !== "expired");
  const expired = list.length - list.filter((x) => x.state !== "expired").length;

  return (
    <section aria-labelledby="silences-title">
      <div class="section-head">
        <h2 id="silences-title">Silences</h2>
        {operate ? (
          <button type="button" class="secondary" aria-expanded={creating} onClick={() => setCreating(!creating)}>
            New silence
          </button>
        ) : null}
        {expired ? (
          <label class="inline small">
            <input type="checkbox" checked={showExpired} onChange={(e) => setShowExpired((e.target as HTMLInputElement).checked)} />
            show {expired} expired
          </label>
        ) : null}
      </div>
      {creating ? (
        <div class="card">
          <SilenceForm matchers={[]} onDone={() => setCreating(false)} onCreated={() => setMine((n) => n + 1)} />
        </div>
      ) : null}
      {silences === null ? (
        <p class="muted">Loading…</p>
      ) : shown.length === 0 ? (
        <p class="muted">No active or pending silence.</p>
      ) : (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Matchers</th>
                <th scope="col">State</th>
                <th scope="col">From</th>
                <th scope="col">Until</th>
                <th scope="col">By</th>
                <th scope="col">Comment</th>
                {operate ? <th scope="col">Actions</th> : null}
              </tr>
            </thead>
            <tbody>
              {shown.map((x) => (
                <tr key={x.id} data-testid="silence-row" data-silence={x.id} data-state={x.state}>
                  <td>
                    <code class="matchers">{x.matchers.join(", ")}</code>
                  </td>
                  <td>
                    <Pill kind={x.state === "active" ? "silenced" : x.state === "pending" ? "info" : "none"}>{x.state}</Pill>
                  </td>
                  <td title={dateTime(x.starts_ms)}>{dateTime(x.starts_ms)}</td>
                  <td title={dateTime(x.ends_ms)}>
                    {dateTime(x.ends_ms)} <span class="small muted">({ago(x.ends_ms)})</span>
                  </td>
                  <td>{x.created_by}</td>
                  <td>{x.comment}</td>
                  {operate ? (
                    <td class="actions">
                      {x.state !== "expired" ? (
                        <button type="button" class="secondary" onClick={() => expire(x.id)}>
                          Expire
                        </button>
                      ) : null}
                    </td>
                  ) : null}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

function Maintenance({ operate, tick }: { operate: boolean; tick: number }) {
  const s = useStore();
  const [windows, setWindows] = useState<MaintenanceWindow[] | null>(null);
  const [mine, setMine] = useState(0);
  const [opening, setOpening] = useState(false);
  const [cluster, setCluster] = useState("");
  const [member, setMember] = useState("");
  const [dur, setDur] = useState("30m");
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    let cancelled = false;
    api<{ windows: MaintenanceWindow[] }>("/api/v1/maintenance")
      .then((r) => {
        if (cancelled) return;
        setWindows(r.windows ?? []);
        clearError("maintenance");
      })
      .catch((e) => !cancelled && reportError("maintenance", `GET /api/v1/maintenance: ${errorText(e)}`));
    return () => {
      cancelled = true;
    };
  }, [tick, mine]);

  const clusters = (s.clusters ?? []).map((c) => c.name).sort();
  const chosen = cluster || clusters[0] || "";
  const members = Object.keys(s.clusters?.find((c) => c.name === chosen)?.members ?? {}).sort();

  const open = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    try {
      await post("/api/v1/maintenance", { cluster: chosen, member: member || undefined, duration: dur.trim(), reason });
      clearError("action");
      setOpening(false);
      setReason("");
      setMine((n) => n + 1);
      await refreshFleet();
    } catch (err) {
      reportError("action", `Opening the maintenance window: ${errorText(err)}`);
    } finally {
      setBusy(false);
    }
  };

  const end = async (id: string) => {
    try {
      await del(`/api/v1/maintenance/${encodeURIComponent(id)}`);
      clearError("action");
      setMine((n) => n + 1);
      await refreshFleet();
    } catch (err) {
      reportError("action", `Ending maintenance window ${id}: ${errorText(err)}`);
    }
  };

  return (
    <section aria-labelledby="mw-title">
      <div class="section-head">
        <h2 id="mw-title">Maintenance windows</h2>
        {operate ? (
          <button type="button" class="secondary" aria-expanded={opening} onClick={() => setOpening(!opening)}>
            Start maintenance
          </button>
        ) : null}
      </div>
      <p class="small muted">
        A window mutes the alerts of a cluster (or one member) while planned work is done; it never mutes a quorum
        loss, a cluster without a leader, or an etcd alarm.
      </p>
      {opening ? (
        <form class="inline-form card" data-testid="maintenance-form" onSubmit={open}>
          <label>
            Cluster
            <select value={chosen} onChange={(e) => {
              setCluster((e.target as HTMLSelectElement).value);
              setMember("");
            }} required>
              {clusters.map((c) => (
                <option key={c} value={c}>
                  {c}
                </option>
              ))}
            </select>
          </label>
          <label>
            Member
            <select value={member} onChange={(e) => setMember((e.target as HTMLSelectElement).value)}>
              <option value="">whole cluster</option>
              {members.map((m) => (
                <option key={m} value={m}>
                  {m}
                </option>
              ))}
            </select>
          </label>
          <label>
            Duration
            <input type="text" value={dur} size={8} onInput={(e) => setDur((e.target as HTMLInputElement).value)} required />
          </label>
          <label class="grow">
            Reason
            <input
              type="text"
              value={reason}
              placeholder="kernel update, CHG-1234"
              onInput={(e) => setReason((e.target as HTMLInputElement).value)}
              required
            />
          </label>
          <div class="buttons">
            <button type="submit" disabled={busy || !chosen}>
              {busy ? "Starting…" : "Start"}
            </button>
            <button type="button" class="secondary" onClick={() => setOpening(false)}>
              Cancel
            </button>
          </div>
        </form>
      ) : null}
      {windows === null ? (
        <p class="muted">Loading…</p>
      ) : windows.length === 0 ? (
        <p class="muted">No maintenance window open or ended in the last 24 h.</p>
      ) : (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Scope</th>
                <th scope="col">State</th>
                <th scope="col">From</th>
                <th scope="col">Until</th>
                <th scope="col">By</th>
                <th scope="col">Reason</th>
                {operate ? <th scope="col">Actions</th> : null}
              </tr>
            </thead>
            <tbody>
              {windows.map((w) => (
                <tr key={w.id} data-testid="maintenance-row" data-window={w.id} data-state={w.state}>
                  <td>
                    <a href={href(["cluster", w.cluster])}>{w.cluster}</a>
                    {w.member ? ` / ${w.member}` : " (whole cluster)"}
                  </td>
                  <td>
                    <Pill kind={w.state === "active" ? "silenced" : "none"}>{w.state}</Pill>
                  </td>
                  <td>{dateTime(w.starts_ms)}</td>
                  <td>
                    {dateTime(w.ends_ms)}{" "}
                    <span class="small muted">({w.state === "active" ? `${duration(w.ends_ms - Date.now())} left` : ago(w.ends_ms)})</span>
                  </td>
                  <td>{w.created_by}</td>
                  <td>{w.reason}</td>
                  {operate ? (
                    <td class="actions">
                      {w.state === "active" ? (
                        <button type="button" class="secondary" onClick={() => end(w.id)}>
                          End now
                        </button>
                      ) : null}
                    </td>
                  ) : null}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

function History({ route, range }: { route: Route; range: Range }) {
  const [history, setHistory] = useState<AlertHistory | null>(null);
  const [tick, setTick] = useState(0);
  const fromS = Math.round(rangeMs(range) / 1000);

  useEffect(() => {
    let debounce: number | undefined;
    const off = onFeed((item) => {
      if (item.kind !== "alert") return;
      window.clearTimeout(debounce);
      debounce = window.setTimeout(() => setTick((n) => n + 1), 1500);
    });
    return () => {
      off();
      window.clearTimeout(debounce);
    };
  }, []);

  useEffect(() => {
    let cancelled = false;
    api<AlertHistory>(`/api/v1/alerts/history${qs({ from: `now-${fromS}s`, limit: 500 })}`)
      .then((r) => {
        if (cancelled) return;
        setHistory(r);
        clearError("history");
      })
      .catch((e) => !cancelled && reportError("history", `GET /api/v1/alerts/history: ${errorText(e)}`));
    return () => {
      cancelled = true;
    };
  }, [fromS, tick]);

  const deliveries = new Map<string, number>();
  for (const d of history?.deliveries ?? []) {
    const k = `${d.fingerprint}/${d.transition}/${d.state}`;
    deliveries.set(k, (deliveries.get(k) ?? 0) + (d.outcome === "ok" ? 1 : 0));
  }

  return (
    <section aria-labelledby="history-title">
      <div class="section-head">
        <h2 id="history-title">History</h2>
        <RangePicker route={route} ranges={HISTORY_RANGES} current={range} label="History range" />
      </div>
      {history === null ? (
        <p class="muted">Loading…</p>
      ) : history.transitions.length === 0 ? (
        <p class="muted">No alert changed state in this range.</p>
      ) : (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Received</th>
                <th scope="col">State</th>
                <th scope="col">Severity</th>
                <th scope="col">Alert</th>
                <th scope="col">Cluster</th>
                <th scope="col">Member</th>
                <th scope="col">Notified</th>
              </tr>
            </thead>
            <tbody>
              {history.transitions.map((t) => {
                const told = deliveries.get(`${t.fingerprint}/${t.transition}/${t.state}`) ?? 0;
                return (
                  <tr key={`${t.fingerprint}-${t.transition}-${t.state}-${t.received_ms}`} data-testid="history-row" data-fingerprint={t.fingerprint} data-state={t.state}>
                    <td>{dateTime(t.received_ms)}</td>
                    <td>
                      <Pill kind={t.state === "firing" ? "critical" : t.state === "resolved" ? "ok" : "info"}>{t.state}</Pill>
                    </td>
                    <td>
                      <Pill kind={t.severity}>{t.severity}</Pill>
                    </td>
                    <td>
                      <strong>{t.rule}</strong>
                      <div class="small">{t.annotations.summary}</div>
                    </td>
                    <td>{t.cluster ? <a href={href(["cluster", t.cluster])}>{t.cluster}</a> : "–"}</td>
                    <td>{t.labels.member || "–"}</td>
                    <td class="small">
                      {t.silenced_by.length ? `muted by ${t.silenced_by.join(", ")}` : told ? `${told} receiver${told > 1 ? "s" : ""}` : "–"}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          {history.deliveries.length ? (
            <details>
              <summary>{history.deliveries.length} delivery attempts</summary>
              <table>
                <thead>
                  <tr>
                    <th scope="col">When</th>
                    <th scope="col">Receiver</th>
                    <th scope="col">Alert</th>
                    <th scope="col">State / reason</th>
                    <th scope="col">Outcome</th>
                    <th scope="col">Detail</th>
                  </tr>
                </thead>
                <tbody>
                  {history.deliveries.map((d, i) => (
                    <tr key={`${d.fingerprint}-${d.attempt_ms}-${d.receiver}-${i}`}>
                      <td>{dateTime(d.attempt_ms)}</td>
                      <td>{d.receiver}</td>
                      <td>
                        <code>{d.fingerprint}</code>
                      </td>
                      <td>
                        {d.state} / {d.reason}
                      </td>
                      <td>
                        <Pill kind={d.outcome === "ok" ? "ok" : d.outcome === "retry" ? "warning" : "critical"}>{d.outcome}</Pill>
                      </td>
                      <td class="small">{d.detail}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </details>
          ) : null}
        </div>
      )}
    </section>
  );
}
