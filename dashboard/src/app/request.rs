//! One request: its facts, the funnel from each channel to the served list, the latency waterfall, each served item's lineage, every candidate (paged) and "why not".

use super::*;

#[component]
pub(super) fn RequestPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let id = move || params.read().get("id").unwrap_or_default();
    let candidate_page = move || {
        query
            .read()
            .get("candidates")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1)
    };
    let why_item = move || query.read().get("why_not").unwrap_or_default();
    let trace = Resource::new(
        move || (id(), candidate_page()),
        |(id, page)| api::fetch_trace(id, page),
    );
    let why = Resource::new(
        move || (id(), why_item()),
        |(id, item)| async move {
            if item.trim().is_empty() {
                None
            } else {
                Some(api::ask_why_not(id, item).await)
            }
        },
    );
    loaded(trace, move |v| request_view(v, why))
}

pub(super) type WhyResource = Resource<Option<Result<WhyNot, ServerFnError>>>;

pub(super) fn request_view(v: TraceView, why: WhyResource) -> AnyView {
    let t = v.trace;
    let funnel = model::funnel(&t);
    let bars = model::waterfall(&t.stages, t.latency_us);
    let base = format!("/traces/{}", percent_encode(&t.request_id));
    view! {
        <h1>"Request " <code data-request=t.request_id.clone()>{t.request_id.clone()}</code></h1>
        {request_facts(&t)}
        {v.trace_link.clone().map(|href| view! {
            <p><a class="trace-link" href=href target="_blank" rel="noopener">"Open this request's trace (OTLP spans) ↗"</a></p>
        })}
        <div class="grid">
            <section class="panel">
                <h2>"Funnel"</h2>
                {funnel_chart(funnel)}
            </section>
            <section class="panel">
                <h2>"Latency waterfall"</h2>
                {waterfall_chart(bars, t.latency_us)}
            </section>
        </div>
        <section class="panel">
            <h2>"Served items"</h2>
            <p class="muted">"Click an item for its lineage: the channels that found it, its rank score, what rerank did."</p>
            <ServedList items=t.items.clone() titles=v.titles.clone() />
        </section>
        <section class="panel" id="why-not">
            <h2>"Why not?"</h2>
            <form class="why-not" method="get" action=base.clone()>
                <input name="why_not" placeholder="an item id missing from the list" required=true />
                <button type="submit">"Where did it fall out?"</button>
            </form>
            <Suspense fallback=loading>
                {move || Suspend::new(async move {
                    match why.await {
                        None => ().into_any(),
                        Some(Ok(w)) => why_not_answer(w),
                        Some(Err(e)) => error_box(e),
                    }
                })}
            </Suspense>
        </section>
        {what_if_forms(&t)}
        {v.candidates.map(|c| candidates_panel(c, &base, &v.titles))}
        {(t.detail == Detail::Summary)
            .then(|| {
                view! {
                    <p class="muted">
                        "A summary trace: every candidate and where it left is kept for sampled and debug requests only."
                    </p>
                }
            })}
    }
    .into_any()
}

/// One `name: value` pair of a fact list (`<dl class="facts">`).
pub(super) fn fact(name: &'static str, value: String) -> impl IntoView {
    view! {
        <div data-fact=name>
            <dt>{name}</dt>
            <dd>{value}</dd>
        </div>
    }
}

pub(super) fn request_facts(t: &Trace) -> AnyView {
    let degraded = if t.degraded.is_empty() {
        String::new()
    } else {
        format!(" — {}", t.degraded.join("; "))
    };
    view! {
        <dl class="facts">
            {fact("time (UTC)", format_time(t.timestamp_ms))}
            {fact("user", t.user_id.clone())}
            {fact("scene", t.scene.clone())}
            {fact("level", format!("{}{degraded}", t.level))}
            {fact("latency", format_ms(t.latency_us))}
            {fact("model", t.model_version.clone().unwrap_or_else(|| "none".into()))}
            {fact("artifacts", t.artifact_version.clone().unwrap_or_default())}
            {model::realtime_summary(&t.realtime_history).map(|s| fact("real-time history", s))}
            {fact("experiment", format!("{} bucket {} ({})", t.experiment, t.bucket, t.variant))}
            {fact("trace id", t.trace_id.clone())}
            {fact("detail", detail_name(t.detail).to_string())}
        </dl>
    }
    .into_any()
}

