//! Counting tokens the way the *server* counts them: its own `/tokenize` endpoint, else a
//! `tokenizer.json` through the `tokenizers` crate, else a documented estimate.

use std::time::Duration;

use serde::Deserialize;

use crate::client::{build_http_client, check_api_key, exchange_error, redirect_message, server_root};
use crate::error::{CoreError, Result};

/// Characters per token assumed when neither the server nor a tokenizer file can count.
/// English prose with BPE vocabularies of 32k-128k entries averages about 4.
pub const ESTIMATED_CHARS_PER_TOKEN: f64 = 4.0;

/// The longest one `/tokenize` call may take (connecting included): tokenizing even a long
/// text takes a server milliseconds, so a call this slow means a stuck server. A shorter
/// request timeout (`timeout_s`) shortens it; see [`tokenize_timeout`].
pub const TOKENIZE_TIMEOUT: Duration = Duration::from_secs(10);

/// The deadline of one `/tokenize` call for a run whose per-request deadline is
/// `request_timeout`: the shorter of the two, [`TOKENIZE_TIMEOUT`] when there is none.
pub fn tokenize_timeout(request_timeout: Option<Duration>) -> Duration {
    request_timeout.map_or(TOKENIZE_TIMEOUT, |t| t.min(TOKENIZE_TIMEOUT))
}

/// A way of counting tokens.
pub enum TokenCounter {
    /// POST `{root}/tokenize` on the server under test (llama.cpp and vLLM have it).
    Server {
        /// HTTP client for the tokenize calls.
        client: reqwest::Client,
        /// Full URL of the endpoint.
        url: String,
        /// Model name (vLLM's endpoint wants it).
        model: String,
        /// Bearer key, if the server needs one.
        api_key: Option<String>,
        /// Deadline of each call, connecting included.
        timeout: Duration,
    },
    /// A Hugging Face `tokenizer.json`.
    File(Box<tokenizers::Tokenizer>),
    /// `ceil(characters / ESTIMATED_CHARS_PER_TOKEN)`.
    Estimate,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.source_name())
    }
}

#[derive(Deserialize)]
struct TokenizeResponse {
    #[serde(default)]
    tokens: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    count: Option<usize>,
}

impl TokenCounter {
    /// Loads a `tokenizer.json` file. Its own padding and truncation settings are switched off:
    /// a count must be the text's real length (some files pad every input to a fixed size).
    pub fn from_file(path: &str) -> Result<TokenCounter> {
        let mut tok = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| CoreError::Tokenizer(format!("cannot load {path:?} as a tokenizer.json: {e}")))?;
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| CoreError::Tokenizer(format!("{path:?}: {e}")))?;
        Ok(TokenCounter::File(Box::new(tok)))
    }

    /// The server's `/tokenize` at `base_url`, each call bounded by `timeout`. Fails (as a
    /// configuration error) on a bad base URL or API key; does not contact the server.
    pub fn server(base_url: &str, model: &str, api_key: Option<&str>, timeout: Duration) -> Result<TokenCounter> {
        if let Some(key) = api_key {
            check_api_key(key)?;
        }
        Ok(TokenCounter::Server {
            client: build_http_client(8)?,
            url: format!("{}/tokenize", server_root(base_url)?),
            model: model.to_string(),
            api_key: api_key.map(str::to_string),
            timeout,
        })
    }

    /// Picks the best counter: the server's `/tokenize` when it answers, else `tokenizer_path`
    /// when given, else the estimate. Returns the counter and a warning when it is the estimate.
    /// `request_timeout` is the load test's per-request deadline (`timeout_s`): the probe and
    /// every later call of a server counter are bounded by [`tokenize_timeout`] of it, so a
    /// server that accepts connections and never answers costs that long, not more.
    pub async fn detect(
        base_url: &str,
        model: &str,
        api_key: Option<&str>,
        tokenizer_path: Option<&str>,
        request_timeout: Option<Duration>,
    ) -> Result<(TokenCounter, Option<String>)> {
        let server = TokenCounter::server(base_url, model, api_key, tokenize_timeout(request_timeout))?;
        let why = match server.count("hello world", true).await {
            Ok(n) if n > 0 => return Ok((server, None)),
            Ok(_) => "it returned no tokens".to_string(),
            Err(e) => e.to_string(),
        };
        if let Some(path) = tokenizer_path {
            return Ok((TokenCounter::from_file(path)?, None));
        }
        Ok((
            TokenCounter::Estimate,
            Some(format!(
                "the server has no usable /tokenize endpoint ({why}) and no tokenizer file was \
                 given: prompt lengths are estimated at {ESTIMATED_CHARS_PER_TOKEN} characters per \
                 token and may be off by 20% or more; pass tokenizer=<path to tokenizer.json> for \
                 exact lengths"
            )),
        ))
    }

    /// `server`, `tokenizer` or `estimate`.
    pub fn source_name(&self) -> &'static str {
        match self {
            TokenCounter::Server { .. } => "server",
            TokenCounter::File(_) => "tokenizer",
            TokenCounter::Estimate => "estimate",
        }
    }

    /// True unless this is the characters-per-token estimate.
    pub fn is_exact(&self) -> bool {
        !matches!(self, TokenCounter::Estimate)
    }

    /// Number of tokens in `text`; `add_special` counts the special tokens (BOS) the server adds
    /// to a prompt.
    pub async fn count(&self, text: &str, add_special: bool) -> Result<usize> {
        match self {
            TokenCounter::Server { client, url, model, api_key, timeout } => {
                // llama.cpp reads `content`/`add_special`, vLLM reads `prompt`/`model`/
                // `add_special_tokens`; each ignores the other's fields.
                let body = serde_json::json!({
                    "content": text,
                    "prompt": text,
                    "model": model,
                    "add_special": add_special,
                    "add_special_tokens": add_special,
                });
                let mut req = client.post(url).json(&body).timeout(*timeout);
                if let Some(k) = api_key {
                    req = req.bearer_auth(k);
                }
                let failed = |e: &reqwest::Error| match e.is_timeout() {
                    true => CoreError::Timeout(format!("{url} did not answer within {:.1} s", timeout.as_secs_f64())),
                    false => exchange_error(url, e),
                };
                let resp = req.send().await.map_err(|e| failed(&e))?;
                let status = resp.status();
                if status.is_redirection() {
                    return Err(CoreError::Http(format!("{url}: {}", redirect_message(status, resp.headers()))));
                }
                if !status.is_success() {
                    return Err(CoreError::Http(format!("{url} answered HTTP {}", status.as_u16())));
                }
                let parsed: TokenizeResponse = resp.json().await.map_err(|e| match failed(&e) {
                    CoreError::Http(_) => CoreError::Http(format!("{url} answered with unexpected JSON: {e}")),
                    other => other,
                })?;
                parsed
                    .count
                    .or(parsed.tokens.map(|t| t.len()))
                    .ok_or_else(|| CoreError::Http(format!("{url} answered without tokens or count")))
            }
            TokenCounter::File(tok) => {
                tok.encode(text, add_special).map(|e| e.len()).map_err(|e| CoreError::Tokenizer(e.to_string()))
            }
            TokenCounter::Estimate => Ok((text.chars().count() as f64 / ESTIMATED_CHARS_PER_TOKEN).ceil() as usize),
        }
    }
}
