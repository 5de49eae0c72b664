//! Where artifacts and models live: a local directory (`file:///abs/path` or a plain path) or
//! an object store (`s3://`, `gs://`, `az://`, `http(s)://`, through the `object_store` crate;
//! credentials and endpoints from the usual environment: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ALLOW_HTTP`, …).
//!
//! Services always read a local directory. For a remote location a [`Mirror`] copies the
//! version `current` names into a local cache first (the service is not ready before), then
//! polls; the loaders' own watchers see the new local version and swap it in.
//!
//! The layout is the one `recstack build` writes: `<prefix>/<version>/{manifest.json,
//! artifacts.bin}` and `<prefix>/current` naming the version. [`publish`] uploads a version's
//! files first and `current` last, so a reader never sees a half-published version.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("`{uri}`: {message}")]
    Uri { uri: String, message: String },
    #[error("{uri}: {source}")]
    Store {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{uri}: {message}")]
    Layout { uri: String, message: String },
    /// `current` names a version in an artifact format this build does not read: a release
    /// rolled out before its build Job has published (or an older one rolled back to).
    #[error("{uri}: {message}; waiting for a build in this release's format")]
    Format { uri: String, message: String },
}

impl ObjectError {
    /// The store answered that the object does not exist (as opposed to failing to answer).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ObjectError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }
}

/// A location given as a URI or a path.
#[derive(Clone, Debug)]
pub enum Location {
    /// A local directory or file.
    Local(PathBuf),
    /// A prefix (or object) in an object store.
    Remote(Remote),
}

/// A prefix (or one object) in an object store.
#[derive(Clone, Debug)]
pub struct Remote {
    pub uri: String,
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
}

/// Names the directory where the object store's settings are mounted as files (a Secret
/// volume: one file per key, named like its environment variable, such as
/// `AWS_SECRET_ACCESS_KEY`). Credentials as files stay out of the process environment, crash
/// dumps and `kubectl describe`.
pub const CREDENTIALS_DIR_ENV: &str = "RECSTACK_STORE_CREDENTIALS_DIR";

/// The store's settings: the environment, then the files in `$RECSTACK_STORE_CREDENTIALS_DIR`
/// (which win).
fn store_options() -> Vec<(String, String)> {
    let mut options: Vec<(String, String)> = std::env::vars().collect();
    if let Some(dir) = std::env::var_os(CREDENTIALS_DIR_ENV) {
        options.extend(settings_in(Path::new(&dir)));
    }
    options
}

/// Each file in `dir` as (its name, its content without the trailing newline). Hidden entries
/// (a Secret volume's `..data` links) are skipped; a missing directory has none.
pub fn settings_in(dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "the object store's credentials directory cannot be read");
        return Vec::new();
    };
    let mut settings: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if name.starts_with('.') || !e.path().is_file() {
                return None;
            }
            let value = std::fs::read_to_string(e.path()).ok()?;
            Some((name, value.trim_end_matches(['\n', '\r']).to_string()))
        })
        .collect();
    settings.sort();
    settings
}

/// Whether `uri` names an object store (anything with a scheme but `file://`).
pub fn is_remote(uri: &str) -> bool {
    uri.contains("://") && !uri.starts_with("file://")
}

impl Location {
    /// Parses `uri` with the store's settings from the process environment.
    pub fn parse(uri: &str) -> Result<Self, ObjectError> {
        Self::parse_with(uri, store_options())
    }

    /// As [`Location::parse`], with an S3-compatible `endpoint` (the runtime config's
    /// `artifacts.endpoint`) over the environment's; plain `http://` is then allowed.
    pub fn parse_at(uri: &str, endpoint: Option<&str>) -> Result<Self, ObjectError> {
        let mut options = store_options();
        if let Some(endpoint) = endpoint {
            options.push(("aws_endpoint".into(), endpoint.trim_end_matches('/').to_string()));
            if endpoint.starts_with("http://") {
                options.push(("aws_allow_http".into(), "true".into()));
            }
        }
        Self::parse_with(uri, options)
    }

