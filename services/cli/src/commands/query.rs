//! `recstack query`: a user's features and recall candidates from the running services.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;

/// The flags of `recstack query`.
#[derive(Args)]
pub struct QueryArgs {
    #[arg(long)]
    pub user: String,
    #[arg(long, default_value_t = 20)]
    pub n: u32,
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub recall_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub features_addr: SocketAddr,
}

/// Asks the local services for a user's features and recall candidates, and prints them.
pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let QueryArgs {
        user,
        n,
        recall_addr,
        features_addr,
    } = args;
    use recstack_services::features::proto::GetUserRequest;
    use recstack_services::features::proto::features_client::FeaturesClient;
    use recstack_services::recall::proto::RecallRequest;
    use recstack_services::recall::proto::recall_client::RecallClient;

    let mut features = FeaturesClient::connect(format!("http://{features_addr}"))
        .await
        .with_context(|| format!("no feature service on {features_addr}: start it with `recstack up`"))?;
    match features
        .get_user(GetUserRequest { user_id: user.clone() })
        .await?
        .into_inner()
        .features
    {
        Some(f) => {
            let genres: Vec<String> = f
                .top_genres
                .iter()
                .map(|g| format!("{} {:.0}%", g.genre, g.share * 100.0))
                .collect();
            println!(
                "user {user}: {} ratings, mean {:.1}, top genres: {}",
                f.ratings,
                f.mean_rating,
                genres.join(", ")
            );
        }
        None => println!("user {user}: unknown (cold start: hot items only)"),
    }
    let mut recall = RecallClient::connect(format!("http://{recall_addr}"))
        .await
        .with_context(|| format!("no recall service on {recall_addr}: start it with `recstack up`"))?;
    let resp = recall
        .recall(RecallRequest {
            user_id: user,
            n,
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "{} candidates from artifact version {}:",
        resp.candidates.len(),
        resp.artifact_version
    );
    for (rank, c) in resp.candidates.iter().enumerate() {
        let sources: Vec<String> = c
            .sources
            .iter()
            .map(|s| format!("{}#{} ({:.3})", s.channel_name(), s.rank, s.score))
            .collect();
        println!(
            "{:>4}. {}  fused {:.4}  from {}",
            rank + 1,
            c.item_id,
            c.fused_score,
            sources.join(", ")
        );
    }
    Ok(())
}
