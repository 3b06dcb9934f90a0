//! Typed configuration from a TOML file, `ETCDMON_<COMPONENT>_*` environment
//! variables and command-line flags, merged in that order by figment.
//!
//! Config structs use `#[serde(deny_unknown_fields)]` so a typo is an error
//! that names the field, not a silently ignored setting. Environment
//! variables nest with a double underscore: `ETCDMON_AGENT_FSYNC__WRITES=50`
//! sets `fsync.writes`.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// A configuration that could not be loaded; its message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file given on the command line does not exist or cannot be read.
    #[error("config file {path}: {reason}")]
    File {
        /// The path given.
        path: String,
        /// Why it could not be read.
        reason: String,
    },
    /// A value has the wrong type, is unknown or is missing.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        // One sentence per problem: the dotted field first (lowercase, as
        // written in the file), then what is wrong, then where it came from.
        let msgs: Vec<String> = e
            .into_iter()
            .map(|e| {
                let field = e.path.join(".").to_ascii_lowercase();
                let source = e
                    .metadata
                    .as_ref()
                    .map(|m| match &m.source {
                        Some(src) => format!(" (from {} {src})", m.name),
                        None => format!(" (from {})", m.name),
                    })
                    .unwrap_or_default();
                if field.is_empty() {
                    format!("{}{source}", e.kind)
                } else {
                    format!("`{field}`: {}{source}", e.kind)
                }
            })
            .collect();
        ConfigError::Invalid(msgs.join("; "))
    }
}

/// Command-line flags shaped like the config file, for [`load`]: each flag that was
/// given sets the value at its dotted path (`http.listen`), creating the tables on
/// the way; flags not given set nothing, so the file's and the environment's values
/// survive.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Overrides(serde_json::Map<String, serde_json::Value>);

impl Overrides {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `path` (dot-separated) to `value`.
    pub fn set(&mut self, path: &str, value: impl Into<serde_json::Value>) -> &mut Self {
        let mut table = &mut self.0;
        let mut keys = path.split('.').peekable();
        while let Some(key) = keys.next() {
            if keys.peek().is_none() {
                table.insert(key.to_owned(), value.into());
                break;
            }
            let entry = table
                .entry(key.to_owned())
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if !entry.is_object() {
                *entry = serde_json::Value::Object(Default::default());
            }
            table = entry.as_object_mut().expect("made an object above");
        }
        self
    }

    /// Sets `path` to `value` when a flag gave one; `Display` values (addresses,
    /// paths shown with `display()`) go in as strings.
    pub fn set_opt<T: ToString>(&mut self, path: &str, value: Option<T>) -> &mut Self {
        if let Some(v) = value {
            self.set(path, v.to_string());
        }
        self
    }

    /// The overrides as a JSON object.
    pub fn into_value(self) -> serde_json::Value {
        serde_json::Value::Object(self.0)
    }
}

/// Loads `T` from an optional TOML file, the environment under `env_prefix`
/// (e.g. `ETCDMON_AGENT_`) and `overrides` (flags), later sources winning.
///
/// `overrides` should serialize only the fields that were actually given on
/// the command line (skip `None`s), so defaults from the file survive.
pub fn load<T, O>(file: Option<&Path>, env_prefix: &str, overrides: &O) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    O: Serialize,
{
    load_renamed(file, env_prefix, overrides, &[])
}

/// [`load`], also accepting the older name of a renamed section: for each `(old,
/// new)` in `renames`, what a source gives under `old` counts as given under `new`
/// by that same source (unless it also gives the key under `new`), so the usual
/// precedence holds (an old environment variable still beats the file's new
/// section), and a line on stderr says to use the new name. A serde alias would
/// not do: a file using the old name and a flag setting the new one would be a
/// duplicate field.
pub fn load_renamed<T, O>(
    file: Option<&Path>,
    env_prefix: &str,
    overrides: &O,
    renames: &[(&str, &str)],
) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    O: Serialize,
{
    let mut figment = Figment::new();
    for source in sources(file, env_prefix, overrides)? {
        figment = figment.merge(renamed(source, renames)?);
    }
    Ok(figment.extract()?)
}

/// The file, the environment and the overrides, each a figment of its own, in
/// the order they are merged (later ones win).
fn sources<O: Serialize>(
    file: Option<&Path>,
    env_prefix: &str,
    overrides: &O,
) -> Result<Vec<Figment>, ConfigError> {
    let mut out = Vec::new();
    if let Some(path) = file {
        // figment silently skips missing files; an explicit --config that
        // points nowhere is a mistake the operator must hear about.
        if let Err(e) = std::fs::metadata(path) {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            });
        }
        out.push(Figment::from(Toml::file_exact(path)));
    }
    out.push(Figment::from(
        Env::prefixed(env_prefix)
            .split("__")
            // The config file's own path travels in the environment too.
            .ignore(&["config"]),
    ));
    out.push(Figment::from(Named {
        name: "command-line flags",
        value: overrides,
    }));
    Ok(out)
}

/// A provider of serialized values under a name that reads well in errors
/// ("from command-line flags"), where figment's own would print a Rust type.
struct Named<'a, V> {
    name: &'static str,
    value: &'a V,
}

impl<V: Serialize> figment::Provider for Named<'_, V> {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name)
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, Dict>, figment::Error> {
        Serialized::defaults(self.value).data()
    }
}

