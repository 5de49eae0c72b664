//! An item's ratings over time, by day: what the ranker's `item_*_then` features read as of a
//! user's latest activity (docs/ranking.md, "As of the user's latest activity").
//!
//! The build writes one [`Timeline`] per item from the training ratings: the days with ratings,
//! compact in the artifacts. The feature snapshot lays each out a slot a day ([`DayCounts`]), and
//! the ranking service and the training export read it through the same [`DayCounts::at`], so a
//! model is trained on the values it is served.
//!
//! Days are Unix days (seconds / 86,400, UTC). A timeline keeps one entry per day with ratings
//! for the last [`KEPT_DAYS`] days of the build and folds the ratings before them into one
//! count: an old item costs at most 365 entries, and a day before those reads the folded count
//! (all its ratings before the kept days), not the count on that day; a week reaching back
//! before them counts only its kept days.

use serde::{Deserialize, Serialize};

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// Days with their own entry, counted back from the build's newest rating.
pub const KEPT_DAYS: u32 = 365;

/// The window [`Then::week`] counts: the day asked and the six before it.
pub const WEEK_DAYS: u32 = 7;

/// The Unix day of a timestamp (seconds); days before 1970 read as day 0.
pub fn day_of(ts: i64) -> u32 {
    u32::try_from(ts.div_euclid(DAY)).unwrap_or(if ts < 0 { 0 } else { u32::MAX })
}

/// One item's ratings by day.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// The day of its first rating (meaningless when it has none).
    first: u32,
    /// Ratings before the first kept day: those older than the kept days.
    folded: u32,
    /// (day, ratings up to and including it, `folded` included) for each day with ratings
    /// within [`KEPT_DAYS`] of the build's newest rating, ascending: one array, so that a row
    /// reading it follows one pointer.
    days: Vec<(u32, u32)>,
}

/// What an item's ratings by day say as of one day ([`DayCounts::at`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Then {
    /// Ratings up to and including the day.
    pub ratings: u32,
    /// Ratings in the [`WEEK_DAYS`] days ending with it.
    pub week: u32,
    /// Days since the first rating; `None` before it (or with none).
    pub days_out: Option<u32>,
}

impl Timeline {
    /// The timeline of an item rated at `times` (Unix seconds, any order), for a build whose
    /// newest rating is at `end`.
    pub fn from_times(times: impl IntoIterator<Item = i64>, end: i64) -> Self {
        let mut days: Vec<u32> = times.into_iter().map(day_of).collect();
        if days.is_empty() {
            return Self::default();
        }
        days.sort_unstable();
        let first = days[0];
        let oldest_kept = day_of(end).saturating_sub(KEPT_DAYS - 1);
        let folded = days.partition_point(|&d| d < oldest_kept);
        let mut t = Self {
            first,
            folded: folded as u32,
            days: Vec::new(),
        };
        let mut count = t.folded;
        for &d in &days[folded..] {
            count += 1;
            match t.days.last_mut() {
                Some((last, through)) if *last == d => *through = count,
                _ => t.days.push((d, count)),
            }
        }
        t
    }

    /// The same counts with a slot for every day, for reading ([`DayCounts`]).
    pub fn day_counts(&self) -> DayCounts {
        let start = self.days.first().map_or(0, |&(d, _)| d);
        let end = self.days.last().map_or(0, |&(d, _)| d);
        let mut through = Vec::with_capacity(if self.days.is_empty() {
            0
        } else {
            (end - start + 1) as usize
        });
        let mut count = self.folded;
        for &(day, upto) in &self.days {
            through.resize((day - start) as usize, count);
            through.push(upto);
            count = upto;
        }
        DayCounts {
            first: self.first,
            folded: self.folded,
            start,
            through,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.days.is_empty() && self.folded == 0
    }
}

/// A [`Timeline`] laid out for the ranking service's rows: one slot for every day from its first
/// kept day with ratings to its last, so that a day's count is one load and the week before it
/// another, close by — where a binary search over the days with ratings touched several cache
/// lines of a popular item's timeline for every row (BENCHMARKS.md, "With `gbdt-2`"). At most
/// [`KEPT_DAYS`] slots an item.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DayCounts {
    first: u32,
    folded: u32,
    /// The day of `through[0]`.
    start: u32,
    /// Ratings up to and including each day from `start` on.
    through: Vec<u32>,
}

impl DayCounts {
    fn through(&self, day: u32) -> u32 {
        match day.checked_sub(self.start) {
            Some(i) if !self.through.is_empty() => match self.through.get(i as usize) {
                Some(&n) => n,
                None => self.through[self.through.len() - 1],
            },
            _ if self.folded > 0 && day >= self.first => self.folded,
            _ => 0,
        }
    }

