//! The operator's HTTP client: the commands that ask the running server go through here.

use anyhow::Context;
use roomlog::Config;

/// An HTTP client for the operator's commands: it carries an admin token signed with the
/// secret in the data folder (valid for an hour), so the admin endpoints answer it.
pub fn operator_client(config: &Config, timeout: std::time::Duration) -> anyhow::Result<reqwest::Client> {
    let files = roomlog::token::SecretFiles { dir: config.secret_dir() };
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = files.operator_token(now_ms, std::time::Duration::from_secs(3600)) {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(reqwest::Client::builder().timeout(timeout).default_headers(headers).build()?)
}

/// Sends one request to the running server and returns its JSON answer; an error answer is an
/// error naming its code.
pub async fn ask_server(
    config: &Config,
    addr: Option<std::net::SocketAddr>,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let (status, body) = ask_server_answer(config, addr, method, path).await?;
    if !status.is_success() {
        return Err(error_answer(path, status, &body));
    }
    Ok(body)
}

/// The server's JSON answer at `path` read as its own type (a `views` struct), so that a field
/// renamed on the server fails here, naming the path, instead of printing `?`.
pub fn typed<T: serde::de::DeserializeOwned>(path: &str, answer: &serde_json::Value) -> anyhow::Result<T> {
    T::deserialize(answer).with_context(|| format!("{path}: not the answer this roomlog expects (another version?)"))
}

/// Sends one request to the running server and returns its status and JSON answer, whatever
/// the status.
pub async fn ask_server_answer(
    config: &Config,
    addr: Option<std::net::SocketAddr>,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
    let addr = addr.or_else(|| config.recorded_addr()).unwrap_or(config.listen);
    let client = operator_client(config, std::time::Duration::from_secs(3600))?;
    let response = client
        .request(method, format!("http://{addr}{path}"))
        .send()
        .await
        .with_context(|| format!("nothing answers on {addr}: is roomlog running? (--addr to name it)"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.with_context(|| format!("{path}: not a JSON answer"))?;
    Ok((status, body))
}

/// An error answer as an error naming its code.
pub fn error_answer(path: &str, status: reqwest::StatusCode, body: &serde_json::Value) -> anyhow::Error {
    match body["error"]["message"].as_str() {
        Some(message) => {
            anyhow::anyhow!("{path}: {status}: {message} ({})", body["error"]["code"].as_str().unwrap_or(""))
        }
        None => anyhow::anyhow!("{path}: {status}: {body}"),
    }
}
