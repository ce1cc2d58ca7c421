//! How the client talks to MLflow: one request with its auth, workspace and connection headers,
//! retries with jittered backoff (and `Retry-After`), a bounded answer decoded with the endpoint
//! named in every error, and the walk over a search's pages.

use super::*;

/// Longest `Retry-After` honoured; beyond it the normal backoff applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

impl MlflowClient {
    /// Walks the pages of one search, refusing a page token MLflow has already handed out.
    pub(super) async fn pages<P, F>(
        &self,
        endpoint: &'static str,
        request: impl Fn(Option<&str>) -> Request,
        mut sink: F,
    ) -> Result<usize, MlflowError>
    where
        P: Page + DeserializeOwned,
        F: FnMut(Vec<P::Item>),
    {
        let mut seen = HashSet::new();
        let mut token: Option<String> = None;
        let mut requests = 0;
        loop {
            let page: P = self.call(endpoint, &request(token.as_deref())).await?;
            requests += 1;
            let (items, next) = page.into_parts();
            sink(items);
            match next {
                None => return Ok(requests),
                Some(t) => token = Some(unseen(&mut seen, endpoint, t)?),
            }
        }
    }

    /// One API call with retries, decoded.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        req: &Request,
    ) -> Result<T, MlflowError> {
        decode(endpoint, &self.fetch(endpoint, req, false).await?)
    }

    /// One API call with retries: the body of its successful answer. The connection is closed after
    /// the answer (`Connection: close`, so the next request opens another) when `fresh` is set or
    /// `mlflow.keep_alive` is off.
    pub(super) async fn fetch(
        &self,
        endpoint: &'static str,
        req: &Request,
        fresh: bool,
    ) -> Result<Bytes, MlflowError> {
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let result = self.once(endpoint, req, fresh).await;
            if let Some(h) = &self.latency {
                h.with_label_values(&[endpoint])
                    .observe(started.elapsed().as_secs_f64());
            }
            let (err, retry_after) = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let retryable = match &err {
                MlflowError::Connect { .. } => true,
                MlflowError::Status { status, .. } => *status == 429 || *status >= 500,
                _ => false,
            };
            if !retryable || attempt >= self.max_retries {
                if let MlflowError::Status {
                    status, error_code, ..
                } = &err
                {
                    tracing::warn!(endpoint, status, error_code = %error_code, attempts = attempt + 1, "MLflow request failed");
                } else {
                    tracing::warn!(endpoint, reason = err.reason(), attempts = attempt + 1, error = %err, "MLflow request failed");
                }
                return Err(err);
            }
            let delay = retry_after.unwrap_or_else(|| backoff(self.backoff, attempt));
            tracing::debug!(
                endpoint,
                attempt,
                delay_ms = delay.as_millis() as u64,
                reason = err.reason(),
                "retrying MLflow request"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One HTTP request; on failure also returns a `Retry-After` the server asked for.
    pub(super) async fn once(
        &self,
        endpoint: &'static str,
        req: &Request,
        fresh: bool,
    ) -> Result<Bytes, (MlflowError, Option<Duration>)> {
        // MLflow 3's own endpoints live under /api/3.0; everything else is the 2.0 API.
        let root = match endpoint {
            "server-info" | "workspaces" | "traces/search" | "traces/metrics"
            | "traces/batchGet" => &self.api3,
            _ => &self.api,
        };
        let url = format!("{root}{endpoint}");
        let mut builder = match req {
            Request::Get(q) => self.http.request(Method::GET, &url).query(q),
            Request::Post(body) => self.http.request(Method::POST, &url).json(body),
        };
        if let Some(v) = &self.authorization {
            builder = builder.header(AUTHORIZATION, v.clone());
        }
        if fresh || !self.keep_alive {
            builder = builder.header(CONNECTION, "close");
        }
        if let Some(w) = &self.workspace {
            builder = builder.header(WORKSPACE_HEADER, &**w);
        }
        let mut resp = builder
            .send()
            .await
            .map_err(|e| (self.transport_error(endpoint, e), None))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .filter(|d| *d <= MAX_RETRY_AFTER);
        // Read up to the cap, whatever Content-Length claims (a chunked answer has none).
        let too_large = || {
            let limit = self.max_response;
            (MlflowError::TooLarge { endpoint, limit }, None)
        };
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_response as u64)
        {
            return Err(too_large());
        }
        let expected = resp.content_length().unwrap_or(0) as usize;
        let mut body = Vec::with_capacity(expected.min(self.max_response));
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| (self.transport_error(endpoint, e), None))?
        {
            if body.len() + chunk.len() > self.max_response {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let body = Bytes::from(body);
        if !status.is_success() {
            let err: ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|_| ErrorBody {
                error_code: String::new(),
                message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            });
            return Err((
                MlflowError::Status {
                    endpoint,
                    status: status.as_u16(),
                    error_code: err.error_code,
                    message: err.message,
                    hint: status_hint(status),
                },
                retry_after,
            ));
        }
        Ok(body)
    }

    pub(super) fn transport_error(&self, endpoint: &'static str, e: reqwest::Error) -> MlflowError {
        if e.is_timeout() {
            MlflowError::Timeout {
                endpoint,
                timeout: self.timeout,
            }
        } else if is_tls_error(&e) {
            MlflowError::Tls {
                endpoint,
                detail: error_chain(&e),
            }
        } else if e.is_decode() || e.is_body() {
            MlflowError::Decode {
                endpoint,
                detail: error_chain(&e),
            }
        } else {
            MlflowError::Connect {
                endpoint,
                detail: error_chain(&e),
            }
        }
    }
}

/// The next page token, refused when MLflow has already handed it out (a server paging in a loop).
pub(super) fn unseen(
    seen: &mut HashSet<String>,
    endpoint: &'static str,
    token: String,
) -> Result<String, MlflowError> {
    if seen.insert(token.clone()) {
        Ok(token)
    } else {
        Err(MlflowError::PageLoop { endpoint, token })
    }
}

/// Decodes an answer, naming the endpoint when it is not what MLflow sends.
pub(super) fn decode<'b, T: Deserialize<'b>>(
    endpoint: &'static str,
    body: &'b [u8],
) -> Result<T, MlflowError> {
    // One UTF-8 check of the whole body (std's ASCII fast path) instead of one per string, which
    // `from_slice` makes: a page of runs has some 40 000 strings.
    let text = std::str::from_utf8(body).map_err(|e| MlflowError::Decode {
        endpoint,
        detail: format!("the answer is not UTF-8: {e}"),
    })?;
    serde_json::from_str(text).map_err(|e| MlflowError::Decode {
        endpoint,
        detail: e.to_string(),
    })
}

/// Credentials, sent on every request; reqwest marks the header sensitive so it is never logged.
#[derive(Clone)]
pub(super) enum Request {
    Get(Vec<(&'static str, String)>),
    Post(serde_json::Value),
}

/// `base × 2^attempt`, with jitter over its upper half so that many exporters don't retry in step.
pub(super) fn backoff(base: Duration, attempt: u32) -> Duration {
    let d = base.saturating_mul(1u32 << attempt.min(16));
    let half = d / 2;
    half + half.mul_f64(fastrand::f64())
}

pub(super) fn status_hint(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "; set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN",
        403 => "; grant the exporter's MLflow user read permission",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_in_the_upper_half() {
        let base = Duration::from_millis(100);
        for attempt in 0..4 {
            let full = base * (1 << attempt);
            for _ in 0..50 {
                let d = backoff(base, attempt);
                assert!(
                    d >= full / 2 && d <= full,
                    "{d:?} outside [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }
}
