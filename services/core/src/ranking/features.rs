//! The ranking model's inputs: named features computed from a user's and an item's features.
//!
//! One function computes every feature, for training export and for serving alike, so the model
//! sees the same values in both (no train/serve skew). A model card lists the features a model
//! was trained on, in order; [`InputSpec::from_card`] refuses a card naming a feature this
//! build does not compute.
//!
//! Two tensors: `sparse` (int64 `[batch, S]`, hashed categorical ids for embedding lookups) and
//! `dense` (float32 `[batch, D]`, numeric features scaled to roughly 0–1).

//!
//! The spec (which inputs, in which order) is [`super::spec`]; this module fills the rows.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::folded::Side;
pub use super::spec::*;
use crate::features::{ItemFeatures, Snapshot, UserFeatures};
use crate::recall::Channel;
use crate::timeline::{DayCounts, Then, day_of};

/// Where recall found one candidate, as the `recall_*` columns read it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lineage {
    /// Its fused score over the best fused score among its request's candidates (0–1).
    pub fused_share: f32,
    /// Its 1-based rank in each channel's list, by [`Channel::index`] (0: not in that list).
    pub ranks: [u32; Channel::ALL.len()],
}

impl Lineage {
    /// The best fused score among a request's candidates (0 when none is positive and
    /// finite): what [`Lineage::new`] scales by. One function for the export and for serving.
    pub fn best(fused: impl IntoIterator<Item = f32>) -> f32 {
        fused.into_iter().filter(|f| f.is_finite()).fold(0.0, f32::max)
    }

    /// A candidate's lineage from its fused score, the request's best, and its (channel,
    /// 1-based rank) sources.
    pub fn new(fused: f32, best: f32, sources: impl IntoIterator<Item = (Channel, u32)>) -> Self {
        let mut ranks = [0; Channel::ALL.len()];
        for (channel, rank) in sources {
            ranks[channel.index()] = rank;
        }
        let fused_share = if best > 0.0 && fused.is_finite() {
            (fused / best).clamp(0.0, 1.0)
        } else {
            0.0
        };
        Self { fused_share, ranks }
    }
}

/// What one row knows of its request: the item's place in the candidate order, where recall
/// found it, and its real-time values. (The user's and the item's features are the rest.)
#[derive(Clone, Copy, Debug, Default)]
pub struct Place<'a> {
    /// The item's place in the request's candidate order (0 first).
    pub position: usize,
    /// Where recall found it; `None` when the request carried no lineage (the `recall_*`
    /// columns but `recall_position` then read 0: in no channel, fused share 0).
    pub lineage: Option<Lineage>,
    /// The item's real-time values for this request (the feature service's), if any.
    pub realtime: Option<&'a ItemFeatures>,
}

impl Place<'_> {
    /// At `position`, without lineage or real-time values.
    pub fn at(position: usize) -> Self {
        Self {
            position,
            ..Self::default()
        }
    }
}

/// Fills model rows for a [`InputSpec`] (see [`InputSpec::rows`]).
#[derive(Clone, Debug)]
pub struct RowWriter {
    sparse: Vec<(SparseKind, u32)>,
    dense: Vec<DenseKind>,
    genres: GenreBits,
    /// The day the item timelines end (the build's newest rating): a user's latest activity
    /// after it reads as of it ([`RowWriter::over`]).
    end_day: Option<u32>,
    /// Whether any column reads an item's timeline (`item_*_then`).
    reads_then: bool,
}

/// Each genre of a catalogue its own bit of a 64-bit signature, so that whether an item has one
/// of a user's top genres is a bit test. The first 63 genres get a bit each (the bundled data has
/// 28); any further genre, and any genre the catalogue did not list, shares [`GenreBits::SHARED`],
/// which means "compare the names".
#[derive(Clone, Debug, Default)]
struct GenreBits(Arc<FxHashMap<String, u64>>);

impl GenreBits {
    const SHARED: u64 = 1 << 63;

    fn of<'a>(items: impl IntoIterator<Item = &'a ItemFeatures>) -> Self {
        let mut bits = FxHashMap::default();
        for genre in items.into_iter().flat_map(|i| &i.genres) {
            let next = bits.len();
            if next < 63 && !bits.contains_key(genre) {
                bits.insert(genre.clone(), 1 << next);
            }
        }
        Self(Arc::new(bits))
    }

    fn bit(&self, genre: &str) -> u64 {
        self.0.get(genre).copied().unwrap_or(Self::SHARED)
    }
}

/// One user's part of every row: the features that depend on the user only, computed once.
pub struct UserRow<'a> {
    user_id: &'a str,
    user: Option<&'a UserFeatures>,
    sparse: Vec<i64>,
    dense: Vec<f32>,
    /// The [`GenreBits`] bit of each of the user's top genres, in their order.
    genre_bits: Vec<u64>,
    /// The day the `item_*_then` columns read the items' timelines at ([`RowWriter::user`]).
    day: Option<u32>,
}

/// A known item as one user's rows read it ([`RowWriter::item_then`]): its table entry, and
/// what its timeline says as of the user's day.
#[derive(Clone, Copy, Debug)]
pub struct ItemThen<'a> {
    item: &'a ItemRow,
    then: Then,
}

impl<'a> ItemThen<'a> {
    /// The item's table entry.
    pub fn row(&self) -> &'a ItemRow {
        self.item
    }
}

/// `pre` values a folded item part holds inline (more spill to the heap).
pub const FOLDED_INLINE: usize = 80;

/// One item's part of every row: the features that depend on the item only, computed once
/// per (model, item) — the ranking service keeps one for every item it knows — and the item's
/// features for those that cross user and item.
///
/// The parts are held inline (not in heap vectors of their own): a request reads 500 items
/// scattered over the table, and each pointer followed is a likely cache miss.
#[derive(Clone, Debug)]
pub struct ItemRow {
    item: ItemFeatures,
    sparse: SmallVec<[i64; SPARSE.len()]>,
    dense: SmallVec<[f32; DENSE.len() + REALTIME_DENSE.len()]>,
    /// The [`GenreBits`] bits of the item's genres, or-ed.
    genre_bits: u64,
    /// Its ratings by day, when a column reads them, laid out a slot a day (a row reads two
    /// slots).
    timeline: Option<DayCounts>,
    /// The item's part of a folded first stage (empty unless the model is folded; see
    /// [`super::folded`]). Inline, like the parts above, for `pre` widths up to
    /// [`FOLDED_INLINE`] (the bundled model's is 73): a request adds 500 of them, scattered.
    pub folded: SmallVec<[f32; FOLDED_INLINE]>,
}

