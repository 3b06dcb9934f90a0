// Alert rows with their actions (acknowledge, silence), shared by the alerts
// page and the cluster page, and the silence form.
//
// Test hooks: each row `data-testid="alert-row"` with `data-fingerprint`,
// `data-rule` and `data-state` (firing | acknowledged | silenced); inside it
// `data-testid="ack-button"` and `data-testid="silence-button"` only for
// operators and admins; the form `data-testid="silence-form"` with
// `silence-duration`, `silence-comment` and `silence-submit`.

import { useState } from "preact/hooks";
import { actorField, errorText, post } from "../api";
import { ago, dateTime } from "../format";
import { refreshFleet } from "../live";
import { href } from "../router";
import { canOperate, clearError, reportError, useStore } from "../store";
import type { Alert, Silence } from "../types";
import { Pill } from "./Shell";

export type RowState = "firing" | "acknowledged" | "silenced";

/** How the page files an alert: acknowledged (someone took it) before
 * silenced (muted by a silence or maintenance window) before firing. */
export function rowState(a: Alert): RowState {
  if (a.acknowledged) return "acknowledged";
  if (a.silenced_by?.length) return "silenced";
  return "firing";
}

const SEVERITY_ORDER: Record<string, number> = { critical: 0, warning: 1, info: 2 };

export function sortAlerts(alerts: Alert[]): Alert[] {
  return [...alerts].sort(
    (a, b) =>
      (SEVERITY_ORDER[a.labels.severity] ?? 3) - (SEVERITY_ORDER[b.labels.severity] ?? 3) ||
      b.active_since_ms - a.active_since_ms ||
      a.fingerprint.localeCompare(b.fingerprint),
  );
}

/** The matchers a silence of this alert starts with: its cluster, member and rule. */
export function matchersFor(a: Alert): string[] {
  const out: string[] = [];
  for (const k of ["cluster", "member", "rule"]) {
    const v = a.labels[k];
    if (v) out.push(`${k}=${JSON.stringify(v)}`);
  }
  if (a.labels.alarm) out.push(`alarm=${JSON.stringify(a.labels.alarm)}`);
  return out;
}

export function AlertTable({ alerts, showCluster = true, empty }: { alerts: Alert[]; showCluster?: boolean; empty: string }) {
  const s = useStore();
  const operate = canOperate(s);
  if (!alerts.length) return <p class="muted">{empty}</p>;
  return (
    <table class="alerts">
      <thead>
        <tr>
          <th scope="col">Severity</th>
          <th scope="col">Alert</th>
          {showCluster ? <th scope="col">Cluster</th> : null}
          <th scope="col">Member</th>
          <th scope="col">Since</th>
          <th scope="col">State</th>
          {operate ? <th scope="col">Actions</th> : null}
        </tr>
      </thead>
      <tbody>
        {sortAlerts(alerts).map((a) => (
          <AlertRow key={a.fingerprint} alert={a} showCluster={showCluster} operate={operate} />
        ))}
      </tbody>
    </table>
  );
}

