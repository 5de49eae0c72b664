//! Where the gateway's traces go and where the trace query API reads them: a store spec from a
//! flag (`--trace-store`) or from the operator's runtime config.
//!
//! - `off`: no traces;
//! - `embedded:PATH` or a plain path: the SQLite store at PATH (the one-machine default);
//! - `http://…` or `https://…`: Elasticsearch (credentials from `--trace-credentials-dir`, or
//!   the Secret the operator mounts).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use recstack_trace_store::elastic::{ElasticConfig, ElasticStore};
use recstack_trace_store::embedded::EmbeddedStore;
use recstack_trace_store::store::{StoreError, TraceStore};

use crate::config::{ConfigError, RuntimeConfig, TraceStoreConfig};

/// The embedded store's file inside a pod (an `emptyDir` or a volume at `/var/lib/recstack`).
pub const POD_EMBEDDED_PATH: &str = "/var/lib/recstack/traces/traces.sqlite";

#[derive(Clone, Debug, PartialEq)]
pub enum TraceStoreSpec {
    Off,
    Embedded(PathBuf),
    Elasticsearch {
        url: String,
        credentials_dir: Option<PathBuf>,
    },
}

impl FromStr for TraceStoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty: use off, embedded:PATH, a path, or an http(s):// Elasticsearch URL".into());
        }
        if s == "off" {
            return Ok(Self::Off);
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Self::Elasticsearch {
                url: s.to_string(),
                credentials_dir: None,
            });
        }
        if s.contains("://") {
            return Err(format!(
                "`{s}`: only http(s):// (Elasticsearch) or a file path is understood"
            ));
        }
        let path = s.strip_prefix("embedded:").unwrap_or(s);
        if path.is_empty() {
            return Err("embedded: needs a path".into());
        }
        Ok(Self::Embedded(PathBuf::from(path)))
    }
}

/// What the runtime config says about traces.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    pub spec: TraceStoreSpec,
    /// Fraction of requests traced in full.
    pub full_sample: Option<f64>,
    pub retention_days: u32,
}

impl TraceSettings {
    pub const DEFAULT_RETENTION_DAYS: u32 = 7;
    /// Most bytes an embedded store keeps (the oldest traces go beyond it): a quarter of the
    /// pod's 8 GiB data volume, and a bound on a laptop's disk for `recstack up`.
    pub const EMBEDDED_MAX_BYTES: u64 = 2 << 30;

    pub fn from_config(config: &RuntimeConfig) -> Result<Self, ConfigError> {
        Ok(match &config.trace_store {
            TraceStoreConfig::Embedded => Self {
                spec: TraceStoreSpec::Embedded(PathBuf::from(POD_EMBEDDED_PATH)),
                full_sample: None,
                retention_days: Self::DEFAULT_RETENTION_DAYS,
            },
            TraceStoreConfig::Elasticsearch {
                url,
                credentials_dir,
                sampling,
                retention_days,
            } => Self {
                spec: TraceStoreSpec::Elasticsearch {
                    url: url.clone(),
                    credentials_dir: credentials_dir.as_ref().map(PathBuf::from),
                },
                full_sample: Some(sampling.clamp(0.0, 1.0)),
                retention_days: u32::try_from(*retention_days).ok().filter(|d| *d > 0).ok_or_else(|| {
                    ConfigError::Invalid {
                        field: "traceStore.retentionDays".into(),
                        message: format!("{retention_days} is not a positive number of days"),
                    }
                })?,
            },
        })
    }
}

/// Opens the store a spec names (`None` for `off`). Elasticsearch connects lazily: the first
/// write puts the index template.
pub fn open(spec: &TraceStoreSpec) -> Result<Option<Arc<dyn TraceStore>>, StoreError> {
    Ok(match spec {
        TraceStoreSpec::Off => None,
        TraceStoreSpec::Embedded(path) => Some(Arc::new(
            EmbeddedStore::open(path)?.with_max_bytes(TraceSettings::EMBEDDED_MAX_BYTES),
        )),
        TraceStoreSpec::Elasticsearch { url, credentials_dir } => {
            let mut config = ElasticConfig::new(url);
            if let Some(dir) = credentials_dir {
                config = config.with_credentials_dir(dir)?;
            }
            Some(Arc::new(ElasticStore::connect(&config)?))
        }
    })
}

/// The default embedded store of the local stack: beside the artifacts.
pub fn local_path(artifacts: &Path) -> PathBuf {
    artifacts.join("traces").join("traces.sqlite")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_say_what_is_understood() {
        assert_eq!("off".parse::<TraceStoreSpec>(), Ok(TraceStoreSpec::Off));
        assert_eq!(
            "embedded:/tmp/t.sqlite".parse::<TraceStoreSpec>(),
            Ok(TraceStoreSpec::Embedded("/tmp/t.sqlite".into()))
        );
        assert_eq!(
            "data/t.sqlite".parse::<TraceStoreSpec>(),
            Ok(TraceStoreSpec::Embedded("data/t.sqlite".into()))
        );
        assert_eq!(
            "https://es:9200".parse::<TraceStoreSpec>(),
            Ok(TraceStoreSpec::Elasticsearch {
                url: "https://es:9200".into(),
                credentials_dir: None
            })
        );
        assert!(
            "s3://bucket/x"
                .parse::<TraceStoreSpec>()
                .unwrap_err()
                .contains("http(s)://")
        );
        assert!("embedded:".parse::<TraceStoreSpec>().is_err());
        assert!("".parse::<TraceStoreSpec>().is_err());
    }
}

/// The access tokens of the gateway and the trace query API: from `dir` (a flag) or the
/// runtime config's mounted Secret; neither: open (everyone reads and debugs, as on one
/// machine). The config's rules (debug rate, pseudonyms) come with it.
pub fn access(
    dir: Option<&Path>,
    config: Option<&RuntimeConfig>,
) -> Result<
    (
        Arc<recstack_trace_store::access::Access>,
        Option<crate::config::AccessSettings>,
    ),
    TraceAccessError,
> {
    use recstack_trace_store::access::Access;
    let settings = config.and_then(|c| c.access.clone());
    let dir = dir
        .map(Path::to_path_buf)
        .or_else(|| settings.as_ref().map(|s| PathBuf::from(&s.dir)));
    let access = match &dir {
        Some(d) => Access::from_dir(d).map_err(|source| TraceAccessError {
            dir: d.display().to_string(),
            source,
        })?,
        None => Access::open(),
    };
    if settings.as_ref().is_some_and(|s| s.pseudonymize_users) && access.pseudonym_key.is_none() {
        return Err(TraceAccessError {
            dir: dir.map(|d| d.display().to_string()).unwrap_or_default(),
            source: recstack_trace_store::access::AccessError::Read {
                key: "pseudonym-key".into(),
                message: "pseudonymizeUsers is on but the access Secret has no pseudonym-key".into(),
            },
        });
    }
    Ok((Arc::new(access), settings))
}

/// The access directory could not be read.
#[derive(Debug, thiserror::Error)]
#[error("access tokens in {dir}: {source}")]
pub struct TraceAccessError {
    pub dir: String,
    pub source: recstack_trace_store::access::AccessError,
}
