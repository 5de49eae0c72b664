//! `recstack eval`: each recall channel on the held-out ratings.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use recstack_offline::{build, eval};

/// The flags of `recstack eval`.
#[derive(Args)]
pub struct EvalArgs {
    #[arg(long, default_value = "artifacts")]
    pub artifacts: PathBuf,
    /// A specific version (default: the one `current` names).
    #[arg(long)]
    pub version: Option<String>,
    /// Also write the split (train.csv, test.csv: user,item,rating with dense ids) for
    /// peer libraries (`scripts/peers/implicit_als.py`).
    #[arg(long)]
    pub export_split: Option<PathBuf>,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let EvalArgs {
        artifacts,
        version,
        export_split,
    } = args;
    let (manifest, a) = build::load(&artifacts, version.as_deref()).context("loading artifacts")?;
    if let Some(dir) = export_split {
        export(&a, &dir).with_context(|| format!("writing the split to {}", dir.display()))?;
    }
    let (rows, users) = eval::evaluate(&a, true);
    println!(
        "evaluation of {} on {users} users' held-out ratings ({} ratings)\n",
        manifest.version,
        a.holdout.len()
    );
    println!("| list | recall@50 | recall@200 | NDCG@20 |");
    println!("|---|---:|---:|---:|");
    for (name, m) in &rows {
        println!(
            "| {name} | {:.4} | {:.4} | {:.4} |",
            m.recall_50, m.recall_200, m.ndcg_20
        );
    }
    Ok(())
}

/// Writes the training and held-out ratings as CSV with dense ids.
fn export(a: &build::Artifacts, dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut train = std::io::BufWriter::new(std::fs::File::create(dir.join("train.csv"))?);
    for (u, (items, ratings)) in a.history.iter().zip(&a.history_ratings).enumerate() {
        for (i, r) in items.iter().zip(ratings) {
            writeln!(train, "{u},{i},{r}")?;
        }
    }
    let mut test = std::io::BufWriter::new(std::fs::File::create(dir.join("test.csv"))?);
    for r in &a.holdout {
        writeln!(test, "{},{},{}", r.user, r.item, r.rating)?;
    }
    std::fs::write(dir.join("shape.txt"), format!("{} {}\n", a.users.len(), a.items.len()))
}
