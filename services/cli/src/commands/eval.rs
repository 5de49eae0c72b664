//! `recstack eval`: on the time-split holdout, recall's own lists (each channel, the merged
//! set), the baselines, and what the stack serves at each level through the gateway
//! (ranking and rerank included), with bootstrap intervals and ratios to the baseline.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::ProgressBar;
use recstack_offline::build;
use recstack_offline::eval::{self, Catalogue, Truth};
use recstack_services::ranking::service::ModelSources;
use recstack_services::serve::served::{Scatter, Served, Setting, serve_lists, serve_replay};

use super::serve::ModelArgs;

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
    /// Only recall's lists and the baselines: do not start the stack to score what it serves.
    #[arg(long)]
    pub recall_only: bool,
    /// Also serve the full level with each of these MMR trade-offs for every user
    /// (comma-separated, 0–1; 1 is relevance only): what diversity costs, row by row.
    #[arg(long, value_delimiter = ',', value_parser = parse_lambda)]
    pub mmr_lambdas: Vec<f32>,
    /// Also serve the full level with each of these category-scatter settings
    /// (comma-separated `MAX/WINDOW`, e.g. `3/4,2/4,2/6`, or `off`; the setting without scatter
    /// is always served beside them): what scatter costs, and the one chosen.
    #[arg(long, value_delimiter = ',')]
    pub scatters: Vec<Scatter>,
    /// Also replay events: every user with two or more held-out ratings plays the earlier half
    /// of them through ingest and the stream job, and the full level is judged on the rest,
    /// served before those events reach the stack and after (what real-time recall and
    /// features add), against the baseline minus what each user has seen.
    #[arg(long)]
    pub replay: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let EvalArgs {
        artifacts,
        version,
        export_split,
        recall_only,
        mmr_lambdas,
        scatters,
        replay,
        model,
    } = args;
    anyhow::ensure!(
        !recall_only || (mmr_lambdas.is_empty() && scatters.is_empty() && !replay),
        "--mmr-lambdas, --scatters and --replay serve the full level: they cannot go with --recall-only"
    );
    // Scatter is priced against the level without it; each setting once (every form of "no
    // scatter", such as 4/4, is the one `off`).
    let scatters = {
        let without = (!scatters.is_empty()).then_some(Scatter::OFF);
        let mut kept: Vec<Scatter> = Vec::new();
        for s in scatters.into_iter().chain(without) {
            let s = if s.is_off() { Scatter::OFF } else { s };
            if !kept.contains(&s) {
                kept.push(s);
            }
        }
        kept
    };
    let (manifest, mut a) = build::load(&artifacts, version.as_deref()).context("loading artifacts")?;
    recstack_services::recall::tower::attach(&mut a).context("the sequence model's user tower")?;
    if let Some(dir) = export_split {
        export(&a, &dir).with_context(|| format!("writing the split to {}", dir.display()))?;
    }
    let truth = Truth::of(&a);
    let catalogue = Catalogue::of(&a);
    eprintln!("eval: recall's lists for {} users", truth.len());
    let mut scored = eval::score_recall_lists(&a, &truth, &catalogue, true);
    if !recall_only {
        let sources = model.flag_sources();
        // The stack serves the version `current` names.
        if let Some(v) = &version {
            anyhow::ensure!(
                is_current(&artifacts, v),
                "--version {v}: the stack serves the version `current` names; add --recall-only to score another"
            );
        }
        let users: Vec<String> = truth.users.iter().map(|&u| a.users[u as usize].clone()).collect();
        let index = eval::item_index(&a);
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        let sweep = mmr_lambdas
            .iter()
            .map(|&l| Setting::at("full").with_mmr_lambda(l))
            .chain(scatters.iter().map(|&s| Setting::at("full").with_scatter(s)));
        for setting in Setting::standard().into_iter().chain(sweep) {
            eprintln!("eval: served at {} ({} users)", setting.name, users.len());
            let bar = ProgressBar::new(users.len() as u64);
            let answers = runtime
                .block_on(serve_lists(&artifacts, sources.clone(), &setting, &users, 20, |k| {
                    bar.set_position(k as u64)
                }))
                .with_context(|| format!("serving at {}", setting.name))?;
            bar.finish_and_clear();
            let elsewhere = answers.iter().filter(|s| s.level != setting.level).count();
            anyhow::ensure!(
                elsewhere == 0,
                "{elsewhere} answers at {} came at another level",
                setting.name
            );
            let lists: Vec<Vec<u32>> = answers.iter().map(|s| dense(&index, s)).collect();
            scored.push(eval::score(
                &format!("served: {}", setting.name),
                &lists,
                &truth,
                &catalogue,
            ));
        }
    }
    let rows = eval::summarize_against_first(&scored);
    println!(
        "evaluation of {} on {} users' held-out ratings ({} ratings); 95 % intervals from {} bootstrap resamples of the users\n",
        manifest.version,
        truth.len(),
        a.holdout.len(),
        eval::RESAMPLES,
    );
    print!("{}", eval::table(&rows));
    if !mmr_lambdas.is_empty() {
        let ndcg = |setting: Setting| {
            let name = format!("served: {}", setting.name);
            rows.iter().find(|r| r.name == name).map(|r| r.ndcg_20.mean)
        };
        let relevance_only = ndcg(Setting::at("full").without_mmr()).context("no relevance-only row")?;
        let priced: Vec<(f32, f64)> = mmr_lambdas
            .iter()
            .filter_map(|&l| Some((l, ndcg(Setting::at("full").with_mmr_lambda(l))?)))
            .collect();
        println!();
        match eval::choose_mmr_lambda(relevance_only, &priced, eval::MMR_COST) {
            Some((lambda, next)) => println!(
                "MMR trade-off: λ {lambda}, the most diverse of those priced that keeps {:.0} % of relevance-only NDCG@20 ({relevance_only:.4}){}",
                (1.0 - eval::MMR_COST) * 100.0,
                next.map(|n| format!("; the next, λ {n}, is an experiment's second arm"))
                    .unwrap_or_default()
            ),
            None => println!(
                "MMR trade-off: no λ priced keeps {:.0} % of relevance-only NDCG@20 ({relevance_only:.4})",
                (1.0 - eval::MMR_COST) * 100.0
            ),
        }
    }
    if !scatters.is_empty() {
        let row = |scatter: Scatter| {
            let name = format!("served: {}", Setting::at("full").with_scatter(scatter).name);
            rows.iter().find(|r| r.name == name)
        };
        let without = row(Scatter::OFF).context("no row without scatter")?.ndcg_20.mean;
        let priced: Vec<(Scatter, f64, f64)> = scatters
            .iter()
            .filter_map(|&s| row(s).map(|r| (s, r.ndcg_20.mean, r.alike_neighbours)))
            .collect();
        println!();
        match eval::choose_scatter(without, &priced, eval::SCATTER_COST) {
            Some(s) => println!(
                "Category scatter: {s}, the one with the fewest neighbours of a genre of those priced that keeps {:.0} % of the full level's NDCG@20 without scatter ({without:.4})",
                (1.0 - eval::SCATTER_COST) * 100.0
            ),
            None => println!(
                "Category scatter: none priced keeps {:.0} % of the full level's NDCG@20 without scatter ({without:.4})",
                (1.0 - eval::SCATTER_COST) * 100.0
            ),
        }
    }
    if replay {
        println!();
        replay_table(&artifacts, &a, &catalogue, model.flag_sources())?;
    }
    Ok(())
}

