//! S3 (or any S3-compatible store) through aws-sdk-s3.
//!
//! Conditional writes use `If-None-Match: *` and `If-Match`; 412 and 409 become
//! [`StoreError::AlreadyExists`] / [`StoreError::Precondition`]. Transient failures (5xx,
//! 503 SlowDown, throttling, timeouts, connection resets) are retried by the SDK's standard
//! retry strategy with jittered exponential backoff. A retried conditional PUT whose first
//! attempt actually landed answers 412 on the retry; so on every conflict we read the object
//! back, and if it holds exactly the bytes we sent, the write was ours and succeeded. (Every
//! object Netsy writes conditionally is unique to its writer: chunks carry the leader id and
//! timestamps, the leader lease carries holder and term.)
//!
//! S3 Express One Zone directory buckets (names ending in `--x-s3`) work too: the SDK finds
//! their zonal endpoint and session credentials from the name; they take the same
//! conditional writes; their listings come back unordered, without `start-after` and only
//! for prefixes ending in `/`, which `list` makes up for here; their ETags are not MD5s,
//! which nothing here relies on (a conflict is recognised as ours by comparing bytes).

use super::{Object, ObjectMeta, ObjectStore, PutMode, Result, StoreError};
use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use aws_sdk_s3::Client;
use bytes::Bytes;
use std::time::Duration;

/// How to reach and write the bucket. Every field can come from flags or env (see `cli`).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub bucket: String,
    /// Key prefix inside the bucket; objects live under `{prefix}/`.
    pub prefix: String,
    /// Custom endpoint (LocalStack, MinIO...). `AWS_ENDPOINT_URL` is honoured as well.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    pub storage_class: Option<String>,
    /// `AES256` or `aws:kms`.
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// Assume this role through STS on top of the default credential chain.
    pub assume_role_arn: Option<String>,
    /// Static credentials; when absent, the default chain (env, profile, IMDS, ...) is used.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Attempts per request, including the first (default 8).
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout (default 10 s).
    pub attempt_timeout: Option<Duration>,
    /// Treat the bucket as an S3 Express One Zone directory bucket (listings unordered, no
    /// `start-after`, prefixes ending in `/`). None: when its name ends in `--x-s3`, as
    /// directory bucket names do.
    pub directory_bucket: Option<bool>,
}

/// The suffix every S3 Express One Zone directory bucket name ends with.
const DIRECTORY_BUCKET_SUFFIX: &str = "--x-s3";

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Empty, or ends with '/'.
    prefix: String,
    storage_class: Option<StorageClass>,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
    /// An S3 Express One Zone directory bucket: see [`S3Options::directory_bucket`].
    directory: bool,
}

