// Numbers for people: bytes, durations, rates, times.

export type Unit = "seconds" | "bytes" | "ratio" | "rate" | "bytes_rate" | "count";

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Math.abs(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  const s = v >= 100 || i === 0 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  return `${n < 0 ? "-" : ""}${s} ${units[i]}`;
}

export function seconds(s: number | null | undefined): string {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  const a = Math.abs(s);
  if (a === 0) return "0";
  if (a < 1e-3) return `${trim(s * 1e6)} µs`;
  if (a < 1) return `${trim(s * 1e3)} ms`;
  if (a < 120) return `${trim(s)} s`;
  return duration(s * 1000);
}

export function percent(r: number | null | undefined): string {
  if (r === null || r === undefined || !isFinite(r)) return "–";
  return `${trim(r * 100)} %`;
}

export function rate(r: number | null | undefined): string {
  if (r === null || r === undefined || !isFinite(r)) return "–";
  return `${compact(r)}/s`;
}

export function compact(n: number | null | undefined): string {
  if (n === null || n === undefined || !isFinite(n)) return "–";
  const a = Math.abs(n);
  if (a >= 1e9) return `${trim(n / 1e9)}G`;
  if (a >= 1e6) return `${trim(n / 1e6)}M`;
  if (a >= 1e4) return `${trim(n / 1e3)}k`;
  return trim(n);
}

/** Three significant digits at most, no trailing zeros. */
function trim(n: number): string {
  const a = Math.abs(n);
  const digits = a >= 100 ? 0 : a >= 10 ? 1 : 2;
  return String(Number(n.toFixed(digits)));
}

export function byUnit(unit: Unit, v: number | null | undefined): string {
  switch (unit) {
    case "seconds":
      return seconds(v);
    case "bytes":
      return bytes(v);
    case "ratio":
      return percent(v);
    case "rate":
      return rate(v);
    case "bytes_rate":
      return v === null || v === undefined ? "–" : `${bytes(v)}/s`;
    default:
      return compact(v);
  }
}

/** "3 h 20 min" for a span of milliseconds. */
export function duration(ms: number): string {
  const s = Math.round(Math.abs(ms) / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d} d ${h % 24} h` : `${d} d`;
}

/** "5 min ago", "in 2 h". */
export function ago(ms: number, now: number = Date.now()): string {
  if (!ms) return "–";
  const d = now - ms;
  if (Math.abs(d) < 5000) return "just now";
  return d > 0 ? `${duration(d)} ago` : `in ${duration(-d)}`;
}

export function dateTime(ms: number): string {
  if (!ms) return "–";
  const d = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, "0");
  const today = new Date();
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

export function isoTime(ms: number): string {
  return ms ? new Date(ms).toISOString() : "";
}
