//! Finds the etcd process on this host and reports its CPU, RSS, open file
//! descriptors against its limit, and threads.
//!
//! Discovery order: the configured pid file; the process that owns the
//! listening socket on the endpoint's port (the only way to tell members
//! apart when several run on one host, as in tests); a unique process named
//! `host.process_name`. The found pid is cached with its start time and
//! re-checked each round, so the /proc scan happens only when etcd
//! (re)starts. When nothing matches, the report says what was tried: etcd
//! may simply run on another host.

use super::HostConfig;
use crate::config::{AgentConfig, EtcdConfig};
use crate::probes::certs::{CertFile, CertRoleConfig, CertsConfig};
use etcdmon_proto::v1::{EtcdProcess, ProcessDiscovery};
use procfs::net::TcpState;
use procfs::process::{FDTarget, LimitValue, Process};
use procfs::WithCurrentSystemInfo;
use std::path::PathBuf;
use std::time::Instant;

/// Locates and samples the etcd process.
pub struct ProcessSampler {
    pid_file: Option<PathBuf>,
    port: Option<u16>,
    name: String,
    found: Option<Found>,
    prev_cpu: Option<(Instant, i32, u64)>,
}

#[derive(Clone, Copy)]
struct Found {
    pid: i32,
    starttime: u64,
    how: ProcessDiscovery,
}

impl ProcessSampler {
    /// A sampler for the member at `etcd`, found as `cfg` says.
    pub fn new(cfg: &HostConfig, etcd: &EtcdConfig) -> Self {
        Self {
            pid_file: etcd.pid_file.clone(),
            port: port_of(&etcd.endpoint),
            name: cfg.process_name.clone(),
            found: None,
            prev_cpu: None,
        }
    }

    /// Finds (or re-validates) the process and reads its figures.
    pub fn sample(&mut self, now: Instant) -> EtcdProcess {
        let found = match self.locate() {
            Ok(f) => f,
            Err(reason) => {
                self.found = None;
                self.prev_cpu = None;
                return EtcdProcess {
                    discovery: ProcessDiscovery::NotFound as i32,
                    not_found_reason: reason,
                    ..Default::default()
                };
            }
        };
        match read_process(found.pid) {
            Ok(fig) => {
                let cpu_cores = match self.prev_cpu {
                    Some((then, pid, ticks)) if pid == found.pid => {
                        let secs = now.duration_since(then).as_secs_f64();
                        if secs > 0.0 {
                            fig.cpu_ticks.saturating_sub(ticks) as f64
                                / procfs::ticks_per_second() as f64
                                / secs
                        } else {
                            0.0
                        }
                    }
                    _ => 0.0,
                };
                self.prev_cpu = Some((now, found.pid, fig.cpu_ticks));
                EtcdProcess {
                    discovery: found.how as i32,
                    not_found_reason: String::new(),
                    pid: found.pid,
                    cpu_cores,
                    rss_bytes: fig.rss_bytes,
                    open_fds: fig.open_fds,
                    max_fds: fig.max_fds,
                    threads: fig.threads,
                    cpu_seconds_total: fig.cpu_ticks as f64 / procfs::ticks_per_second() as f64,
                }
            }
            Err(e) => {
                // It exited between discovery and reading.
                self.found = None;
                EtcdProcess {
                    discovery: ProcessDiscovery::NotFound as i32,
                    not_found_reason: format!("etcd process {} vanished: {e}", found.pid),
                    ..Default::default()
                }
            }
        }
    }

    fn locate(&mut self) -> Result<Found, String> {
        if let Some(f) = self.found {
            if still_same(f) {
                return Ok(f);
            }
        }
        let mut tried = Vec::new();
        let f = self
            .by_pid_file(&mut tried)
            .or_else(|| self.by_port(&mut tried))
            .or_else(|| self.by_name(&mut tried));
        match f {
            Some(f) => {
                self.found = Some(f);
                Ok(f)
            }
            None => Err(format!(
                "etcd process not found on this host ({}); etcd may run on another host",
                tried.join("; ")
            )),
        }
    }

