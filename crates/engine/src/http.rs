//! The `http_request` block: config, and the request itself over reqwest with rustls (ring).

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::config::Cfg;
use crate::path::{Scope, Template};

/// Longest a request may take when the block does not say, in milliseconds.
pub const HTTP_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Longest a block may ask a request to take, in milliseconds.
pub const HTTP_TIMEOUT_MS_MAX: u64 = 60_000;
/// Largest response body read; a longer one fails the request rather than fill memory.
pub const HTTP_RESPONSE_BYTES_MAX: usize = 10 * 1024 * 1024;
/// Redirects followed before giving up.
pub const HTTP_REDIRECTS_MAX: usize = 5;

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

#[derive(Clone, Debug)]
pub enum BodySpec {
    /// JSON as written in the config.
    Json(Value),
    /// Form fields, each a template.
    Form(Vec<(String, Template)>),
    /// Text, a template.
    Text(Template),
}

#[derive(Clone, Debug)]
pub struct HttpSpec {
    pub method: reqwest::Method,
    pub url: Template,
    pub headers: Vec<(String, Template)>,
    pub query: Vec<(String, Template)>,
    pub body: Option<BodySpec>,
    pub timeout_ms: u64,
}

impl HttpSpec {
    pub(crate) fn parse(cfg: &mut Cfg<'_>) -> HttpSpec {
        let method = cfg.text("method").map_or("GET".to_owned(), |method| method.to_ascii_uppercase());
        if !METHODS.contains(&method.as_str()) {
            cfg.problem("method", format!("`{method}` is not one of {}", METHODS.join(", ")));
        }
        let url = cfg.required_text("url", "the URL, e.g. \"{{config.base_url}}/health\"").and_then(|text| {
            // A URL without placeholders is checked now rather than failing (charged) on
            // every run; one with placeholders is checked once they are filled.
            if !text.contains("{{")
                && let Err(problem) = check_url(&text)
            {
                cfg.problem("url", problem);
            }
            template(cfg, "url", &text)
        });
        let headers = templates(cfg, "headers");
        let query = templates(cfg, "query");
        let body = cfg.object("body").and_then(|body| parse_body(cfg, body));
        let timeout_ms = cfg.integer("timeout_ms", 1, HTTP_TIMEOUT_MS_MAX, "milliseconds").unwrap_or(HTTP_TIMEOUT_MS_DEFAULT);
        HttpSpec {
            method: method.parse().unwrap_or(reqwest::Method::GET),
            url: url.unwrap_or_else(|| Template::parse("").expect("empty template parses")),
            headers,
            query,
            body,
            timeout_ms,
        }
    }

    /// Sends the request. `Ok` carries the block's outputs: a response (any status) fills
    /// `status`, `headers`, `body` and `success` (2xx) or `failure`; a request that got no
    /// response fills `failure` with the reason. `Err` is a block failure (a template that
    /// cannot be filled).
    pub async fn send(&self, http: &HttpClient, scope: &Scope<'_>, body_input: Option<Value>) -> Result<Vec<(&'static str, Value)>, String> {
        // A template that cannot be filled fails the block, naming the field it is in.
        let url = self.url.render_url(scope).map_err(|message| format!("url: {message}"))?;
        if let Some(reason) = http.refusal(&url) {
            return Ok(vec![("failure", json!({"error": format!("request refused: {reason}"), "url": url}))]);
        }
        let mut request = http.client.request(self.method.clone(), &url).timeout(Duration::from_millis(self.timeout_ms));
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.render(scope).map_err(|message| format!("headers.{name}: {message}"))?);
        }
        if !self.query.is_empty() {
            let pairs = self.query.iter().map(|(name, value)| Ok((name.as_str(), value.render(scope).map_err(|message| format!("query.{name}: {message}"))?))).collect::<Result<Vec<_>, String>>()?;
            request = request.query(&pairs);
        }
        request = match (body_input, &self.body) {
            (Some(value), _) => request.header("content-type", "application/json").body(value.to_string()),
            (None, Some(BodySpec::Json(value))) => request.header("content-type", "application/json").body(value.to_string()),
            (None, Some(BodySpec::Form(fields))) => {
                let pairs = fields.iter().map(|(name, value)| Ok((name.as_str(), value.render(scope).map_err(|message| format!("body.form.{name}: {message}"))?))).collect::<Result<Vec<_>, String>>()?;
                request.form(&pairs)
            }
            (None, Some(BodySpec::Text(text))) => request.header("content-type", "text/plain; charset=utf-8").body(text.render(scope).map_err(|message| format!("body.text: {message}"))?),
            (None, None) => request,
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => return Ok(vec![("failure", json!({"error": describe(&err), "url": url}))]),
        };
        let status = response.status().as_u16();
        let headers: Map<String, Value> = response.headers().iter().map(|(name, value)| (name.as_str().to_owned(), Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()))).collect();
        let is_json = response.headers().get("content-type").and_then(|value| value.to_str().ok()).is_some_and(|value| value.contains("json"));
        let bytes = match read_limited(response).await {
            Ok(bytes) => bytes,
            Err(message) => return Ok(vec![("failure", json!({"status": status, "error": message, "url": url}))]),
        };
        let body = if is_json { serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())) } else { Value::String(String::from_utf8_lossy(&bytes).into_owned()) };
        let record = json!({"status": status, "headers": headers, "body": body});
        let route = if (200..300).contains(&status) { "success" } else { "failure" };
        Ok(vec![("status", json!(status)), ("headers", Value::Object(headers)), ("body", body), (route, record)])
    }
}