impl ItemRow {
    /// The item's values of the per-item columns (0 in the others), sparse and dense.
    pub fn parts(&self) -> (&[i64], &[f32]) {
        (&self.sparse, &self.dense)
    }
}

impl UserRow<'_> {
    /// The user's values of the per-user columns (0 in the others), sparse and dense.
    pub fn parts(&self) -> (&[i64], &[f32]) {
        (&self.sparse, &self.dense)
    }
}

impl RowWriter {
    /// A writer for `spec`'s inputs (no catalogue genres yet).
    pub fn new(spec: &InputSpec) -> Self {
        Self {
            sparse: spec
                .sparse
                .iter()
                .map(|f| (SparseKind::of(&f.name), f.buckets))
                .collect(),
            dense: spec.dense.iter().map(|f| DenseKind::of(f)).collect(),
            genres: GenreBits::default(),
            end_day: None,
            reads_then: spec.dense.iter().any(|f| DenseKind::of(f).reads_timeline()),
        }
    }

    /// The writer for rows over `snapshot`'s items: [`RowWriter::with_genres_of`] its catalogue,
    /// and its timelines' end ([`Snapshot::as_of`]) as the latest day a row reads them at.
    /// The training export and the ranking service both build their rows this way.
    pub fn over(self, snapshot: &Snapshot) -> Self {
        Self {
            end_day: snapshot.as_of().map(day_of),
            ..self.with_genres_of(snapshot.items())
        }
    }

    /// Gives each genre of `items` (the catalogue the item table is built from) its own bit, so
    /// that [`RowWriter::push_item`] tests a user's genres against an item's without comparing
    /// names. Without it every genre shares one bit: the rows are the same, only slower.
    pub fn with_genres_of<'a>(mut self, items: impl IntoIterator<Item = &'a ItemFeatures>) -> Self {
        self.genres = GenreBits::of(items);
        self
    }

    /// Computes `item`'s part of the rows once; [`RowWriter::push_item`] adds it to a user's.
    #[inline]
    pub fn item(&self, item: &ItemFeatures, timeline: Option<&Arc<DayCounts>>) -> ItemRow {
        let row = Row {
            user_id: "",
            user: None,
            item_id: &item.item_id,
            item: Some(item),
            place: Place::default(),
            then: Then::default(),
        };
        let (sparse, dense) = self.part(&row, SparseKind::per_item, DenseKind::per_item);
        ItemRow {
            item: item.clone(),
            sparse,
            dense,
            genre_bits: item.genres.iter().fold(0, |bits, g| bits | self.genres.bit(g)),
            timeline: timeline.filter(|_| self.reads_then).map(|t| DayCounts::clone(t)),
            folded: SmallVec::new(),
        }
    }

    /// Each column's [`Side`]: what its value depends on, in row order (sparse, dense).
    pub fn sides(&self) -> (Vec<Side>, Vec<Side>) {
        let side = |user: bool, item: bool| match (user, item) {
            (true, false) => Side::User,
            (false, true) => Side::Item,
            _ => Side::Cross,
        };
        (
            self.sparse
                .iter()
                .map(|(k, _)| side(k.per_user(), k.per_item()))
                .collect(),
            self.dense.iter().map(|k| side(k.per_user(), k.per_item())).collect(),
        )
    }

    /// `row`'s values of the features the two tests select; 0 for the rest, which are filled
    /// in per row. Collected into whichever containers the part is kept in (a user's:
    /// vectors; an item's: inline).
    fn part<S: FromIterator<i64>, D: FromIterator<f32>>(
        &self,
        row: &Row,
        sparse: fn(SparseKind) -> bool,
        dense: fn(DenseKind) -> bool,
    ) -> (S, D) {
        (
            self.sparse
                .iter()
                .map(|&(k, b)| if sparse(k) { row.sparse(k, b) } else { 0 })
                .collect(),
            self.dense
                .iter()
                .map(|&k| if dense(k) { row.dense(k) } else { 0.0 })
                .collect(),
        )
    }

    /// `item` as `user`'s rows read it: with what its timeline says as of the user's day.
    /// The serving path reads this for every item of a request before it builds any row: the
    /// item table's entries and their timelines are scattered over megabytes, and reads that
    /// do not wait on each other let the CPU overlap their cache misses.
    #[inline]
    pub fn item_then<'a>(&self, user: &UserRow, item: &'a ItemRow) -> ItemThen<'a> {
        ItemThen {
            item,
            then: self.then(user, item.timeline.as_ref()),
        }
    }

    /// Appends the row for (user, a known item) from both precomputed parts, computing only
    /// the features that cross them (and the real-time ones, from `realtime`).
    #[inline]
    pub fn push_item(&self, user: &UserRow, item: ItemThen, place: Place, sparse: &mut Vec<i64>, dense: &mut Vec<f32>) {
        // The parts zipped rather than indexed column by column (indexed, whole rows took 1.3×
        // the time).
        let row = row_of(user, item, place);
        let item = item.item;
        let parts = self.sparse.iter().zip(user.sparse.iter().zip(&item.sparse));
        sparse.extend(parts.map(|(&(k, b), (&u, &i))| sparse_value(k, b, (u, i), &row)));
        let parts = self.dense.iter().zip(user.dense.iter().zip(&item.dense));
        dense.extend(parts.map(|(&k, (&u, &i))| dense_value(k, (u, i), user, item, &row)));
    }

    /// Sparse column `col` of the row [`RowWriter::push_item`] writes. A folded model reads
    /// only the columns that cross user and item this way, not the whole row.
    #[inline]
    pub fn item_sparse(&self, user: &UserRow, item: ItemThen, place: Place, col: usize) -> i64 {
        let (k, buckets) = self.sparse[col];
        sparse_value(
            k,
            buckets,
            (user.sparse[col], item.item.sparse[col]),
            &row_of(user, item, place),
        )
    }

    /// Dense columns `cols` of the rows [`RowWriter::push_item`] writes for `user` and each of
    /// `items` at its place (`places`, aligned with `items`), row-major into `out`
    /// (`cols.len()` values a row; the row of an unknown item, `None`, is left as it is): what
    /// a folded model reads of a request's rows besides its parts. Column by column, so that a
    /// column's kind is matched once for all the rows rather than once a value; the columns of
    /// recall's lineage and position (most of those that cross user and item) read only the
    /// places.
    pub fn items_dense_into(
        &self,
        user: &UserRow,
        items: &[Option<ItemThen>],
        places: &[Place],
        cols: &[usize],
        out: &mut [f32],
    ) {
        let k = cols.len();
        for (j, &col) in cols.iter().enumerate() {
            match self.dense[col] {
                DenseKind::RecallPosition => {
                    fill_column(items, places, column(out, k, j), |_, p| position_scaled(p.position))
                }
                DenseKind::RecallFused => fill_column(items, places, column(out, k, j), |_, p| recall_fused(p.lineage)),
                DenseKind::RecallChannels => {
                    fill_column(items, places, column(out, k, j), |_, p| recall_channels(p.lineage))
                }
                DenseKind::RecallRank(c) => {
                    fill_column(items, places, column(out, k, j), |_, p| recall_rank(p.lineage, c))
                }
                DenseKind::GenreAffinity => {
                    fill_column(items, places, column(out, k, j), |i, _| genre_affinity(user, i.item))
                }
                kind => fill_column(items, places, column(out, k, j), |i, p| {
                    let parts = (user.dense[col], i.item.dense[col]);
                    dense_value(kind, parts, user, i.item, &row_of(user, i, *p))
                }),
            }
        }
    }

    /// Computes `user`'s part of the rows once; [`RowWriter::push`] adds items to it.
    #[inline]
    pub fn user<'a>(&self, user_id: &'a str, user: Option<&'a UserFeatures>) -> UserRow<'a> {
        let row = Row {
            user_id,
            user,
            item_id: "",
            item: None,
            place: Place::default(),
            then: Then::default(),
        };
        let (sparse, dense) = self.part(&row, SparseKind::per_user, DenseKind::per_user);
        // As of the user's latest activity, but not past the timelines' end; an unknown user
        // (or one with no time) as of that end.
        let last = user.map(|u| u.last_ts).filter(|&t| t > 0).map(day_of);
        let day = match (last, self.end_day) {
            (Some(d), Some(end)) => Some(d.min(end)),
            (d, end) => d.or(end),
        };
        UserRow {
            user_id,
            user,
            sparse,
            dense,
            genre_bits: user.map_or(Vec::new(), |u| {
                u.top_genres.iter().map(|g| self.genres.bit(&g.genre)).collect()
            }),
            day,
        }
    }

    /// Appends one row for (user, item) to `sparse` and `dense`. An unknown user (cold start)
    /// or item has `None` and gets the features' neutral values; so do the real-time ones
    /// without the place's real-time values (the training export, or the feature service
    /// unreachable); and the `item_*_then` ones without the item's `timeline`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn push(
        &self,
        user: &UserRow,
        item_id: &str,
        item: Option<&ItemFeatures>,
        timeline: Option<&DayCounts>,
        place: Place,
        sparse: &mut Vec<i64>,
        dense: &mut Vec<f32>,
    ) {
        let row = Row {
            user_id: user.user_id,
            user: user.user,
            item_id,
            item,
            place,
            then: self.then(user, timeline),
        };
        sparse.extend(
            self.sparse
                .iter()
                .zip(&user.sparse)
                .map(|(&(k, b), &u)| if k.per_user() { u } else { row.sparse(k, b) }),
        );
        dense.extend(
            self.dense
                .iter()
                .zip(&user.dense)
                .map(|(&k, &u)| if k.per_user() { u } else { row.dense(k) }),
        );
    }

    /// One row for (user, item) at `position`, computing the user's part too: the slow
    /// reference the serving path's precomputed parts are checked against (here and in the
    /// ranking service's tests).
    pub fn row(
        &self,
        user_id: &str,
        user: Option<&UserFeatures>,
        item_id: &str,
        item: Option<&ItemFeatures>,
        position: usize,
    ) -> (Vec<i64>, Vec<f32>) {
        self.row_at(user_id, user, item_id, item, None, Place::at(position))
    }

    /// [`RowWriter::row`] with the item's timeline, at a [`Place`] (with lineage and
    /// real-time values).
    pub fn row_at(
        &self,
        user_id: &str,
        user: Option<&UserFeatures>,
        item_id: &str,
        item: Option<&ItemFeatures>,
        timeline: Option<&DayCounts>,
        place: Place,
    ) -> (Vec<i64>, Vec<f32>) {
        let (mut sparse, mut dense) = (Vec::new(), Vec::new());
        let user = self.user(user_id, user);
        self.push(&user, item_id, item, timeline, place, &mut sparse, &mut dense);
        (sparse, dense)
    }

    /// What `timeline` says as of the user's day, when a column reads it (default otherwise:
    /// the columns' neutral values).
    #[inline]
    fn then(&self, user: &UserRow, timeline: Option<&DayCounts>) -> Then {
        match (timeline, user.day) {
            (Some(t), Some(day)) if self.reads_then => t.at(day),
            _ => Then::default(),
        }
    }

    /// Whether any column reads the request's real-time item values.
    pub fn reads_realtime_items(&self) -> bool {
        self.dense.iter().any(|k| k.realtime_item())
    }
}