    /// Parses `uri` with the store's settings from `options` (environment-style names).
    pub fn parse_with(uri: &str, options: impl IntoIterator<Item = (String, String)>) -> Result<Self, ObjectError> {
        let bad = |message: String| ObjectError::Uri {
            uri: uri.to_string(),
            message,
        };
        if uri.trim().is_empty() {
            return Err(bad("empty".into()));
        }
        if let Some(path) = uri.strip_prefix("file://") {
            return if path.starts_with('/') {
                Ok(Self::Local(PathBuf::from(path)))
            } else {
                Err(bad("a file:// URI needs an absolute path (file:///…)".into()))
            };
        }
        if !uri.contains("://") {
            return Ok(Self::Local(PathBuf::from(uri)));
        }
        let url = url::Url::parse(uri).map_err(|e| bad(e.to_string()))?;
        let (store, path) = object_store::parse_url_opts(&url, options)
            .map_err(|e| bad(format!("{e} (supported: file://, s3://, gs://, az://, http(s)://)")))?;
        Ok(Self::Remote(Remote {
            uri: uri.trim_end_matches('/').to_string(),
            store: Arc::from(store),
            path,
        }))
    }
}

impl Remote {
    fn child(&self, name: &str) -> ObjectPath {
        self.path.clone().join(name)
    }

    fn err(&self, source: object_store::Error) -> ObjectError {
        ObjectError::Store {
            uri: self.uri.clone(),
            source,
        }
    }

    async fn get(&self, path: &ObjectPath) -> Result<Vec<u8>, ObjectError> {
        let got = self.store.get(path).await.map_err(|e| self.err(e))?;
        Ok(got.bytes().await.map_err(|e| self.err(e))?.to_vec())
    }

    /// The version `<prefix>/current` names.
    pub async fn current(&self) -> Result<String, ObjectError> {
        let bytes = self.get(&self.child("current")).await?;
        let version = String::from_utf8_lossy(&bytes).trim().to_string();
        check_version(&self.uri, &version)?;
        Ok(version)
    }

    /// The objects under `<prefix>/<dir>/`, as (name relative to it, path).
    async fn list(&self, dir: &ObjectPath) -> Result<Vec<(String, ObjectPath, Option<String>)>, ObjectError> {
        let metas: Vec<_> = self
            .store
            .list(Some(dir))
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(metas.len());
        for meta in metas {
            let Some(rel) = meta.location.prefix_match(dir) else {
                continue;
            };
            let rel: Vec<String> = rel.map(|p| p.as_ref().to_string()).collect();
            out.push((rel.join("/"), meta.location, meta.e_tag));
        }
        out.sort();
        Ok(out)
    }

    /// Writes `objects` (from [`Remote::list`]) under `dest`, by their relative names.
    async fn fetch_into(
        &self,
        objects: &[(String, ObjectPath, Option<String>)],
        dest: &Path,
    ) -> Result<(), ObjectError> {
        for (name, path, _) in objects {
            let bytes = self.get(path).await?;
            let local = dest.join(name);
            if let Some(parent) = local.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::write(&local, &bytes).map_err(io(&local))?;
        }
        Ok(())
    }

    /// Copies every object under the prefix into `dest` (created if missing), keeping their
    /// relative names; returns how many. An empty prefix is an error: it is almost always a
    /// wrong URI.
    pub async fn download(&self, dest: &Path) -> Result<usize, ObjectError> {
        let objects = self.list(&self.path).await?;
        if objects.is_empty() {
            return Err(ObjectError::Layout {
                uri: self.uri.clone(),
                message: "no objects under this prefix".into(),
            });
        }
        std::fs::create_dir_all(dest).map_err(io(dest))?;
        self.fetch_into(&objects, dest).await?;
        Ok(objects.len())
    }
}

