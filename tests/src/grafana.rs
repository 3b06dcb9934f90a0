//! Grafana dashboards without a Grafana: reading the dashboard files and
//! expanding a panel's SQL exactly as Grafana and the official ClickHouse
//! plugin do, so tests (`collector/tests/grafana.rs`) and benchmarks
//! (`bench/fleet-query`) can run every panel's query against a real
//! ClickHouse.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The macros of the plugin's backend that [`expand_backend_macros`] implements.
/// Others (`$__timeFilter_ms`, `$__fromTime_ms`, ...) need `fromUnixTimestamp64Milli`,
/// which ClickHouse 18.16 lacks, so the dashboards must not use them.
pub const BACKEND_MACROS: [&str; 3] = ["fromTime", "toTime", "interval_s"];
/// Macros the plugin's frontend expands.
pub const FRONTEND_MACROS: [&str; 1] = ["conditionalAll"];

/// One dashboard file.
pub struct Dashboard {
    /// File name, e.g. `cluster-detail.json`.
    pub file: String,
    /// Its JSON.
    pub json: Value,
}

/// Every `*.json` dashboard in `dir`, by file name.
pub fn dashboards(dir: &Path) -> Vec<Dashboard> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read dashboard");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            Dashboard {
                file: p.file_name().expect("name").to_string_lossy().into_owned(),
                json,
            }
        })
        .collect()
}

/// The value of `key:` on the first line that sets it in a small YAML file
/// (the provisioning files are flat enough for this; no YAML crate needed).
pub fn yaml_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .map(|l| l.strip_prefix("- ").unwrap_or(l))
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_owned())
}

/// Every panel, rows' nested panels included.
pub fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// A template variable of type `query`.
#[derive(Clone, Debug)]
pub struct Variable {
    /// Its name, as `$name` in queries.
    pub name: String,
    /// The SQL that lists its options.
    pub query: String,
    /// Whether several values may be selected.
    pub multi: bool,
    /// Whether it offers "All".
    pub include_all: bool,
}

/// The template variables of dashboard `d`.
pub fn variables(d: &Value) -> Vec<Variable> {
    d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| Variable {
            name: v["name"].as_str().unwrap_or_default().to_owned(),
            query: match &v["query"] {
                Value::String(s) => s.clone(),
                other => other["rawSql"].as_str().unwrap_or_default().to_owned(),
            },
            multi: v["multi"].as_bool().unwrap_or(false),
            include_all: v["includeAll"].as_bool().unwrap_or(false),
        })
        .collect()
}

/// One query of a panel.
pub struct Target<'a> {
    /// The panel's JSON.
    pub panel: &'a Value,
    /// The query's JSON (`rawSql`, `format`, `refId`).
    pub target: &'a Value,
}

impl Target<'_> {
    /// `panel title [refId]`, for messages.
    pub fn title(&self) -> String {
        format!(
            "{} [{}]",
            self.panel["title"].as_str().unwrap_or("?"),
            self.target["refId"].as_str().unwrap_or("?")
        )
    }

    /// The query's SQL as written in the dashboard.
    pub fn sql(&self) -> &str {
        self.target["rawSql"].as_str().unwrap_or_default()
    }

    /// 0: time series, 1: table (sqlds' `FormatQueryOption`).
    pub fn format(&self) -> i64 {
        self.target["format"].as_i64().unwrap_or(-1)
    }

    /// The panel's minimum interval ("Min interval" in Grafana), if set.
    pub fn min_interval_ms(&self) -> Option<i64> {
        let s = self.panel["interval"].as_str()?;
        parse_duration_ms(s)
    }
}

/// Every query of every panel of dashboard `d`.
pub fn targets(d: &Value) -> Vec<Target<'_>> {
    panels(d)
        .into_iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| Target {
                    panel: p,
                    target: t,
                })
        })
        .collect()
}

/// `15s`, `1m`, `500ms` → milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim().trim_start_matches('>');
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = num.parse().ok()?;
    Some(match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return None,
    })
}