/// The row of `user` and a known item at `place`.
#[inline]
fn row_of<'a>(user: &UserRow<'a>, item: ItemThen<'a>, place: Place<'a>) -> Row<'a> {
    Row {
        user_id: user.user_id,
        user: user.user,
        item_id: &item.item.item.item_id,
        item: Some(&item.item.item),
        place,
        then: item.then,
    }
}

/// [`DenseKind::GenreAffinity`] from the precomputed parts: the same sum as [`Row::dense`]'s,
/// with each of the user's genres tested by its [`GenreBits`] bit; names are compared only for
/// genres sharing [`GenreBits::SHARED`].
fn genre_affinity(user: &UserRow, item: &ItemRow) -> f32 {
    user.user.map_or(0.0, |u| {
        affinity(u, |n, genre| {
            let bit = user.genre_bits[n];
            item.genre_bits & bit != 0 && (bit != GenreBits::SHARED || has_genre_named(item, genre))
        })
    })
}

/// Whether `item` lists `genre`, by name: apart from the genre bits, so that the compiler does
/// not read the item's genre list (another cache line of its entry) for every item in case a
/// name must be compared, as it did when this was inline.
#[cold]
#[inline(never)]
fn has_genre_named(item: &ItemRow, genre: &str) -> bool {
    item.item.genres.iter().any(|g| g == genre)
}

/// The sum of the user's shares of the top genres `has` accepts (by position and name), at
/// most 1: [`DenseKind::GenreAffinity`], whichever way the item's genres are tested.
fn affinity(u: &UserFeatures, has: impl Fn(usize, &String) -> bool) -> f32 {
    u.top_genres
        .iter()
        .enumerate()
        .filter(|(n, g)| has(*n, &g.genre))
        .map(|(_, g)| g.share)
        .sum::<f32>()
        .min(1.0)
}