    fn by_pid_file(&self, tried: &mut Vec<String>) -> Option<Found> {
        let path = self.pid_file.as_ref()?;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                tried.push(format!("pid file {}: {e}", path.display()));
                return None;
            }
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            tried.push(format!("pid file {} holds no pid", path.display()));
            return None;
        };
        match Process::new(pid).and_then(|p| p.stat()) {
            Ok(st) => Some(Found {
                pid,
                starttime: st.starttime,
                how: ProcessDiscovery::PidFile,
            }),
            Err(_) => {
                tried.push(format!("pid {pid} from {} is not running", path.display()));
                None
            }
        }
    }

    fn by_port(&self, tried: &mut Vec<String>) -> Option<Found> {
        let port = self.port?;
        let inodes: Vec<u64> = [procfs::net::tcp(), procfs::net::tcp6()]
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.state == TcpState::Listen && e.local_address.port() == port)
            .map(|e| e.inode)
            .collect();
        if inodes.is_empty() {
            tried.push(format!("no process on this host listens on port {port}"));
            return None;
        }
        // Look at processes with the expected name first: on a busy host
        // that finds etcd without reading every process's fd table.
        let Ok(all) = procfs::process::all_processes() else {
            tried.push("cannot list /proc".into());
            return None;
        };
        let mut procs: Vec<(Process, bool)> = all
            .flatten()
            .map(|p| {
                let named = p.stat().map(|s| s.comm == self.name).unwrap_or(false);
                (p, named)
            })
            .collect();
        procs.sort_by_key(|(_, named)| !named);
        for (p, _) in procs {
            let Ok(fds) = p.fd() else { continue };
            let owns = fds
                .flatten()
                .any(|fd| matches!(fd.target, FDTarget::Socket(i) if inodes.contains(&i)));
            if owns {
                if let Ok(st) = p.stat() {
                    return Some(Found {
                        pid: p.pid,
                        starttime: st.starttime,
                        how: ProcessDiscovery::ListenPort,
                    });
                }
            }
        }
        tried.push(format!(
            "port {port} listens but its owner is not visible (another PID namespace?)"
        ));
        None
    }

    fn by_name(&self, tried: &mut Vec<String>) -> Option<Found> {
        if self.name.is_empty() {
            return None;
        }
        let matches: Vec<(i32, u64)> = procfs::process::all_processes()
            .ok()?
            .flatten()
            .filter_map(|p| p.stat().ok())
            .filter(|s| s.comm == self.name)
            .map(|s| (s.pid, s.starttime))
            .collect();
        match matches.as_slice() {
            [(pid, starttime)] => Some(Found {
                pid: *pid,
                starttime: *starttime,
                how: ProcessDiscovery::Name,
            }),
            [] => {
                tried.push(format!("no process named {:?}", self.name));
                None
            }
            many => {
                tried.push(format!(
                    "{} processes named {:?}, none identified by port",
                    many.len(),
                    self.name
                ));
                None
            }
        }
    }
}

/// What the flags of a local etcd process say about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalEtcd {
    /// Its data dir (`--data-dir`, `ETCD_DATA_DIR`, or `<name>.etcd` in its working
    /// directory), when that directory exists.
    pub data_dir: Option<PathBuf>,
    /// The certificate files it uses: `--cert-file` (server), `--peer-cert-file`
    /// (peer), `--trusted-ca-file` and `--peer-trusted-ca-file` (CA), each also
    /// from its `ETCD_*` environment variable.
    pub cert_files: Vec<(PathBuf, CertRoleConfig)>,
}

/// The etcd process listening on `endpoint`'s port on this host, read from its
/// command line and environment (relative paths are taken from its working
/// directory). `None` when etcd is not local or its flags cannot be read.
pub fn discover_local_etcd(endpoint: &str) -> Option<LocalEtcd> {
    let by_port = ProcessSampler {
        pid_file: None,
        port: port_of(endpoint),
        name: String::new(),
        found: None,
        prev_cpu: None,
    };
    let found = by_port.by_port(&mut Vec::new())?;
    let p = Process::new(found.pid).ok()?;
    let args = p.cmdline().ok()?;
    let cwd = p.cwd().ok()?;
    let environ = p.environ().unwrap_or_default();
    // `--flag=value`, `--flag value` (one dash works too), then `ETCD_FLAG`.
    let flag = |name: &str| -> Option<String> {
        args.iter()
            .enumerate()
            .find_map(|(i, a)| {
                let a = a.trim_start_matches('-');
                if let Some(v) = a.strip_prefix(&format!("{name}=")) {
                    Some(v.to_string())
                } else if a == name {
                    args.get(i + 1).cloned()
                } else {
                    None
                }
            })
            .or_else(|| {
                let var = format!("ETCD_{}", name.replace('-', "_").to_uppercase());
                environ
                    .get(std::ffi::OsStr::new(&var))
                    .map(|v| v.to_string_lossy().into_owned())
            })
            .filter(|v| !v.is_empty())
    };
    let dir = flag("data-dir")
        .or_else(|| flag("name").map(|n| format!("{n}.etcd")))
        .unwrap_or_else(|| "default.etcd".into());
    let dir = cwd.join(dir);
    let cert_files = [
        ("cert-file", CertRoleConfig::Server),
        ("peer-cert-file", CertRoleConfig::Peer),
        ("trusted-ca-file", CertRoleConfig::Ca),
        ("peer-trusted-ca-file", CertRoleConfig::Ca),
    ]
    .into_iter()
    .filter_map(|(name, role)| flag(name).map(|f| (cwd.join(f), role)))
    .collect();
    Some(LocalEtcd {
        data_dir: dir.is_dir().then_some(dir),
        cert_files,
    })
}

