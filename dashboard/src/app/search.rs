//! Trace search: filters, a page of results, the next page.

use super::*;

pub(super) fn filters_from(q: &leptos_router::params::ParamsMap) -> SearchFilters {
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
pub(super) fn SearchPage() -> impl IntoView {
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

pub(super) fn results_table(page: Page, f: SearchFilters) -> AnyView {
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

pub(super) fn result_row(h: TraceSummary) -> AnyView {
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

pub(super) fn detail_name(d: Detail) -> &'static str {
    match d {
        Detail::Summary => "summary",
        Detail::Full => "full",
    }
}

// --- One request ---------------------------------------------------------------------------