/// The names referenced as `$name`, `${name}`, `${name:format}` or `[[name]]`,
/// scanned the way Grafana's template service scans (its variable regex in
/// `public/app/features/templating/template_srv.ts`: `\$(\w+)`, `\${(\w+)(...)}`).
pub fn referenced_names(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let braced = b.get(i + 1) == Some(&b'{');
            let start = if braced { i + 2 } else { i + 1 };
            let end = word_end(b, start);
            if end > start {
                out.push(sql[start..end].to_owned());
            }
            i = end.max(i + 1);
        } else if b[i] == b'[' && b.get(i + 1) == Some(&b'[') {
            let end = word_end(b, i + 2);
            out.push(format!("[[{}", &sql[i + 2..end]));
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Where the name starting at `start` ends (letters, digits, `_`).
pub fn word_end(b: &[u8], start: usize) -> usize {
    let mut end = start;
    while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
        end += 1;
    }
    end
}

/// What a variable is set to.
#[derive(Clone, Debug)]
pub enum Selected {
    /// "All": Grafana's `$__all`, standing for every option.
    All(Vec<String>),
    /// One value (of a multi-value variable: an array of one).
    One(String),
}

/// Variable name → its setting.
pub type Settings = BTreeMap<String, Selected>;

/// The time range and interval of a query, as the backend receives them.
#[derive(Clone, Copy, Debug)]
pub struct TimeRange {
    /// Start, Unix seconds.
    pub from_s: i64,
    /// End, Unix seconds.
    pub to_s: i64,
    /// The panel's interval, ms.
    pub interval_ms: i64,
}

/// The names of the multi-value variables, which [`expand`] quotes as arrays.
pub fn multi_valued(vars: &[Variable]) -> BTreeSet<String> {
    vars.iter()
        .filter(|v| v.multi)
        .map(|v| v.name.clone())
        .collect()
}

/// The settings of a dashboard's variables, resolved in order as Grafana does:
/// each variable's query is expanded with the settings of the ones before it,
/// `options` runs it and returns its values, and `choose` picks the setting.
pub fn resolve<E>(
    vars: &[Variable],
    range: TimeRange,
    mut options: impl FnMut(&Variable, &str, &Settings) -> Result<Vec<String>, E>,
    mut choose: impl FnMut(&Variable, &[String]) -> Selected,
) -> Result<Settings, E> {
    let multi = multi_valued(vars);
    let mut settings = Settings::new();
    for v in vars {
        let sql = expand(&v.query, &settings, &multi, range);
        let values = options(v, &sql, &settings)?;
        let sel = choose(v, &values);
        settings.insert(v.name.clone(), sel);
    }
    Ok(settings)
}

/// The SQL ClickHouse receives for `sql`, in the order Grafana works:
/// 1. the plugin's frontend (`applyTemplateVariables` in `src/data/CHDatasource.ts`
///    of <https://github.com/grafana/clickhouse-datasource>): `$__conditionalAll`,
///    then Grafana's template service with the plugin's multi-value formatter;
/// 2. the plugin's backend (`pkg/macros/macros.go`, `Interpolate`): its macros.
///
/// Read from the plugin at v4.20.0 (commit 1d04063a). The macros used here
/// expand the same way since v4.0.3 (then through grafana/sqlds'
/// `interpolate`); before, `$__fromTime` was a `DateTime64`, which the panels'
/// SQL accepts as well on servers that have that type.
pub fn expand(sql: &str, vars: &Settings, multi: &BTreeSet<String>, range: TimeRange) -> String {
    let sql = apply_conditional_all(sql, vars);
    let sql = replace_variables(&sql, vars, multi);
    expand_backend_macros(&sql, range)
}

/// `CHDatasource.applyConditionalAll`: from the last `$__conditionalAll(cond, $var)`
/// backwards, the call becomes `1=1` when `$var` is "All" (or empty), else `cond`.
/// Its argument split (`getMacroArgs`) counts parentheses and ignores quotes.
pub fn apply_conditional_all(sql: &str, vars: &Settings) -> String {
    const MACRO: &str = "$__conditionalAll(";
    let mut q = sql.to_owned();
    while let Some(at) = q.rfind(MACRO) {
        let args = macro_args(&q[at + MACRO.len() - 1..]);
        let [cond, var] = args.as_slice() else {
            return q;
        };
        let name = referenced_names(var.trim()).into_iter().next();
        let all = name.and_then(|n| vars.get(&n)).is_some_and(|s| match s {
            Selected::All(_) => true,
            Selected::One(v) => v.is_empty(),
        });
        let phrase = if all { "1=1" } else { cond.as_str() };
        q = q.replacen(&format!("{MACRO}{cond},{var})"), phrase, 1);
    }
    q
}