/// Fills what the config leaves unset from the flags of the etcd process that
/// serves `etcd.endpoint` on this host, so that an agent beside a member needs
/// no configuration for it (as `etcdmon up` does):
/// - `etcd.data_dir`, for the fsync probe and the filesystem metrics;
/// - with `certs.discover`, etcd's own server, peer and CA certificate files are
///   added to `certs.files`.
///
/// Configured values are kept; a remote or undiscoverable member changes nothing.
pub fn fill_from_local_etcd(cfg: &mut AgentConfig) {
    if let Some(local) = discover_local_etcd(&cfg.etcd.endpoint) {
        apply_local_etcd(cfg, local);
    }
}

/// [`fill_from_local_etcd`] with the local member already found (`etcdmon up`
/// looks once and uses the data dir for more than the agent's config).
pub fn apply_local_etcd(cfg: &mut AgentConfig, local: LocalEtcd) {
    if cfg.etcd.data_dir.is_none() && cfg.fsync.dir.is_none() {
        if let Some(dir) = local.data_dir {
            tracing::debug!(data_dir = %dir.display(), "etcd.data_dir found from the local etcd's flags");
            cfg.etcd.data_dir = Some(dir);
        }
    }
    if cfg.certs.discover {
        add_cert_files(&mut cfg.certs, local.cert_files);
    }
}

/// Adds `files` to `certs.files`, skipping paths already watched.
fn add_cert_files(certs: &mut CertsConfig, files: Vec<(PathBuf, CertRoleConfig)>) {
    for (path, role) in files {
        if certs.files.iter().all(|f| f.path != path) {
            tracing::debug!(path = %path.display(), "certificate found from the local etcd's flags");
            certs.files.push(CertFile { path, role });
        }
    }
}

/// The port of a client URL (the scheme's default when none is written).
fn port_of(endpoint: &str) -> Option<u16> {
    url::Url::parse(endpoint)
        .ok()
        .and_then(|u| u.port_or_known_default())
}

/// The pid still belongs to the process found earlier (not reused).
fn still_same(f: Found) -> bool {
    Process::new(f.pid)
        .and_then(|p| p.stat())
        .map(|s| s.starttime == f.starttime && s.state != 'Z')
        .unwrap_or(false)
}

struct Figures {
    cpu_ticks: u64,
    rss_bytes: u64,
    open_fds: u64,
    max_fds: u64,
    threads: u64,
}

fn read_process(pid: i32) -> procfs::ProcResult<Figures> {
    let p = Process::new(pid)?;
    let st = p.stat()?;
    let open_fds = p.fd_count()? as u64;
    let max_fds = match p.limits()?.max_open_files.soft_limit {
        LimitValue::Value(v) => v,
        LimitValue::Unlimited => u64::MAX,
    };
    Ok(Figures {
        cpu_ticks: st.utime + st.stime,
        rss_bytes: st.rss_bytes().get(),
        open_fds,
        max_fds,
        threads: u64::try_from(st.num_threads).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_process_by_its_listening_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut cfg = AgentConfig::default();
        cfg.etcd.endpoint = format!("http://127.0.0.1:{port}");
        cfg.host.process_name = "no-such-process-name".into();
        let mut s = ProcessSampler::new(&cfg.host, &cfg.etcd);
        let p = s.sample(Instant::now());
        assert_eq!(
            p.discovery,
            ProcessDiscovery::ListenPort as i32,
            "{}",
            p.not_found_reason
        );
        assert_eq!(p.pid, std::process::id() as i32);
        assert!(p.open_fds > 0 && p.open_fds <= p.max_fds);
        assert!(p.rss_bytes > 0 && p.threads >= 1);
    }

    #[test]
    fn explains_when_not_found() {
        let mut cfg = AgentConfig::default();
        // A port nobody listens on (bound then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        cfg.etcd.endpoint = format!("http://127.0.0.1:{port}");
        cfg.etcd.pid_file = Some("/nonexistent/etcd.pid".into());
        cfg.host.process_name = "no-such-process-name".into();
        let p = ProcessSampler::new(&cfg.host, &cfg.etcd).sample(Instant::now());
        assert_eq!(p.discovery, ProcessDiscovery::NotFound as i32);
        assert!(
            p.not_found_reason.contains("/nonexistent/etcd.pid"),
            "{}",
            p.not_found_reason
        );
        assert!(
            p.not_found_reason.contains(&format!("port {port}")),
            "{}",
            p.not_found_reason
        );
        assert!(
            p.not_found_reason.contains("another host"),
            "{}",
            p.not_found_reason
        );
    }

    #[test]
    fn pid_file_wins() {
        let dir = tempfile::tempdir().expect("tmp");
        let pid_file = dir.path().join("etcd.pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).expect("write");
        let mut cfg = AgentConfig::default();
        cfg.etcd.pid_file = Some(pid_file);
        let p = ProcessSampler::new(&cfg.host, &cfg.etcd).sample(Instant::now());
        assert_eq!(p.discovery, ProcessDiscovery::PidFile as i32);
        assert_eq!(p.pid, std::process::id() as i32);
    }
}