/// Where requests may go. A server runs many teams' flows on its own network: there, a flow
/// must not reach the server itself, its neighbours or a cloud's metadata service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Destinations {
    /// Any address: the local canvas, a private runner, or an operator who allows it.
    #[default]
    Any,
    /// Public addresses only: no loopback, private, link-local, shared, multicast or reserved
    /// ones, whether written in the URL, resolved from a name or reached by a redirect.
    PublicOnly,
}

/// A client with the policy it enforces.
#[derive(Clone, Debug)]
pub struct HttpClient {
    pub client: reqwest::Client,
    pub destinations: Destinations,
}

impl HttpClient {
    pub fn new(destinations: Destinations) -> HttpClient {
        HttpClient { client: client_for(destinations), destinations }
    }

    /// Why `url` may not be requested, if it may not (an address written in the URL; names are
    /// checked when they are resolved).
    pub fn refusal(&self, url: &str) -> Option<String> {
        match self.destinations {
            Destinations::Any => None,
            Destinations::PublicOnly => reqwest::Url::parse(url).ok().and_then(|url| refused_address(&url)),
        }
    }
}

/// The client every `http_request` of an engine shares (connection reuse), to any address.
pub fn client() -> reqwest::Client {
    client_for(Destinations::Any)
}

/// A client that keeps to `destinations`.
pub fn client_for(destinations: Destinations) -> reqwest::Client {
    // reqwest is built without a default crypto provider (the aws-lc one compiles a large C
    // library); ring is installed here, once per process. A second install is a no-op error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder().user_agent(concat!("flowcredits/", env!("CARGO_PKG_VERSION")));
    let builder = match destinations {
        Destinations::Any => builder.redirect(reqwest::redirect::Policy::limited(HTTP_REDIRECTS_MAX)),
        Destinations::PublicOnly => builder.dns_resolver(std::sync::Arc::new(PublicResolver)).redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= HTTP_REDIRECTS_MAX {
                return attempt.error(format!("more than {HTTP_REDIRECTS_MAX} redirects"));
            }
            match refused_address(attempt.url()) {
                Some(reason) => attempt.error(format!("redirected to {reason}")),
                None => attempt.follow(),
            }
        })),
    };
    builder.build().expect("an HTTP client with a crypto provider installed builds")
}

/// Whether `ip` is an address on the public internet.
pub fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let shared = a == 100 && (64..128).contains(&b);
            let reserved = a == 0 || a >= 240 || (a == 192 && b == 0 && v4.octets()[2] == 0) || (a == 198 && (b == 18 || b == 19));
            !(v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast() || v4.is_documentation() || v4.is_multicast() || shared || reserved)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || v6.is_unique_local() || v6.is_unicast_link_local()),
        },
    }
}

/// What lifts the public-hosts-only rule, for the operator of a server on a trusted network.
const PRIVATE_HOSTS_HINT: &str = "an operator on a trusted network starts the server with --allow-private-hosts to allow them";

