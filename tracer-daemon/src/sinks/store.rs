//! Records in an object store (`object_store`: S3 and S3-compatible, GCS,
//! Azure Blob, a local directory), named by [`super::layout`].
//!
//! Credentials come from each cloud's standard chain, read by
//! `object_store`'s `from_env` builders: the environment
//! (`AWS_ACCESS_KEY_ID`…, `GOOGLE_APPLICATION_CREDENTIALS`,
//! `AZURE_STORAGE_*`), web identity (IRSA: `AWS_WEB_IDENTITY_TOKEN_FILE`;
//! GKE and Azure workload identity), then the instance's metadata service.
//! Never from the URL or a record, and never written anywhere: errors
//! carry the URL and the store's complaint, not the request.
//!
//! S3-compatible stores: `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`), with
//! `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint.

use std::{sync::Arc, time::Duration};

use futures::TryStreamExt;
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload,
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    azure::{AzureConfigKey, MicrosoftAzureBuilder},
    gcp::{GoogleCloudStorageBuilder, GoogleConfigKey},
    local::LocalFileSystem,
    path::Path,
};

use super::layout::{Layout, RecordKey};

/// The schemes `--sink` and `--from` take.
pub(crate) const SCHEMES: &str = "s3://, gs://, az://, file://";

/// Why a store could not be used, in the operator's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    /// The URL names no store roar-node can use.
    BadUrl,
    Unreachable,
    NoSuchBucket,
    NoCredentials,
    Denied,
    Other,
}

impl Problem {
    fn as_str(self) -> &'static str {
        match self {
            Problem::BadUrl => "bad store URL",
            Problem::Unreachable => "store unreachable",
            Problem::NoSuchBucket => "no such bucket",
            Problem::NoCredentials => {
                "no credentials (set the cloud's environment variables, or give the pod a cloud identity)"
            }
            Problem::Denied => "access denied",
            Problem::Other => "store error",
        }
    }
}

/// One store failure, on one line.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{url}: {}: {detail}", .problem.as_str())]
pub(crate) struct StoreError {
    pub(crate) url: String,
    pub(crate) problem: Problem,
    pub(crate) detail: String,
}

impl StoreError {
    pub(crate) fn bad_url(url: &str, detail: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            problem: Problem::BadUrl,
            detail: detail.into(),
        }
    }

    fn classify(url: &str, e: &object_store::Error) -> Self {
        // The whole chain, on one line: the store's own words are at the
        // bottom (an S3 error code, a refused connection).
        let mut detail = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            let s_text = s.to_string();
            if !detail.contains(&s_text) {
                detail.push_str(": ");
                detail.push_str(&s_text);
            }
            src = s.source();
        }
        let detail: String = detail.replace('\n', " ").chars().take(400).collect();
        let lower = detail.to_ascii_lowercase();
        let problem = if lower.contains("nosuchbucket")
            || lower.contains("bucket does not exist")
            || lower.contains("containernotfound")
        {
            Problem::NoSuchBucket
        } else if lower.contains("credential")
            || lower.contains("invalidaccesskeyid")
            // Nothing in the environment: the chain ended at the
            // instance's metadata service (AWS, GCP, Azure), which failed.
            || lower.contains("/latest/api/token")
            || lower.contains("/latest/meta-data")
            || lower.contains("computemetadata")
            || lower.contains("/metadata/identity")
        {
            Problem::NoCredentials
        } else if matches!(e, object_store::Error::PermissionDenied { .. })
            || matches!(e, object_store::Error::Unauthenticated { .. })
            || lower.contains("accessdenied")
            || lower.contains("signaturedoesnotmatch")
        {
            Problem::Denied
        } else if lower.contains("error sending request")
            || lower.contains("connect")
            || lower.contains("timed out")
            || lower.contains("dns")
        {
            Problem::Unreachable
        } else if matches!(e, object_store::Error::NotFound { .. }) {
            // Listing a prefix never says "not found" but for the bucket.
            Problem::NoSuchBucket
        } else {
            Problem::Other
        };
        Self {
            url: url.into(),
            problem,
            detail,
        }
    }
}

