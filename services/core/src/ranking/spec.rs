//! The inputs a model card names, checked against the features this build computes.

use serde::{Deserialize, Serialize};

use super::features::RowWriter;
use crate::recall::Channel;

/// Categorical features: a stable hash of the value modulo the bucket count.
pub const SPARSE: &[&str] = &[
    "user_id",
    "item_id",
    "item_genre",
    "user_top_genre",
    "item_decade",
    "user_activity",
];

/// Numeric features.
pub const DENSE: &[&str] = &[
    "user_log_ratings",
    "user_mean_rating",
    "item_log_ratings",
    "item_mean_rating",
    "item_log_hot",
    "genre_affinity",
    "item_age",
    "item_genre_count",
    "recall_position",
    "recall_fused",
    "recall_channels",
    "recall_rank_item_cf",
    "recall_rank_user_cf",
    "recall_rank_hot",
    "recall_rank_als",
    "recall_rank_vector",
    "recall_rank_tag",
    "recall_rank_cooc",
    "item_log_recent",
    "item_log_ratings_then",
    "item_log_week_then",
    "item_days_out_then",
];

/// Real-time item features: read per request from the feature service (the stream job's
/// windows, L1 ▸ Redis ▸ snapshot), not from the offline build — the training export has no
/// event stream and would give them their neutral values. A model card may name them beside
/// [`DENSE`]; [`InputSpec::all`] (the export) leaves them out. (The user's features are real
/// time already: the gateway reads them through the feature service with the stream job's fast
/// path, so `genre_affinity` and `user_top_genre` follow a user's newest engagements.)
pub const REALTIME_DENSE: &[&str] = &["item_rt_ctr", "item_rt_engagement", "item_rt_trend"];

/// One categorical input of a model card.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseFeature {
    pub name: String,
    /// Embedding rows; values are `hash % buckets`.
    pub buckets: u32,
}

/// The inputs of a model, in the order its tensors hold them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub sparse: Vec<SparseFeature>,
    pub dense: Vec<String>,
}

/// A model card naming a feature this build does not compute, or an unusable bucket count.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("the model card names sparse feature `{0}`, which this build does not compute (known: {known})", known = SPARSE.join(", "))]
    UnknownSparse(String),
    #[error("the model card names dense feature `{0}`, which this build does not compute (known: {known}, and real-time: {realtime})", known = DENSE.join(", "), realtime = REALTIME_DENSE.join(", "))]
    UnknownDense(String),
    #[error("sparse feature `{0}` has 0 buckets")]
    NoBuckets(String),
}

impl InputSpec {
    /// Every feature this build computes, with the given bucket counts (training export).
    pub fn all(buckets: impl Fn(&str) -> u32) -> Self {
        Self {
            sparse: SPARSE
                .iter()
                .map(|n| SparseFeature {
                    name: n.to_string(),
                    buckets: buckets(n),
                })
                .collect(),
            dense: DENSE.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// The bucket counts the bundled model uses: ids get many rows, small vocabularies few.
    pub fn default_buckets(name: &str) -> u32 {
        match name {
            "user_id" | "item_id" => 16_384,
            "item_decade" | "user_activity" => 32,
            _ => 64,
        }
    }

    /// Checks a model card's feature list against what this build computes.
    pub fn check(&self) -> Result<(), SpecError> {
        for f in &self.sparse {
            if !SPARSE.contains(&f.name.as_str()) {
                return Err(SpecError::UnknownSparse(f.name.clone()));
            }
            if f.buckets == 0 {
                return Err(SpecError::NoBuckets(f.name.clone()));
            }
        }
        for f in &self.dense {
            if !DENSE.contains(&f.as_str()) && !REALTIME_DENSE.contains(&f.as_str()) {
                return Err(SpecError::UnknownDense(f.clone()));
            }
        }
        Ok(())
    }

    /// Whether the model reads real-time item features (the ranking service then fetches the
    /// candidates' values from the feature service for each request).
    pub fn reads_realtime_items(&self) -> bool {
        self.dense.iter().any(|f| DenseKind::of(f).realtime_item())
    }

    /// The spec resolved for filling rows: each feature name is matched once here, not once
    /// per row (a ranking request fills 500 rows of 14 features).
    pub fn rows(&self) -> RowWriter {
        RowWriter::new(self)
    }
}

/// A categorical feature this build computes (`Unknown` is always bucket 0; a card naming one
/// is refused by [`InputSpec::check`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum SparseKind {
    UserId,
    ItemId,
    ItemGenre,
    UserTopGenre,
    ItemDecade,
    UserActivity,
    Unknown,
}

impl SparseKind {
    pub(crate) const ALL: [Self; 6] = [
        Self::UserId,
        Self::ItemId,
        Self::ItemGenre,
        Self::UserTopGenre,
        Self::ItemDecade,
        Self::UserActivity,
    ];

    pub(crate) fn of(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or(Self::Unknown)
    }

