//! Example source: reads a paginated JSON endpoint with a cursor.
//!
//! The endpoint answers `GET {url}?limit=N[&cursor=C]` with
//! `{"data": [{"id": ..., ...}], "next_cursor": "..." | null}`. Copy this crate to start a source
//! of your own: the hub calls `read` page by page and stores the returned cursor only after the
//! page's records are committed, so a crash resumes from the last committed page.

use serde::Deserialize;
use switchyard_sdk::{
    http::Request, outcome, schemars, serde_json, CallError, Capabilities, Context, Page, Plugin,
    Source, SourceRecord, StreamInfo,
};

/// Settings of one `[sources.NAME]` block using this plugin.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The list endpoint, e.g. `https://api.example.com/v1/customers`.
    url: String,
    /// Records per page (1-1000).
    #[serde(default = "default_page_size")]
    page_size: u32,
}

fn default_page_size() -> u32 {
    100
}

/// The endpoint's page shape.
#[derive(Deserialize)]
struct ApiPage {
    data: Vec<serde_json::Value>,
    next_cursor: Option<String>,
}

struct PagedJson;

impl Plugin for PagedJson {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .allowed_host("*")
            .secret(
                "token",
                "Bearer token for the endpoint, if it needs one",
                false,
            )
            .max_batch_size(1000)
    }

    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        let response = get(ctx, &format!("{}?limit=1", ctx.config.url))?;
        outcome::call_result(&response)
    }
}

impl Source for PagedJson {
    fn streams(_ctx: &Context<Config>) -> Result<Vec<StreamInfo>, CallError> {
        Ok(vec![StreamInfo {
            name: "records".into(),
            description: "Every record the endpoint lists, in its order".into(),
            incremental: false,
        }])
    }

    fn read(
        ctx: &Context<Config>,
        stream: &str,
        cursor: Option<String>,
    ) -> Result<Page, CallError> {
        if stream != "records" {
            return Err(CallError::InvalidConfig(format!(
                "unknown stream `{stream}`; this source has `records`"
            )));
        }
        let limit = ctx.config.page_size.clamp(1, 1000);
        let mut url = format!("{}?limit={limit}", ctx.config.url);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let response = get(ctx, &url)?;
        // 429/5xx become transient errors the host retries; 401/403 ask for new credentials.
        outcome::call_result(&response)?;
        let page: ApiPage = response.json()?;
        let mut records = Vec::with_capacity(page.data.len());
        for item in page.data {
            let id = match &item["id"] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => return Err(CallError::Failed("a record has no `id`".into())),
            };
            records.push(SourceRecord {
                id,
                data: item.to_string(),
                updated_at: item["updated_at"].as_str().map(str::to_string),
                events: vec![],
            });
        }
        let done = page.next_cursor.is_none();
        Ok(Page {
            records,
            cursor: page.next_cursor.or(cursor),
            done,
        })
    }
}

fn get(ctx: &Context<Config>, url: &str) -> Result<switchyard_sdk::http::Response, CallError> {
    let mut request = Request::get(url);
    if ctx.has_secret("token") {
        request = request.bearer_auth(&ctx.secret_placeholder("token"));
    }
    Ok(request.send()?)
}

switchyard_sdk::export_source!(PagedJson);
