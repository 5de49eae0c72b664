//! The dashboard in a real headless Chromium, driven over WebDriver (chromedriver): the local
//! stack serves it over a trace store filled by real requests through its gateway, plus one
//! constructed full trace whose every candidate's fate is known.
//!
//! Checks: pages hydrate; search finds a known request; the request view's funnel counts match
//! the stored trace stage by stage; opening a served item (a click, so only after hydration)
//! shows its channels and scores; why-not names the right stage; the overview draws its charts;
//! the stack page lists every component ready; the browser logs no errors. Screenshots of each
//! page go to `$RECSTACK_TEST_ARTIFACTS` (default `<target dir>/test-artifacts/dashboard`).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use recstack_services::serve::{self, LocalStack};
use recstack_trace_store::store::TraceStore;
use recstack_trace_store::{Detail, outcome};
use serde_json::{Value, json};

/// `services/` (this test's crate is `services/cli`).
fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..")
}

/// Where screenshots go.
fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("RECSTACK_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| manifest_dir().join("../target"));
            target.join("test-artifacts")
        })
        .join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver on a free port, killed on drop.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    fn start() -> Self {
        let port = common::free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/setup installs chromium-driver)");
        let driver = Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            // Listening means ready (its /status keeps the connection open).
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return driver;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("chromedriver did not start on {port}");
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver's browser log (`POST /session/{id}/se/log`): console messages and failed loads.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

async fn browser(driver: &Chromedriver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--window-size=1280,1400"
        ]}),
    );
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    // Two rustls crypto providers are in the build (ring for kube, aws-lc elsewhere): pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Loads `url` and waits until the page has hydrated.
async fn open(c: &Client, url: &str) {
    c.goto(url).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#app[data-hydrated='true']"))
        .await
        .unwrap_or_else(|e| panic!("{url} did not hydrate: {e}"));
}

async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    match c
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(e) => e,
        Err(e) => {
            // What the page showed instead, for whoever reads the failure.
            let shot = screenshot(c, "failure").await;
            let url = c.current_url().await.map(|u| u.to_string()).unwrap_or_default();
            panic!("no {css} on {url}: {e} (screenshot {})", shot.display())
        }
    }
}

async fn attr(e: &fantoccini::elements::Element, name: &str) -> String {
    e.attr(name).await.unwrap().unwrap_or_default()
}

async fn screenshot(c: &Client, name: &str) -> PathBuf {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let path = artifacts_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    path
}