/// The reason a URL whose host is a written address is refused, when it is not public.
fn refused_address(url: &reqwest::Url) -> Option<String> {
    let ip: std::net::IpAddr = match url.host()? {
        url::Host::Ipv4(v4) => v4.into(),
        url::Host::Ipv6(v6) => v6.into(),
        // RFC 6761: `localhost` and names under it are this machine, whatever a resolver says.
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            return (name == "localhost" || name.ends_with(".localhost")).then(|| format!("{name}, which is this machine; requests the server makes reach public hosts only ({PRIVATE_HOSTS_HINT})"));
        }
    };
    (!is_public(ip)).then(|| format!("{ip}, which is not a public address; requests the server makes reach public hosts only ({PRIVATE_HOSTS_HINT})"))
}

/// Resolves names as the system does and keeps only public addresses.
struct PublicResolver;

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<std::net::SocketAddr> = found.iter().copied().filter(|address| is_public(address.ip())).collect();
            if public.is_empty() {
                let listed = found.iter().map(|address| address.ip().to_string()).collect::<Vec<_>>().join(", ");
                return Err(format!("{host} {NO_PUBLIC_ADDRESS} ({listed}); requests the server makes reach public hosts only ({PRIVATE_HOSTS_HINT})").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

async fn read_limited(response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let mut response = response;
    while let Some(chunk) = response.chunk().await.map_err(|err| describe(&err))? {
        if bytes.len() + chunk.len() > HTTP_RESPONSE_BYTES_MAX {
            return Err(format!("the response body is longer than the limit of {HTTP_RESPONSE_BYTES_MAX} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// How a refusal of a name that resolves only to non-public addresses reads ("NAME resolves to
/// no public address (…)"), for callers that tell it from other failures.
pub const NO_PUBLIC_ADDRESS: &str = "resolves to no public address";

/// A request that got no response, with every cause (a refused address, a resolver's answer).
pub fn describe(err: &reqwest::Error) -> String {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let mut message = format!("request {what}");
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// What is wrong with `url` as a request's address, if anything.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|err| format!("`{url}` is not a URL ({err}); write it whole, e.g. https://api.example.com/orders"))?;
    match parsed.scheme() {
        "http" | "https" => Ok(()),
        scheme => Err(format!("`{url}`: the scheme `{scheme}` is not allowed; use http or https")),
    }
}

fn template(cfg: &mut Cfg<'_>, key: &str, text: &str) -> Option<Template> {
    Template::parse(text).map_err(|message| cfg.problem(key, message)).ok()
}

fn templates(cfg: &mut Cfg<'_>, key: &'static str) -> Vec<(String, Template)> {
    let Some(map) = cfg.object(key) else { return Vec::new() };
    map.iter()
        .filter_map(|(name, value)| match value {
            Value::String(text) => template(cfg, &format!("{key}.{name}"), text).map(|template| (name.clone(), template)),
            Value::Number(_) | Value::Bool(_) => Some((name.clone(), Template::parse(&value.to_string()).expect("a scalar has no placeholders"))),
            _ => {
                cfg.problem(&format!("{key}.{name}"), "must be text");
                None
            }
        })
        .collect()
}

fn parse_body(cfg: &mut Cfg<'_>, body: &Map<String, Value>) -> Option<BodySpec> {
    let mut entries = body.iter();
    let (Some((kind, value)), None) = (entries.next(), entries.next()) else {
        cfg.problem("body", "must have exactly one of `json`, `form` or `text`");
        return None;
    };
    match (kind.as_str(), value) {
        ("json", value) => Some(BodySpec::Json(value.clone())),
        ("text", Value::String(text)) => template(cfg, "body.text", text).map(BodySpec::Text),
        ("form", Value::Object(fields)) => {
            let mut parsed = Vec::new();
            for (name, value) in fields {
                let text = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                parsed.push((name.clone(), template(cfg, &format!("body.form.{name}"), &text)?));
            }
            Some(BodySpec::Form(parsed))
        }
        (kind, _) => {
            cfg.problem(&format!("body.{kind}"), "expected `json` (any value), `form` (a record) or `text` (text)");
            None
        }
    }
}