pub(super) fn funnel_chart(steps: Vec<model::FunnelStep>) -> AnyView {
    let max = steps.iter().map(|s| s.count as u64).max().unwrap_or(0);
    view! {
        <div class="bars funnel">
            {steps
                .into_iter()
                .map(|s| {
                    let channel = s.key.starts_with("channel:");
                    view! {
                        <div class="bar-row" data-step=s.key.clone() data-count=s.count.to_string()>
                            <span class="bar-label">{s.label}</span>
                            <span class="bar-track">
                                <span
                                    class=if channel { "bar channel" } else { "bar stage" }
                                    style=format!("width:{:.1}%", model::bar_percent(s.count as u64, max))
                                ></span>
                            </span>
                            <span class="bar-value">
                                {s.count} {s.note.map(|n| view! { <small class="note">{n}</small> })}
                            </span>
                        </div>
                    }
                })
                .collect_view()}
        </div>
    }
    .into_any()
}

pub(super) fn waterfall_chart(bars: Vec<model::WaterfallBar>, total_us: u64) -> AnyView {
    view! {
        <div class="waterfall">
            {bars
                .into_iter()
                .map(|b| {
                    let failed = b.outcome != "ok";
                    view! {
                        <div
                            class="bar-row"
                            data-stage=b.name.clone()
                            data-start-us=b.start_us.to_string()
                            data-latency-us=b.latency_us.to_string()
                        >
                            <span class="bar-label">{b.name.clone()}</span>
                            <span class="bar-track">
                                <span
                                    class=if failed { "bar failed" } else { "bar stage" }
                                    style=format!("margin-left:{:.2}%;width:{:.2}%", b.left, b.width)
                                    title=b.outcome.clone()
                                ></span>
                            </span>
                            <span class="bar-value">
                                {format!("+{} · {}", format_ms(b.start_us), format_ms(b.latency_us))}
                                {failed.then(|| view! { <small class="note">{b.outcome.clone()}</small> })}
                            </span>
                        </div>
                    }
                })
                .collect_view()}
            <p class="muted">{format!("request total {}", format_ms(total_us))}</p>
        </div>
    }
    .into_any()
}

#[component]
pub(super) fn ServedList(items: Vec<ItemLineage>, titles: Titles) -> impl IntoView {
    // The item whose lineage is open (one at a time).
    let open = RwSignal::new(None::<String>);
    view! {
        <table class="served">
            <thead>
                <tr>
                    <th class="num">"#"</th>
                    <th>"Item"</th>
                    <th>"Channels"</th>
                    <th class="num">"Rank score"</th>
                    <th>"Rerank"</th>
                </tr>
            </thead>
            {items
                .into_iter()
                .map(|it| {
                    let id = it.item_id.clone();
                    let toggle_id = id.clone();
                    let open_id = id.clone();
                    let is_open = move || open.with(|o| o.as_deref() == Some(open_id.as_str()));
                    let is_open_row = is_open.clone();
                    let channels: Vec<String> = it.sources.iter().map(|s| s.channel.clone()).collect();
                    let lineage = it.clone();
                    view! {
                        <tbody class="item" data-item=id.clone()>
                            <tr
                                class="item-row"
                                class:open=is_open
                                on:click=move |_| {
                                    open.update(|o| {
                                        *o = if o.as_deref() == Some(toggle_id.as_str()) {
                                            None
                                        } else {
                                            Some(toggle_id.clone())
                                        };
                                    })
                                }
                            >
                                <td class="num">{it.position + 1}</td>
                                <td>
                                    <code>{id.clone()}</code>
                                    {item_title(&titles, &id)}
                                </td>
                                <td>{channels.join(", ")}</td>
                                <td class="num">{it.rank_score.map(|s| format!("{s:.4}")).unwrap_or_default()}</td>
                                <td>
                                    {model::rerank_move(it.ranked_position, it.position, it.rerank_rule.as_deref())}
                                </td>
                            </tr>
                            {move || is_open_row().then(|| lineage_row(&lineage))}
                        </tbody>
                    }
                })
                .collect_view()}
        </table>
    }
}

pub(super) fn lineage_row(it: &ItemLineage) -> AnyView {
    let sources = it.sources.clone();
    let pos = |p: Option<u32>| p.map(|p| format!("#{}", p + 1)).unwrap_or_else(|| "—".into());
    view! {
        <tr class="lineage">
            <td colspan="5">
                <div class="lineage-body" data-lineage=it.item_id.clone()>
                    {sources_table(sources)}
                    <dl class="facts">
                        {fact("recall position", pos(it.recall_position))}
                        {fact(
                            "filters passed",
                            if it.filters_passed.is_empty() { "—".into() } else { it.filters_passed.join(", ") },
                        )}
                        {fact("rank score", it.rank_score.map(|s| format!("{s:.4}")).unwrap_or_else(|| "—".into()))}
                        {fact("ranked", pos(it.ranked_position))}
                        {fact("rerank", model::rerank_move(it.ranked_position, it.position, it.rerank_rule.as_deref()))}
                    </dl>
                </div>
            </td>
        </tr>
    }
    .into_any()
}