fn check_version(uri: &str, version: &str) -> Result<(), ObjectError> {
    let ok = !version.is_empty()
        && !version.starts_with('.')
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ObjectError::Layout {
            uri: uri.to_string(),
            message: format!("`current` names {version:?}, not a version directory"),
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ObjectError + '_ {
    move |source| ObjectError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ObjectError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// A local copy of a remote artifact root, in `root` (the layout `recstack build` writes).
pub struct Mirror {
    pub remote: Remote,
    pub root: PathBuf,
}

impl Mirror {
    /// Copies the version the remote `current` names unless it is already here, then points
    /// the local `current` at it. Returns the version, and whether it was fetched.
    pub async fn sync(&self) -> Result<(String, bool), ObjectError> {
        let version = self.remote.current().await?;
        let dir = self.root.join(&version);
        let local_current = std::fs::read_to_string(self.root.join("current")).unwrap_or_default();
        if dir.join("manifest.json").exists() && local_current.trim() == version {
            return Ok((version, false));
        }
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        if !dir.join("manifest.json").exists() {
            let tmp = self.root.join(format!(".{version}.fetch"));
            let _ = std::fs::remove_dir_all(&tmp);
            let objects = self.remote.list(&self.remote.child(&version)).await?;
            let uri = format!("{}/{version}", self.remote.uri);
            let Some((_, manifest, _)) = objects.iter().find(|(name, _, _)| name == "manifest.json") else {
                return Err(ObjectError::Layout {
                    uri,
                    message: "no manifest.json: the version is incomplete or missing".into(),
                });
            };
            // The manifest first, alone: a version in another artifact format is not fetched.
            let format = recstack_core::artifacts::manifest_format(&self.remote.get(manifest).await?).map_err(|e| {
                ObjectError::Layout {
                    uri: uri.clone(),
                    message: format!("manifest.json: {e}"),
                }
            })?;
            if let Some(message) = recstack_core::artifacts::format_mismatch(&version, format) {
                return Err(ObjectError::Format { uri, message });
            }
            self.remote.fetch_into(&objects, &tmp).await?;
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
        }
        write_atomic(&self.root.join("current"), format!("{version}\n").as_bytes())?;
        prune(&self.root, &version, 2);
        Ok((version, true))
    }

    /// The first sync: while the store has no `current` (nothing published yet), or `current`
    /// names a version in another artifact format (a new release whose build has not published
    /// yet), it waits, checking every `every`; any other failure is returned.
    pub async fn first_sync(&self, every: Duration) -> Result<String, ObjectError> {
        let mut waited = 0u32;
        loop {
            match self.sync().await {
                Ok((version, _)) => return Ok(version),
                Err(e) if e.is_not_found() || matches!(e, ObjectError::Format { .. }) => {
                    if waited.is_multiple_of(12) {
                        if e.is_not_found() {
                            tracing::info!(uri = %self.remote.uri, "no artifact version published yet (no `current`); waiting for the build");
                        } else {
                            tracing::info!(error = %e, "the published artifact version is not in this release's format");
                        }
                    }
                    waited += 1;
                    tokio::time::sleep(every).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Syncs every `every` until the process ends; a failure keeps the local copy.
    pub async fn poll(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.sync().await {
                Ok((version, true)) => {
                    tracing::info!(%version, uri = %self.remote.uri, "fetched a new artifact version")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "artifact poll failed; keeping the local copy"),
            }
        }
    }
}

/// Keeps the `keep` newest version directories in a mirror (and `current`'s).
fn prune(root: &Path, current: &str, keep: usize) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_name() != current)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort();
    let old = dirs.len().saturating_sub(keep.saturating_sub(1));
    for (_, dir) in dirs.into_iter().take(old) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The local artifact root for `uri`: the directory itself, or a mirror in `cache` synced once
/// (with the mirror, to poll). While the store has no `current` yet (a new stack whose build
/// Job has not published), it waits, checking every `every`; any other failure is returned.
pub async fn artifact_root(
    uri: &str,
    endpoint: Option<&str>,
    cache: &Path,
    every: Duration,
) -> Result<(PathBuf, Option<Mirror>), ObjectError> {
    match Location::parse_at(uri, endpoint)? {
        Location::Local(path) => Ok((path, None)),
        Location::Remote(remote) => {
            let mirror = Mirror {
                remote,
                root: cache.to_path_buf(),
            };
            let version = mirror.first_sync(every).await?;
            tracing::info!(%version, uri, cache = %cache.display(), "fetched artifacts");
            Ok((cache.to_path_buf(), Some(mirror)))
        }
    }
}

/// Uploads `root/<version>/*` to `dest`, then `current` (the publish step: readers see the
/// new version only once it is whole).
pub async fn publish(root: &Path, version: &str, dest: &Remote) -> Result<usize, ObjectError> {
    check_version(&dest.uri, version)?;
    let dir = root.join(version);
    let mut files = Vec::new();
    collect_files(&dir, &dir, &mut files)?;
    if !files.iter().any(|f| f == "manifest.json") {
        return Err(ObjectError::Layout {
            uri: dir.display().to_string(),
            message: "no manifest.json to publish".into(),
        });
    }
    // The manifest goes last within the version: a mirror treats a version without one as
    // incomplete.
    files.sort_by_key(|f| f == "manifest.json");
    for name in &files {
        let local = dir.join(name);
        let bytes = std::fs::read(&local).map_err(io(&local))?;
        let path = dest.child(version).join_all_rel(name);
        dest.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| dest.err(e))?;
    }
    dest.store
        .put(
            &dest.child("current"),
            PutPayload::from(format!("{version}\n").into_bytes()),
        )
        .await
        .map_err(|e| dest.err(e))?;
    Ok(files.len())
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), ObjectError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        if path.is_dir() {
            collect_files(base, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(base) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

trait JoinRel {
    fn join_all_rel(self, rel: &str) -> ObjectPath;
}

impl JoinRel for ObjectPath {
    fn join_all_rel(self, rel: &str) -> ObjectPath {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self, |p, part| p.join(part))
    }
}

/// A model file and its siblings (`model.json` beside `model.onnx`, a factored model's
/// `model.first.onnx` / `model.head.onnx`): every object beside it whose name starts with the
/// model's stem. A remote model is copied into `cache` (re-fetched when an object's ETag
/// changes); returns the local path of the model file.
pub struct ModelFiles {
    remote: Remote,
    dir: ObjectPath,
    stem: String,
    file: String,
    local: PathBuf,
}

impl ModelFiles {
    /// `uri` must be remote; `cache` is a directory for this model alone.
    pub fn new(uri: &str, endpoint: Option<&str>, cache: &Path) -> Result<Self, ObjectError> {
        let remote = match Location::parse_at(uri, endpoint)? {
            Location::Remote(r) => r,
            Location::Local(_) => {
                return Err(ObjectError::Uri {
                    uri: uri.into(),
                    message: "a local model needs no fetching".into(),
                });
            }
        };
        let parts: Vec<String> = remote.path.parts().map(|p| p.as_ref().to_string()).collect();
        let Some((file, dir)) = parts.split_last() else {
            return Err(ObjectError::Uri {
                uri: uri.into(),
                message: "names no object".into(),
            });
        };
        let stem = file.split('.').next().unwrap_or(file).to_string();
        let dir = dir.iter().fold(ObjectPath::default(), |p, part| p.join(part.as_str()));
        Ok(Self {
            file: file.clone(),
            stem,
            dir,
            remote,
            local: cache.to_path_buf(),
        })
    }

    /// The local path the model is served from.
    pub fn path(&self) -> PathBuf {
        self.local.join(&self.file)
    }

    /// Fetches what changed; returns whether anything did.
    pub async fn sync(&self) -> Result<bool, ObjectError> {
        std::fs::create_dir_all(&self.local).map_err(io(&self.local))?;
        let objects = self.remote.list(&self.dir).await?;
        let family: Vec<_> = objects
            .into_iter()
            .filter(|(name, _, _)| !name.contains('/') && name.split('.').next() == Some(self.stem.as_str()))
            .collect();
        if !family.iter().any(|(name, _, _)| *name == self.file) {
            return Err(ObjectError::Layout {
                uri: self.remote.uri.clone(),
                message: "no such object".into(),
            });
        }
        let mut changed = false;
        // The model file last: a watcher that sees it change finds its card already in place.
        let mut family = family;
        family.sort_by_key(|(name, _, _)| *name == self.file);
        for (name, path, etag) in family {
            let tag_file = self.local.join(format!(".{name}.etag"));
            let have = std::fs::read_to_string(&tag_file).ok();
            if etag.is_some() && have == etag && self.local.join(&name).exists() {
                continue;
            }
            let bytes = self.remote.get(&path).await?;
            write_atomic(&self.local.join(&name), &bytes)?;
            if let Some(tag) = &etag {
                write_atomic(&tag_file, tag.as_bytes())?;
            }
            changed = true;
        }
        Ok(changed)
    }

    /// Syncs every `every` until the process ends.
    pub async fn poll(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.sync().await {
                Ok(true) => tracing::info!(uri = %self.remote.uri, "fetched a changed model"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "model poll failed; keeping the local copy"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recstack_core::artifacts::ARTIFACT_FORMAT;

    #[test]
    fn locations_parse_or_say_why_not() {
        assert!(matches!(Location::parse("artifacts").unwrap(), Location::Local(p) if p == Path::new("artifacts")));
        assert!(matches!(Location::parse("file:///srv/a").unwrap(), Location::Local(p) if p == Path::new("/srv/a")));
        let e = Location::parse("file://relative").unwrap_err().to_string();
        assert!(e.contains("absolute path"), "{e}");
        assert!(Location::parse("").is_err());
        let e = Location::parse("ftp://host/x").unwrap_err().to_string();
        assert!(e.starts_with("`ftp://host/x`") && e.contains("supported"), "{e}");
        let opts = [("aws_region".to_string(), "us-east-1".to_string())];
        match Location::parse_with("s3://bucket/artifacts/", opts).unwrap() {
            Location::Remote(r) => {
                assert_eq!(r.uri, "s3://bucket/artifacts");
                assert_eq!(r.child("current").as_ref(), "artifacts/current");
            }
            other => panic!("{other:?}"),
        }
        assert!(is_remote("s3://b/x") && is_remote("https://h/x"));
        assert!(!is_remote("file:///x") && !is_remote("x/y"));
    }

    #[test]
    fn settings_come_from_a_mounted_secret_as_files() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("AWS_ACCESS_KEY_ID"), "key\n").unwrap();
        std::fs::write(tmp.path().join("AWS_REGION"), "eu-west-1").unwrap();
        std::fs::create_dir(tmp.path().join("..2026_12_03")).unwrap();
        std::fs::write(tmp.path().join("..data"), "link").unwrap();
        assert_eq!(
            settings_in(tmp.path()),
            [
                ("AWS_ACCESS_KEY_ID".to_string(), "key".to_string()),
                ("AWS_REGION".to_string(), "eu-west-1".to_string())
            ]
        );
        assert!(settings_in(&tmp.path().join("missing")).is_empty());
    }

    #[test]
    fn versions_named_by_current_must_be_plain_names() {
        for ok in ["v-0123abcd", "deepfm_2.1"] {
            assert!(check_version("u", ok).is_ok(), "{ok}");
        }
        for bad in ["", "../etc", ".hidden", "a/b", "v 1"] {
            assert!(check_version("u", bad).is_err(), "{bad:?}");
        }
    }

    /// The full round trip over the `object_store` API, on its local-filesystem store (the
    /// cluster e2e runs the same code against a real S3 server).
    #[tokio::test]
    async fn publish_then_mirror_round_trips_and_ignores_half_published_versions() {
        let tmp = tempfile::tempdir().unwrap();
        let built = tmp.path().join("built");
        std::fs::create_dir_all(built.join("v-1")).unwrap();
        std::fs::write(built.join("v-1/artifacts.bin"), b"payload").unwrap();
        std::fs::write(built.join("v-1/manifest.json"), manifest(ARTIFACT_FORMAT)).unwrap();
        let bucket = tmp.path().join("bucket");
        std::fs::create_dir_all(&bucket).unwrap();
        let uri = format!("file://{}", bucket.display());
        // A file:// URI is local; the object-store path of the same directory is remote.
        assert!(matches!(Location::parse(&uri).unwrap(), Location::Local(_)));
        let remote = Remote {
            uri: uri.clone(),
            store: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&bucket).unwrap()),
            path: ObjectPath::from("stack/artifacts"),
        };
        assert_eq!(publish(&built, "v-1", &remote).await.unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(bucket.join("stack/artifacts/current")).unwrap(),
            "v-1\n"
        );
        let mirror = Mirror {
            remote: remote.clone(),
            root: tmp.path().join("cache"),
        };
        assert_eq!(mirror.sync().await.unwrap(), ("v-1".to_string(), true));
        assert_eq!(
            std::fs::read(tmp.path().join("cache/v-1/artifacts.bin")).unwrap(),
            b"payload"
        );
        assert_eq!(mirror.sync().await.unwrap(), ("v-1".to_string(), false));
        // `current` naming a version with no manifest yet: the mirror keeps what it has.
        std::fs::create_dir_all(bucket.join("stack/artifacts/v-2")).unwrap();
        std::fs::write(bucket.join("stack/artifacts/v-2/artifacts.bin"), b"half").unwrap();
        std::fs::write(bucket.join("stack/artifacts/current"), b"v-2\n").unwrap();
        let e = mirror.sync().await.unwrap_err().to_string();
        assert!(e.contains("incomplete"), "{e}");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("cache/current")).unwrap(),
            "v-1\n"
        );
    }

    /// A `manifest.json` as far as the mirror reads it: its artifact format (0: none named, as
    /// releases before the field wrote them).
    fn manifest(format: u32) -> Vec<u8> {
        if format == 0 {
            br#"{"version": "v-old"}"#.to_vec()
        } else {
            format!(r#"{{"version": "v", "format": {format}}}"#).into_bytes()
        }
    }

    fn local_remote(bucket: &Path, prefix: &str) -> Remote {
        Remote {
            uri: format!("file://{}/{prefix}", bucket.display()),
            store: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(bucket).unwrap()),
            path: ObjectPath::from(prefix),
        }
    }

    /// A new stack's pods start before its build Job publishes: they wait for `current`
    /// instead of failing, and take the version once it is there.
    #[tokio::test]
    async fn the_first_sync_waits_for_a_version_to_be_published() {
        let tmp = tempfile::tempdir().unwrap();
        let bucket = tmp.path().join("bucket");
        std::fs::create_dir_all(&bucket).unwrap();
        let mirror = Mirror {
            remote: local_remote(&bucket, "stack/artifacts"),
            root: tmp.path().join("cache"),
        };
        let e = mirror.sync().await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let waiting = tokio::spawn(async move { mirror.first_sync(Duration::from_millis(20)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "returned before anything was published");
        let built = tmp.path().join("built");
        std::fs::create_dir_all(built.join("v-7")).unwrap();
        std::fs::write(built.join("v-7/manifest.json"), manifest(ARTIFACT_FORMAT)).unwrap();
        publish(&built, "v-7", &local_remote(&bucket, "stack/artifacts"))
            .await
            .unwrap();
        let version = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(version, "v-7");
        assert!(tmp.path().join("cache/v-7/manifest.json").exists());
        // Other failures are not waited out: a version that `current` names but that is not
        // there is an error at once.
        std::fs::write(bucket.join("stack/artifacts/current"), b"v-8\n").unwrap();
        let mirror = Mirror {
            remote: local_remote(&bucket, "stack/artifacts"),
            root: tmp.path().join("cache2"),
        };
        let e = mirror
            .first_sync(Duration::from_millis(20))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("incomplete or missing"), "{e}");
    }

    /// A release that reads a new artifact format rolls out before its build Job publishes:
    /// `current` still names a version in the old format. A new pod waits for one it can read
    /// (rather than fetching what it cannot load and exiting into a crash loop), and a running
    /// pod keeps its copy.
    #[tokio::test]
    async fn a_version_in_another_artifact_format_is_waited_out_not_fetched() {
        let tmp = tempfile::tempdir().unwrap();
        let bucket = tmp.path().join("bucket");
        let built = tmp.path().join("built");
        let remote = || local_remote(&bucket, "stack/artifacts");
        for (version, format) in [("v-old", 0), ("v-later", ARTIFACT_FORMAT + 1)] {
            std::fs::create_dir_all(built.join(version)).unwrap();
            std::fs::write(built.join(version).join("artifacts.bin"), b"other layout").unwrap();
            std::fs::write(built.join(version).join("manifest.json"), manifest(format)).unwrap();
        }
        std::fs::create_dir_all(&bucket).unwrap();
        publish(&built, "v-later", &remote()).await.unwrap();
        publish(&built, "v-old", &remote()).await.unwrap();
        let mirror = Mirror {
            remote: remote(),
            root: tmp.path().join("cache"),
        };
        let e = mirror.sync().await.unwrap_err();
        assert!(matches!(e, ObjectError::Format { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("v-old was written in an older format (4 or before)")
                && e.contains(&format!("this build reads format {ARTIFACT_FORMAT}")),
            "{e}"
        );
        assert!(
            !tmp.path().join("cache/v-old").exists() && !tmp.path().join("cache/current").exists(),
            "nothing of the other format is fetched or made current"
        );
        let waiting = tokio::spawn(async move { mirror.first_sync(Duration::from_millis(20)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "returned with a version it cannot read");
        // The new release's build publishes: the waiting pod takes it.
        std::fs::create_dir_all(built.join("v-new")).unwrap();
        std::fs::write(built.join("v-new/manifest.json"), manifest(ARTIFACT_FORMAT)).unwrap();
        publish(&built, "v-new", &remote()).await.unwrap();
        let version = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(version, "v-new");
        // A later format published over it (a newer release's build, while this one runs):
        // this pod keeps serving its copy.
        std::fs::write(bucket.join("stack/artifacts/current"), b"v-later\n").unwrap();
        let mirror = Mirror {
            remote: remote(),
            root: tmp.path().join("cache"),
        };
        let e = mirror.sync().await.unwrap_err().to_string();
        assert!(
            e.contains(&format!("v-later was written in format {}", ARTIFACT_FORMAT + 1)),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("cache/current")).unwrap(),
            "v-new\n"
        );
        assert!(!tmp.path().join("cache/v-later").exists());
        // A manifest that is not JSON is an error at once, not waited out.
        std::fs::create_dir_all(built.join("v-bad")).unwrap();
        std::fs::write(built.join("v-bad/manifest.json"), b"not json").unwrap();
        publish(&built, "v-bad", &remote()).await.unwrap();
        let e = Mirror {
            remote: remote(),
            root: tmp.path().join("cache3"),
        }
        .first_sync(Duration::from_millis(20))
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("v-bad: manifest.json:"), "{e}");
    }

    #[tokio::test]
    async fn a_prefix_downloads_whole_and_an_empty_one_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let bucket = tmp.path().join("bucket");
        std::fs::create_dir_all(bucket.join("data/ratings/sub")).unwrap();
        std::fs::write(bucket.join("data/ratings/ratings.dat"), b"1::2::3::4").unwrap();
        std::fs::write(bucket.join("data/ratings/sub/movies.dat"), b"m").unwrap();
        let dest = tmp.path().join("dest");
        let n = local_remote(&bucket, "data/ratings").download(&dest).await.unwrap();
        assert_eq!(n, 2);
        assert_eq!(std::fs::read(dest.join("ratings.dat")).unwrap(), b"1::2::3::4");
        assert_eq!(std::fs::read(dest.join("sub/movies.dat")).unwrap(), b"m");
        let e = local_remote(&bucket, "data/none")
            .download(&dest)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no objects"), "{e}");
    }
}