/// A store and the prefix records live under.
#[derive(Clone)]
pub(crate) struct Store {
    inner: Arc<dyn ObjectStore>,
    pub(crate) layout: Layout,
    /// The URL as given (no credentials are ever in it).
    pub(crate) url: String,
}

/// A listed object.
pub(crate) struct Listed {
    pub(crate) key: RecordKey,
    /// Seconds since the epoch.
    pub(crate) modified: i64,
}

impl Store {
    /// Parses `url` (one of [`SCHEMES`]) and builds the store with the
    /// cloud's credential chain. Checks nothing over the network: see
    /// [`Self::check`].
    pub(crate) fn open(url: &str) -> Result<Self, StoreError> {
        let parsed = url::Url::parse(url).map_err(|e| {
            StoreError::bad_url(url, format!("{e} (a store URL is one of {SCHEMES})"))
        })?;
        let (inner, prefix) = build(url, &parsed)?;
        let prefix = Path::parse(prefix.trim_matches('/'))
            .map_err(|e| StoreError::bad_url(url, format!("prefix: {e}")))?;
        Ok(Self {
            inner,
            layout: Layout::new(prefix),
            url: url.trim_end_matches('/').into(),
        })
    }

    /// One listing at the prefix: proves the bucket exists and the
    /// credentials are accepted (they are fetched now, not at the first
    /// record).
    pub(crate) async fn check(&self) -> Result<(), StoreError> {
        self.inner
            .list_with_delimiter(Some(self.layout.prefix()))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::classify(&self.url, &e))
    }

    /// Writes one record, then its index marker (so a reader of the index
    /// finds only records that are there). Both names are fixed by the
    /// record's identity: doing it again overwrites, never adds.
    pub(crate) async fn put_record(
        &self,
        key: &RecordKey,
        bytes: bytes::Bytes,
    ) -> Result<String, StoreError> {
        let fail = |e: object_store::Error| StoreError::classify(&self.url, &e);
        let record = self.layout.record(key);
        self.inner
            .put(&record, PutPayload::from_bytes(bytes))
            .await
            .map_err(fail)?;
        self.inner
            .put(&self.layout.index_marker(key), PutPayload::new())
            .await
            .map_err(fail)?;
        Ok(self.location(&record))
    }

    /// `url` + the object's path under the prefix, for messages.
    pub(crate) fn location(&self, p: &Path) -> String {
        let rel: Vec<String> = p
            .prefix_match(self.layout.prefix())
            .map(|parts| parts.map(|s| s.as_ref().to_string()).collect())
            .unwrap_or_default();
        format!("{}/{}", self.url, rel.join("/"))
    }

    /// Every object under `prefix`, with what a record key is made of.
    /// `marker`: the listing is of the workflow index.
    pub(crate) async fn list(
        &self,
        prefix: &Path,
        marker: bool,
    ) -> Result<Vec<Listed>, StoreError> {
        let metas: Vec<_> = self
            .inner
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| StoreError::classify(&self.url, &e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let key = if marker {
                    self.layout.parse_marker(&m.location)
                } else {
                    self.layout.parse_record(&m.location)
                }?;
                Some(Listed {
                    key,
                    modified: m.last_modified.timestamp(),
                })
            })
            .collect())
    }

    /// A record's bytes.
    pub(crate) async fn get_record(&self, key: &RecordKey) -> Result<bytes::Bytes, StoreError> {
        let fail = |e: object_store::Error| StoreError::classify(&self.url, &e);
        self.inner
            .get(&self.layout.record(key))
            .await
            .map_err(fail)?
            .bytes()
            .await
            .map_err(fail)
    }
}

