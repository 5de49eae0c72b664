//! The interaction data: MovieTweetings (bundled) or a synthetic set, with dense ids, and the
//! per-user time split that holds out each user's most recent ratings for evaluation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why data could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

pub use recstack_core::artifacts::{Item, Rating};

/// Items, users and ratings with dense ids (`0..len`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    pub items: Vec<Item>,
    /// External user ids, by dense index.
    pub users: Vec<String>,
    pub ratings: Vec<Rating>,
}

/// The bundled copy of MovieTweetings (see `services/data/movietweetings-100k/ATTRIBUTION.md`).
pub fn bundled_dir() -> PathBuf {
    recstack_core::source_file("data/movietweetings-100k")
}

impl Dataset {
    /// Loads `movies.dat` and `ratings.dat` from `dir`. Items rated but missing from
    /// `movies.dat` are kept with an empty title and no genres.
    pub fn load_movietweetings(dir: &Path) -> Result<Dataset, DataError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| DataError::Io { path, source })
        };
        let movies_path = dir.join("movies.dat");
        let ratings_path = dir.join("ratings.dat");
        let mut ds = Dataset::default();
        let mut item_index: HashMap<String, u32> = HashMap::new();
        for (n, line) in read("movies.dat")?.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let item = parse_movie(line).map_err(|message| DataError::Parse {
                path: movies_path.clone(),
                line: n + 1,
                message,
            })?;
            item_index.insert(item.id.clone(), ds.items.len() as u32);
            ds.items.push(item);
        }
        let mut user_index: HashMap<String, u32> = HashMap::new();
        for (n, line) in read("ratings.dat")?.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parse_err = |message: String| DataError::Parse {
                path: ratings_path.clone(),
                line: n + 1,
                message,
            };
            let f: Vec<&str> = line.split("::").collect();
            let [user, item, rating, ts] = f[..] else {
                return Err(parse_err(format!(
                    "expected user::item::rating::timestamp, got {line:?}"
                )));
            };
            let rating: u8 = rating
                .parse()
                .map_err(|_| parse_err(format!("rating {rating:?} is not 0–10")))?;
            if rating > 10 {
                return Err(parse_err(format!("rating {rating} is not 0–10")));
            }
            let ts: i64 = ts
                .parse()
                .map_err(|_| parse_err(format!("timestamp {ts:?} is not a number")))?;
            let next_user = user_index.len() as u32;
            let user = *user_index.entry(user.to_string()).or_insert_with(|| {
                ds.users.push(user.to_string());
                next_user
            });
            let item = match item_index.get(item) {
                Some(&i) => i,
                None => {
                    let i = ds.items.len() as u32;
                    item_index.insert(item.to_string(), i);
                    ds.items.push(Item {
                        id: item.to_string(),
                        title: String::new(),
                        year: None,
                        genres: Vec::new(),
                    });
                    i
                }
            };
            ds.ratings.push(Rating { user, item, rating, ts });
        }
        Ok(ds)
    }

    pub fn n_users(&self) -> usize {
        self.users.len()
    }

    pub fn n_items(&self) -> usize {
        self.items.len()
    }
}

/// `0110912::Pulp Fiction (1994)::Crime|Thriller`
fn parse_movie(line: &str) -> Result<Item, String> {
    let mut f = line.splitn(3, "::");
    let (Some(id), Some(title_year)) = (f.next(), f.next()) else {
        return Err(format!("expected id::title (year)::genres, got {line:?}"));
    };
    let genres = f
        .next()
        .unwrap_or_default()
        .split('|')
        .filter(|g| !g.is_empty())
        .map(String::from)
        .collect();
    let (title, year) = match title_year.rsplit_once(" (") {
        Some((t, y)) if y.ends_with(')') => match y.trim_end_matches(')').parse() {
            Ok(year) => (t.to_string(), Some(year)),
            Err(_) => (title_year.to_string(), None),
        },
        _ => (title_year.to_string(), None),
    };
    Ok(Item {
        id: id.to_string(),
        title,
        year,
        genres,
    })
}

/// Ratings split by time: for each user with at least `min_history` ratings, the most recent
/// `holdout` fraction (at least one) is held out. Nothing held out is ever trained on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    pub train: Vec<Rating>,
    pub test: Vec<Rating>,
}

/// A rating of 5 by `user` of `item` at `ts`: what the crate's tests build data from.
#[cfg(test)]
pub(crate) fn r(user: u32, item: u32, ts: i64) -> Rating {
    Rating {
        user,
        item,
        rating: 5,
        ts,
    }
}

pub fn time_split(ratings: &[Rating], holdout: f64, min_history: usize) -> Split {
    let mut by_user: HashMap<u32, Vec<Rating>> = HashMap::new();
    for r in ratings {
        by_user.entry(r.user).or_default().push(*r);
    }
    let mut users: Vec<u32> = by_user.keys().copied().collect();
    users.sort_unstable();
    let mut split = Split::default();
    for u in users {
        let mut rs = by_user.remove(&u).unwrap_or_default();
        // Ties in time are broken by item so the split is deterministic.
        rs.sort_by_key(|r| (r.ts, r.item));
        let n_test = if rs.len() >= min_history {
            ((rs.len() as f64 * holdout).ceil() as usize).clamp(1, rs.len() - 1)
        } else {
            0
        };
        let cut = rs.len() - n_test;
        split.test.extend_from_slice(&rs[cut..]);
        split.train.extend_from_slice(&rs[..cut]);
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_movies() {
        let m = parse_movie("0110912::Pulp Fiction (1994)::Crime|Thriller").unwrap();
        assert_eq!(
            (m.title.as_str(), m.year, m.genres.len()),
            ("Pulp Fiction", Some(1994), 2)
        );
        let m = parse_movie("1::Title (with parens) (2001)::").unwrap();
        assert_eq!(
            (m.title.as_str(), m.year, m.genres.len()),
            ("Title (with parens)", Some(2001), 0)
        );
        let m = parse_movie("2::No year").unwrap();
        assert_eq!((m.title.as_str(), m.year), ("No year", None));
        assert!(parse_movie("garbage").is_err());
    }

    #[test]
    fn split_holds_out_the_latest_per_user() {
        let ratings = vec![
            r(0, 1, 10),
            r(0, 2, 30),
            r(0, 3, 20),
            r(0, 4, 40),
            r(0, 5, 50),
            r(1, 1, 5), // too short a history: all train
            r(1, 2, 6),
        ];
        let s = time_split(&ratings, 0.2, 5);
        assert_eq!(s.test, vec![r(0, 5, 50)]);
        assert_eq!(s.train.len(), 6);
        // Nothing held out is in train.
        assert!(s.test.iter().all(|t| !s.train.contains(t)));
        // Every held-out rating is later than the same user's training ratings.
        for t in &s.test {
            assert!(s.train.iter().filter(|x| x.user == t.user).all(|x| x.ts <= t.ts));
        }
        let s = time_split(&ratings, 0.5, 2);
        assert_eq!(s.test.iter().filter(|t| t.user == 0).count(), 3);
        assert_eq!(s.test.iter().filter(|t| t.user == 1).count(), 1);
    }
}
