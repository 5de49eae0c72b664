//! Approximate nearest neighbours over item embeddings: an HNSW graph (instant-distance) on
//! L2-normalized vectors, so nearest means highest cosine similarity.

use std::cell::RefCell;

use instant_distance::{Builder, HnswMap, Point, Search};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Dimensions held inline in a [`UnitVec`] (the build's factors have 32); longer vectors spill
/// to the heap.
pub const INLINE_DIMS: usize = 32;

/// A unit-length vector, held inline up to [`INLINE_DIMS`]: the graph keeps its points in one
/// array, so a search's distance computations read consecutive memory instead of following a
/// pointer per point. Serialized as a sequence, byte for byte as a `Vec<f32>` was: artifacts
/// written before read unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitVec(pub SmallVec<[f32; INLINE_DIMS]>);

impl UnitVec {
    /// Normalizes `v`; the zero vector stays zero (and is far from everything).
    pub fn new(v: &[f32]) -> Self {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm == 0.0 {
            return UnitVec(SmallVec::from_slice(v));
        }
        UnitVec(v.iter().map(|x| x / norm).collect())
    }
}

thread_local! {
    /// A search's working state (visited marks, heaps), reused by each thread's queries
    /// instead of allocated for each.
    static SEARCH: RefCell<Search> = RefCell::new(Search::default());
}

impl Point for UnitVec {
    fn distance(&self, other: &Self) -> f32 {
        1.0 - super::factors::dot(&self.0, &other.0)
    }
}

/// The item index.
#[derive(Serialize, Deserialize)]
pub struct ItemIndex {
    map: HnswMap<UnitVec, u32>,
}

impl ItemIndex {
    /// Builds the graph single-threaded: HNSW insertion order changes the graph, and the
    /// build must be reproducible for a given seed.
    pub fn build(vectors: Vec<(u32, UnitVec)>, seed: u64, ef_construction: usize, ef_search: usize) -> Self {
        let (ids, points): (Vec<u32>, Vec<UnitVec>) = vectors.into_iter().unzip();
        let builder = Builder::default()
            .seed(seed)
            .ef_construction(ef_construction)
            .ef_search(ef_search);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build();
        let map = match pool {
            Ok(pool) => pool.install(|| builder.build(points, ids)),
            Err(_) => builder.build(points, ids),
        };
        Self { map }
    }

    /// Items in the graph.
    pub fn len(&self) -> usize {
        self.map.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `n` items nearest to `query`, with cosine similarity. The graph answers at most
    /// the `ef_search` it was built with: fewer than `n` (and fewer than [`Self::len`]) means
    /// it ran out, not that there are no more.
    pub fn search(&self, query: &UnitVec, n: usize) -> Vec<(u32, f32)> {
        SEARCH.with(|search| {
            let mut search = search.borrow_mut();
            self.map
                .search(query, &mut search)
                .take(n)
                .map(|item| (*item.value, 1.0 - item.distance))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_closest_vectors() {
        let vectors: Vec<(u32, UnitVec)> = (0..200u32)
            .map(|i| (i, UnitVec::new(&[(i as f32 / 30.0).cos(), (i as f32 / 30.0).sin()])))
            .collect();
        let index = ItemIndex::build(vectors, 1, 100, 100);
        let hits = index.search(&UnitVec::new(&[(50f32 / 30.0).cos(), (50f32 / 30.0).sin()]), 3);
        let ids: Vec<u32> = hits.iter().map(|h| h.0).collect();
        assert_eq!(ids[0], 50);
        assert!(ids.contains(&49) && ids.contains(&51), "{ids:?}");
        assert!((hits[0].1 - 1.0).abs() < 1e-5);
        // The same again (the thread's reused search state starts clean).
        let again = index.search(&UnitVec::new(&[(50f32 / 30.0).cos(), (50f32 / 30.0).sin()]), 3);
        assert_eq!(again, hits);
        let other = index.search(&UnitVec::new(&[(150f32 / 30.0).cos(), (150f32 / 30.0).sin()]), 1);
        assert_eq!(other[0].0, 150);
    }

    #[test]
    fn stored_as_a_vec_was() {
        let dims: Vec<f32> = (0..40).map(|i| i as f32 - 7.5).collect();
        for v in [&dims[..2], &dims[..32], &dims[..]] {
            let unit = UnitVec::new(v);
            let as_vec: Vec<f32> = unit.0.to_vec();
            let bytes = postcard::to_stdvec(&unit).unwrap();
            assert_eq!(bytes, postcard::to_stdvec(&as_vec).unwrap(), "{} dims", v.len());
            assert_eq!(postcard::from_bytes::<UnitVec>(&bytes).unwrap(), unit);
        }
        assert!(!UnitVec::new(&dims[..32]).0.spilled());
    }
}
