//! SYNTHETIC data for scale tests (e.g. 1M items, 10M users), calibrated to a real data set.
//!
//! Nothing here is real behaviour. The generator resamples the reference data's empirical
//! distributions: each synthetic user's activity (ratings count) is drawn from the real users'
//! counts, each synthetic item's popularity weight from the real items' counts (so the long
//! tail keeps its shape), ratings from the real rating histogram, genre sets from real items,
//! and timestamps uniformly over the real time range. Output uses the MovieTweetings format,
//! so everything that loads the bundled data loads it, with a `SYNTHETIC.md` beside the files
//! and "Synthetic item" titles.

use std::io::{BufWriter, Write};
use std::path::Path;

use indicatif::ProgressBar;
use rand::distributions::{Distribution, WeightedIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dataset::Dataset;

/// The distributions a synthetic set reproduces.
#[derive(Clone, Debug)]
pub struct Calibration {
    /// Ratings per user, one entry per real user.
    pub user_activity: Vec<u32>,
    /// Ratings per item, one entry per rated real item.
    pub item_popularity: Vec<u32>,
    /// Count of each rating 0–10.
    pub rating_histogram: [u64; 11],
    /// Genre sets of real items.
    pub genre_sets: Vec<Vec<String>>,
    pub time_range: (i64, i64),
}

impl Calibration {
    pub fn from_dataset(ds: &Dataset) -> Self {
        let mut user_activity = vec![0u32; ds.n_users()];
        let mut item_popularity = vec![0u32; ds.n_items()];
        let mut rating_histogram = [0u64; 11];
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for r in &ds.ratings {
            user_activity[r.user as usize] += 1;
            item_popularity[r.item as usize] += 1;
            rating_histogram[usize::from(r.rating.min(10))] += 1;
            lo = lo.min(r.ts);
            hi = hi.max(r.ts);
        }
        item_popularity.retain(|&c| c > 0);
        let genre_sets = ds
            .items
            .iter()
            .map(|i| i.genres.clone())
            .filter(|g| !g.is_empty())
            .collect();
        Self {
            user_activity,
            item_popularity,
            rating_histogram,
            genre_sets,
            time_range: (lo, hi.max(lo)),
        }
    }
}

/// Writes `users` × `items` synthetic data to `dir` (movies.dat, ratings.dat, SYNTHETIC.md).
/// Returns the number of ratings written. Deterministic for a seed.
pub fn generate(
    cal: &Calibration,
    users: u64,
    items: u32,
    seed: u64,
    dir: &Path,
    progress: bool,
) -> std::io::Result<u64> {
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
    if cal.user_activity.is_empty() || cal.item_popularity.is_empty() {
        return Err(invalid("the reference data has no ratings"));
    }
    if items == 0 || users == 0 {
        return Err(invalid("users and items must be positive"));
    }
    std::fs::create_dir_all(dir)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    // Item popularity weights: real counts resampled, jittered so ties do not form plateaus.
    let weights: Vec<f64> = (0..items)
        .map(|_| f64::from(cal.item_popularity[rng.gen_range(0..cal.item_popularity.len())]) * rng.gen_range(0.9..1.1))
        .collect();
    let pick_item = WeightedIndex::new(&weights).map_err(|e| invalid(&e.to_string()))?;
    let pick_rating = WeightedIndex::new(cal.rating_histogram.iter().map(|&c| c as f64 + 1e-9))
        .map_err(|e| invalid(&e.to_string()))?;

    let mut movies = BufWriter::new(std::fs::File::create(dir.join("movies.dat"))?);
    for i in 0..items {
        let genres = if cal.genre_sets.is_empty() {
            String::new()
        } else {
            cal.genre_sets[rng.gen_range(0..cal.genre_sets.len())].join("|")
        };
        let year = rng.gen_range(1950..2024);
        writeln!(movies, "s{i:07}::Synthetic item {i} ({year})::{genres}")?;
    }
    movies.flush()?;

    let bar = if progress {
        ProgressBar::new(users)
    } else {
        ProgressBar::hidden()
    };
    let mut ratings = BufWriter::with_capacity(1 << 20, std::fs::File::create(dir.join("ratings.dat"))?);
    let (t0, t1) = cal.time_range;
    let mut written = 0u64;
    let mut seen = std::collections::HashSet::new();
    for u in 1..=users {
        let activity = cal.user_activity[rng.gen_range(0..cal.user_activity.len())].min(items);
        let mut times: Vec<i64> = (0..activity).map(|_| rng.gen_range(t0..=t1)).collect();
        times.sort_unstable();
        seen.clear();
        for ts in times {
            // Users rate an item once; redraw on repeats (bounded, for tiny catalogues).
            let mut item = pick_item.sample(&mut rng);
            for _ in 0..16 {
                if seen.insert(item) {
                    break;
                }
                item = pick_item.sample(&mut rng);
            }
            writeln!(ratings, "{u}::s{item:07}::{}::{ts}", pick_rating.sample(&mut rng))?;
            written += 1;
        }
        if u % 10_000 == 0 {
            bar.set_position(u);
        }
    }
    ratings.flush()?;
    bar.finish_and_clear();
    std::fs::write(
        dir.join("SYNTHETIC.md"),
        format!(
            "# SYNTHETIC data — not real behaviour\n\nGenerated by `recstack synth` (seed {seed}): {users} users, {items} items, \
             {written} ratings, resampling the activity, popularity, rating and genre distributions of a reference \
             data set (MovieTweetings 100K). Use it for scale tests only; never for quality claims.\n"
        ),
    )?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Item, Rating};

    fn reference() -> Dataset {
        // 3 users with 1, 2 and 6 ratings; item 0 popular, the rest one each.
        let mut ds = Dataset {
            items: (0..6)
                .map(|i| Item {
                    id: format!("{i}"),
                    title: "t".into(),
                    year: None,
                    genres: vec!["Drama".into()],
                })
                .collect(),
            users: vec!["a".into(), "b".into(), "c".into()],
            ratings: Vec::new(),
        };
        let mut push = |user, item| {
            ds.ratings.push(Rating {
                user,
                item,
                rating: 8,
                ts: 1000 + i64::from(item),
            })
        };
        push(0, 0);
        push(1, 0);
        push(1, 1);
        for i in 0..6 {
            push(2, i);
        }
        ds
    }

    #[test]
    fn calibration_reads_the_distributions() {
        let cal = Calibration::from_dataset(&reference());
        let mut activity = cal.user_activity.clone();
        activity.sort_unstable();
        assert_eq!(activity, [1, 2, 6]);
        assert_eq!(cal.item_popularity.iter().sum::<u32>(), 9);
        assert_eq!(cal.rating_histogram[8], 9);
        assert_eq!(cal.time_range, (1000, 1005));
    }

    #[test]
    fn output_loads_and_is_labelled_and_deterministic() {
        let cal = Calibration::from_dataset(&reference());
        let dir = std::env::temp_dir().join(format!("recstack-synth-unit-{}", std::process::id()));
        let n = generate(&cal, 200, 50, 3, &dir, false).unwrap();
        let ds = Dataset::load_movietweetings(&dir).unwrap();
        assert_eq!(ds.ratings.len() as u64, n);
        assert!(ds.items.iter().all(|i| i.title.starts_with("Synthetic item")));
        assert!(
            std::fs::read_to_string(dir.join("SYNTHETIC.md"))
                .unwrap()
                .starts_with("# SYNTHETIC")
        );
        let first = std::fs::read(dir.join("ratings.dat")).unwrap();
        generate(&cal, 200, 50, 3, &dir, false).unwrap();
        assert_eq!(std::fs::read(dir.join("ratings.dat")).unwrap(), first);
        std::fs::remove_dir_all(&dir).ok();
        assert!(generate(&cal, 0, 50, 3, &dir, false).is_err());
    }
}
