//! The dashboard in a real headless Chromium: the page signs in with a key, reads the API and
//! shows the team's usage, where the credits went, its runs and the out-of-credits banner.
//! Needs `chromium` (Debian's package; `.ci/run` installs it). `FLOWCREDITS_SKIP_BROWSER=1`
//! skips it on a machine without one, saying so.

mod support;

use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The page's DOM after its scripts ran, as Chromium rendered it.
fn rendered_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(CHROMIUM)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=15000", "--dump-dom", url])
        .output()
        .expect("chromium runs");
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The text inside the element with `id`.
fn text_of(dom: &str, id: &str) -> String {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page"));
    let open = start + dom[start..].find('>').unwrap() + 1;
    let close = open + dom[open..].find('<').unwrap();
    dom[open..close].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_usage_runs_and_the_limit_banner() {
    if std::env::var_os("FLOWCREDITS_SKIP_BROWSER").is_some() {
        eprintln!("SKIPPED: FLOWCREDITS_SKIP_BROWSER is set");
        return;
    }
    assert!(std::path::Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: `apt-get install chromium`, or set FLOWCREDITS_SKIP_BROWSER=1");
    let server = support::start().await;
    let key = flowcredits_server::serve::create_demo(&server.state).await.unwrap();
    let url = format!("{}/dashboard?team=demo#key={key}", server.base);

    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || rendered_dom(&url)
    })
    .await
    .unwrap();
    assert_eq!(text_of(&dom, "used"), "6", "three demo runs of 2 credits");
    assert_eq!(text_of(&dom, "included"), "100");
    assert_eq!(text_of(&dom, "remaining"), "94");
    assert_eq!(text_of(&dom, "payg"), "$0.000");
    assert!(dom.contains("<td>evaluate</td><td>api</td>"), "the breakdown lists evaluate blocks by trigger");
    assert_eq!(dom.matches("<td>succeeded</td>").count(), 3, "the three demo runs are listed");
    assert!(dom.contains("id=\"banner\" class=\"banner hidden\""), "no banner under 75%");
    // The deployed flow is listed with its Cloud Run estimate (evaluate 1 + validate 1) and a Run button.
    assert!(dom.contains("<td>hello</td><td>#1</td><td class=\"num\">2</td><td class=\"num\">6</td><td><button data-flow="), "the flows panel lists hello with its estimate and what it spent this period");

    // Use the rest of the credits: the page now says new runs are paused and offers pay-as-you-go.
    for _ in 0..47 {
        let (status, _) = server.call_hook("demo", "hello", &key, json!({"name": "x"})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || rendered_dom(&url)
    })
    .await
    .unwrap();
    assert_eq!(text_of(&dom, "remaining"), "0");
    assert!(dom.contains("class=\"banner bad\""), "the out-of-credits banner shows");
    assert!(text_of(&dom, "banner").contains("turn on pay-as-you-go"), "{}", text_of(&dom, "banner"));

    // Pay-as-you-go on with a cap one call's worth ($0.002) and an alert at $0.001: after one
    // more call the cap is reached, so new runs pause again, and the alert shows.
    let (status, billing) = server.call(reqwest::Method::PATCH, "/v1/teams/demo/billing", &key, Some(json!({"payg_enabled": true, "payg_cap_usd": "0.002", "payg_alerts_usd": ["0.001"]}))).await;
    assert_eq!(status, StatusCode::OK, "{billing}");
    assert_eq!(server.call_hook("demo", "hello", &key, json!({"name": "x"})).await.0, StatusCode::OK);
    let dom = tokio::task::spawn_blocking(move || rendered_dom(&url)).await.unwrap();
    let banner = text_of(&dom, "banner");
    assert!(banner.contains("reached this month's pay-as-you-go cap of $0.002") && banner.contains("raise the cap"), "{banner}");
    assert!(banner.contains("past your alert at $0.001"), "{banner}");
}

/// What a member may not do is not offered; a team the key cannot see and a key the server does
/// not accept are said in words for a person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_offers_only_what_the_role_allows_and_says_what_went_wrong() {
    if std::env::var_os("FLOWCREDITS_SKIP_BROWSER").is_some() {
        eprintln!("SKIPPED: FLOWCREDITS_SKIP_BROWSER is set");
        return;
    }
    let server = support::start().await;
    let owner = flowcredits_server::serve::create_demo(&server.state).await.unwrap();
    let viewer = server.member("demo", &owner, "viewer").await;
    let render = |url: String| tokio::task::spawn_blocking(move || rendered_dom(&url));

    let dom = render(format!("{}/dashboard?team=nosuch#key={viewer}", server.base)).await.unwrap();
    assert_eq!(text_of(&dom, "used"), "6", "the viewer's own team is shown");
    assert!(text_of(&dom, "message").contains("not a member of team nosuch; showing demo"), "{}", text_of(&dom, "message"));
    assert!(dom.contains("<p id=\"message\" class=\"muted\">"), "the message is shown, not hidden");
    let toggle = &dom[dom.find("id=\"payg-toggle\"").unwrap()..];
    assert!(toggle[..toggle.find('>').unwrap()].contains("disabled"), "a viewer cannot change billing: {toggle:.200}");
    let button = &dom[dom.find("<button data-flow=").expect("the demo flow is listed")..];
    let button = &button[..button.find('>').unwrap()];
    assert!(button.contains("disabled") && button.contains("title=\"Your role (viewer) cannot start runs.\""), "a viewer's Run button is disabled and says why: {button}");

    let dom = render(format!("{}/dashboard#key=fc_not_a_key", server.base)).await.unwrap();
    assert!(text_of(&dom, "message").contains("This API key was not accepted"), "{}", text_of(&dom, "message"));
}

