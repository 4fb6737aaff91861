//! The command-line side of the admin API (`mcu rooms`, `mcu record start ROOM`, …): one HTTP
//! request, the JSON answer printed. Plain HTTP only, which is what the server's own machine
//! reaches on loopback; for an HTTPS server use curl (docs/api.md).

use anyhow::{bail, Context, Result};
use warp::http::{header, Method, Request};
use warp::hyper::{body, Body, Client};

pub struct AdminClient {
    base: String,
    token: Option<mcu_server::auth::Secret>,
}

/// What the server answered.
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl AdminClient {
    pub fn new(base_url: &str, token: Option<mcu_server::auth::Secret>) -> Result<Self> {
        let base = base_url.trim_end_matches('/');
        if base.starts_with("https://") {
            bail!("the mcu admin commands speak plain HTTP; for an HTTPS server use curl -k (see docs/api.md)");
        }
        if !base.starts_with("http://") {
            bail!("{base_url:?}: expected an http:// URL");
        }
        Ok(AdminClient {
            base: base.to_string(),
            token,
        })
    }

    /// Sends `method` to `/api/v1/{path}`.
    pub async fn call(&self, method: Method, path: &str) -> Result<Answer> {
        let url = format!("{}/api/v1/{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.expose()));
        }
        let request = request
            .body(Body::empty())
            .context("building the request")?;
        let response = Client::new()
            .request(request)
            .await
            .with_context(|| format!("reaching {}", self.base))?;
        let status = response.status().as_u16();
        let bytes = body::to_bytes(response.into_body())
            .await
            .context("reading the answer")?;
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).context("the answer is not JSON")?
        };
        Ok(Answer { status, body })
    }
}

/// Prints an answer; `Ok(false)` for an HTTP error, after printing the server's reason.
pub fn print(answer: &Answer) -> bool {
    if (200..300).contains(&answer.status) {
        if !answer.body.is_null() {
            println!(
                "{}",
                serde_json::to_string_pretty(&answer.body).unwrap_or_default()
            );
        }
        true
    } else {
        let message = answer.body["error"]["message"]
            .as_str()
            .unwrap_or("no reason given");
        eprintln!("error {}: {message}", answer.status);
        false
    }
}
