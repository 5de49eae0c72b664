//! The synthetic generator reproduces the bundled data's shape at the same size.

use recstack_offline::dataset::{self, Dataset};
use recstack_offline::synth::{Calibration, generate};

struct Shape {
    mean_activity: f64,
    top1_share: f64,
    rated_items: f64,
    mean_rating: f64,
}

fn shape(ds: &Dataset) -> Shape {
    let mut per_item = vec![0u64; ds.n_items()];
    for r in &ds.ratings {
        per_item[r.item as usize] += 1;
    }
    per_item.sort_unstable_by(|a, b| b.cmp(a));
    let top = (ds.n_items() / 100).max(1);
    let n = ds.ratings.len() as f64;
    Shape {
        mean_activity: n / ds.n_users() as f64,
        top1_share: per_item[..top].iter().sum::<u64>() as f64 / n,
        rated_items: per_item.iter().filter(|&&c| c > 0).count() as f64 / ds.n_items() as f64,
        mean_rating: ds.ratings.iter().map(|r| f64::from(r.rating)).sum::<f64>() / n,
    }
}

fn close(what: &str, real: f64, synthetic: f64, tolerance: f64) {
    let rel = (synthetic - real).abs() / real;
    assert!(
        rel <= tolerance,
        "{what}: real {real:.4}, synthetic {synthetic:.4} ({:.0}% off)",
        rel * 100.0
    );
}

#[test]
fn synthetic_data_matches_the_real_distributions() {
    let real = Dataset::load_movietweetings(&dataset::bundled_dir()).unwrap();
    let cal = Calibration::from_dataset(&real);
    let dir = std::env::temp_dir().join(format!("recstack-synth-{}", std::process::id()));
    generate(&cal, real.n_users() as u64, real.n_items() as u32, 9, &dir, false).unwrap();
    let synthetic = Dataset::load_movietweetings(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();

    let (r, s) = (shape(&real), shape(&synthetic));
    close("ratings per user", r.mean_activity, s.mean_activity, 0.10);
    close(
        "share of ratings on the top 1% of items",
        r.top1_share,
        s.top1_share,
        0.25,
    );
    close("mean rating", r.mean_rating, s.mean_rating, 0.03);
    // Popularity-weighted sampling leaves part of the long tail unrated, like the real data.
    assert!(
        s.rated_items > 0.3 && s.rated_items <= 1.0,
        "{:.3} of items rated",
        s.rated_items
    );
}
