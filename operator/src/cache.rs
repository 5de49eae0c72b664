//! The watch caches of what stacks own: one reflector store per child kind, and an index from
//! a stack to the names of its children, so a reconcile looks up its own few dozen objects
//! instead of scanning every cached object of every stack.
//!
//! Kept lean: objects are cached without `managedFields` (the largest part of most objects);
//! the one fact the operator reads from them — whether it owns a Deployment's `spec.replicas`,
//! for the hand-over to an autoscaler — is recorded as a cache-only annotation first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use kube::api::{Api, DynamicObject, TypeMeta};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::labels::{self, FIELD_MANAGER};
use crate::render::ChildKind;

/// On cached Deployments whose `spec.replicas` the operator's apply owns. Never sent anywhere:
/// cached objects are read, not applied.
pub const CACHED_REPLICAS_OWNER: &str = "recstack.io/cache-operator-owns-replicas";

/// (namespace, stack) → the (kind, name) of every child it owns.
type Index = HashMap<(String, String), BTreeSet<(ChildKind, String)>>;

/// The caches of every watched child kind.
#[derive(Clone)]
pub struct ChildCache {
    stores: BTreeMap<ChildKind, Store<DynamicObject>>,
    index: Arc<RwLock<Index>>,
}

impl ChildCache {
    pub fn new() -> Self {
        Self {
            stores: BTreeMap::new(),
            index: Arc::default(),
        }
    }

    /// Adds `kind` to the cache and returns the watch stream that fills it (and the index) and
    /// that wakes owners: hand it to the controller, which polls it.
    pub fn watch(
        &mut self,
        client: &Client,
        kind: ChildKind,
    ) -> impl Stream<Item = Result<DynamicObject, watcher::Error>> + Send + 'static {
        let ar = kind.api_resource();
        let writer = Writer::new(ar.clone());
        self.stores.insert(kind, writer.as_reader());
        let types = TypeMeta {
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
        };
        let selector = format!("{}={FIELD_MANAGER}", labels::MANAGED_BY);
        let mut indexer = Indexer {
            kind,
            index: self.index.clone(),
            relist: None,
        };
        watcher(
            Api::<DynamicObject>::all_with(client.clone(), &ar),
            watcher::Config::default().labels(&selector),
        )
        .default_backoff()
        .modify(move |o| {
            // Objects from the initial LIST carry no apiVersion/kind (watch events do);
            // the diff compares them with what would be applied.
            o.types.get_or_insert_with(|| types.clone());
            if kind == ChildKind::Deployment && operator_owns_replicas(o) {
                o.annotations_mut()
                    .insert(CACHED_REPLICAS_OWNER.to_string(), "true".to_string());
            }
            o.managed_fields_mut().clear();
        })
        .map(move |event| {
            if let Ok(event) = &event {
                indexer.apply(event);
            }
            event
        })
        .reflect(writer)
        .touched_objects()
    }

    /// Whether every cache holds its first full list.
    pub async fn wait_until_ready(&self) {
        for store in self.stores.values() {
            let _ = store.wait_until_ready().await;
        }
    }

    /// Every child of `namespace/stack` now cached, by (kind, name).
    pub fn children(&self, namespace: &str, stack: &str) -> BTreeMap<(ChildKind, String), DynamicObject> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let Some(owned) = index.get(&(namespace.to_string(), stack.to_string())) else {
            return BTreeMap::new();
        };
        owned
            .iter()
            .filter_map(|(kind, name)| {
                let store = self.stores.get(kind)?;
                let key = ObjectRef::new_with(name, kind.api_resource()).within(namespace);
                store.get(&key).map(|o| ((*kind, name.clone()), (*o).clone()))
            })
            .collect()
    }
}

impl Default for ChildCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps the index in step with one kind's watch events (a re-list replaces that kind's
/// entries at once when it completes, as the store does).
struct Indexer {
    kind: ChildKind,
    index: Arc<RwLock<Index>>,
    relist: Option<Vec<((String, String), String)>>,
}