function AlertRow({ alert: a, showCluster, operate }: { alert: Alert; showCluster: boolean; operate: boolean }) {
  const [busy, setBusy] = useState(false);
  const [silencing, setSilencing] = useState(false);
  const state = rowState(a);
  const cols = 6 + (showCluster ? 1 : 0);
  const rule = a.labels.rule ?? "";

  const ack = async () => {
    setBusy(true);
    try {
      await post(`/api/v1/alerts/${encodeURIComponent(a.fingerprint)}/ack`, { by: actorField(), comment: "" });
      clearError("action");
      await refreshFleet();
    } catch (e) {
      reportError("action", `Acknowledging ${rule}: ${errorText(e)}`);
    } finally {
      setBusy(false);
    }
  };

  return (
    <>
      <tr
        data-testid="alert-row"
        data-fingerprint={a.fingerprint}
        data-rule={rule}
        data-state={state}
        class={`sev-${a.labels.severity ?? "none"}`}
      >
        <td>
          <Pill kind={a.labels.severity ?? "none"}>{a.labels.severity ?? "–"}</Pill>
        </td>
        <td>
          <strong>{rule}</strong>
          <div class="small">{a.annotations.summary}</div>
          {a.annotations.runbook_url ? (
            <a class="small" href={a.annotations.runbook_url} target="_blank" rel="noreferrer">
              runbook
            </a>
          ) : null}
        </td>
        {showCluster ? (
          <td>{a.labels.cluster ? <a href={href(["cluster", a.labels.cluster])}>{a.labels.cluster}</a> : "–"}</td>
        ) : null}
        <td>{a.labels.member || "–"}</td>
        <td title={dateTime(a.active_since_ms)}>{ago(a.active_since_ms)}</td>
        <td>
          <Pill kind={state}>{state}</Pill>
          {a.acknowledged ? (
            <div class="small muted">
              by {a.acknowledged.by} {ago(a.acknowledged.at_ms)}
              {a.acknowledged.comment ? `: ${a.acknowledged.comment}` : ""}
            </div>
          ) : null}
          {a.silenced_by?.length ? <div class="small muted">by {a.silenced_by.join(", ")}</div> : null}
        </td>
        {operate ? (
          <td class="actions">
            {state !== "acknowledged" ? (
              <button type="button" data-testid="ack-button" disabled={busy} onClick={ack}>
                {busy ? "…" : "Acknowledge"}
              </button>
            ) : null}
            <button
              type="button"
              class="secondary"
              data-testid="silence-button"
              aria-expanded={silencing}
              onClick={() => setSilencing(!silencing)}
            >
              Silence
            </button>
          </td>
        ) : null}
      </tr>
      {operate && silencing ? (
        <tr class="form-row">
          <td colSpan={cols}>
            <SilenceForm matchers={matchersFor(a)} onDone={() => setSilencing(false)} />
          </td>
        </tr>
      ) : null}
    </>
  );
}

/** Creates a silence: matchers (one per line), a duration, a comment. */
export function SilenceForm({
  matchers,
  onDone,
  onCreated,
}: {
  matchers: string[];
  onDone: () => void;
  onCreated?: (s: Silence) => void;
}) {
  const [text, setText] = useState(matchers.join("\n"));
  const [duration, setDuration] = useState("2h");
  const [comment, setComment] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");

  const submit = async (e: Event) => {
    e.preventDefault();
    const list = text
      .split("\n")
      .map((l) => l.trim())
      .filter(Boolean);
    if (!list.length) {
      setError("Give at least one matcher, e.g. cluster=\"prod\".");
      return;
    }
    setBusy(true);
    try {
      const body: Record<string, unknown> = { matchers: list, duration: duration.trim(), comment };
      const by = actorField();
      if (by) body.created_by = by;
      const s = await post<Silence>("/api/v1/silences", body);
      clearError("action");
      setError("");
      onCreated?.(s);
      onDone();
      await refreshFleet();
    } catch (err) {
      setError(errorText(err));
      reportError("action", `Creating the silence: ${errorText(err)}`);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="inline-form" data-testid="silence-form" onSubmit={submit}>
      <label class="grow">
        <span>
          Matchers, one per line (<code>name="value"</code>, <code>!=</code>, <code>=~</code>, <code>!~</code>)
        </span>
        <textarea
          rows={Math.max(2, text.split("\n").length)}
          value={text}
          onInput={(e) => setText((e.target as HTMLTextAreaElement).value)}
          data-testid="silence-matchers"
          spellcheck={false}
        />
      </label>
      <label>
        Duration
        <input
          type="text"
          value={duration}
          onInput={(e) => setDuration((e.target as HTMLInputElement).value)}
          data-testid="silence-duration"
          placeholder="2h"
          size={8}
          required
        />
      </label>
      <label class="grow">
        Comment
        <input
          type="text"
          value={comment}
          onInput={(e) => setComment((e.target as HTMLInputElement).value)}
          data-testid="silence-comment"
          placeholder="why (a ticket, the work being done)"
        />
      </label>
      <div class="buttons">
        <button type="submit" data-testid="silence-submit" disabled={busy}>
          {busy ? "Silencing…" : "Silence"}
        </button>
        <button type="button" class="secondary" onClick={onDone}>
          Cancel
        </button>
      </div>
      {error ? <p class="error-text full">{error}</p> : null}
    </form>
  );
}
