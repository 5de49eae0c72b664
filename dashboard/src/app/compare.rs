//! Two served lists side by side: `/compare?a=&b=` (two stored requests) and
//! `/replay?request=&level=&force=&block=&model=&user=` (a stored request replayed with
//! changes through the gateway — a what-if). Every item gets a row: its place in each list,
//! how it moved and the stage that made it.

use recstack_trace_store::compare::{Change, Side};

use super::*;
use crate::api::ComparisonView;
use crate::model::ReplayAsk;

#[component]
pub(super) fn ComparePage() -> impl IntoView {
    let query = use_query_map();
    let get = move |k: &str| query.read().get(k).unwrap_or_default();
    let comparison = Resource::new(move || (get("a"), get("b")), |(a, b)| api::compare_traces(a, b));
    view! {
        <h1>"Compare two requests"</h1>
        <form class="compare" method="get" action="/compare">
            <input name="a" placeholder="request A" value=move || get("a") required=true />
            <input name="b" placeholder="request B" value=move || get("b") required=true />
            <button type="submit">"Compare"</button>
        </form>
        {loaded(comparison, comparison_view)}
    }
}

#[component]
pub(super) fn ReplayPage() -> impl IntoView {
    let query = use_query_map();
    let ask = move || {
        let q = query.read();
        let get = |k: &str| q.get(k).unwrap_or_default();
        ReplayAsk {
            request_id: get("request"),
            user: get("user"),
            level: get("level"),
            force_items: ReplayAsk::ids(&get("force")),
            block: ReplayAsk::ids(&get("block")),
            model: get("model"),
            state: get("state"),
            mmr_lambda: get("mmr_lambda"),
            pins: ReplayAsk::ids(&get("pin")),
        }
    };
    let replayed = Resource::new(ask, api::replay_request);
    view! {
        <h1>"What if?"</h1>
        {loaded(replayed, comparison_view)}
    }
}

/// The "what if" and "compare with" forms of a request's page.
pub(super) fn what_if_forms(t: &Trace) -> AnyView {
    let pseudonym = t.user_id.starts_with(recstack_trace_store::PSEUDONYM_PREFIX);
    view! {
        <section class="panel" id="what-if">
            <h2>"What if?"</h2>
            <p class="muted">
                "Replay this request through the gateway with one thing changed, and see both lists side by side."
            </p>
            <form class="what-if" method="get" action="/replay">
                <input type="hidden" name="request" value=t.request_id.clone() />
                {pseudonym
                    .then(|| {
                        view! {
                            <label>
                                "User id" <input name="user" placeholder="the user's own id" required=true />
                            </label>
                        }
                    })}
                <label>
                    "Level"
                    <select name="level">
                        <option value="">"as the gateway decides"</option>
                        {LEVELS.iter().map(|l| view! { <option value=*l>{*l}</option> }).collect_view()}
                    </select>
                </label>
                <label>
                    "User state"
                    <select name="state">
                        <option value="">"now"</option>
                        <option value="recorded">"seen and real-time items as recorded"</option>
                    </select>
                </label>
                <label>"Force in" <input name="force" placeholder="item ids" /></label>
                <label>"Block" <input name="block" placeholder="item ids" /></label>
                <label>"Pin" <input name="pin" placeholder="ITEM@N (N = 1 is the top)" /></label>
                <label>"MMR λ" <input name="mmr_lambda" placeholder="0.0 to 1.0" size="6" /></label>
                <label>
                    "Model"
                    <select name="model">
                        <option value="">"as the split decides"</option>
                        <option value="primary">"primary"</option>
                        <option value="canary">"canary"</option>
                    </select>
                </label>
                <button type="submit">"Replay"</button>
            </form>
            <form class="compare-with" method="get" action="/compare">
                <input type="hidden" name="a" value=t.request_id.clone() />
                <input name="b" placeholder="another request id" required=true />
                <button type="submit">"Compare with"</button>
            </form>
        </section>
    }
    .into_any()
}

fn side_facts(name: &'static str, s: &Side) -> AnyView {
    let what_if = s
        .what_if
        .as_ref()
        .map(|w| format!("replay of {}: {}", w.replay_of, w.changes()));
    view! {
        <div class="side" data-side=name>
            <h2>
                {name} ": "
                <a href=format!("/traces/{}", percent_encode(&s.request_id))>
                    <code>{s.request_id.clone()}</code>
                </a>
            </h2>
            <dl class="facts">
                {fact("user", s.user_id.clone())} {fact("level", s.level.clone())}
                {fact("model", s.model_version.clone().unwrap_or_else(|| "-".into()))}
                {fact("served", s.served.to_string())}
                {what_if.map(|w| fact("what if", w))}
            </dl>
        </div>
    }
    .into_any()
}

fn change_label(change: Change, by: i64) -> String {
    match change {
        Change::Same => "=".into(),
        Change::Up => format!("↑ {by}"),
        Change::Down => format!("↓ {}", -by),
        Change::Entered => "entered".into(),
        Change::Left => "left".into(),
    }
}

fn change_name(change: Change) -> &'static str {
    match change {
        Change::Same => "same",
        Change::Up => "up",
        Change::Down => "down",
        Change::Entered => "entered",
        Change::Left => "left",
    }
}

pub(super) fn comparison_view(v: ComparisonView) -> AnyView {
    let c = v.comparison;
    let t = c.totals.clone();
    let pos = |p: Option<u32>| p.map_or("-".to_string(), |p| (p + 1).to_string());
    let compare_link = format!(
        "/compare?a={}&b={}",
        percent_encode(&c.a.request_id),
        percent_encode(&c.b.request_id)
    );
    let rows = c
        .rows
        .iter()
        .map(|m| {
            let title = v.titles.get(&m.item_id).cloned();
            view! {
                <tr
                    data-item=m.item_id.clone()
                    data-change=change_name(m.change)
                    data-stage=m.stage.clone().unwrap_or_default()
                >
                    <td class="num">{pos(m.a)}</td>
                    <td class="num">{pos(m.b)}</td>
                    <td class=format!("move {}", change_name(m.change))>{change_label(m.change, m.by)}</td>
                    <td>
                        <code>{m.item_id.clone()}</code>
                        {title.map(|t| view! { " " <span class="title" data-title-of=m.item_id.clone()>{t}</span> })}
                    </td>
                    <td>{m.stage.clone().unwrap_or_else(|| "-".into())}</td>
                    <td class="why">{m.explanation.clone()}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <div class="grid">{side_facts("A", &c.a)} {side_facts("B", &c.b)}</div>
        <p class="totals" data-overlap=t.overlap data-entered=t.entered data-left=t.left>
            {format!(
                "{} in both ({} same, {} up, {} down) · {} entered · {} left",
                t.overlap,
                t.same,
                t.up,
                t.down,
                t.entered,
                t.left,
            )}
            {v.took_ms.map(|ms| format!(" · replayed in {ms:.0} ms"))}
        </p>
        {v.took_ms.map(|_| view! { <p><a class="compare-link" href=compare_link>"A link to this comparison"</a></p> })}
        <table class="compare">
            <thead>
                <tr>
                    <th>"A"</th>
                    <th>"B"</th>
                    <th>"move"</th>
                    <th>"item"</th>
                    <th>"stage"</th>
                    <th>"why"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}
