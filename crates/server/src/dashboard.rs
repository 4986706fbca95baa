//! The resource-usage dashboard: one static page compiled into the binary. It holds no data of
//! its own; it signs in with an API key (kept in the browser) and reads the same `/v1` API.

use axum::response::Html;

const PAGE: &str = include_str!("../assets/dashboard.html");

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
