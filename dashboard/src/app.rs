//! The pages. Everything renders on the server (readable without JavaScript); hydration adds
//! the interactive parts: opening a served item's lineage, and client-side navigation.
//!
//! Elements the browser tests look for carry `data-*` attributes (`data-step`, `data-item`,
//! `data-stage`…) so the tests read what a person sees without depending on styling.

use leptos::prelude::*;
use leptos_router::components::{A, Route, Router, Routes};
use leptos_router::hooks::{use_params_map, use_query_map};
use leptos_router::path;
use recstack_trace_store::explain::WhyNot;
use recstack_trace_store::query::{Page, TraceSummary};
use recstack_trace_store::{CandidateFate, Detail, ItemLineage, SourceRecord, Trace};

use crate::api::{self, Overview, SearchFilters, StackStatus, TraceView};
use crate::model::{self, CandidatePage, LEVELS, RANGES, format_ms, format_time, percent_encode, query_string};

/// The HTML document around the app. `hydrate`: link the browser build.
pub fn shell(options: LeptosOptions, hydrate: bool) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <title>"recstack dashboard"</title>
                <link rel="icon" href=FAVICON />
                <style>{STYLE}</style>
                {hydrate.then(|| view! { <HydrationScripts options /> })}
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    // Effects run only in the browser: the attribute turns "true" once hydration is done.
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    view! {
        <Router>
            <div id="app" data-hydrated=move || if hydrated.get() { "true" } else { "false" }>
                <header>
                    <span class="brand">"recstack"</span>
                    <nav>
                        <A href="/">"Overview"</A>
                        <A href="/traces">"Traces"</A>
                        <A href="/status">"Stack"</A>
                    </nav>
                </header>
                <main>
                    <Routes fallback=|| view! { <p class="error">"No such page."</p> }>
                        <Route path=path!("/") view=OverviewPage />
                        <Route path=path!("/traces") view=SearchPage />
                        <Route path=path!("/traces/:id") view=RequestPage />
                        <Route path=path!("/status") view=StatusPage />
                    </Routes>
                </main>
            </div>
        </Router>
    }
}

fn loading() -> impl IntoView {
    view! { <p class="loading">"Loading…"</p> }
}

/// `render(value)` once `resource` has loaded, its error if it failed, "Loading…" meanwhile.
fn loaded<T>(
    resource: Resource<Result<T, ServerFnError>>,
    render: impl Fn(T) -> AnyView + Clone + Send + Sync + 'static,
) -> impl IntoView
where
    T: Clone + Send + Sync + 'static,
{
    view! {
        <Suspense fallback=loading>
            {move || {
                let render = render.clone();
                Suspend::new(async move {
                    match resource.await {
                        Ok(v) => render(v),
                        Err(e) => error_box(e),
                    }
                })
            }}
        </Suspense>
    }
}

fn error_box(e: ServerFnError) -> AnyView {
    let message = match e {
        ServerFnError::ServerError(m) => m,
        other => other.to_string(),
    };
    view! { <p class="error" role="alert">{message}</p> }.into_any()
}

fn num(x: f64) -> String {
    format!("{x:.1}")
}

// --- Overview ------------------------------------------------------------------------------

#[component]
fn OverviewPage() -> impl IntoView {
    let query = use_query_map();
    let range = move || query.read().get("range").unwrap_or_else(|| RANGES[0].0.to_string());
    let data = Resource::new(range, api::fetch_overview);
    view! {
        <h1>"Overview"</h1>
        <nav class="ranges">
            {RANGES
                .iter()
                .map(|(name, ..)| {
                    view! {
                        <A href=format!("/?range={name}")>{format!("last {name}")}</A>
                    }
                })
                .collect_view()}
        </nav>
        {loaded(data, overview_charts)}
    }
}

fn overview_charts(o: Overview) -> AnyView {
    let totals = model::level_totals(&o.aggregates);
    view! {
        <p class="summary">
            <span data-requests=o.aggregates.requests.to_string()>
                {format!("{} requests", o.aggregates.requests)}
            </span>
            {format!(" from {} to {} UTC", format_time(o.from_ms), format_time(o.to_ms))}
        </p>
        <div class="grid">
            <figure class="chart wide">
                <figcaption>"Requests over time by degradation level"</figcaption>
                {levels_chart(&o)}
                <ul class="legend">
                    {totals
                        .into_iter()
                        .map(|(level, n)| {
                            view! {
                                <li data-level=level.clone()>
                                    <span class=format!("swatch lvl-{level}")></span>
                                    {format!("{level}: {n}")}
                                </li>
                            }
                        })
                        .collect_view()}
                </ul>
            </figure>
            <figure class="chart">
                <figcaption>"Channel contribution to served items"</figcaption>
                {channel_bars(&o)}
            </figure>
            <figure class="chart">
                <figcaption>"Stage latency, p50 and p99"</figcaption>
                {stage_bars(&o)}
            </figure>
        </div>
    }
    .into_any()
}

