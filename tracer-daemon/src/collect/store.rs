//! Collecting from an object store: one listing of the workflow index
//! (or of a namespace, or of the prefix), then the records, a few at a
//! time.

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};

use super::{Collector, Query};
use crate::sinks::store::{Listed, Store};

/// Records fetched at once.
const PARALLEL: usize = 8;

pub(super) async fn collect(url: &str, q: &Query, c: &mut Collector) -> anyhow::Result<()> {
    crate::sinks::store::install_crypto();
    let store = Store::open(url)?;
    // Says "no such bucket" or "no credentials" before anything else.
    store.check().await?;
    let l = &store.layout;
    let listed = match (&q.workflow, &q.namespace) {
        (Some(w), _) => store.list(&l.workflow_index(w), true).await?,
        (None, Some(n)) => store.list(&l.namespace_dir(n, None), false).await?,
        (None, None) => store.list(l.prefix(), false).await?,
    };
    let wanted: Vec<Listed> = listed
        .into_iter()
        .filter(|x| q.matches(&x.key))
        .filter(|x| q.since.is_none_or(|t| x.modified >= t))
        .collect();
    c.expected = wanted.len() as u64;
    let mut fetched = futures::stream::iter(wanted.into_iter().map(|x| {
        let store = store.clone();
        async move {
            let bytes = store
                .get_record(&x.key)
                .await
                .with_context(|| format!("record of task {}", x.key.task_id))?;
            anyhow::Ok((x.key, bytes))
        }
    }))
    .buffer_unordered(PARALLEL);
    while let Some((key, bytes)) = fetched.try_next().await? {
        c.write(&key, &bytes)?;
    }
    Ok(())
}
