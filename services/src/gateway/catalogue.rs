//! What the gateway keeps from the artifacts: titles, and the hot list behind the popular and
//! fallback levels. The trace query API reads it too, to tell "not in the catalogue" apart.

use std::collections::HashMap;

use recstack_core::artifacts::{Artifacts, Manifest};
use recstack_trace_store::explain::ItemIndex;

pub struct Catalogue {
    pub artifact_version: String,
    titles: HashMap<String, String>,
    /// Hottest first, with scores.
    pub(super) hot: Vec<(String, f32)>,
}

impl Catalogue {
    pub fn new(manifest: &Manifest, a: &Artifacts) -> Self {
        Self {
            artifact_version: manifest.version.clone(),
            titles: a.items.iter().map(|i| (i.id.clone(), i.title.clone())).collect(),
            hot: a
                .hot
                .iter()
                .take(1000)
                .map(|&(i, s)| (a.items[i as usize].id.clone(), s))
                .collect(),
        }
    }

    /// Whether recall's artifacts know the item.
    pub fn has(&self, id: &str) -> bool {
        self.titles.contains_key(id)
    }

    pub fn title(&self, id: &str) -> String {
        self.titles.get(id).cloned().unwrap_or_default()
    }
}

impl ItemIndex for Catalogue {
    fn contains(&self, item_id: &str) -> bool {
        self.has(item_id)
    }

    fn title(&self, item_id: &str) -> Option<String> {
        self.titles.get(item_id).cloned()
    }
}