fn levels_chart(o: &Overview) -> AnyView {
    const W: f64 = 720.0;
    const H: f64 = 160.0;
    let columns = model::level_columns(&o.aggregates.levels_over_time, o.from_ms, o.to_ms, o.interval_ms, W, H);
    let busiest = columns.iter().map(|c| c.total).max().unwrap_or(0);
    let rects = columns
        .into_iter()
        .flat_map(|c| {
            let (x, width) = (num(c.x), num(c.width));
            c.segments.into_iter().map(move |s| {
                view! {
                    <rect
                        class=format!("lvl-{}", s.level)
                        data-level=s.level.clone()
                        data-count=s.count.to_string()
                        x=x.clone()
                        y=num(s.y)
                        width=width.clone()
                        height=num(s.height)
                    ></rect>
                }
            })
        })
        .collect_view();
    view! {
        <svg class="levels" viewBox=format!("0 0 {W} {}", H + 16.0) role="img">
            <line class="axis" x1="0" y1=num(H) x2=num(W) y2=num(H)></line>
            {rects}
            <text class="tick" x="0" y=num(H + 13.0)>
                {format_time(o.from_ms)}
            </text>
            <text class="tick" x=num(W) y=num(H + 13.0) text-anchor="end">
                {format_time(o.to_ms)}
            </text>
            <text class="tick" x="2" y="10">
                {format!("{busiest} / bucket")}
            </text>
        </svg>
    }
    .into_any()
}

fn channel_bars(o: &Overview) -> AnyView {
    let shares = model::channel_shares(&o.aggregates);
    if shares.is_empty() {
        return view! { <p class="muted">"No served items in this range."</p> }.into_any();
    }
    let max = shares.iter().map(|s| s.1).max().unwrap_or(0);
    view! {
        <div class="bars">
            {shares
                .into_iter()
                .map(|(channel, n, share)| {
                    view! {
                        <div class="bar-row" data-channel=channel.clone() data-count=n.to_string()>
                            <span class="bar-label">{channel.clone()}</span>
                            <span class="bar-track">
                                <span
                                    class="bar channel"
                                    style=format!("width:{:.1}%", model::bar_percent(n, max))
                                ></span>
                            </span>
                            <span class="bar-value">{format!("{n} ({share:.0}%)")}</span>
                        </div>
                    }
                })
                .collect_view()}
        </div>
    }
    .into_any()
}

fn stage_bars(o: &Overview) -> AnyView {
    let stages = &o.aggregates.stages;
    if stages.is_empty() {
        return view! { <p class="muted">"No requests in this range."</p> }.into_any();
    }
    let max = stages.values().map(|s| s.p99_us.ceil() as u64).max().unwrap_or(0);
    view! {
        <div class="bars">
            {stages
                .iter()
                .map(|(name, s)| {
                    view! {
                        <div
                            class="bar-row"
                            data-stage=name.clone()
                            data-p50=format!("{:.0}", s.p50_us)
                            data-p99=format!("{:.0}", s.p99_us)
                        >
                            <span class="bar-label">{name.clone()}</span>
                            <span class="bar-track">
                                <span
                                    class="bar p99"
                                    style=format!("width:{:.1}%", model::bar_percent(s.p99_us.ceil() as u64, max))
                                ></span>
                                <span
                                    class="bar p50"
                                    style=format!("width:{:.1}%", model::bar_percent(s.p50_us.ceil() as u64, max))
                                ></span>
                            </span>
                            <span class="bar-value">
                                {format!(
                                    "{} / {}",
                                    format_ms(s.p50_us as u64),
                                    format_ms(s.p99_us as u64),
                                )}
                            </span>
                        </div>
                    }
                })
                .collect_view()}
        </div>
    }
    .into_any()
}

// --- Search --------------------------------------------------------------------------------