/// Browser log entries at SEVERE level (console errors, failed requests).
async fn errors(c: &Client) -> Vec<String> {
    let log = c.issue_cmd(BrowserLog).await.unwrap();
    log.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn site() -> PathBuf {
    let site = manifest_dir().join("../dashboard/site");
    assert!(
        recstack_dashboard::server::has_browser_build(&site),
        "no browser build in {}: run scripts/build-dashboard (scripts/test does)",
        site.display()
    );
    site
}

/// Where the dashboard links a request's spans (a tracing UI fed over OTLP).
const TRACE_LINK: &str = "http://tracing.example/trace/{trace_id}";

async fn start(trace_file: &Path) -> LocalStack {
    use recstack_dashboard::server::{DashboardConfig, router};
    let site = site();
    let dashboard: serve::MakeDashboard = Box::new(move |local: serve::LocalDashboard| {
        let mut config = DashboardConfig::local(
            local.traces_url,
            local.components,
            Some(site),
            local.access,
            Some(local.gateway_url),
        );
        config.trace_link = Some(TRACE_LINK.into());
        router(config)
    });
    let mut opts = common::traced_stack(trace_file, Some(dashboard));
    // Signing in is part of what is tested: the stack checks tokens.
    opts.gateway.access.tokens = std::sync::Arc::new(common::test_access());
    serve::start_local(common::artifact_root(), opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_explains_real_requests_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let trace_file = dir.path().join("traces.sqlite");
    let stack = start(&trace_file).await;
    let api = stack.get("traces").http.to_string();
    let base = format!("http://{}", stack.get("dashboard").http);

    // Real traffic: a debug request (a full trace) for a user with candidates cut at every
    // stage, and summary traces for others.
    let mut found = None;
    for user in (1..200).map(|u| u.to_string()) {
        let r = common::recommend(&stack, &user, true).await;
        let t = common::stored_trace(&api, &r.request_id).await;
        if t.candidates.len() > 500 && t.candidates.iter().any(|c| c.outcome == "rerank:mmr") {
            found = Some((user, t));
            break;
        }
    }
    let (user, full) = found.expect("a user with over 500 candidates and an MMR removal");
    assert_eq!(full.detail, Detail::Full);
    for u in ["7", "8", "9"] {
        common::recommend(&stack, u, false).await;
    }
    // A constructed case beside the real ones: the real full trace under another id, with
    // three candidates' fates set by hand (a block-list removal, which real traffic here
    // never has, a scatter-rule removal, and one below the cut) and a fourth moved to the
    // seen filter's removals.
    let mut constructed = full.clone();
    constructed.request_id = format!("{}-constructed", full.request_id);
    constructed.timestamp_ms = recstack_trace_store::store::now_ms();
    let unserved: Vec<usize> = (0..constructed.candidates.len())
        .filter(|&i| constructed.candidates[i].outcome != outcome::SERVED)
        .take(4)
        .collect();
    let fates = ["rerank:blocked", "rerank:category_scatter", outcome::RANKED_BELOW_CUT];
    for (&i, fate) in unserved.iter().zip(fates) {
        constructed.candidates[i].outcome = fate.to_string();
    }
    let seen = constructed.candidates.remove(unserved[3]).item_id;
    constructed.filtered_seen.push(seen.clone());
    {
        let store = recstack_trace_store::embedded::EmbeddedStore::open(&trace_file).unwrap();
        let put = store.put(std::slice::from_ref(&constructed).into()).await.unwrap();
        assert_eq!(put.written, 1);
    }

    let driver = Chromedriver::start();
    let c = browser(&driver).await;

    // --- Sign-in: a page asked for without a token sends the browser to /login. ------------
    let search = format!("{base}/traces?user={user}");
    c.goto(&search).await.unwrap();
    wait_for(&c, "form[action='/login'] input[name='token']").await;
    let at = c.current_url().await.unwrap();
    assert_eq!(at.path(), "/login", "{at}");
    // A wrong token: the form again, saying why.
    sign_in(&c, "not-a-token-of-this-stack").await;
    let error = wait_for(&c, "p.error").await.text().await.unwrap();
    assert_eq!(error, "the token is not valid for this stack");
    screenshot(&c, "login").await;
    // The server functions refuse a visitor without a token, with the API's message.
    for path in recstack_dashboard::server::server_function_paths() {
        let dashboard_addr = stack.get("dashboard").http.to_string();
        let (status, _, body) =
            tokio::task::spawn_blocking(move || common::http_with(&dashboard_addr, "POST", path, &[], ""))
                .await
                .unwrap();
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("Authorization: Bearer"), "{path}: {body}");
    }
    // The reader's token: on to the page asked for.
    sign_in(&c, common::TEST_READER).await;

    // --- Search: filter by user, find the debug request. -----------------------------------
    open(&c, &search).await;
    let row = wait_for(&c, &format!("tr[data-request='{}']", full.request_id)).await;
    let total = attr(&wait_for(&c, "p[data-total]").await, "data-total").await;
    assert!(total.parse::<u64>().unwrap() >= 1, "total {total}");
    let text = row.text().await.unwrap();
    assert!(text.contains(&user) && text.contains("full"), "{text}");
    screenshot(&c, "search").await;
    // Follow the link (client-side navigation after hydration).
    row.find(Locator::Css("a")).await.unwrap().click().await.unwrap();

    // --- Request view: funnel counts per stage equal the stored trace's. -------------------
    wait_for(&c, "div[data-step='served']").await;
    let link = wait_for(&c, "a.trace-link").await;
    assert_eq!(
        attr(&link, "href").await,
        TRACE_LINK.replace("{trace_id}", &full.trace_id)
    );
    let step = |key: String| {
        let c = c.clone();
        async move {
            let e = c.find(Locator::Css(&format!("div[data-step='{key}']"))).await.unwrap();
            attr(&e, "data-count").await.parse::<u32>().unwrap()
        }
    };
    let stage = |name: &str| full.stages.iter().find(|s| s.name == name).unwrap().clone();
    for ch in &full.channels {
        assert_eq!(
            step(format!("channel:{}", ch.channel)).await,
            ch.candidates,
            "{}",
            ch.channel
        );
    }
    assert_eq!(
        step("merged".into()).await,
        stage("recall").items_out + full.filtered_seen.len() as u32
    );
    assert_eq!(step("filtered".into()).await, stage("recall").items_out);
    assert_eq!(step("ranking_in".into()).await, stage("ranking").items_in);
    assert_eq!(step("ranked".into()).await, stage("ranking").items_out);
    assert_eq!(step("rerank_in".into()).await, stage("rerank").items_in);
    assert_eq!(step("served".into()).await, full.items.len() as u32);
    // The waterfall has every stage, at its recorded start.
    for s in &full.stages {
        let bar = c
            .find(Locator::Css(&format!(".waterfall div[data-stage='{}']", s.name)))
            .await
            .unwrap();
        assert_eq!(attr(&bar, "data-start-us").await, s.start_us.unwrap().to_string());
        assert_eq!(attr(&bar, "data-latency-us").await, s.latency_us.to_string());
    }
    // Titles beside the ids: every served item, and the first page's candidates.
    for it in &full.items {
        let title = c
            .find(Locator::Css(&format!(
                "table.served span.title[data-title-of='{}']",
                it.item_id
            )))
            .await
            .unwrap();
        assert_eq!(title.text().await.unwrap(), catalogue().title(&it.item_id));
    }
    let first = &full.candidates[0].item_id;
    let title = c
        .find(Locator::Css(&format!(
            "table.candidates span.title[data-title-of='{first}']"
        )))
        .await
        .unwrap();
    assert_eq!(title.text().await.unwrap(), catalogue().title(first));
    // Candidates are paged: one page of 50, not all of them.
    let rows = c.find_all(Locator::Css("table.candidates tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 50, "{} candidates in all", full.candidates.len());
    let pager = c.find(Locator::Css("#candidates nav.pager")).await.unwrap();
    assert_eq!(
        attr(&pager, "data-pages").await,
        full.candidates.len().div_ceil(50).to_string()
    );
    screenshot(&c, "request").await;

    // --- Opening a served item shows its lineage (a click: works only once hydrated). ------
    let item = &full.items[0];
    assert!(
        c.find_all(Locator::Css(".lineage-body")).await.unwrap().is_empty(),
        "lineage starts closed"
    );
    c.find(Locator::Css(&format!(
        "tbody[data-item='{}'] tr.item-row",
        item.item_id
    )))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    let lineage = wait_for(&c, &format!(".lineage-body[data-lineage='{}']", item.item_id)).await;
    let sources = lineage.find_all(Locator::Css("table.sources tbody tr")).await.unwrap();
    assert_eq!(sources.len(), item.sources.len());
    for (row, source) in sources.iter().zip(&item.sources) {
        assert_eq!(attr(row, "data-channel").await, source.channel);
        assert_eq!(attr(row, "data-score").await, format!("{:.4}", source.score));
    }
    let facts = lineage.text().await.unwrap();
    let score = format!("{:.4}", item.rank_score.unwrap());
    assert!(facts.contains(&score), "rank score {score} in {facts}");
    screenshot(&c, "lineage").await;

    // --- Why not, on the real full trace: a candidate rerank removed, one below the cut, a
    // seen item, an item no channel found, and an id not in the catalogue.
    let by_outcome = |pred: &dyn Fn(&str) -> bool| {
        full.candidates
            .iter()
            .find(|c| pred(&c.outcome))
            .map(|c| c.item_id.clone())
            .expect("a candidate with that outcome")
    };
    let below_cut = by_outcome(&|o| o == outcome::RANKED_BELOW_CUT || o == outcome::BELOW_RERANK_POOL);
    let removed = by_outcome(&|o| o == "rerank:mmr" || o == "rerank:category_scatter");
    let mut cases = vec![
        (below_cut, "ranked_below_cut"),
        (removed, "diversity"),
        ("no-such-item".to_string(), "not_in_index"),
    ];
    if let Some(seen) = full.filtered_seen.first() {
        cases.push((seen.clone(), "filtered_seen"));
    }
    // The debug trace holds the user's history and recall's cuts.
    let consumed = full.consumed.first().expect("a debug trace keeps the history");
    cases.push((consumed.item_id.clone(), "consumed"));
    let traced = |id: &str| {
        full.candidates.iter().any(|c| c.item_id == id)
            || full.filtered_seen.iter().any(|s| s == id)
            || full.consumed.iter().any(|c| c.item_id == id)
            || full.cuts.iter().any(|c| c.item_id == id)
    };
    let not_recalled = (1..5000)
        .map(|i| format!("{i:07}"))
        .find(|id| stack_has(id) && !traced(id));
    if let Some(id) = not_recalled {
        cases.push((id, "not_recalled"));
    }
    for (item, want) in &cases {
        why_not(&c, &base, &full.request_id, item, want).await;
    }
    // A cut past a channel's quota shows its channel, rank and the quota.
    let quota_cut = full
        .cuts
        .iter()
        .find(|c| c.reason == "quota")
        .expect("a debug trace keeps recall's quota cuts");
    why_not(&c, &base, &full.request_id, &quota_cut.item_id, "quota_cut").await;
    let evidence = |key: &'static str| {
        let c = c.clone();
        async move {
            let e = c
                .find(Locator::Css(&format!(".why-not-answer dd[data-key='{key}']")))
                .await
                .unwrap();
            e.text().await.unwrap()
        }
    };
    let best = quota_cut.sources.iter().min_by_key(|s| s.rank).unwrap();
    assert_eq!(evidence("channel").await, best.channel);
    assert_eq!(evidence("rank").await, best.rank.to_string());
    screenshot(&c, "why-not").await;

    // --- Why not on the constructed trace: the fates set above, and a served item. ---------
    let id = |i: usize| constructed.candidates[unserved[i]].item_id.clone();
    for (item, want) in [
        (id(0), "business_rule"),
        (id(1), "diversity"),
        (id(2), "ranked_below_cut"),
        (seen, "filtered_seen"),
        (constructed.items[0].item_id.clone(), "served"),
    ] {
        why_not(&c, &base, &constructed.request_id, &item, want).await;
    }

    // --- What if: a reader may not replay; the admin replays the request with its first item
    //     blocked and sees both lists side by side, then follows the link to the comparison.
    let first = full.items.iter().find(|i| i.position == 0).unwrap().item_id.clone();
    let replay = |c: Client, base: String, request: String, block: String| async move {
        open(&c, &format!("{base}/traces/{request}")).await;
        wait_for(&c, "form.what-if input[name='block']")
            .await
            .send_keys(&block)
            .await
            .unwrap();
        c.find(Locator::Css("form.what-if button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    };
    replay(c.clone(), base.clone(), full.request_id.clone(), first.clone()).await;
    let refused = wait_for(&c, "p.error").await.text().await.unwrap();
    assert!(refused.contains("needs the admin role"), "{refused}");
    c.goto(&format!("{base}/logout")).await.unwrap();
    sign_in(&c, common::TEST_ADMIN).await;
    wait_for(&c, "#app").await;
    replay(c.clone(), base.clone(), full.request_id.clone(), first.clone()).await;
    let row = format!("table.compare tr[data-item='{first}'][data-change='left'][data-stage='business_rule']");
    wait_for(&c, &row).await;
    let totals = wait_for(&c, "p.totals").await;
    assert_eq!(attr(&totals, "data-left").await, attr(&totals, "data-entered").await);
    let b_side = wait_for(&c, "div.side[data-side='B']").await.text().await.unwrap();
    assert!(
        b_side.contains(&format!("replay of {}: block {first}", full.request_id)),
        "{b_side}"
    );
    // Every item either list served has a row, with its title when the catalogue has one.
    let rows = c.find_all(Locator::Css("table.compare tbody tr")).await.unwrap();
    assert!(rows.len() >= 10, "{} rows", rows.len());
    assert!(totals.text().await.unwrap().contains("replayed in "));
    screenshot(&c, "replay").await;
    c.find(Locator::Css("a.compare-link"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&c, &row).await;
    assert_eq!(c.current_url().await.unwrap().path(), "/compare");
    screenshot(&c, "compare").await;

    // --- Overview: charts with what the traces hold. ---------------------------------------
    open(&c, &format!("{base}/")).await;
    let requests = attr(&wait_for(&c, "[data-requests]").await, "data-requests").await;
    assert!(requests.parse::<u64>().unwrap() >= 5, "{requests} requests");
    let rects = c.find_all(Locator::Css("svg.levels rect")).await.unwrap();
    assert!(!rects.is_empty(), "the levels chart has bars");
    let drawn: u64 = {
        let mut n = 0;
        for r in &rects {
            n += attr(r, "data-count").await.parse::<u64>().unwrap();
        }
        n
    };
    assert_eq!(drawn.to_string(), requests, "the bars add up to the requests");
    for ch in &full.channels {
        if full
            .items
            .iter()
            .any(|i| i.sources.iter().any(|s| s.channel == ch.channel))
        {
            c.find(Locator::Css(&format!("div.bar-row[data-channel='{}']", ch.channel)))
                .await
                .unwrap_or_else(|_| panic!("channel {} has a bar", ch.channel));
        }
    }
    for s in ["recall", "ranking", "rerank"] {
        c.find(Locator::Css(&format!("div.bar-row[data-stage='{s}'][data-p99]")))
            .await
            .unwrap_or_else(|_| panic!("stage {s} has latency bars"));
    }
    screenshot(&c, "overview").await;

    // --- Stack status: every local component ready. ----------------------------------------
    open(&c, &format!("{base}/status")).await;
    wait_for(&c, "tr[data-component]").await;
    for name in ["gateway", "recall", "features", "ranking", "rerank", "traces"] {
        let row = c
            .find(Locator::Css(&format!("tr[data-component='{name}']")))
            .await
            .unwrap();
        assert_eq!(attr(&row, "data-ready").await, "true", "{name}");
    }
    let phase = c.find(Locator::Css("[data-phase]")).await.unwrap();
    assert_eq!(attr(&phase, "data-phase").await, "Running");
    screenshot(&c, "status").await;

    // The wrong token's 401 is the one failed load expected.
    let errors: Vec<String> = errors(&c)
        .await
        .into_iter()
        .filter(|e| !e.contains("/login - Failed to load resource: the server responded with a status of 401"))
        .collect();
    assert!(errors.is_empty(), "browser errors: {errors:#?}");
    c.close().await.unwrap();
    stack.stop().await.unwrap();
}

/// Whether the catalogue the stack serves has `id` (the bundled data's item ids are 7 digits).
fn stack_has(id: &str) -> bool {
    use recstack_trace_store::explain::ItemIndex;
    catalogue().contains(id)
}

/// The catalogue the stack serves (its titles, its items).
fn catalogue() -> &'static recstack_services::gateway::Catalogue {
    static CATALOGUE: std::sync::OnceLock<recstack_services::gateway::Catalogue> = std::sync::OnceLock::new();
    CATALOGUE.get_or_init(|| {
        let loaded = serve::load_artifacts(common::artifact_root()).unwrap();
        recstack_services::gateway::Catalogue::new(&loaded.manifest, &loaded.artifacts)
    })
}

/// Types `token` into the sign-in form on the page and submits it.
async fn sign_in(c: &Client, token: &str) {
    let input = wait_for(c, "form[action='/login'] input[name='token']").await;
    input.send_keys(token).await.unwrap();
    click(c, "form[action='/login'] button").await;
}

/// Clicks the element `css` selects.
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css)).await.unwrap().click().await.unwrap();
}

/// Types `item` into the request's why-not box and checks the stage it names.
async fn why_not(c: &Client, base: &str, request_id: &str, item: &str, want: &str) {
    open(c, &format!("{base}/traces/{request_id}")).await;
    let input = wait_for(c, "form.why-not input[name='why_not']").await;
    input.send_keys(item).await.unwrap();
    c.find(Locator::Css("form.why-not button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let answer = wait_for(c, &format!(".why-not-answer[data-item='{item}']")).await;
    assert_eq!(
        attr(&answer, "data-stage").await,
        want,
        "{item}: {}",
        answer.text().await.unwrap()
    );
    let text: Value = answer.text().await.unwrap().into();
    assert!(text.as_str().unwrap().contains(item));
}
