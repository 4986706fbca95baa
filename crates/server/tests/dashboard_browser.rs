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