/// One source with its old section names moved to the new ones. A source that
/// uses no old name is returned as it is, keeping what it says about where each
/// value came from (for error messages).
fn renamed(source: Figment, renames: &[(&str, &str)]) -> Result<Figment, ConfigError> {
    let used: Vec<&(&str, &str)> = renames
        .iter()
        .filter(|(old, _)| source.find_value(old).is_ok())
        .collect();
    if used.is_empty() {
        return Ok(source);
    }
    let mut root: Dict = source.extract()?;
    for (old, new) in used {
        // Config is read before logging starts, hence stderr.
        eprintln!("config: section `{old}` is now called `{new}`; the old name still works");
        let Some(Value::Dict(_, from_old)) = root.remove(*old) else {
            return Err(ConfigError::Invalid(format!("`{old}`: expected a table")));
        };
        let entry = root
            .entry((*new).to_owned())
            .or_insert_with(|| Value::from(Dict::new()));
        let Value::Dict(_, to_new) = entry else {
            return Err(ConfigError::Invalid(format!("`{new}`: expected a table")));
        };
        for (key, value) in from_old {
            to_new.entry(key).or_insert(value);
        }
    }
    let name = source
        .metadata()
        .next()
        .map(|m| m.name.to_string())
        .unwrap_or_default();
    Ok(Figment::from(Named {
        name: if name.contains("TOML") {
            "the config file (old section names)"
        } else if name.contains("environment") {
            "the environment (old section names)"
        } else {
            "command-line flags (old section names)"
        },
        value: &root,
    }))
}

/// Parses a TOML document into `T` with the same strictness as [`load`];
/// used by tests that keep example config files from drifting.
pub fn from_toml_str<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    Ok(Figment::new().merge(Toml::string(text)).extract()?)
}

/// A validation failure of one field, after parsing succeeded.
#[derive(Debug, thiserror::Error)]
#[error("invalid config: `{field}` {reason}")]
pub struct FieldError {
    /// Dotted path of the field, e.g. `fsync.block_size`.
    pub field: &'static str,
    /// What is wrong, e.g. "must be between 1 and 1048576, got 0".
    pub reason: String,
}

impl FieldError {
    /// A failure of `field` for `reason`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// A duration that must be above zero (intervals, timeouts); the error names `field`.
pub fn positive(field: &'static str, d: std::time::Duration) -> Result<(), FieldError> {
    if d.is_zero() {
        Err(FieldError::new(field, "must be longer than zero"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Renamed {
        #[serde(default)]
        upstream: std::collections::BTreeMap<String, String>,
    }

    #[test]
    fn an_old_section_name_still_works_and_mixes_with_the_new_one() {
        let dir = std::env::temp_dir().join(format!("etcdmon-core-rename-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[collector]\naddress = \"old\"\nspool = \"/s\"\n").unwrap();
        let mut flags = Overrides::new();
        flags.set("upstream.address", "new");
        let got: Renamed = load_renamed(
            Some(&file),
            "ETCDMON_RENAME_TEST_",
            &flags,
            &[("collector", "upstream")],
        )
        .unwrap();
        // The new name wins for a key given under both; the rest comes along.
        assert_eq!(got.upstream["address"], "new");
        assert_eq!(got.upstream["spool"], "/s");
        // An old name in a later source still beats the new name in an earlier one.
        let file_new = dir.join("n.toml");
        std::fs::write(&file_new, "[upstream]\nspool = \"/file\"\n").unwrap();
        let mut later = Overrides::new();
        later.set("collector.spool", "/flag");
        let got: Renamed = load_renamed(
            Some(&file_new),
            "ETCDMON_RENAME_TEST_",
            &later,
            &[("collector", "upstream")],
        )
        .unwrap();
        assert_eq!(got.upstream["spool"], "/flag");
        // Without the rename, the old section is an unknown field.
        let err = load::<Renamed, _>(Some(&file), "ETCDMON_RENAME_TEST_", &flags).unwrap_err();
        assert!(err.to_string().contains("collector"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overrides_nest_dotted_paths_and_skip_absent_flags() {
        let mut o = Overrides::new();
        o.set("http.listen", "127.0.0.1:1")
            .set("etcd.tls.ca", "/ca.pem")
            .set_opt("etcd.endpoint", Some("http://e:2379"))
            .set_opt::<String>("log.level", None);
        assert_eq!(
            o.into_value(),
            serde_json::json!({
                "http": { "listen": "127.0.0.1:1" },
                "etcd": { "tls": { "ca": "/ca.pem" }, "endpoint": "http://e:2379" },
            })
        );
    }
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        writes: u32,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Conf {
        name: String,
        inner: Inner,
    }

    #[derive(Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    }

    #[test]
    fn flags_override_file_and_file_fills_the_rest() {
        let dir = tempfile_dir();
        let path = dir.join("c.toml");
        std::fs::write(&path, "name = \"file\"\n[inner]\nwrites = 7\n").expect("write");
        let c: Conf = load(
            Some(&path),
            "ETCDMON_CORETEST_A_",
            &Flags {
                name: Some("flag".into()),
            },
        )
        .expect("load");
        assert_eq!(c.name, "flag");
        assert_eq!(c.inner.writes, 7);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = from_toml_str::<Conf>("[inner]\nwritez = 1\n").expect_err("must fail");
        assert!(err.to_string().contains("writez"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = from_toml_str::<Conf>("[inner]\nwrites = \"many\"\n").expect_err("must fail");
        assert!(err.to_string().contains("inner.writes"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = load::<Conf, _>(
            Some(Path::new("/nonexistent/etcdmon.toml")),
            "ETCDMON_CORETEST_B_",
            &Flags { name: None },
        )
        .expect_err("must fail");
        assert!(
            err.to_string().contains("/nonexistent/etcdmon.toml"),
            "{err}"
        );
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("etcdmon-core-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
