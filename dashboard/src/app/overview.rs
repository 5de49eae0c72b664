//! The overview: requests by degradation level over time, channel contribution, stage latencies.

use super::*;

#[component]
pub(super) fn OverviewPage() -> impl IntoView {
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

pub(super) fn overview_charts(o: Overview) -> AnyView {
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

pub(super) fn levels_chart(o: &Overview) -> AnyView {
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

pub(super) fn channel_bars(o: &Overview) -> AnyView {
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

pub(super) fn stage_bars(o: &Overview) -> AnyView {
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