struct Row<'a> {
    user_id: &'a str,
    user: Option<&'a UserFeatures>,
    item_id: &'a str,
    item: Option<&'a ItemFeatures>,
    place: Place<'a>,
    /// The item's timeline as of the user's day (read once per row, for the `item_*_then`
    /// columns).
    then: Then,
}

/// FNV-1a continued over more bytes (the same function as [`crate::stable_hash`]).
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `stable_hash("{name}\u{1f}{value}") % (buckets - 1) + 1`, without allocating; bucket 0 is
/// kept for "unknown". The bytes hashed are part of the trained model's contract.
fn bucket(name: &str, value: &str, buckets: u32) -> i64 {
    if buckets <= 1 || value.is_empty() {
        return 0;
    }
    let h = fnv(
        fnv(fnv(0xcbf2_9ce4_8422_2325, name.as_bytes()), &[0x1f]),
        value.as_bytes(),
    );
    1 + (h % u64::from(buckets - 1)) as i64
}

/// A small number's decimal digits, on the stack.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// A sparse column's value for a known item: the user's or the item's precomputed part
/// (`parts`), or computed from the row.
#[inline]
fn sparse_value(kind: SparseKind, buckets: u32, parts: (i64, i64), row: &Row) -> i64 {
    if kind.per_user() {
        parts.0
    } else if kind.per_item() {
        parts.1
    } else {
        row.sparse(kind, buckets)
    }
}

/// A dense column's value for a known item: the user's or the item's precomputed part
/// (`parts`), the genre affinity from their genre bits, or computed from the row.
#[inline]
fn dense_value(kind: DenseKind, parts: (f32, f32), user: &UserRow, item: &ItemRow, row: &Row) -> f32 {
    if kind.per_user() {
        parts.0
    } else if kind.per_item() {
        parts.1
    } else if kind == DenseKind::GenreAffinity {
        genre_affinity(user, item)
    } else {
        row.dense(kind)
    }
}

/// Column `j` of `out`, a row-major matrix `k` values wide.
fn column(out: &mut [f32], k: usize, j: usize) -> impl Iterator<Item = &mut f32> {
    out.chunks_exact_mut(k).map(move |row| &mut row[j])
}

