//! The stack's status: components, replicas, conditions.

use super::*;

#[component]
pub(super) fn StatusPage() -> impl IntoView {
    let status = Resource::new(|| (), |_| api::fetch_stack_status());
    view! {
        <h1>"Stack"</h1>
        {loaded(status, status_view)}
    }
}

pub(super) fn status_view(s: StackStatus) -> AnyView {
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
