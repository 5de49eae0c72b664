//! `recstack replay` and `recstack compare`: a stored request replayed with changes (what-if),
//! or two stored requests, side by side — each item's place in both, how it moved and the
//! stage that made it.

use anyhow::Context;
use clap::Args;
use recstack_dashboard::model::ReplayAsk;
use recstack_dashboard::server::{GatewayApi, TraceApi};
use recstack_trace_store::compare::{Change, Comparison};

/// Where the trace query API is and the token it wants.
#[derive(Args)]
pub struct TraceFlags {
    /// The trace query API.
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    pub traces: String,
    /// A reader or admin token of the stack (none on a local stack without tokens).
    #[arg(long, env = "RECSTACK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the comparison as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The flags of `recstack replay`.
#[derive(Args)]
pub struct ReplayArgs {
    /// The stored request to replay.
    pub request_id: String,
    /// The user's own id, when the trace keeps a pseudonym.
    #[arg(long)]
    pub user: Option<String>,
    /// Start at this degradation level: full, reduced, popular, fallback.
    #[arg(long)]
    pub level: Option<String>,
    /// Put ITEM among the candidates before ranking (repeatable).
    #[arg(long = "force", value_name = "ITEM")]
    pub force_items: Vec<String>,
    /// Block ITEM for this request (repeatable).
    #[arg(long = "block", value_name = "ITEM")]
    pub block: Vec<String>,
    /// The ranking model: primary or canary.
    #[arg(long)]
    pub model: Option<String>,
    /// The user's state: `now` (the seen filter and real-time items as they are) or
    /// `recorded` (the seen items the stored request filtered and the real-time items it read).
    #[arg(long, default_value = "now", value_parser = ["now", "recorded"])]
    pub state: String,
    /// Rerank's MMR trade-off for the replay, 0.0 (diversity) to 1.0 (score).
    #[arg(long)]
    pub mmr_lambda: Option<f32>,
    /// Pin ITEM at position N, 1 the top (repeatable): `--pin 0111161@1`.
    #[arg(long = "pin", value_name = "ITEM@N")]
    pub pins: Vec<String>,
    /// The gateway.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub gateway: String,
    /// The stack's debug (or admin) token: a replay is a debug request.
    #[arg(long, env = "RECSTACK_DEBUG_TOKEN", hide_env_values = true)]
    pub debug_token: Option<String>,
    #[command(flatten)]
    pub traces: TraceFlags,
}

/// The flags of `recstack compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// The first stored request (A).
    pub a: String,
    /// The second (B).
    pub b: String,
    #[command(flatten)]
    pub traces: TraceFlags,
}

fn trace_api(flags: &TraceFlags) -> TraceApi {
    TraceApi::new(&flags.traces).with_token(flags.token.clone())
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let ask = ReplayAsk {
        request_id: args.request_id,
        user: args.user.unwrap_or_default(),
        level: args.level.unwrap_or_default(),
        force_items: args.force_items,
        block: args.block,
        model: args.model.unwrap_or_default(),
        state: args.state,
        mmr_lambda: args.mmr_lambda.map(|l| l.to_string()).unwrap_or_default(),
        pins: args.pins,
    };
    let gateway = GatewayApi::new(&args.gateway, args.debug_token.or_else(|| args.traces.token.clone()));
    let replayed = recstack_dashboard::server::replay(&trace_api(&args.traces), &gateway, &ask)
        .await
        .context("replaying")?;
    if args.traces.json {
        println!("{}", serde_json::to_string_pretty(&replayed.comparison)?);
    } else {
        print!("{}", table(&replayed.comparison));
        println!("replayed in {:.0} ms", replayed.took.as_secs_f64() * 1e3);
    }
    Ok(())
}

pub async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let c = recstack_dashboard::server::compare(&trace_api(&args.traces), &args.a, &args.b)
        .await
        .context("comparing")?;
    if args.traces.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", table(&c));
    }
    Ok(())
}

/// The comparison as a table for a terminal: a header per side, one row per item.
pub fn table(c: &Comparison) -> String {
    let side = |name: &str, s: &recstack_trace_store::compare::Side| {
        let mut line = format!(
            "{name}: {} · user {} · level {} · model {} · {} served",
            s.request_id,
            s.user_id,
            s.level,
            s.model_version.as_deref().unwrap_or("-"),
            s.served
        );
        if let Some(w) = &s.what_if {
            line.push_str(&format!(" · replay of {} ({})", w.replay_of, w.changes()));
        }
        line
    };
    let pos = |p: Option<u32>| p.map_or("-".to_string(), |p| (p + 1).to_string());
    let mut out = format!("{}\n{}\n", side("A", &c.a), side("B", &c.b));
    out.push_str(&format!(
        "{:>3} {:>3}  {:<7} {:<12} {:<18} {}\n",
        "A", "B", "move", "item", "stage", "why"
    ));
    for m in &c.rows {
        let change = match m.change {
            Change::Same => "=".to_string(),
            Change::Up => format!("↑{}", m.by),
            Change::Down => format!("↓{}", -m.by),
            Change::Entered => "entered".into(),
            Change::Left => "left".into(),
        };
        out.push_str(&format!(
            "{:>3} {:>3}  {:<7} {:<12} {:<18} {}\n",
            pos(m.a),
            pos(m.b),
            change,
            m.item_id,
            m.stage.as_deref().unwrap_or("-"),
            m.explanation
        ));
    }
    let t = &c.totals;
    out.push_str(&format!(
        "{} in both ({} same, {} up, {} down) · {} entered · {} left\n",
        t.overlap, t.same, t.up, t.down, t.entered, t.left
    ));
    out
}

#[cfg(test)]
mod tests {
    use recstack_trace_store::compare::{Movement, Side, Totals};

    use super::*;

    #[test]
    fn the_table_shows_both_sides_every_row_and_the_totals() {
        let side = |id: &str, what_if| Side {
            request_id: id.into(),
            user_id: "7".into(),
            level: "full".into(),
            model_version: Some("deepfm-1".into()),
            artifact_version: None,
            variant: String::new(),
            what_if,
            served: 2,
        };
        let c = Comparison {
            a: side("r-a", None),
            b: side(
                "r-b",
                Some(recstack_trace_store::WhatIf {
                    replay_of: "r-a".into(),
                    block: vec!["x".into()],
                    ..Default::default()
                }),
            ),
            rows: vec![
                Movement {
                    item_id: "x".into(),
                    a: Some(0),
                    b: None,
                    change: Change::Left,
                    by: 0,
                    stage: Some("business_rule".into()),
                    explanation: "not served in B: blocked".into(),
                    a_score: None,
                    b_score: None,
                },
                Movement {
                    item_id: "y".into(),
                    a: Some(1),
                    b: Some(0),
                    change: Change::Up,
                    by: 1,
                    stage: Some("rerank".into()),
                    explanation: "moved".into(),
                    a_score: None,
                    b_score: None,
                },
            ],
            totals: Totals {
                up: 1,
                left: 1,
                overlap: 1,
                ..Totals::default()
            },
        };
        let t = table(&c);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].contains("replay of r-a (block x)"), "{t}");
        assert!(
            lines[3].starts_with("  1   -  left    x            business_rule"),
            "{t}"
        );
        assert!(lines[4].starts_with("  2   1  ↑1"), "{t}");
        assert_eq!(lines[5], "1 in both (0 same, 1 up, 0 down) · 0 entered · 1 left");
    }
}