/// `CHDatasource.getMacroArgs` on `s`, which starts at the macro's `(`.
pub fn macro_args(s: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut depth = 0;
    let mut last = 1;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 1 => {
                args.push(s[last..i].to_owned());
                last = i + 1;
                continue;
            }
            _ => continue,
        }
        if depth == 0 {
            args.push(s[last..i].to_owned());
            return args;
        }
    }
    Vec::new()
}

/// Grafana's `templateSrv.replace(sql, scopedVars, this.format)` as the plugin
/// calls it: `${v:singlequote}` quotes each value (escaping `'` as `\'`); a
/// plain `$v` of several values goes through the plugin's `format`, which
/// joins them as `'a','b'`; one value of a single-value variable stays bare.
/// Names that are no variable (`$__fromTime`) are left for the backend.
pub fn replace_variables(sql: &str, vars: &Settings, multi: &BTreeSet<String>) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            let next = sql[i + 1..].find('$').map_or(sql.len(), |n| i + 1 + n);
            out.push_str(&sql[i..next]);
            i = next;
            continue;
        }
        let braced = b.get(i + 1) == Some(&b'{');
        let start = if braced { i + 2 } else { i + 1 };
        let end = word_end(b, start);
        let name = &sql[start..end];
        let (format, after) = if braced {
            let close = sql[end..].find('}').map(|n| end + n).expect("closed ${");
            let fmt = sql[end..close].strip_prefix(':').map(str::to_owned);
            (fmt, close + 1)
        } else {
            (None, end)
        };
        let Some(sel) = vars.get(name) else {
            out.push_str(&sql[i..after]);
            i = after;
            continue;
        };
        let values: Vec<String> = match sel {
            Selected::All(all) => all.clone(),
            Selected::One(v) => vec![v.clone()],
        };
        let is_array = multi.contains(name) || matches!(sel, Selected::All(_));
        let text = match format.as_deref() {
            Some("singlequote") => values
                .iter()
                .map(|v| format!("'{}'", v.replace('\'', "\\'")))
                .collect::<Vec<_>>()
                .join(","),
            None if is_array => format!("'{}'", values.join("','")),
            None => values.join(","),
            Some(other) => panic!("format :{other} is not implemented here"),
        };
        out.push_str(&text);
        i = after;
    }
    out
}

/// The plugin's backend macros (`pkg/macros/macros.go` of
/// github.com/grafana/clickhouse-datasource, expanded by `macropro.Interpolate`
/// of github.com/grafana/macropro, `parser.go`): names longest first, a match
/// must not continue with a name character, an optional `(args)` follows.
/// The three used here take no arguments:
/// `$__fromTime` → `toDateTime(<from, unix s>)`, `$__toTime` → `toDateTime(<to>)`,
/// `$__interval_s` → the interval in whole seconds, at least 1.
pub fn expand_backend_macros(sql: &str, range: TimeRange) -> String {
    let mut names = BACKEND_MACROS.to_vec();
    names.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    let mut out = sql.to_owned();
    for name in names {
        let value = match name {
            "fromTime" => format!("toDateTime({})", range.from_s),
            "toTime" => format!("toDateTime({})", range.to_s),
            // Go: int(math.Max(interval.Seconds(), 1)).
            "interval_s" => ((range.interval_ms as f64 / 1000.0).max(1.0) as i64).to_string(),
            _ => unreachable!(),
        };
        let token = format!("$__{name}");
        let mut rest = out.as_str();
        let mut next = String::with_capacity(out.len());
        while let Some(at) = rest.find(&token) {
            let after = at + token.len();
            let continues = rest[after..]
                .bytes()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
            next.push_str(&rest[..at]);
            if continues {
                next.push_str(&token);
            } else {
                assert!(
                    !rest[after..].starts_with('('),
                    "$__{name} takes no arguments here"
                );
                next.push_str(&value);
            }
            rest = &rest[after..];
        }
        next.push_str(rest);
        out = next;
    }
    out
}
