//! The artifact version recall serves: loaded, indexed by id, and swapped for a newer one
//! without a pause.

use super::*;

/// Memory for one artifact version's cached channel lists (about 40,000 lists of 200).
pub const LIST_CACHE_BYTES: u64 = 64 << 20;

/// A channel's list for one user (dense id, `u32::MAX` for users the build has not seen) at
/// one quota, on the build's history with the user's real-time items ahead of it (empty: the
/// build's history alone; always empty for a channel the history does not seed).
pub(super) type ListKey = (u32, Channel, usize, Recent);
/// The real-time items (dense ids, newest first) that changed a user's history.
pub(super) type Recent = Arc<[u32]>;
/// A channel's ranked (item, score) list, shared between the cache and requests.
pub(super) type List = Arc<[(u32, f32)]>;

/// One artifact version with its id lookups.
pub struct Loaded {
    pub manifest: Manifest,
    pub artifacts: Artifacts,
    pub(super) users: FxHashMap<String, u32>,
    pub(super) items: FxHashMap<String, u32>,
    /// The items' ids and seen-filter keys by dense id, packed: a request reads a thousand of
    /// them scattered over the catalogue.
    pub(super) ids: ItemIds,
    /// Channel lists computed for this version. Every channel is a pure function of the
    /// artifacts and the user's history — the build's, with the real-time items ahead of it
    /// that are part of the key (what else changes in real time — trending items, the seen
    /// filter — is applied after), so a list is exact for as long as its version is served,
    /// and goes with it. Bounded by [`LIST_CACHE_BYTES`], least-used lists evicted.
    pub(super) lists: moka::sync::Cache<ListKey, List>,
    /// No real-time items: the key part of lists on the build's history.
    pub(super) built: Recent,
}

impl Loaded {
    /// The version ready to serve: the vector channel's user tower attached (when the
    /// artifacts carry a sequence model and none is attached yet).
    pub fn new(manifest: Manifest, mut artifacts: Artifacts) -> Self {
        if artifacts.seq.as_ref().is_some_and(|s| s.tower.is_none()) {
            super::tower::attach_or_warn(&mut artifacts);
        }
        let users = artifacts
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.clone(), i as u32))
            .collect();
        let items = artifacts
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.id.clone(), i as u32))
            .collect();
        let ids = ItemIds::new(artifacts.items.iter().map(|i| i.id.as_str()));
        Self {
            manifest,
            artifacts,
            users,
            items,
            ids,
            lists: moka::sync::Cache::builder()
                .max_capacity(LIST_CACHE_BYTES)
                .weigher(|key: &ListKey, list: &List| {
                    let bytes =
                        64 + std::mem::size_of_val::<[u32]>(&key.3) + std::mem::size_of_val::<[(u32, f32)]>(list);
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .build(),
            built: Arc::from([]),
        }
    }

    /// Loads the version `root/current` names.
    pub fn from_dir(root: &Path) -> Result<Self, ArtifactError> {
        let (manifest, artifacts) = build::load(root, None)?;
        Ok(Self::new(manifest, artifacts))
    }

    /// Computes every channel at the default quota for `users` users spread over the
    /// catalogue's users (and for a user the build has not seen), keeping the lists: a version
    /// is warmed before it serves, so its first requests do not pay for first touches of its
    /// tables (page faults, cold caches) on top of their own work. Returns the lists computed.
    pub fn warm(&self, users: usize) -> usize {
        let count = self.artifacts.users.len() as u32;
        let step = (count / users.max(1) as u32).max(1);
        let sample = (0..count).step_by(step as usize).take(users).chain([u32::MAX]);
        let mut computed = 0;
        for user in sample {
            let history = UserHistory::new(&self.artifacts, user);
            for c in Channel::ALL {
                let list: List = channel_for(&self.artifacts, &history, c, DEFAULT_QUOTA).items.into();
                self.lists.insert((user, c, DEFAULT_QUOTA, self.built.clone()), list);
                computed += 1;
            }
        }
        computed
    }
}

/// Item ids by dense id with each one's [`item_key`], one 32-byte entry per item: a request
/// reads a thousand of them scattered over the catalogue, and each is one cache line read.
/// (Reading an id from the catalogue's `Item`s touches a large struct and then the id's own
/// allocation, each a likely cache miss.) Ids longer than 16 bytes are kept beside the entries.
pub(super) struct ItemIds {
    entries: Vec<IdEntry>,
    long: String,
}

#[repr(align(32))]
struct IdEntry {
    key: u64,
    len: u32,
    /// Where a long id starts in `ItemIds::long`.
    start: u32,
    inline: [u8; 16],
}

impl ItemIds {
    pub(super) fn new<'a>(ids: impl Iterator<Item = &'a str>) -> Self {
        let (mut entries, mut long) = (Vec::new(), String::new());
        for id in ids {
            let mut entry = IdEntry {
                key: item_key(id),
                len: u32::try_from(id.len()).expect("an item id under 4 GiB"),
                start: 0,
                inline: [0; 16],
            };
            match entry.inline.get_mut(..id.len()) {
                Some(inline) => inline.copy_from_slice(id.as_bytes()),
                None => {
                    entry.start = u32::try_from(long.len()).expect("long item ids under 4 GiB");
                    long.push_str(id);
                }
            }
            entries.push(entry);
        }
        Self { entries, long }
    }

    /// The id and seen-filter key of dense item `i` (one the artifacts list).
    pub(super) fn get(&self, i: u32) -> (&str, u64) {
        let e = &self.entries[i as usize];
        let len = e.len as usize;
        let id = match e.inline.get(..len) {
            // Copied from a `&str` whole, so it is UTF-8.
            Some(inline) => std::str::from_utf8(inline).unwrap_or_default(),
            None => &self.long[e.start as usize..e.start as usize + len],
        };
        (id, e.key)
    }
}

/// The artifacts being served. A new version is loaded beside the old one and swapped in with
/// one atomic pointer store: requests in flight finish on the version they started with, new
/// ones see the new version, and nobody waits.
pub struct ArtifactSlot {
    current: ArcSwap<Loaded>,
}

impl ArtifactSlot {
    pub fn new(loaded: Loaded) -> Self {
        Self {
            current: ArcSwap::from_pointee(loaded),
        }
    }

    pub fn get(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    pub fn swap(&self, loaded: Loaded) {
        info!(version = %loaded.manifest.version, "serving new artifact version");
        self.current.store(Arc::new(loaded));
    }
}