fn filters_from(q: &leptos_router::params::ParamsMap) -> SearchFilters {
    let get = |k: &str| q.get(k).unwrap_or_default();
    SearchFilters {
        user: get("user"),
        item: get("item"),
        from: get("from"),
        to: get("to"),
        level: get("level"),
        model_version: get("model_version"),
        bucket: get("bucket"),
        after: get("after"),
    }
}

#[component]
fn SearchPage() -> impl IntoView {
    let query = use_query_map();
    let filters = Memo::new(move |_| filters_from(&query.read()));
    let results = Resource::new(move || filters.get(), api::search_traces);
    let field = move |f: fn(&SearchFilters) -> &String| filters.with(|x| f(x).clone());
    view! {
        <h1>"Traces"</h1>
        <form class="filters" method="get" action="/traces">
            <label>"User" <input name="user" value=move || field(|f| &f.user) /></label>
            <label>"Served item" <input name="item" value=move || field(|f| &f.item) /></label>
            <label>
                "From (UTC)"
                <input type="datetime-local" step="1" name="from" value=move || field(|f| &f.from) />
            </label>
            <label>
                "To (UTC)"
                <input type="datetime-local" step="1" name="to" value=move || field(|f| &f.to) />
            </label>
            <label>
                "Level"
                <select name="level">
                    <option value="">"any"</option>
                    {LEVELS
                        .iter()
                        .map(|l| {
                            view! {
                                <option value=*l selected=move || field(|f| &f.level) == *l>
                                    {*l}
                                </option>
                            }
                        })
                        .collect_view()}
                </select>
            </label>
            <label>
                "Model version"
                <input name="model_version" value=move || field(|f| &f.model_version) />
            </label>
            <label>"A/B bucket" <input name="bucket" inputmode="numeric" value=move || field(|f| &f.bucket) /></label>
            <button type="submit">"Search"</button>
        </form>
        {loaded(results, move |page| results_table(page, filters.get_untracked()))}
    }
}

fn results_table(page: Page, f: SearchFilters) -> AnyView {
    let next = page.next.clone().map(|after| {
        let pairs = f
            .fields()
            .map(|(k, v)| if k == "after" { (k, after.as_str()) } else { (k, v) });
        format!("/traces{}", query_string(pairs))
    });
    let first = (!f.after.is_empty()).then(|| {
        let pairs = f.fields().map(|(k, v)| if k == "after" { (k, "") } else { (k, v) });
        format!("/traces{}", query_string(pairs))
    });
    if page.hits.is_empty() {
        return view! { <p class="muted" data-total="0">"No traces match."</p> }.into_any();
    }
    view! {
        <p class="summary" data-total=page.total.to_string()>
            {format!("{} traces match; newest first.", page.total)}
        </p>
        <table class="results">
            <thead>
                <tr>
                    <th>"Time (UTC)"</th>
                    <th>"Request"</th>
                    <th>"User"</th>
                    <th>"Level"</th>
                    <th class="num">"Latency"</th>
                    <th class="num">"Served"</th>
                    <th>"Model"</th>
                    <th>"Bucket"</th>
                    <th>"Detail"</th>
                </tr>
            </thead>
            <tbody>{page.hits.into_iter().map(result_row).collect_view()}</tbody>
        </table>
        <nav class="pager">
            {first.map(|href| view! { <A href=href>"« newest"</A> })}
            {next.map(|href| view! { <A href=href attr:class="next">"older »"</A> })}
        </nav>
    }
    .into_any()
}

fn result_row(h: TraceSummary) -> AnyView {
    let href = format!("/traces/{}", percent_encode(&h.request_id));
    let request_id = h.request_id.clone();
    view! {
        <tr data-request=request_id>
            <td>{format_time(h.timestamp_ms)}</td>
            <td>
                <A href=href>{h.request_id.clone()}</A>
            </td>
            <td>{h.user_id}</td>
            <td>
                <span class=format!("badge lvl-{}", h.level)>{h.level.clone()}</span>
            </td>
            <td class="num">{format_ms(h.latency_us)}</td>
            <td class="num">{h.served}</td>
            <td>{h.model_version.unwrap_or_default()}</td>
            <td>{format!("{} ({})", h.bucket, h.variant)}</td>
            <td>{detail_name(h.detail)}</td>
        </tr>
    }
    .into_any()
}

fn detail_name(d: Detail) -> &'static str {
    match d {
        Detail::Summary => "summary",
        Detail::Full => "full",
    }
}

// --- One request ---------------------------------------------------------------------------