impl S3Store {
    pub async fn connect(opts: S3Options) -> anyhow::Result<Self> {
        anyhow::ensure!(!opts.bucket.is_empty(), "S3 bucket name is empty");
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &opts.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &opts.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(id), Some(secret)) = (&opts.access_key_id, &opts.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id,
                secret,
                None,
                None,
                "netsy-static",
            ));
        }
        let base = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&base)
            .force_path_style(opts.force_path_style)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(opts.max_attempts.unwrap_or(8))
                    .with_initial_backoff(Duration::from_millis(50))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(
                        opts.attempt_timeout.unwrap_or(Duration::from_secs(10)),
                    )
                    .build(),
            );
        if base.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        if let Some(arn) = &opts.assume_role_arn {
            let provider = aws_config::sts::AssumeRoleProvider::builder(arn)
                .session_name("netsy")
                .configure(&base)
                .build()
                .await;
            builder = builder.credentials_provider(provider);
        }
        let sse = match opts.sse.as_deref() {
            None | Some("") => None,
            Some("AES256") => Some(ServerSideEncryption::Aes256),
            Some("aws:kms") => Some(ServerSideEncryption::AwsKms),
            Some(other) => anyhow::bail!("S3 SSE {other:?}: expected AES256 or aws:kms"),
        };
        let storage_class = opts
            .storage_class
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(StorageClass::from);
        let prefix = opts.prefix.trim_matches('/');
        let directory = opts
            .directory_bucket
            .unwrap_or_else(|| opts.bucket.ends_with(DIRECTORY_BUCKET_SUFFIX));
        if directory {
            // Directory buckets answer only on their zonal, virtual-hosted endpoint (the SDK
            // finds it from the name) and store only their own storage class.
            anyhow::ensure!(
                !(opts.force_path_style && opts.endpoint.is_none()),
                "S3 bucket {}: an S3 Express One Zone directory bucket is addressed virtual-hosted style only; drop --s3-force-path-style",
                opts.bucket
            );
            if let Some(class) = &storage_class {
                anyhow::ensure!(
                    *class == StorageClass::ExpressOnezone,
                    "S3 bucket {}: a directory bucket stores only EXPRESS_ONEZONE, not {}",
                    opts.bucket,
                    class.as_str()
                );
            }
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket: opts.bucket.clone(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            storage_class,
            sse,
            sse_kms_key_id: opts.sse_kms_key_id.clone(),
            directory,
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Reads the object back after a conflict: was the write that "failed" in fact ours?
    async fn landed(&self, key: &str, data: &Bytes) -> Option<String> {
        match self.get(key).await {
            Ok(obj) if obj.data == *data => Some(obj.etag),
            _ => None,
        }
    }
}

fn status<E>(err: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

fn map_err<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    key: &str,
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> StoreError {
    let key = key.to_string();
    let code = err.code().map(str::to_string);
    match (status(&err), code.as_deref()) {
        (Some(404), _) | (_, Some("NoSuchKey")) => StoreError::NotFound { key },
        (Some(412), _) | (Some(409), _) => StoreError::Precondition { key },
        (Some(s), _) if s >= 500 || s == 429 => StoreError::Transient {
            key,
            message: format!("HTTP {s} {}", code.unwrap_or_default()),
        },
        (_, Some("SlowDown" | "Throttling" | "RequestTimeout" | "InternalError")) => {
            StoreError::Transient {
                key,
                message: code.unwrap_or_default(),
            }
        }
        (None, _) => StoreError::Transient {
            key,
            message: aws_smithy_types::error::display::DisplayErrorContext(&err).to_string(),
        },
        (Some(s), _) => StoreError::Other {
            key,
            message: format!(
                "HTTP {s}: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&err)
            ),
        },
    }
}

/// Reads a whole response body; a connection lost mid-body is transient.
async fn read_body(key: &str, body: ByteStream) -> Result<Bytes> {
    Ok(body
        .collect()
        .await
        .map_err(|e| StoreError::Transient {
            key: key.to_string(),
            message: e.to_string(),
        })?
        .into_bytes())
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<Object> {
        let resp = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        let etag = resp.e_tag().unwrap_or_default().to_string();
        let data = read_body(key, resp.body).await?;
        Ok(Object { data, etag })
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        if start >= end {
            return Ok(Bytes::new());
        }
        let resp = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .range(format!("bytes={start}-{}", end - 1))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if status(&e) == Some(416) => return Ok(Bytes::new()),
            Err(e) => return Err(map_err(key, e)),
        };
        read_body(key, resp.body).await
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<String> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .body(ByteStream::from(data.clone()));
        match &mode {
            PutMode::Overwrite => {}
            PutMode::Create => req = req.if_none_match("*"),
            PutMode::Update(etag) => req = req.if_match(etag),
        }
        if let Some(class) = &self.storage_class {
            req = req.storage_class(class.clone());
        }
        if let Some(sse) = &self.sse {
            req = req.server_side_encryption(sse.clone());
            if let Some(id) = &self.sse_kms_key_id {
                req = req.ssekms_key_id(id);
            }
        }
        match req.send().await {
            Ok(resp) => Ok(resp.e_tag().unwrap_or_default().to_string()),
            Err(e) => match map_err(key, e) {
                StoreError::Precondition { key } => {
                    if let Some(etag) = self.landed(&key, &data).await {
                        tracing::debug!(key, "conditional put had landed on an earlier attempt");
                        return Ok(etag);
                    }
                    Err(match mode {
                        PutMode::Create => StoreError::AlreadyExists { key },
                        _ => StoreError::Precondition { key },
                    })
                }
                StoreError::NotFound { key } => Err(StoreError::Precondition { key }),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        // A directory bucket lists only prefixes ending in '/', with no start-after, in no
        // particular order: it is asked for the enclosing "directory", and the rest is done
        // here, for every bucket alike (the trait promises key order).
        let full = self.full(prefix);
        let asked = if self.directory {
            full.rfind('/').map_or("", |i| &full[..=i]).to_string()
        } else {
            full.clone()
        };
        loop {
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&asked);
            if let Some(t) = &token {
                req = req.continuation_token(t);
            } else if let Some(s) = start_after.filter(|_| !self.directory) {
                req = req.start_after(self.full(s));
            }
            let resp = req.send().await.map_err(|e| map_err(prefix, e))?;
            for obj in resp.contents() {
                let Some(key) = obj
                    .key()
                    .filter(|k| k.starts_with(&full))
                    .and_then(|k| k.strip_prefix(&self.prefix))
                else {
                    continue;
                };
                if start_after.is_some_and(|s| key <= s) {
                    continue;
                }
                out.push(ObjectMeta {
                    key: key.to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    last_modified_ms: obj
                        .last_modified()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or(0),
                });
            }
            match resp.next_continuation_token() {
                Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match map_err(key, e) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }
}