    /// The name, which is hashed with the value (part of the trained model's contract).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::UserId => "user_id",
            Self::ItemId => "item_id",
            Self::ItemGenre => "item_genre",
            Self::UserTopGenre => "user_top_genre",
            Self::ItemDecade => "item_decade",
            Self::UserActivity => "user_activity",
            Self::Unknown => "",
        }
    }

    /// Depends on the user only, so a request computes it once for all its rows.
    pub(crate) fn per_user(self) -> bool {
        matches!(self, Self::UserId | Self::UserTopGenre | Self::UserActivity)
    }

    /// Depends on the item only, so it is computed once per (model, item).
    pub(crate) fn per_item(self) -> bool {
        matches!(self, Self::ItemId | Self::ItemGenre | Self::ItemDecade)
    }
}

/// A numeric feature this build computes (`Unknown` is always 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum DenseKind {
    UserLogRatings,
    UserMeanRating,
    ItemLogRatings,
    ItemMeanRating,
    ItemLogHot,
    GenreAffinity,
    ItemAge,
    ItemGenreCount,
    RecallPosition,
    RecallFused,
    RecallChannels,
    RecallRank(Channel),
    ItemLogRecent,
    ItemLogRatingsThen,
    ItemLogWeekThen,
    ItemDaysOutThen,
    ItemRtCtr,
    ItemRtEngagement,
    ItemRtTrend,
    Unknown,
}

impl DenseKind {
    pub(crate) const ALL: [Self; 25] = [
        Self::UserLogRatings,
        Self::UserMeanRating,
        Self::ItemLogRatings,
        Self::ItemMeanRating,
        Self::ItemLogHot,
        Self::GenreAffinity,
        Self::ItemAge,
        Self::ItemGenreCount,
        Self::RecallPosition,
        Self::RecallFused,
        Self::RecallChannels,
        Self::RecallRank(Channel::ItemCf),
        Self::RecallRank(Channel::UserCf),
        Self::RecallRank(Channel::Hot),
        Self::RecallRank(Channel::Als),
        Self::RecallRank(Channel::Vector),
        Self::RecallRank(Channel::Tag),
        Self::RecallRank(Channel::Cooc),
        Self::ItemLogRecent,
        Self::ItemLogRatingsThen,
        Self::ItemLogWeekThen,
        Self::ItemDaysOutThen,
        Self::ItemRtCtr,
        Self::ItemRtEngagement,
        Self::ItemRtTrend,
    ];

    pub(crate) fn of(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or(Self::Unknown)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::UserLogRatings => "user_log_ratings",
            Self::UserMeanRating => "user_mean_rating",
            Self::ItemLogRatings => "item_log_ratings",
            Self::ItemMeanRating => "item_mean_rating",
            Self::ItemLogHot => "item_log_hot",
            Self::GenreAffinity => "genre_affinity",
            Self::ItemAge => "item_age",
            Self::ItemGenreCount => "item_genre_count",
            Self::RecallPosition => "recall_position",
            Self::RecallFused => "recall_fused",
            Self::RecallChannels => "recall_channels",
            Self::RecallRank(c) => match c {
                Channel::ItemCf => "recall_rank_item_cf",
                Channel::UserCf => "recall_rank_user_cf",
                Channel::Hot => "recall_rank_hot",
                Channel::Als => "recall_rank_als",
                Channel::Vector => "recall_rank_vector",
                Channel::Tag => "recall_rank_tag",
                Channel::Cooc => "recall_rank_cooc",
            },
            Self::ItemLogRecent => "item_log_recent",
            Self::ItemLogRatingsThen => "item_log_ratings_then",
            Self::ItemLogWeekThen => "item_log_week_then",
            Self::ItemDaysOutThen => "item_days_out_then",
            Self::ItemRtCtr => "item_rt_ctr",
            Self::ItemRtEngagement => "item_rt_engagement",
            Self::ItemRtTrend => "item_rt_trend",
            Self::Unknown => "",
        }
    }

    /// Read from the request's real-time item values: filled per row (not in the item table,
    /// which is built once from the snapshot).
    pub(crate) fn realtime_item(self) -> bool {
        matches!(self, Self::ItemRtCtr | Self::ItemRtEngagement | Self::ItemRtTrend)
    }

    pub(crate) fn per_user(self) -> bool {
        matches!(self, Self::UserLogRatings | Self::UserMeanRating)
    }

    /// Read from the item's timeline as of the user's latest activity: crosses the two.
    pub(crate) fn reads_timeline(self) -> bool {
        matches!(
            self,
            Self::ItemLogRatingsThen | Self::ItemLogWeekThen | Self::ItemDaysOutThen
        )
    }

    pub(crate) fn per_item(self) -> bool {
        matches!(
            self,
            Self::ItemLogRatings | Self::ItemMeanRating | Self::ItemLogHot | Self::ItemGenreCount | Self::ItemLogRecent
        )
    }
}