/// A page on the server's own origin that opens the dashboard in a frame, clicks the first
/// flow's Run button once the flows are listed, and shows the run's result line (its class and
/// text) in `#out`: Chromium's `--dump-dom` cannot click, a same-origin frame can.
const CLICK_RUN: &str = r##"<!doctype html><html><body><pre id="out">waiting</pre>
<iframe id="frame" src="/dashboard?team=acme#key=KEY"></iframe>
<script>
const frame = document.getElementById("frame");
const find = () => frame.contentDocument && frame.contentDocument.querySelector("#flow-rows button");
const click = setInterval(() => {
  const button = find();
  if (!button) return;
  clearInterval(click);
  button.click();
  const done = setInterval(() => {
    const result = frame.contentDocument.getElementById("run-result");
    if (!result.textContent || result.textContent.startsWith("Running")) return;
    clearInterval(done);
    document.getElementById("out").textContent = result.className + "|" + result.textContent;
  }, 50);
}, 50);
</script></body></html>"##;

/// Run on a team out of credits: the API pauses the run (402 with its id) and it starts by
/// itself when credits return. The page says so, naming the run, instead of saying in red that
/// the run could not start (which invites clicking Run again and queueing another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_a_team_out_of_credits_says_the_run_waits_for_credits() {
    if std::env::var_os("FLOWCREDITS_SKIP_BROWSER").is_some() {
        eprintln!("SKIPPED: FLOWCREDITS_SKIP_BROWSER is set");
        return;
    }
    let server = support::start().await;
    let owner = server.team("acme", "team").await;
    server.deploy("acme", &owner, "work", support::flow_costing_25()).await;
    for _ in 0..4 {
        assert_eq!(server.call_hook("acme", "work", &owner, json!({})).await.0, StatusCode::OK);
    }
    // The harness is served beside the API, on the same origin as the dashboard.
    let page = CLICK_RUN.replace("KEY", &owner);
    let harness = axum::Router::new().route("/click-run", axum::routing::get(move || std::future::ready(axum::response::Html(page.clone()))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, flowcredits_server::app(server.state.clone()).merge(harness)).into_future());

    let dom = tokio::task::spawn_blocking(move || rendered_dom(&format!("{base}/click-run"))).await.unwrap();
    let out = text_of(&dom, "out");
    let (status, runs) = server.get("/v1/teams/acme/runs?status=paused", &owner).await;
    assert_eq!(status, StatusCode::OK, "{runs}");
    let paused = runs["items"][0]["id"].as_str().expect("the click made a paused run");
    assert!(out.starts_with("muted|"), "not shown as an error: {out}");
    assert!(out.contains(&format!("Run {paused} is waiting for credits")) && out.contains("will run when credits return"), "{out}");
}

/// The invoices panel says which plan each period's allowance is from, and a plan change during
/// the period beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_invoices_with_their_plan_and_plan_changes() {
    if std::env::var_os("FLOWCREDITS_SKIP_BROWSER").is_some() {
        eprintln!("SKIPPED: FLOWCREDITS_SKIP_BROWSER is set");
        return;
    }
    let ledger_dir = tempfile::tempdir().unwrap();
    let ledger = support::ledger_with_invoices(ledger_dir.path());
    let server = support::start_with(flowcredits_core::Rules::shipped(), move |state| state.ledger = ledger).await;
    let url = format!("{}/dashboard?team=past#key={}", server.base, server.operator);
    let dom = tokio::task::spawn_blocking(move || rendered_dom(&url)).await.unwrap();
    // The team moved from Solo to Team 31 days ago (`support::ledger_with_invoices`).
    let changed = (flowcredits_core::Timestamp::now() - jiff::SignedDuration::from_hours(31 * 24)).to_string();
    let row = format!("<td>team (solo → team on {})</td>", &changed[..10]);
    assert!(dom.contains(&row), "{row} in {}", &dom[dom.find("invoice-rows").unwrap_or(0)..]);
    assert!(dom.contains("<td>solo</td>"), "a period before the change is on Solo");
    assert!(dom.contains("<td class=\"num\">1 of 50</td>"), "Solo's 50 included credits, one used");
}