/// Sets each known item's value in `column` (aligned with `items` and `places`) to `value` of
/// the item at its place.
#[inline(always)]
fn fill_column<'a, 'p>(
    items: &[Option<ItemThen<'a>>],
    places: &[Place<'p>],
    column: impl Iterator<Item = &'a mut f32>,
    value: impl Fn(ItemThen<'a>, &Place<'p>) -> f32,
) {
    for ((x, item), place) in column.zip(items).zip(places) {
        if let Some(item) = item {
            *x = value(*item, place);
        }
    }
}

/// [`DenseKind::RecallFused`]: the fused score's share of the request's best.
#[inline]
fn recall_fused(lineage: Option<Lineage>) -> f32 {
    lineage.map_or(0.0, |l| l.fused_share)
}

/// [`DenseKind::RecallChannels`]: how many channels found the item, of 7.
#[inline]
fn recall_channels(lineage: Option<Lineage>) -> f32 {
    lineage.map_or(0.0, |l| {
        l.ranks.iter().filter(|&&r| r > 0).count() as f32 / Channel::ALL.len() as f32
    })
}

/// [`DenseKind::RecallRank`]: how near the top of `channel`'s list the item is (1 for its
/// first, 0 for one not in the list).
#[inline]
fn recall_rank(lineage: Option<Lineage>, channel: Channel) -> f32 {
    match lineage.map_or(0, |l| l.ranks[channel.index()]) {
        0 => 0.0,
        rank => 1.0 - position_scaled(rank as usize - 1),
    }
}

/// ln(1 + p) / ln(1 + 1000): 0 for the first place, 1 from the 1000th on. A row has up to
/// eight of these (recall's position and a rank per channel), so the places recall gives
/// (below [`POSITIONS`]) are read from a table of the same values rather than computed.
#[inline]
fn position_scaled(p: usize) -> f32 {
    static TABLE: std::sync::LazyLock<Vec<f32>> =
        std::sync::LazyLock::new(|| (0..POSITIONS).map(position_scaled_computed).collect());
    match TABLE.get(p) {
        Some(&v) => v,
        None => position_scaled_computed(p),
    }
}

/// Places [`position_scaled`] keeps in its table: recall answers at most 1,000 candidates.
const POSITIONS: usize = 1_024;

fn position_scaled_computed(p: usize) -> f32 {
    ((p as f32).ln_1p() / 1_001f32.ln()).min(1.0)
}

fn log_scaled(x: f32) -> f32 {
    // ln(1 + x) / ln(1 + 10_000): 0 for nothing, ~1 for the most active users and items.
    (1.0 + x.max(0.0)).ln() / 10_001f32.ln()
}

impl Row<'_> {
    fn sparse(&self, kind: SparseKind, buckets: u32) -> i64 {
        let mut buf = [0u8; 10];
        let value: Option<&str> = match kind {
            SparseKind::UserId => self.user.map(|_| self.user_id),
            SparseKind::ItemId => self.item.map(|_| self.item_id),
            SparseKind::ItemGenre => self.item.and_then(|i| i.genres.first().map(String::as_str)),
            SparseKind::UserTopGenre => self.user.and_then(|u| u.top_genres.first().map(|g| g.genre.as_str())),
            SparseKind::ItemDecade => self.item.filter(|i| i.year > 0).map(|i| decimal(i.year / 10, &mut buf)),
            SparseKind::UserActivity => self.user.map(|u| decimal(32 - u.ratings.leading_zeros(), &mut buf)),
            SparseKind::Unknown => None,
        };
        value.map_or(0, |v| bucket(kind.name(), v, buckets))
    }

    // Inlined, always: a folded model's rows call it for ~10 columns a row, and as a call it
    // was a fifth of their time (BENCHMARKS.md, "The crossing columns at once"). `#[inline]`
    // alone left it a call in release builds (8.7 % of the ranking bench's service in a
    // profile, most of it the call's prologue and epilogue).
    #[inline(always)]
    fn dense(&self, kind: DenseKind) -> f32 {
        let (u, i) = (self.user, self.item);
        match kind {
            DenseKind::UserLogRatings => u.map_or(0.0, |u| log_scaled(u.ratings as f32)),
            DenseKind::UserMeanRating => u.map_or(0.5, |u| u.mean_rating / 10.0),
            DenseKind::ItemLogRatings => i.map_or(0.0, |i| log_scaled(i.ratings as f32)),
            DenseKind::ItemMeanRating => i.map_or(0.5, |i| i.mean_rating / 10.0),
            DenseKind::ItemLogHot => i.map_or(0.0, |i| log_scaled(i.hot_score)),
            // The build's 14-day decayed rating count: what was rising in the last weeks.
            DenseKind::ItemLogRecent => i.map_or(0.0, |i| log_scaled(i.recent_score)),
            DenseKind::GenreAffinity => match (u, i) {
                (Some(u), Some(i)) => affinity(u, |_, genre| i.genres.contains(genre)),
                _ => 0.0,
            },
            DenseKind::ItemAge => match (u, i) {
                // Years between the item's release and the user's latest activity, over a century.
                (Some(u), Some(i)) if i.year > 0 => {
                    let user_year = 1970.0 + u.last_ts as f32 / 31_557_600.0;
                    ((user_year - i.year as f32) / 100.0).clamp(0.0, 1.0)
                }
                _ => 0.5,
            },
            DenseKind::ItemGenreCount => i.map_or(0.0, |i| i.genres.len() as f32 / 5.0),
            // The item as of the user's latest activity (its timeline; docs/ranking.md): its
            // ratings so far and in that week, and how long it had been rated, on a log scale
            // (1 from ten years). 0 for an item the build never saw rated, or one not yet rated
            // that day.
            DenseKind::ItemLogRatingsThen => log_scaled(self.then.ratings as f32),
            DenseKind::ItemLogWeekThen => log_scaled(self.then.week as f32),
            DenseKind::ItemDaysOutThen => self
                .then
                .days_out
                .map_or(0.0, |d| ((d as f32).ln_1p() / 3_651f32.ln()).min(1.0)),
            // ln(1 + p) / ln(1 + 1000): 0 for recall's first candidate, 1 from the 1000th on.
            DenseKind::RecallPosition => position_scaled(self.place.position),
            // Recall's lineage: the fused score's share of the request's best, how many
            // channels found the item (of 7), and how near the top of each channel's list it
            // is (1 for a channel's first item, 0 for one not in that list). Absence is 0 so
            // that a folded model skips the column (most items are in one or two channels).
            DenseKind::RecallFused => recall_fused(self.place.lineage),
            DenseKind::RecallChannels => recall_channels(self.place.lineage),
            DenseKind::RecallRank(c) => recall_rank(self.place.lineage, c),
            // The stream job's windows: smoothed CTR (½ with no events, as the stream writes
            // it), engagements (clicks, plays, likes) and the decayed hot score, log-scaled.
            // Neutral without real-time values, or for an item no window has touched.
            DenseKind::ItemRtCtr => self
                .place
                .realtime
                .filter(|r| r.window_end_ms > 0)
                .map_or(0.5, |r| r.ctr),
            DenseKind::ItemRtEngagement => self
                .place
                .realtime
                .map_or(0.0, |r| log_scaled((r.clicks + r.plays + r.likes) as f32)),
            DenseKind::ItemRtTrend => self.place.realtime.map_or(0.0, |r| log_scaled(r.trend)),
            DenseKind::Unknown => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::GenreShare;
    use crate::timeline::{DAY, Timeline};

    fn user() -> UserFeatures {
        UserFeatures {
            user_id: "u1".into(),
            ratings: 40,
            mean_rating: 7.5,
            last_ts: 1_600_000_000,
            top_genres: vec![
                GenreShare {
                    genre: "Drama".into(),
                    share: 0.5,
                },
                GenreShare {
                    genre: "Comedy".into(),
                    share: 0.25,
                },
            ],
            recent_items: vec![],
        }
    }

    fn item(genres: &[&str]) -> ItemFeatures {
        ItemFeatures {
            item_id: "i1".into(),
            ratings: 100,
            mean_rating: 8.0,
            hot_score: 3.0,
            year: 1994,
            genres: genres.iter().map(|g| g.to_string()).collect(),
            recent_score: 12.5,
            ..ItemFeatures::default()
        }
    }

    fn spec() -> InputSpec {
        InputSpec::all(InputSpec::default_buckets)
    }

    fn row(user: Option<&UserFeatures>, item: Option<&ItemFeatures>) -> (Vec<i64>, Vec<f32>) {
        spec().rows().row("u1", user, "i1", item, 0)
    }

    fn dense(name: &str, v: &[f32]) -> f32 {
        v[DENSE.iter().position(|n| *n == name).unwrap()]
    }

    #[test]
    fn the_then_columns_read_the_timeline_on_the_users_last_day_not_past_the_snapshots_end() {
        let end = 1_600_000_000;
        let timeline = Timeline::from_times([end - 20 * DAY, end - 3 * DAY, end], end);
        let snapshot =
            Snapshot::from_parts(Vec::new(), vec![item(&["A"])]).with_timelines([("i1".into(), timeline)], end);
        let writer = spec().rows().over(&snapshot);
        let t = snapshot.timeline("i1").map(|t| &**t);
        let then = |last_ts: Option<i64>| {
            let u = last_ts.map(|last_ts| UserFeatures { last_ts, ..user() });
            let (_, d) = writer.row_at("u1", u.as_ref(), "i1", Some(&item(&["A"])), t, Place::at(0));
            let col = |name| dense(name, &d);
            (
                col("item_log_ratings_then"),
                col("item_log_week_then"),
                col("item_days_out_then"),
            )
        };
        let days = |d: f32| d.ln_1p() / 3_651f32.ln();
        // Last active 10 days before the end: one rating so far, none that week, 10 days out.
        assert_eq!(then(Some(end - 10 * DAY)), (log_scaled(1.0), 0.0, days(10.0)));
        // Active after the end, an unknown user, and a user with no time: as of the end.
        let at_end = (log_scaled(3.0), log_scaled(2.0), days(20.0));
        assert_eq!(then(Some(end + 40 * DAY)), at_end);
        assert_eq!(then(None), at_end);
        assert_eq!(then(Some(0)), at_end);
        // Before the first rating: nothing yet.
        assert_eq!(then(Some(end - 30 * DAY)), (0.0, 0.0, 0.0));
        // An item without a timeline (never rated in the build) reads nothing either.
        let (_, d) = writer.row("u1", Some(&user()), "i1", Some(&item(&["A"])), 0);
        assert_eq!(dense("item_log_ratings_then", &d), 0.0);
        // A writer not over a snapshot reads the user's own day, however late.
        let (_, d) = spec().rows().row_at(
            "u1",
            Some(&UserFeatures {
                last_ts: end + 40 * DAY,
                ..user()
            }),
            "i1",
            None,
            t,
            Place::at(0),
        );
        assert_eq!(dense("item_log_week_then", &d), 0.0);
        assert_eq!(dense("item_days_out_then", &d), days(60.0));
    }

    #[test]
    fn every_feature_name_has_its_kind() {
        let sparse: Vec<&str> = SparseKind::ALL.iter().map(|k| k.name()).collect();
        let dense: Vec<&str> = DenseKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(sparse, SPARSE);
        assert_eq!(dense, [DENSE, REALTIME_DENSE].concat());
    }

    #[test]
    fn a_users_part_computed_once_gives_the_rows_computed_whole() {
        // The ranking service computes the user's features once per request and each item's
        // once per model, and reuses them.
        let u = user();
        let items = [
            item(&["Drama"]),
            item(&["Comedy", "Drama"]),
            item(&[]),
            item(&["Horror"]),
            item(&["Horror", "Comedy"]),
        ];
        // 63 other genres listed first: Drama, Comedy and Horror then share one bit, whose
        // genres are told apart by name.
        let crowded: Vec<ItemFeatures> = (0..63)
            .map(|n| item(&[&format!("g{n}")]))
            .chain(items.iter().cloned())
            .collect();
        let writers = [
            ("no catalogue (every genre shares a bit)", spec().rows()),
            ("a bit per genre", spec().rows().with_genres_of(&items)),
            (
                "the user's genres sharing a bit",
                spec().rows().with_genres_of(&crowded),
            ),
            ("a catalogue without Comedy", spec().rows().with_genres_of(&items[..1])),
        ];
        // Item n rated on the user's last day and every n-th day before it (none for item 0).
        let last = u.last_ts;
        let timelines: Vec<Option<Arc<DayCounts>>> = (0..items.len() as i64)
            .map(|n| {
                let times = (0..30).filter(|d| n > 0 && d % n == 0).map(|d| last - d * DAY);
                Some(Timeline::from_times(times, last))
                    .filter(|t| !t.is_empty())
                    .map(|t| Arc::new(t.day_counts()))
            })
            .collect();
        for (case, writer) in &writers {
            for user in [Some(&u), None] {
                let once = writer.user("u1", user);
                for (n, it) in items.iter().enumerate() {
                    let id = format!("i{n}");
                    let timeline = timelines[n].as_deref();
                    let (mut s1, mut d1) = (vec![], vec![]);
                    writer.push(&once, &id, Some(it), timeline, Place::at(n), &mut s1, &mut d1);
                    let (s2, d2) = writer.row_at("u1", user, &id, Some(it), timeline, Place::at(n));
                    assert_eq!((&s1, &d1), (&s2, &d2), "{case}, item {n}");
                    // The item's part computed once too (the service's per-model item table).
                    let it = ItemFeatures {
                        item_id: id.clone(),
                        ..it.clone()
                    };
                    let (mut s3, mut d3) = (vec![], vec![]);
                    let item_row = writer.item(&it, timelines[n].as_ref());
                    writer.push_item(
                        &once,
                        writer.item_then(&once, &item_row),
                        Place::at(n),
                        &mut s3,
                        &mut d3,
                    );
                    assert_eq!((&s3, &d3), (&s1, &d1), "{case}, item {n}");
                    // With the user, the timeline is read on the user's last day.
                    let want = match (user, timeline) {
                        (Some(_), Some(_)) => log_scaled((29 / n + 1) as f32),
                        _ => 0.0,
                    };
                    assert_eq!(dense("item_log_ratings_then", &d3), want, "{case}, item {n}");
                }
                // A request's dense columns all at once, column by column, read what each row
                // pushed whole reads: with and without lineage and real-time values, and an
                // unknown item (its values left as they were) among them.
                let table: Vec<ItemRow> = items
                    .iter()
                    .enumerate()
                    .map(|(n, it)| writer.item(it, timelines[n].as_ref()))
                    .collect();
                let live = ItemFeatures {
                    ctr: 0.3,
                    clicks: 4,
                    trend: 2.5,
                    window_end_ms: 1,
                    ..ItemFeatures::default()
                };
                let mut found: Vec<Option<ItemThen>> = table.iter().map(|r| Some(writer.item_then(&once, r))).collect();
                found.insert(2, None);
                let places: Vec<Place> = (0..found.len())
                    .map(|n| Place {
                        position: n * 37,
                        lineage: (n % 3 != 0)
                            .then(|| Lineage::new(n as f32, 6.0, [(Channel::ALL[n], n as u32 * 9 + 1)])),
                        realtime: (n % 2 == 0).then_some(&live),
                    })
                    .collect();
                let cols: Vec<usize> = (0..writer.dense.len()).collect();
                let mut out = vec![f32::NAN; found.len() * cols.len()];
                writer.items_dense_into(&once, &found, &places, &cols, &mut out);
                for (n, (found, row)) in found.iter().zip(out.chunks(cols.len())).enumerate() {
                    match found {
                        Some(item) => {
                            let (mut s, mut d) = (vec![], vec![]);
                            writer.push_item(&once, *item, places[n], &mut s, &mut d);
                            assert_eq!(row, &d[..], "{case}, row {n}");
                        }
                        None => assert!(
                            row.iter().all(|x| x.is_nan()),
                            "{case}: the unknown item's row was written"
                        ),
                    }
                }
                // And any subset of the columns, in any order.
                let some = [cols.len() - 1, 9, 5, 0];
                let mut part = vec![f32::NAN; found.len() * some.len()];
                writer.items_dense_into(&once, &found, &places, &some, &mut part);
                for (row, whole) in part.chunks(some.len()).zip(out.chunks(cols.len())) {
                    let picked: Vec<f32> = some.iter().map(|&c| whole[c]).collect();
                    assert_eq!(format!("{row:?}"), format!("{picked:?}"), "{case}");
                }
            }
        }
        // The affinities themselves: Drama 0.5, Comedy 0.25, Horror not a top genre.
        let writer = spec().rows().with_genres_of(&crowded);
        let once = writer.user("u1", Some(&u));
        let affinities: Vec<f32> = items
            .iter()
            .map(|it| {
                let (mut s, mut d) = (vec![], vec![]);
                let item_row = writer.item(it, None);
                writer.push_item(&once, writer.item_then(&once, &item_row), Place::at(0), &mut s, &mut d);
                dense("genre_affinity", &d)
            })
            .collect();
        assert_eq!(affinities, [0.5, 0.75, 0.0, 0.0, 0.25]);
        // And a card feature this build does not know stays at its neutral value.
        let mut odd = spec();
        odd.sparse[0].name = "nope".into();
        odd.dense[0] = "nope".into();
        let (s, d) = odd.rows().row("u1", Some(&u), "i1", Some(&items[0]), 0);
        assert_eq!((s[0], d[0]), (0, 0.0));
    }

    #[test]
    fn item_log_recent_reads_the_builds_recent_score_log_scaled() {
        let at = |recent_score: f32| {
            let it = ItemFeatures {
                recent_score,
                ..item(&["A"])
            };
            let (_, d) = spec().rows().row("u1", Some(&user()), "i1", Some(&it), 0);
            dense("item_log_recent", &d)
        };
        assert_eq!(at(0.0), 0.0, "nothing recent");
        assert!((at(10_000.0) - 1.0).abs() < 1e-6, "the scale's top");
        assert!(at(1.0) < at(12.5) && at(12.5) < at(400.0));
        // The same scale as the hot score's, and neutral for an unknown item.
        let (_, d) = spec().rows().row("u1", Some(&user()), "i1", Some(&item(&["A"])), 0);
        assert_eq!(dense("item_log_recent", &d), log_scaled(12.5));
        assert_eq!(dense("item_log_hot", &d), log_scaled(3.0));
        let (_, unknown) = spec().rows().row("u1", Some(&user()), "i9", None, 0);
        assert_eq!(dense("item_log_recent", &unknown), 0.0);
    }

    #[test]
    fn recall_position_grows_with_the_place_in_the_request_and_tops_out_at_1000() {
        let at = |p: usize| {
            let (_, d) = spec().rows().row("u1", Some(&user()), "i1", Some(&item(&["A"])), p);
            dense("recall_position", &d)
        };
        let values: Vec<f32> = [0, 1, 9, 99, 499, 999, 1000, 4999].into_iter().map(at).collect();
        assert_eq!(values[0], 0.0, "recall's first candidate");
        assert!(values.windows(2).take(5).all(|w| w[0] < w[1]), "{values:?}");
        // A decade of places is a third of the scale: the 10th at 1/3, the 100th at 2/3.
        assert!((values[2] - 1.0 / 3.0).abs() < 0.001, "{values:?}");
        assert!((values[3] - 2.0 / 3.0).abs() < 0.001, "{values:?}");
        assert_eq!(&values[6..], [1.0, 1.0], "{values:?}");
        // Only this column depends on the position.
        let (s0, mut d0) = spec().rows().row("u1", Some(&user()), "i1", Some(&item(&["A"])), 0);
        let (s7, mut d7) = spec().rows().row("u1", Some(&user()), "i1", Some(&item(&["A"])), 7);
        let col = DENSE.iter().position(|n| *n == "recall_position").unwrap();
        (d0[col], d7[col]) = (0.0, 0.0);
        assert_eq!((s0, d0), (s7, d7));
    }

    #[test]
    fn lineage_columns_read_where_recall_found_the_item() {
        let lineage = Lineage::new(2.0, 8.0, [(Channel::Cooc, 1), (Channel::Hot, 10)]);
        assert_eq!(lineage.fused_share, 0.25);
        assert_eq!(lineage.ranks[Channel::Cooc.index()], 1);
        assert_eq!(lineage.ranks.iter().filter(|&&r| r > 0).count(), 2);
        let row = |lineage: Option<Lineage>| {
            let place = Place {
                lineage,
                ..Place::at(4)
            };
            spec()
                .rows()
                .row_at("u1", Some(&user()), "i1", Some(&item(&["A"])), None, place)
                .1
        };
        let with = row(Some(lineage));
        assert_eq!(dense("recall_fused", &with), 0.25);
        assert_eq!(dense("recall_channels", &with), 2.0 / 7.0);
        // A channel's first place is 1, its 10th two thirds (the position's scale, turned
        // over); a channel that did not find the item is 0.
        assert_eq!(dense("recall_rank_cooc", &with), 1.0);
        assert!((dense("recall_rank_hot", &with) - 2.0 / 3.0).abs() < 0.001);
        for absent in ["item_cf", "user_cf", "als", "vector", "tag"] {
            assert_eq!(dense(&format!("recall_rank_{absent}"), &with), 0.0, "{absent}");
        }
        // Without lineage: in no channel, no fused share; the other columns unchanged.
        let without = row(None);
        assert_eq!(dense("recall_fused", &without), 0.0);
        assert_eq!(dense("recall_channels", &without), 0.0);
        assert_eq!(dense("recall_rank_cooc", &without), 0.0);
        let lineage_columns: Vec<usize> = (0..DENSE.len())
            .filter(|&c| DENSE[c].starts_with("recall_") && DENSE[c] != "recall_position")
            .collect();
        assert_eq!(lineage_columns.len(), 9);
        for c in 0..DENSE.len() {
            if !lineage_columns.contains(&c) {
                assert_eq!(with[c], without[c], "{}", DENSE[c]);
            }
        }
        // Odd inputs stay on the scale.
        assert_eq!(Lineage::new(5.0, 0.0, []).fused_share, 0.0);
        assert_eq!(Lineage::new(f32::NAN, 1.0, []).fused_share, 0.0);
        assert_eq!(Lineage::new(3.0, 1.0, []).fused_share, 1.0);
    }

    #[test]
    fn channels_are_indexed_in_their_declared_order() {
        for (i, c) in Channel::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i, "{}", c.name());
        }
    }

    #[test]
    fn the_first_63_genres_get_a_bit_each_and_the_rest_share_one() {
        let catalogue: Vec<ItemFeatures> = (0..70).map(|n| item(&[&format!("g{n}"), "g0"])).collect();
        let bits = GenreBits::of(&catalogue);
        let own: Vec<u64> = (0..63).map(|n| bits.bit(&format!("g{n}"))).collect();
        assert_eq!(own, (0..63).map(|n| 1u64 << n).collect::<Vec<_>>());
        for genre in ["g63", "g69", "not in the catalogue"] {
            assert_eq!(bits.bit(genre), GenreBits::SHARED, "{genre}");
        }
        assert_eq!(GenreBits::default().bit("g0"), GenreBits::SHARED);
    }

    #[test]
    fn a_row_has_every_feature_in_card_order() {
        let (s, d) = row(Some(&user()), Some(&item(&["Drama"])));
        assert_eq!(s.len(), SPARSE.len());
        assert_eq!(d.len(), DENSE.len());
        for (f, v) in spec().sparse.iter().zip(&s) {
            assert!(*v >= 1 && *v < i64::from(f.buckets), "{}: {v}", f.name);
        }
        for v in &d {
            assert!((0.0..=1.0).contains(v), "{d:?}");
        }
    }

    #[test]
    fn the_position_table_holds_the_computed_values() {
        for p in (0..2 * POSITIONS).chain([usize::MAX / 2]) {
            assert_eq!(
                position_scaled(p).to_bits(),
                position_scaled_computed(p).to_bits(),
                "place {p}"
            );
        }
        assert_eq!(position_scaled(0), 0.0);
        assert_eq!(position_scaled(5_000), 1.0);
    }

    #[test]
    fn genre_affinity_sums_the_users_shares_of_the_items_genres() {
        let u = user();
        assert_eq!(dense("genre_affinity", &row(Some(&u), Some(&item(&["Drama"]))).1), 0.5);
        assert_eq!(
            dense("genre_affinity", &row(Some(&u), Some(&item(&["Drama", "Comedy"]))).1),
            0.75
        );
        assert_eq!(dense("genre_affinity", &row(Some(&u), Some(&item(&["Horror"]))).1), 0.0);
    }

    #[test]
    fn unknown_users_and_items_get_bucket_zero_and_neutral_values() {
        let (s, d) = row(None, None);
        assert!(s.iter().all(|&v| v == 0), "{s:?}");
        assert_eq!(dense("user_mean_rating", &d), 0.5);
        assert_eq!(dense("genre_affinity", &d), 0.0);
    }

    #[test]
    fn hashing_matches_the_trained_contract() {
        // The model was trained on buckets of stable_hash("{name}\u{1f}{value}").
        for (name, value) in [("item_id", "0110912"), ("item_decade", "199"), ("user_activity", "6")] {
            let h = crate::stable_hash(format!("{name}\u{1f}{value}").as_bytes());
            assert_eq!(bucket(name, value, 16_384), 1 + (h % 16_383) as i64);
        }
        let mut buf = [0u8; 10];
        assert_eq!(decimal(0, &mut buf), "0");
        assert_eq!(decimal(199, &mut buf), "199");
        assert_eq!(decimal(u32::MAX, &mut buf), "4294967295");
    }

    #[test]
    fn hashing_is_stable_and_separates_features() {
        assert_eq!(
            bucket("item_id", "0110912", 16_384),
            bucket("item_id", "0110912", 16_384)
        );
        assert_ne!(
            bucket("item_id", "0110912", 16_384),
            bucket("item_id", "0110913", 16_384)
        );
        assert_eq!(bucket("user_id", "", 100), 0);
    }

    #[test]
    fn a_card_with_an_unknown_feature_is_refused_by_name() {
        let mut s = spec();
        s.dense.push("clicks_last_hour".into());
        assert_eq!(s.check(), Err(SpecError::UnknownDense("clicks_last_hour".into())));
        let mut s = spec();
        s.sparse[0].buckets = 0;
        assert_eq!(s.check(), Err(SpecError::NoBuckets("user_id".into())));
        assert!(spec().check().is_ok());
    }

    #[test]
    fn rows_follow_the_cards_order_not_the_catalogues() {
        let spec = InputSpec {
            sparse: vec![],
            dense: vec!["item_genre_count".into(), "user_mean_rating".into()],
        };
        let (s, d) = spec.rows().row("u1", Some(&user()), "i1", Some(&item(&["A", "B"])), 0);
        assert!(s.is_empty());
        assert_eq!(d, vec![0.4, 0.75]);
    }

    /// A card naming the real-time item columns: they read the request's values (the stream
    /// job's windows), the same through the item table's precomputed path and the whole row;
    /// neutral without values, and the offline export (`InputSpec::all`) names none of them.
    #[test]
    fn real_time_item_columns_read_the_requests_values() {
        let mut spec = spec();
        assert!(!spec.reads_realtime_items());
        spec.dense.extend(REALTIME_DENSE.iter().map(|n| n.to_string()));
        assert_eq!(spec.check(), Ok(()));
        assert!(spec.reads_realtime_items());
        let writer = spec.rows();
        assert!(writer.reads_realtime_items());
        let col = |name: &str| spec.dense.iter().position(|n| n == name).unwrap();
        let (u, it) = (user(), item(&["Drama"]));
        let hot = ItemFeatures {
            clicks: 40,
            plays: 9,
            likes: 1,
            impressions: 200,
            ctr: 41.0 / 202.0,
            trend: 12.5,
            window_end_ms: 1_790_000_040_000,
            ..it.clone()
        };
        // The row at place 3 with these real-time values.
        let with = |realtime: &ItemFeatures| {
            let place = Place {
                realtime: Some(realtime),
                ..Place::at(3)
            };
            writer.row_at("u1", Some(&u), "i1", Some(&it), None, place).1
        };
        let (_, neutral) = writer.row("u1", Some(&u), "i1", Some(&it), 3);
        let live = with(&hot);
        assert_eq!(neutral[col("item_rt_ctr")], 0.5);
        assert_eq!(neutral[col("item_rt_engagement")], 0.0);
        assert_eq!(neutral[col("item_rt_trend")], 0.0);
        assert!((live[col("item_rt_ctr")] - 41.0 / 202.0).abs() < 1e-6);
        assert!((live[col("item_rt_engagement")] - log_scaled(50.0)).abs() < 1e-6);
        assert!((live[col("item_rt_trend")] - log_scaled(12.5)).abs() < 1e-6);
        // Every offline column is the same with or without real-time values.
        for (c, name) in spec.dense.iter().enumerate() {
            if !REALTIME_DENSE.contains(&name.as_str()) {
                assert_eq!(neutral[c], live[c], "{name}");
            }
        }
        // An item a window never counted (the snapshot's value: window_end_ms 0) keeps ½.
        let cold = with(&it);
        assert_eq!(cold[col("item_rt_ctr")], 0.5);
        // The whole row is the one without real-time values: the feature service may leave
        // such an item out (`realtime_only`) and the model reads the same.
        assert_eq!(cold, neutral);
        // The serving path (item table, user part once) gives the same row.
        let once = writer.user("u1", Some(&u));
        let (mut s, mut d) = (Vec::new(), Vec::new());
        let item_row = writer.item(&it, None);
        writer.push_item(
            &once,
            writer.item_then(&once, &item_row),
            Place {
                realtime: Some(&hot),
                ..Place::at(3)
            },
            &mut s,
            &mut d,
        );
        assert_eq!(d, live);
        // The columns cross user and item: they are not in the item table's precomputed part.
        let (_, dense_sides) = writer.sides();
        assert_eq!(dense_sides[col("item_rt_ctr")], Side::Cross);
        assert!(
            InputSpec::all(InputSpec::default_buckets)
                .dense
                .iter()
                .all(|n| !REALTIME_DENSE.contains(&n.as_str()))
        );
    }
}