#[component]
fn RequestPage() -> impl IntoView {
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

type WhyResource = Resource<Option<Result<WhyNot, ServerFnError>>>;

fn request_view(v: TraceView, why: WhyResource) -> AnyView {
    let t = v.trace;
    let funnel = model::funnel(&t);
    let bars = model::waterfall(&t.stages, t.latency_us);
    let base = format!("/traces/{}", percent_encode(&t.request_id));
    view! {
        <h1>"Request " <code data-request=t.request_id.clone()>{t.request_id.clone()}</code></h1>
        {request_facts(&t)}
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
            <ServedList items=t.items.clone() />
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
        {v.candidates.map(|c| candidates_panel(c, &base))}
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
fn fact(name: &'static str, value: String) -> impl IntoView {
    view! {
        <div data-fact=name>
            <dt>{name}</dt>
            <dd>{value}</dd>
        </div>
    }
}

fn request_facts(t: &Trace) -> AnyView {
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
            {fact("experiment", format!("{} bucket {} ({})", t.experiment, t.bucket, t.variant))}
            {fact("trace id", t.trace_id.clone())}
            {fact("detail", detail_name(t.detail).to_string())}
        </dl>
    }
    .into_any()
}

fn funnel_chart(steps: Vec<model::FunnelStep>) -> AnyView {
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

fn waterfall_chart(bars: Vec<model::WaterfallBar>, total_us: u64) -> AnyView {
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
fn ServedList(items: Vec<ItemLineage>) -> impl IntoView {
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

fn lineage_row(it: &ItemLineage) -> AnyView {
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

fn sources_table(sources: Vec<SourceRecord>) -> AnyView {
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

fn why_not_answer(w: WhyNot) -> AnyView {
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
            {w.candidate.map(|c| candidates_table(vec![c]))}
        </div>
    }
    .into_any()
}

fn candidates_panel(c: CandidatePage, base: &str) -> AnyView {
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
            {candidates_table(c.rows)}
            <nav class="pager" data-page=c.page.to_string() data-pages=c.pages.to_string()>
                {prev.map(|href| view! { <A href=href>"« previous"</A> })}
                <span>{format!("page {} of {}", c.page, c.pages)}</span>
                {next.map(|href| view! { <A href=href attr:class="next">"next »"</A> })}
            </nav>
        </section>
    }
    .into_any()
}

fn candidates_table(rows: Vec<CandidateFate>) -> AnyView {
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

#[component]
fn StatusPage() -> impl IntoView {
    let status = Resource::new(|| (), |_| api::fetch_stack_status());
    view! {
        <h1>"Stack"</h1>
        {loaded(status, status_view)}
    }
}

fn status_view(s: StackStatus) -> AnyView {
    view! {
        <p class="summary">
            <strong>{s.name.clone()}</strong>
            " — "
            <span class=format!("badge phase-{}", s.phase) data-phase=s.phase.clone()>{s.phase.clone()}</span>
        </p>
        <section class="panel">
            <h2>"Conditions"</h2>
            <table class="conditions">
                <thead>
                    <tr>
                        <th>"Type"</th>
                        <th>"Status"</th>
                        <th>"Reason"</th>
                        <th>"Message"</th>
                        <th>"Since"</th>
                    </tr>
                </thead>
                <tbody>
                    {s.conditions
                        .into_iter()
                        .map(|c| {
                            view! {
                                <tr data-condition=c.kind.clone() data-status=c.status.clone()>
                                    <td>{c.kind.clone()}</td>
                                    <td>{c.status.clone()}</td>
                                    <td>{c.reason}</td>
                                    <td>{c.message}</td>
                                    <td>{c.since}</td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
        </section>
        <section class="panel">
            <h2>"Components"</h2>
            <table class="components">
                <thead>
                    <tr>
                        <th></th>
                        <th>"Component"</th>
                        <th>"Health"</th>
                        <th>"Address"</th>
                    </tr>
                </thead>
                <tbody>
                    {s.components
                        .into_iter()
                        .map(|c| {
                            view! {
                                <tr data-component=c.name.clone() data-ready=c.ready.to_string()>
                                    <td>
                                        <span class=if c.ready { "dot up" } else { "dot down" }></span>
                                    </td>
                                    <td>{c.name.clone()}</td>
                                    <td>{c.detail}</td>
                                    <td>{c.address.unwrap_or_default()}</td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
        </section>
    }
    .into_any()
}

/// A small blue square, inline (no extra request, no 404 in the browser's console).
const FAVICON: &str = "data:image/svg+xml,%3Csvg%20xmlns=%22http://www.w3.org/2000/svg%22%20viewBox=%220%200%2016%2016%22%3E%3Crect%20width=%2216%22%20height=%2216%22%20rx=%223%22%20fill=%22%233a6df0%22/%3E%3C/svg%3E";

/// The page style. Kept free of `<`, `>` and `&` so it needs no escaping inside `<style>`.
const STYLE: &str = r#"
:root { --fg: #1d2330; --muted: #6b7385; --line: #e3e6ee; --bg: #f6f7fb; --panel: #fff;
  --accent: #3a6df0; --full: #2e9e5b; --reduced: #e0a100; --popular: #e56b1f; --fallback: #c93a3a; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; gap: 24px; align-items: center; padding: 10px 24px; background: #1d2330; color: #fff; }
header .brand { font-weight: 700; letter-spacing: .5px; }
header nav a { color: #cdd5ea; margin-right: 16px; text-decoration: none; }
header nav a[aria-current] { color: #fff; border-bottom: 2px solid var(--accent); }
main { padding: 16px 24px 48px; max-width: 1200px; }
h1 { font-size: 20px; margin: 8px 0 12px; }
h2 { font-size: 15px; margin: 0 0 10px; }
code { font: 12px ui-monospace, monospace; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; }
.panel, .chart { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 14px; margin: 0 0 16px; }
.chart.wide { grid-column: 1 / -1; }
figcaption { font-weight: 600; margin-bottom: 8px; }
svg.levels { width: 100%; height: auto; }
svg .axis { stroke: var(--line); }
svg .tick { font-size: 10px; fill: var(--muted); }
rect.lvl-full, .swatch.lvl-full, .badge.lvl-full { fill: var(--full); background: var(--full); }
rect.lvl-reduced, .swatch.lvl-reduced, .badge.lvl-reduced { fill: var(--reduced); background: var(--reduced); }
rect.lvl-popular, .swatch.lvl-popular, .badge.lvl-popular { fill: var(--popular); background: var(--popular); }
rect.lvl-fallback, .swatch.lvl-fallback, .badge.lvl-fallback { fill: var(--fallback); background: var(--fallback); }
.legend { list-style: none; display: flex; flex-wrap: wrap; gap: 14px; padding: 0; margin: 8px 0; color: var(--muted); }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; }
.badge { color: #fff; border-radius: 10px; padding: 1px 8px; font-size: 12px; background: var(--muted); }
.badge.phase-Running { background: var(--full); } .badge.phase-Degraded { background: var(--fallback); }
.bars .bar-row, .waterfall .bar-row { display: grid; grid-template-columns: 170px 1fr 170px; gap: 10px; align-items: center; margin: 5px 0; }
.bar-label { color: var(--muted); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.bar-track { position: relative; height: 14px; background: var(--bg); border-radius: 3px; }
.bar { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 3px; background: var(--accent); }
.waterfall .bar { position: relative; display: block; height: 14px; }
.bar.channel { background: #7d9cf5; } .bar.p99 { background: #9fb5f7; } .bar.p50 { background: var(--accent); }
.bar.failed { background: var(--fallback); }
.bar-value { font-variant-numeric: tabular-nums; }
.note { color: var(--muted); margin-left: 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: 600; font-size: 12px; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.item-row { cursor: pointer; } tr.item-row:hover, tr.item-row.open { background: #eef2fe; }
tr.lineage td { background: #fafbff; }
.lineage-body { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 6px 16px; margin: 0 0 16px; }
.facts dt { color: var(--muted); font-size: 12px; } .facts dd { margin: 0; overflow-wrap: anywhere; }
.filters { display: flex; flex-wrap: wrap; gap: 10px; align-items: end; margin-bottom: 16px; }
.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
input, select, button { font: inherit; padding: 4px 8px; border: 1px solid var(--line); border-radius: 5px; }
button { background: var(--accent); color: #fff; border: 0; cursor: pointer; }
.why-not { display: flex; gap: 8px; } .why-not input { width: 320px; }
.why-not-answer { margin-top: 12px; padding: 10px; border-left: 3px solid var(--accent); background: var(--bg); }
.pager { display: flex; gap: 16px; margin-top: 10px; }
.ranges a { margin-right: 12px; }
.error { color: var(--fallback); } .muted, .loading { color: var(--muted); }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; }
.dot.up { background: var(--full); } .dot.down { background: var(--fallback); }
"#;