impl Indexer {
    fn apply(&mut self, event: &watcher::Event<DynamicObject>) {
        match event {
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(o) => {
                if let (Some(relist), Some(key)) = (self.relist.as_mut(), owner_key(o)) {
                    relist.push((key, o.name_any()));
                }
            }
            watcher::Event::InitDone => {
                let entries = self.relist.take().unwrap_or_default();
                let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
                for children in index.values_mut() {
                    children.retain(|(k, _)| *k != self.kind);
                }
                for (key, name) in entries {
                    index.entry(key).or_default().insert((self.kind, name));
                }
                index.retain(|_, children| !children.is_empty());
            }
            watcher::Event::Apply(o) => {
                if let Some(key) = owner_key(o) {
                    let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
                    index.entry(key).or_default().insert((self.kind, o.name_any()));
                }
            }
            watcher::Event::Delete(o) => {
                if let Some(key) = owner_key(o) {
                    let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
                    if let Some(children) = index.get_mut(&key) {
                        children.remove(&(self.kind, o.name_any()));
                        if children.is_empty() {
                            index.remove(&key);
                        }
                    }
                }
            }
        }
    }
}

/// (namespace, stack) of a child, from its labels.
fn owner_key(o: &DynamicObject) -> Option<(String, String)> {
    Some((o.namespace()?, o.labels().get(labels::STACK)?.clone()))
}

/// Whether the operator's server-side apply owns `spec.replicas` (from `managedFields`).
pub fn operator_owns_replicas(o: &DynamicObject) -> bool {
    o.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER)
            && m.operation.as_deref() == Some("Apply")
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
    }) || o.annotations().get(CACHED_REPLICAS_OWNER).map(String::as_str) == Some("true")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn child(name: &str, stack: &str, ns: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": {labels::STACK: stack}},
        }))
        .unwrap()
    }

    fn entries(index: &Arc<RwLock<Index>>, ns: &str, stack: &str) -> Vec<String> {
        index
            .read()
            .unwrap()
            .get(&(ns.to_string(), stack.to_string()))
            .map(|c| c.iter().map(|(_, n)| n.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_index_follows_watch_events_and_relists() {
        let index: Arc<RwLock<Index>> = Arc::default();
        let mut services = Indexer {
            kind: ChildKind::Service,
            index: index.clone(),
            relist: None,
        };
        services.apply(&watcher::Event::Init);
        services.apply(&watcher::Event::InitApply(child("a-gateway", "a", "n")));
        services.apply(&watcher::Event::InitApply(child("b-gateway", "b", "n")));
        assert!(entries(&index, "n", "a").is_empty(), "a re-list takes effect when done");
        services.apply(&watcher::Event::InitDone);
        assert_eq!(entries(&index, "n", "a"), ["a-gateway"]);
        services.apply(&watcher::Event::Apply(child("a-recall", "a", "n")));
        services.apply(&watcher::Event::Apply(child("a-gateway", "a", "other")));
        assert_eq!(entries(&index, "n", "a"), ["a-gateway", "a-recall"]);
        assert_eq!(entries(&index, "other", "a"), ["a-gateway"], "namespaces apart");
        services.apply(&watcher::Event::Delete(child("a-gateway", "a", "n")));
        assert_eq!(entries(&index, "n", "a"), ["a-recall"]);
        // Another kind's entries survive this kind's re-list; objects gone meanwhile vanish.
        index
            .write()
            .unwrap()
            .entry(("n".into(), "a".into()))
            .or_default()
            .insert((ChildKind::ConfigMap, "a-config".into()));
        services.apply(&watcher::Event::Init);
        services.apply(&watcher::Event::InitApply(child("b-gateway", "b", "n")));
        services.apply(&watcher::Event::InitDone);
        assert_eq!(entries(&index, "n", "a"), ["a-config"]);
        assert_eq!(entries(&index, "n", "b"), ["b-gateway"]);
        // An object without the stack label is nobody's.
        let mut stray = child("x", "a", "n");
        stray.labels_mut().clear();
        services.apply(&watcher::Event::Apply(stray));
        assert_eq!(entries(&index, "n", "a"), ["a-config"]);
    }
}
