//! `etcdmon maintenance`: open, list and end maintenance windows through a
//! collector's API (or `etcdmon up`'s), so planned work pages nobody.
//!
//! ```text
//! etcdmon maintenance start --cluster prod --member m1 --for 30m --reason "kernel update"
//! etcdmon maintenance list
//! etcdmon maintenance end mw-18f3a2b4c5d-0a1b2c3d
//! ```

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the API is and how to call it.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The collector's (or `etcdmon up`'s) API.
    #[arg(long, env = "ETCDMON_API", default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// File holding an API token with the operator role (not needed for
    /// `etcdmon up` on loopback).
    #[arg(long, value_name = "FILE", env = "ETCDMON_API_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

/// `etcdmon maintenance ...`.
#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: MaintenanceCommand,
}

#[derive(Debug, Subcommand)]
enum MaintenanceCommand {
    /// Open a window: the alerts of the cluster (or of one member) are not
    /// notified until it ends; quorum loss, no leader and etcd alarms always are.
    Start {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// Only this member (the usual case: a restart, an upgrade).
        #[arg(long)]
        member: Option<String>,
        /// How long; the window ends on its own then (`30m`, `2h`).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// What is being done (shown with the window and the alerts it mutes).
        #[arg(long)]
        reason: String,
    },
    /// The open windows and those that ended in the last day.
    List,
    /// End a window now.
    End {
        /// Its id (`mw-...`).
        id: String,
    },
}

/// Runs `etcdmon maintenance`.
pub async fn run(args: MaintenanceArgs) -> Result<()> {
    let api = Api::new(&args.api)?;
    match args.command {
        MaintenanceCommand::Start {
            cluster,
            member,
            duration,
            reason,
        } => {
            let body = json!({
                "cluster": cluster,
                "member": member,
                "duration": duration,
                "reason": reason,
            });
            let w = api
                .call(reqwest::Method::POST, "/api/v1/maintenance", Some(body))
                .await?;
            println!("{}", describe(&w));
        }
        MaintenanceCommand::List => {
            let list = api
                .call(reqwest::Method::GET, "/api/v1/maintenance", None)
                .await?;
            let windows = list["windows"].as_array().cloned().unwrap_or_default();
            if windows.is_empty() {
                println!("no maintenance windows");
            }
            for w in &windows {
                println!("{}", describe(w));
            }
        }
        MaintenanceCommand::End { id } => {
            let path = format!("/api/v1/maintenance/{id}");
            let w = api.call(reqwest::Method::DELETE, &path, None).await?;
            println!("{}", describe(&w));
        }
    }
    Ok(())
}

/// One line for a window: id, scope, state, end, reason.
fn describe(w: &Value) -> String {
    let scope = match w["member"].as_str().filter(|m| !m.is_empty()) {
        Some(m) => format!("{}/{m}", w["cluster"].as_str().unwrap_or("")),
        None => w["cluster"].as_str().unwrap_or("").to_owned(),
    };
    let ends = w["ends_ms"]
        .as_i64()
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        })
        .unwrap_or_default();
    format!(
        "{}  {scope}  {}  until {ends}  by {}: {}",
        w["id"].as_str().unwrap_or(""),
        w["state"].as_str().unwrap_or(""),
        w["created_by"].as_str().unwrap_or(""),
        w["reason"].as_str().unwrap_or("")
    )
}

/// A small client of the collector's API.
struct Api {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Api {
    fn new(args: &ApiArgs) -> Result<Self> {
        let token = match &args.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--token-file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        Ok(Self {
            base: args.api.trim_end_matches('/').to_owned(),
            token,
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .context("HTTP client")?,
        })
    }

    /// `method path` with `body`; the JSON answer, or the API's error sentence.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.client.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .send()
            .await
            .with_context(|| format!("{url}: is the collector (or etcdmon up) running? --api"))?;
        let status = r.status();
        let text = r.text().await.context("read the answer")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let msg = value["error"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            bail!("{url}: {status}: {msg}");
        }
        Ok(value)
    }
}
