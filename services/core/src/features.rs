//! The user and item features every stage passes along: generated from
//! `services/proto/features.proto` (messages only; the feature service's gRPC stubs are
//! generated in the services crate over these same types).

include!(concat!(env!("OUT_DIR"), "/recstack.features.v1.rs"));

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::artifacts::Artifacts;
use crate::timeline::{DayCounts, Timeline};

/// The build's features, by external id.
#[derive(Default)]
pub struct Snapshot {
    users: FxHashMap<String, UserFeatures>,
    items: FxHashMap<String, ItemFeatures>,
    /// The items' ratings by day, a slot a day (kept beside the messages: the stages that pass
    /// items along do not carry them).
    timelines: FxHashMap<String, Arc<DayCounts>>,
    /// The newest training rating of the build (Unix seconds; `None` for a snapshot not made
    /// from artifacts): what its features are as of.
    as_of: Option<i64>,
}

impl Snapshot {
    pub fn from_parts(users: Vec<UserFeatures>, items: Vec<ItemFeatures>) -> Self {
        Self {
            users: users.into_iter().map(|u| (u.user_id.clone(), u)).collect(),
            items: items.into_iter().map(|i| (i.item_id.clone(), i)).collect(),
            timelines: FxHashMap::default(),
            as_of: None,
        }
    }

    /// The same snapshot with items' timelines, as of `as_of` (Unix seconds): what a build's
    /// snapshot holds ([`Snapshot::from_artifacts`]), for snapshots made of parts.
    pub fn with_timelines(mut self, timelines: impl IntoIterator<Item = (String, Timeline)>, as_of: i64) -> Self {
        self.timelines = timelines
            .into_iter()
            .map(|(id, t)| (id, Arc::new(t.day_counts())))
            .collect();
        self.as_of = Some(as_of);
        self
    }

    pub fn from_artifacts(a: &Artifacts) -> Self {
        let items = a
            .items
            .iter()
            .zip(&a.item_features)
            .map(|(item, f)| {
                let v = ItemFeatures {
                    item_id: item.id.clone(),
                    ratings: f.ratings,
                    mean_rating: f.mean_rating,
                    hot_score: f.hot_score,
                    year: f.year.map_or(0, u32::from),
                    genres: f.genres.clone(),
                    recent_score: f.recent_score,
                    ..ItemFeatures::default()
                };
                (item.id.clone(), v)
            })
            .collect();
        let users = a
            .users
            .iter()
            .zip(&a.user_features)
            .map(|(user, f)| {
                let v = UserFeatures {
                    user_id: user.clone(),
                    ratings: f.ratings,
                    mean_rating: f.mean_rating,
                    last_ts: f.last_ts,
                    top_genres: f
                        .top_genres
                        .iter()
                        .map(|(g, s)| GenreShare {
                            genre: g.clone(),
                            share: *s,
                        })
                        .collect(),
                    recent_items: f.recent_items.iter().map(|&i| a.items[i as usize].id.clone()).collect(),
                };
                (user.clone(), v)
            })
            .collect();
        let timelines = a
            .items
            .iter()
            .zip(&a.item_features)
            .filter(|(_, f)| !f.timeline.is_empty())
            .map(|(item, f)| (item.id.clone(), Arc::new(f.timeline.day_counts())))
            .collect();
        Self {
            users,
            items,
            timelines,
            as_of: a.newest_rating(),
        }
    }

    pub fn user(&self, id: &str) -> Option<&UserFeatures> {
        self.users.get(id)
    }

    pub fn item(&self, id: &str) -> Option<&ItemFeatures> {
        self.items.get(id)
    }

    /// The item's ratings by day (`None` for one the build saw no rating of).
    pub fn timeline(&self, id: &str) -> Option<&Arc<DayCounts>> {
        self.timelines.get(id)
    }

    pub fn items(&self) -> impl Iterator<Item = &ItemFeatures> {
        self.items.values()
    }

    /// The newest training rating of the build it was made from (Unix seconds).
    pub fn as_of(&self) -> Option<i64> {
        self.as_of
    }
}