pub(super) fn sources_table(sources: Vec<SourceRecord>) -> AnyView {
    view! {
        <table class="sources">
            <thead>
                <tr>
                    <th>"Channel"</th>
                    <th class="num">"Score"</th>
                    <th class="num">"Rank in channel"</th>
                </tr>
            </thead>
            <tbody>
                {sources
                    .into_iter()
                    .map(|s| {
                        view! {
                            <tr data-channel=s.channel.clone() data-score=format!("{:.4}", s.score)>
                                <td>{s.channel.clone()}</td>
                                <td class="num">{format!("{:.4}", s.score)}</td>
                                <td class="num">{s.rank + 1}</td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}

pub(super) fn why_not_answer(w: WhyNot) -> AnyView {
    let stage = w.stage.and_then(|s| serde_json::to_value(s).ok());
    let stage_key = stage.as_ref().and_then(|v| v.as_str()).unwrap_or("unknown").to_string();
    view! {
        <div class="why-not-answer" data-stage=stage_key data-item=w.item_id.clone()>
            <p>
                <code>{w.item_id.clone()}</code>
                ": "
                <strong>{model::fell_out_label(w.stage)}</strong>
            </p>
            <p>{w.explanation.clone()}</p>
            <dl class="evidence">
                {model::evidence_rows(&w.evidence)
                    .into_iter()
                    .map(|(label, value)| view! { <dt>{label}</dt> <dd data-key=label>{value}</dd> })
                    .collect_view()}
            </dl>
            {w.candidate.map(|c| candidates_table(vec![c], &Titles::default()))}
        </div>
    }
    .into_any()
}

pub(super) fn candidates_panel(c: CandidatePage, base: &str, titles: &Titles) -> AnyView {
    let link = |page: usize| format!("{base}?candidates={page}");
    let prev = (c.page > 1).then(|| link(c.page - 1));
    let next = (c.page < c.pages).then(|| link(c.page + 1));
    view! {
        <section class="panel" id="candidates">
            <h2>{format!("All {} candidates", c.total)}</h2>
            <ul class="legend">
                {c.outcomes
                    .iter()
                    .map(|(o, n)| view! { <li data-outcome=o.clone()>{format!("{o}: {n}")}</li> })
                    .collect_view()}
            </ul>
            {candidates_table(c.rows, titles)}
            <nav class="pager" data-page=c.page.to_string() data-pages=c.pages.to_string()>
                {prev.map(|href| view! { <A href=href>"« previous"</A> })}
                <span>{format!("page {} of {}", c.page, c.pages)}</span>
                {next.map(|href| view! { <A href=href attr:class="next">"next »"</A> })}
            </nav>
        </section>
    }
    .into_any()
}

/// Item titles by id.
pub(super) type Titles = std::collections::BTreeMap<String, String>;

/// An item's title beside its id, when known.
pub(super) fn item_title(titles: &Titles, id: &str) -> Option<AnyView> {
    titles
        .get(id)
        .map(|t| view! { <span class="title" data-title-of=id.to_string()>{t.clone()}</span> }.into_any())
}

pub(super) fn candidates_table(rows: Vec<CandidateFate>, titles: &Titles) -> AnyView {
    view! {
        <table class="candidates">
            <thead>
                <tr>
                    <th>"Item"</th>
                    <th>"Channels (score)"</th>
                    <th class="num">"Rank score"</th>
                    <th>"Outcome"</th>
                </tr>
            </thead>
            <tbody>
                {rows
                    .into_iter()
                    .map(|c| {
                        let channels: Vec<String> = c
                            .sources
                            .iter()
                            .map(|s| format!("{} ({:.3})", s.channel, s.score))
                            .collect();
                        view! {
                            <tr data-candidate=c.item_id.clone()>
                                <td>
                                    <code>{c.item_id.clone()}</code>
                                    {item_title(titles, &c.item_id)}
                                </td>
                                <td>{channels.join(", ")}</td>
                                <td class="num">{c.rank_score.map(|s| format!("{s:.4}")).unwrap_or_default()}</td>
                                <td>{c.outcome}</td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}

// --- Stack status --------------------------------------------------------------------------