    /// What it says as of `day`: a day before the kept ones reads the folded count, and a week
    /// reaching back before them counts only its kept days.
    #[inline]
    pub fn at(&self, day: u32) -> Then {
        let ratings = self.through(day);
        let before_week = day.checked_sub(WEEK_DAYS).map_or(0, |d| self.through(d));
        Then {
            ratings,
            week: ratings - before_week,
            days_out: (ratings > 0).then(|| day - self.first),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D0: i64 = 19_000; // a Unix day

    fn at(day: i64, second: i64) -> i64 {
        day * DAY + second
    }

    /// A second reading of the same counts, by binary search over the days with ratings (what
    /// the service did before [`DayCounts`]): its answers must agree with the slot-a-day layout.
    fn sparse_at(t: &Timeline, day: u32) -> Then {
        let through = |day: u32| match t.days.partition_point(|&(d, _)| d <= day) {
            0 if t.folded > 0 && day >= t.first => t.folded,
            0 => 0,
            k => t.days[k - 1].1,
        };
        let ratings = through(day);
        let before_week = day.checked_sub(WEEK_DAYS).map_or(0, through);
        Then {
            ratings,
            week: ratings - before_week,
            days_out: (ratings > 0).then(|| day - t.first),
        }
    }

    fn ratings(t: &Timeline) -> u32 {
        t.days.last().map_or(t.folded, |&(_, through)| through)
    }

    /// The slow reference: counts every rating.
    fn naive(times: &[i64], day: u32) -> Then {
        let days: Vec<u32> = times.iter().map(|&t| day_of(t)).collect();
        let ratings = days.iter().filter(|&&d| d <= day).count() as u32;
        let week = days.iter().filter(|&&d| d <= day && d + WEEK_DAYS > day).count() as u32;
        let first = days.iter().copied().min();
        Then {
            ratings,
            week,
            days_out: first.filter(|&f| f <= day).map(|f| day - f),
        }
    }

    #[test]
    fn counts_by_day_up_to_and_including_the_day_asked() {
        let times = [at(D0, 10), at(D0, 80_000), at(D0 + 3, 0), at(D0 + 9, 5)];
        let t = Timeline::from_times(times.iter().rev().copied(), at(D0 + 9, 5));
        assert_eq!(t.days.len(), 3);
        assert_eq!(ratings(&t), 4);
        let day = |d: i64| u32::try_from(d).unwrap();
        assert_eq!(
            t.day_counts().at(day(D0 - 1)),
            Then {
                ratings: 0,
                week: 0,
                days_out: None
            }
        );
        assert_eq!(
            t.day_counts().at(day(D0)),
            Then {
                ratings: 2,
                week: 2,
                days_out: Some(0)
            }
        );
        assert_eq!(
            t.day_counts().at(day(D0 + 6)),
            Then {
                ratings: 3,
                week: 3,
                days_out: Some(6)
            }
        );
        // Day D0 leaves the week on D0 + 7.
        assert_eq!(
            t.day_counts().at(day(D0 + 7)),
            Then {
                ratings: 3,
                week: 1,
                days_out: Some(7)
            }
        );
        assert_eq!(
            t.day_counts().at(day(D0 + 100)),
            Then {
                ratings: 4,
                week: 0,
                days_out: Some(100)
            }
        );
    }

    #[test]
    fn an_item_never_rated_reads_nothing_on_any_day() {
        let t = Timeline::from_times([], at(D0, 0));
        assert!(t.is_empty());
        for day in [0, 6, 7, u32::try_from(D0).unwrap(), u32::MAX] {
            assert_eq!(sparse_at(&t, day), Then::default());
            assert_eq!(t.day_counts().at(day), Then::default());
        }
    }

    #[test]
    fn day_counts_answer_as_the_timeline_on_every_day() {
        let mut x = 99u64;
        for case in 0..200 {
            // Histories of 0 to 60 ratings over spans up to 900 days (past the kept days).
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let (n, span) = ((x >> 40) % 61, 1 + (x >> 20) % 900);
            let times: Vec<i64> = (0..n)
                .map(|_| {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    at(D0 + ((x >> 33) % span) as i64, ((x >> 13) % DAY as u64) as i64)
                })
                .collect();
            let end = times.iter().copied().max().unwrap_or(at(D0, 0)) + (case % 3) * DAY;
            let t = Timeline::from_times(times, end);
            let dense = t.day_counts();
            assert!(dense.through.len() <= KEPT_DAYS as usize);
            for day in (D0 as u32).saturating_sub(10)..D0 as u32 + span as u32 + 20 {
                assert_eq!(dense.at(day), sparse_at(&t, day), "case {case}, day {day}");
            }
            for day in [0, 3, u32::MAX] {
                assert_eq!(dense.at(day), sparse_at(&t, day), "case {case}, day {day}");
            }
        }
    }

    #[test]
    fn equals_counting_every_rating_within_the_kept_days() {
        // A pseudo-random item history over 500 days; the build ends on its last day.
        let mut x = 12_345u64;
        let mut times = Vec::new();
        for _ in 0..400 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            times.push(at(D0 + (x >> 33) as i64 % 500, (x >> 20) as i64 % DAY));
        }
        let end = *times.iter().max().unwrap();
        let t = Timeline::from_times(times.clone(), end);
        assert!(t.days.len() <= KEPT_DAYS as usize);
        let kept_from = day_of(end) - (KEPT_DAYS - 1);
        for day in kept_from..day_of(end) + 20 {
            let (got, want) = (t.day_counts().at(day), naive(&times, day));
            assert_eq!((got.ratings, got.days_out), (want.ratings, want.days_out), "day {day}");
            // A week reaching back before the kept days counts only its kept days.
            if day >= kept_from + WEEK_DAYS - 1 {
                assert_eq!(got.week, want.week, "day {day}");
            }
        }
        // Before the kept days: every rating before them is counted (and the first day kept).
        let before = t.day_counts().at(kept_from - 100);
        assert_eq!(before.ratings, naive(&times, kept_from - 1).ratings);
        assert_eq!(before.days_out, naive(&times, kept_from - 100).days_out);
    }

    #[test]
    fn the_first_days_of_the_epoch_and_times_before_it_do_not_underflow() {
        let t = Timeline::from_times([-5, 0, 3 * DAY], 3 * DAY);
        assert_eq!(day_of(-5), 0);
        assert_eq!(
            t.day_counts().at(2),
            Then {
                ratings: 2,
                week: 2,
                days_out: Some(2)
            }
        );
        assert_eq!(t.day_counts().at(3).week, 3);
    }
}