/// How long to wait for a store's TCP connection: a refused or silent
/// endpoint is retried by the spool's back-off, not for minutes inside one
/// put.
const CONNECT_TIMEOUT: &str = "5s";

/// The store a URL names, built with the cloud's credential chain, and the
/// prefix under it.
fn build<'u>(
    url: &str,
    parsed: &'u url::Url,
) -> Result<(Arc<dyn ObjectStore>, &'u str), StoreError> {
    let fail = |e: object_store::Error| StoreError::classify(url, &e);
    let needs_bucket = |scheme: &str| match parsed.host_str() {
        Some(b) if !b.is_empty() => Ok(()),
        _ => Err(StoreError::bad_url(
            url,
            format!("no bucket: write {scheme}://BUCKET/PREFIX"),
        )),
    };
    // Few retries inside one request: the back-off is the spool's.
    let retry = object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let connect = object_store::ClientConfigKey::ConnectTimeout;
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "s3" | "s3a" => {
            needs_bucket("s3")?;
            Arc::new(
                AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_config(AmazonS3ConfigKey::Client(connect), CONNECT_TIMEOUT)
                    .with_retry(retry)
                    .build()
                    .map_err(fail)?,
            )
        }
        "gs" => {
            needs_bucket("gs")?;
            Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_config(GoogleConfigKey::Client(connect), CONNECT_TIMEOUT)
                    .with_retry(retry)
                    .build()
                    .map_err(fail)?,
            )
        }
        "az" | "azure" | "abfs" | "abfss" => {
            needs_bucket("az")?;
            Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_config(AzureConfigKey::Client(connect), CONNECT_TIMEOUT)
                    .with_retry(retry)
                    .build()
                    .map_err(fail)?,
            )
        }
        "file" => {
            let dir = parsed
                .to_file_path()
                .map_err(|()| StoreError::bad_url(url, "write file:///absolute/directory"))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| StoreError::bad_url(url, format!("{}: {e}", dir.display())))?;
            // The directory is the store: no prefix under it.
            return Ok((
                Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(fail)?),
                "",
            ));
        }
        other => {
            return Err(StoreError::bad_url(
                url,
                format!("unknown scheme {other:?}: use one of {SCHEMES}"),
            ));
        }
    };
    Ok((store, parsed.path()))
}

/// TLS for the stores' HTTP client, once per process: ring, the provider
/// kube already uses (two providers in one process make rustls refuse to
/// pick one).
pub(crate) fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_say_why_in_one_line() {
        for (url, says) in [
            ("ftp://b/p", "unknown scheme \"ftp\""),
            ("s3:///prefix", "no bucket"),
            ("bucket/prefix", "relative URL without a base"),
        ] {
            let e = Store::open(url).err().unwrap();
            assert_eq!(e.problem, Problem::BadUrl, "{e}");
            let text = e.to_string();
            assert!(text.contains(says) && !text.contains('\n'), "{text}");
        }
    }

    /// The local directory store: a record and its marker, written twice,
    /// are one record; listing the index finds it.
    #[test]
    fn file_store_round_trip() {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/records", dir.path().display());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = Store::open(&url).unwrap();
        let key = RecordKey {
            namespace: Some("ns".into()),
            workflow_id: Some("wf-1".into()),
            task_id: "u:c:0:0".into(),
        };
        rt.block_on(async {
            store.check().await.unwrap();
            for _ in 0..2 {
                let at = store.put_record(&key, "{}".into()).await.unwrap();
                assert_eq!(at, format!("{url}/ns/wf-1/u=3Ac=3A0=3A0.json"));
            }
            let listed = store
                .list(&store.layout.workflow_index("wf-1"), true)
                .await
                .unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].key, key);
            assert_eq!(store.get_record(&key).await.unwrap(), "{}");
        });
        assert!(
            dir.path()
                .join("records/ns/wf-1/u=3Ac=3A0=3A0.json")
                .is_file()
        );
    }
}