/// `--replay`: the full level before and after each user's earlier held-out ratings reach the
/// stack as events, and the baseline without what the user has seen, on the later ratings.
fn replay_table(
    root: &std::path::Path,
    a: &build::Artifacts,
    catalogue: &Catalogue,
    sources: ModelSources,
) -> anyhow::Result<()> {
    let replay = eval::Replay::of(&a.holdout);
    let users: Vec<String> = replay
        .truth
        .users
        .iter()
        .map(|&u| a.users[u as usize].clone())
        .collect();
    let events: Vec<Vec<String>> = replay
        .events
        .iter()
        .map(|items| items.iter().map(|&i| a.items[i as usize].id.clone()).collect())
        .collect();
    let posted: usize = events.iter().map(Vec::len).sum();
    eprintln!("eval: replaying {posted} events of {} users", users.len());
    let log = tempfile::tempdir().context("a directory for the replay's event log")?;
    let setting = Setting::at("full");
    let bar = ProgressBar::new(users.len() as u64);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let served = runtime
        .block_on(serve_replay(
            root,
            sources,
            &setting,
            log.path(),
            &users,
            &events,
            20,
            |phase, k| {
                bar.set_message(phase.to_string());
                bar.set_position(k as u64)
            },
        ))
        .context("serving the replay")?;
    bar.finish_and_clear();
    let index = eval::item_index(a);
    for s in served.before.iter().chain(&served.after) {
        anyhow::ensure!(s.level == setting.level, "a replay answer came at {}", s.level);
    }
    // Before: the replayed items dropped (the stack did not know of them yet), the first 20 kept.
    let before: Vec<Vec<u32>> = served
        .before
        .iter()
        .zip(&replay.events)
        .map(|(s, replayed)| {
            dense(&index, s)
                .into_iter()
                .filter(|i| !replayed.contains(i))
                .take(20)
                .collect()
        })
        .collect();
    let after: Vec<Vec<u32>> = served.after.iter().map(|s| dense(&index, s)).collect();
    let scored = [
        eval::score(
            &format!("{}, minus the replayed items", eval::baseline_name(a)),
            &eval::replay_baseline(a, &replay),
            &replay.truth,
            catalogue,
        ),
        eval::score(
            "served: full, before the events (replayed items dropped)",
            &before,
            &replay.truth,
            catalogue,
        ),
        eval::score("served: full, after the events", &after, &replay.truth, catalogue),
    ];
    println!(
        "replay: {} users with two or more held-out ratings played the earlier half ({posted} events) through ingest and the stream job; judged on the other {} held-out ratings\n",
        users.len(),
        replay.truth.items.iter().map(|t| t.len()).sum::<usize>(),
    );
    print!("{}", eval::table(&eval::summarize_against_first(&scored)));
    Ok(())
}

/// A served list as dense item ids (an id the build does not know is left out: it cannot be
/// a held-out item).
fn dense(index: &std::collections::HashMap<&str, u32>, served: &Served) -> Vec<u32> {
    served
        .items
        .iter()
        .filter_map(|id| index.get(id.as_str()).copied())
        .collect()
}

fn parse_lambda(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(l) if (0.0..=1.0).contains(&l) => Ok(l),
        _ => Err(format!("{s:?} is not an MMR trade-off between 0 and 1")),
    }
}

fn is_current(root: &std::path::Path, version: &str) -> bool {
    std::fs::read_to_string(root.join("current")).is_ok_and(|c| c.trim() == version)
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
