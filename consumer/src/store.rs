//! The lease table in DynamoDB: the consumer's one seam to it. Every write is conditional.
//!
//! ```text
//!   ensure_table ─ CreateTable (on-demand, leaseKey S) or check the existing key schema
//!   list         ─ Scan, consistent, all pages
//!   create       ─ PutItem if leaseKey absent
//!   renew        ─ leaseCounter = n+1   if leaseCounter = n and leaseOwner = me
//!   take         ─ leaseOwner = me, leaseCounter = n+1, REMOVE checkpointOwner   if leaseCounter = n
//!   release      ─ REMOVE leaseOwner, leaseCounter = n+1   if leaseCounter = n and leaseOwner = me
//!   checkpoint   ─ checkpoint…, leaseCounter = n+1   if leaseCounter = n and leaseOwner = me
//!   delete       ─ DeleteItem if checkpoint = SHARD_END
//!
//!   operator writes (`kinesis leases`), fenced by the counter only, whoever holds the lease:
//!   reset        ─ checkpoint…, leaseCounter = n+1, REMOVE leaseOwner, checkpointOwner, pending…
//!                  if leaseCounter = n
//!   evict        ─ REMOVE leaseOwner, checkpointOwner, leaseCounter = n+1   if leaseCounter = n
//!   delete_table ─ DeleteTable (not conditional: DynamoDB has no condition on it)
//! ```

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType, TableStatus,
};
use kinesis_core::classify::classify;
use kinesis_core::{AwsError, Checkpoint, ErrorKind};

use crate::lease::{Lease, LeaseItemError, attr};

/// Waiting for the lease table: 20 ms doubling to 1 s, with jitter.
const TABLE_WAIT: kinesis_core::backoff::BackoffConfig =
    kinesis_core::backoff::BackoffConfig::new(Duration::from_millis(20), Duration::from_secs(1));

/// The KCL 3.x index from owner to lease key.
pub const LEASE_OWNER_INDEX: &str = "LeaseOwnerToLeaseKeyIndex";

/// A lease-table operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The condition did not hold: someone else changed the lease (we lost it, or lost a race).
    #[error("lease {0} changed under us (owner or counter no longer as expected)")]
    Conflict(String),
    /// The table exists with a key schema other than the KCL's (`leaseKey` S, hash).
    #[error("table {table} exists but its key schema is not the KCL's (leaseKey S HASH): {found}")]
    WrongSchema {
        /// Table name.
        table: String,
        /// What it has.
        found: String,
    },
    /// An item that is not a readable lease.
    #[error(transparent)]
    BadItem(#[from] LeaseItemError),
    /// The table did not become ACTIVE in time.
    #[error("table {0} did not become ACTIVE in time")]
    NotActive(String),
    /// DynamoDB refused or failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
}

impl StoreError {
    /// Whether retrying later may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Aws(e) => e.is_retryable(),
            Self::NotActive(_) => true,
            _ => false,
        }
    }
}

/// The lease table.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// Keys of unreadable items already logged (each is logged once, counted every scan).
    bad_items: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

/// Maps a conditional-write failure to `Conflict`, anything else to `Aws`.
fn conditional<E>(
    op: &'static str,
    key: &str,
    e: aws_sdk_dynamodb::error::SdkError<E>,
) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if classify(&e) == ErrorKind::ConditionFailed {
        StoreError::Conflict(key.to_string())
    } else {
        StoreError::Aws(AwsError::new(op, e))
    }
}

impl LeaseStore {
    /// The lease table `table` (the KCL names it after the application).
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            bad_items: std::sync::Arc::default(),
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// An UpdateItem on `lease` fenced by owner and counter: it applies only if `me` still holds
    /// the lease at the counter we know, and it bumps the counter (`:next`). Callers add their
    /// own update expression (which must `SET #c = :next`).
    fn fenced_update(
        &self,
        lease: &Lease,
        me: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(attr::LEASE_KEY, s(&lease.lease_key))
            .condition_expression("#c = :cur AND #o = :me")
            .expression_attribute_names("#c", attr::LEASE_COUNTER)
            .expression_attribute_names("#o", attr::LEASE_OWNER)
            .expression_attribute_values(":next", n(lease.lease_counter + 1))
            .expression_attribute_values(":cur", n(lease.lease_counter))
            .expression_attribute_values(":me", s(me))
    }

    /// Creates the table if missing (on-demand billing, with the KCL 3.x owner index when
    /// `owner_index`), checks an existing table's key schema, and waits until it is ACTIVE.
    pub async fn ensure_table(&self, owner_index: bool, wait: Duration) -> Result<(), StoreError> {
        let mut req = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key(attr::LEASE_KEY, KeyType::Hash)?)
            .attribute_definitions(def(attr::LEASE_KEY)?);
        if owner_index {
            req = req
                .attribute_definitions(def(attr::LEASE_OWNER)?)
                .global_secondary_indexes(
                    GlobalSecondaryIndex::builder()
                        .index_name(LEASE_OWNER_INDEX)
                        .key_schema(key(attr::LEASE_OWNER, KeyType::Hash)?)
                        .key_schema(key(attr::LEASE_KEY, KeyType::Range)?)
                        .projection(
                            Projection::builder()
                                .projection_type(ProjectionType::KeysOnly)
                                .build(),
                        )
                        .build()
                        .map_err(|e| AwsError::other("CreateTable", ErrorKind::Invalid, e))?,
                );
        }
        // Retryable failures (throttling, 5xx, a dropped connection) are retried until `wait`
        // passes, for CreateTable as for DescribeTable: a worker restarted while DynamoDB has a
        // bad minute still starts.
        let mut pauses = TABLE_WAIT.with_deadline(wait).build();
        let mut created = false;
        loop {
            if !created {
                match req.clone().send().await {
                    Ok(_) => created = true,
                    Err(e) => match classify(&e) {
                        ErrorKind::ResourceInUse => created = true,
                        kind if kind.is_retryable() => {
                            tracing::warn!(message = "CreateTable failed; retrying.", table = %self.table, error = %AwsError::new("CreateTable", e));
                        }
                        _ => return Err(AwsError::new("CreateTable", e).into()),
                    },
                }
            }
            if created {
                match self
                    .client
                    .describe_table()
                    .table_name(&self.table)
                    .send()
                    .await
                {
                    Ok(out) => {
                        let Some(t) = out.table() else {
                            return Err(StoreError::NotActive(self.table.clone()));
                        };
                        let ks = t.key_schema();
                        let ok = ks.len() == 1
                            && ks[0].attribute_name() == attr::LEASE_KEY
                            && *ks[0].key_type() == KeyType::Hash
                            && t.attribute_definitions().iter().any(|a| {
                                a.attribute_name() == attr::LEASE_KEY
                                    && *a.attribute_type() == ScalarAttributeType::S
                            });
                        if !ok {
                            let found = ks
                                .iter()
                                .map(|k| {
                                    format!("{} {}", k.attribute_name(), k.key_type().as_str())
                                })
                                .collect::<Vec<_>>()
                                .join(", ");
                            return Err(StoreError::WrongSchema {
                                table: self.table.clone(),
                                found,
                            });
                        }
                        if t.table_status() == Some(&TableStatus::Active) {
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        let kind = classify(&e);
                        if !(kind.is_retryable() || kind == ErrorKind::NotFound) {
                            return Err(AwsError::new("DescribeTable", e).into());
                        }
                    }
                }
            }
            match pauses.next_delay() {
                Some(p) => tokio::time::sleep(p).await,
                None => return Err(StoreError::NotActive(self.table.clone())),
            }
        }
    }

    /// Every lease in the table (consistent read, all pages); items that are not leases are
    /// skipped.
    pub async fn list(&self) -> Result<Vec<Lease>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::new("Scan", e))?;
            for item in page.items() {
                match Lease::from_item(item) {
                    Ok(Some(l)) => out.push(l),
                    Ok(None) => {}
                    // One bad item must not stop every worker from taking and syncing: skip
                    // it, say so once per key, count it every time.
                    Err(e) => self.skip_bad_item(&e),
                }
            }
        }
        out.sort_by(|a, b| a.lease_key.cmp(&b.lease_key));
        Ok(out)
    }

    fn skip_bad_item(&self, e: &LeaseItemError) {
        let labels = crate::telemetry::operation(crate::telemetry::LEASE_TABLE);
        metrics::counter!("BadItems", &labels).increment(1);
        let key = e.key.clone().unwrap_or_default();
        let first = self
            .bad_items
            .lock()
            .map(|mut seen| seen.insert(key.clone()))
            .unwrap_or(true);
        if first {
            tracing::warn!(message = "Skipping an unreadable lease-table item.", table = %self.table, lease_key = %key, error = %e);
        }
    }

    /// One lease, consistently read.
    pub async fn get(&self, key: &str) -> Result<Option<Lease>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::LEASE_KEY, s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::new("GetItem", e))?;
        match out.item() {
            Some(item) => Ok(Lease::from_item(item)?),
            None => Ok(None),
        }
    }

    /// Creates `lease` unless one with its key exists; returns whether it was created.
    pub async fn create_if_not_exists(&self, lease: &Lease) -> Result<bool, StoreError> {
        let r = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(lease.to_item()))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", attr::LEASE_KEY)
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) => match conditional("PutItem", &lease.lease_key, e) {
                StoreError::Conflict(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Heartbeat: bumps the counter if `lease` is still ours at the counter we know. Returns the
    /// new counter.
    pub async fn renew(&self, lease: &Lease, me: &str) -> Result<u64, StoreError> {
        self.fenced_update(lease, me)
            .update_expression("SET #c = :next")
            .send_fenced(lease)
            .await
    }

    /// Takes (or steals) `lease` as seen at its counter. Returns the lease as now stored.
    pub async fn take(&self, lease: &Lease, me: &str) -> Result<Lease, StoreError> {
        let next = lease.lease_counter + 1;
        let switching = lease.lease_owner.as_deref() != Some(me);
        let update = if switching {
            "SET #o = :me, #c = :next ADD #sw :one REMOVE #co"
        } else {
            "SET #o = :me, #c = :next REMOVE #co"
        };
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::LEASE_KEY, s(&lease.lease_key))
            .update_expression(update)
            .condition_expression("#c = :cur")
            .expression_attribute_names("#c", attr::LEASE_COUNTER)
            .expression_attribute_names("#o", attr::LEASE_OWNER)
            .expression_attribute_names("#co", attr::CHECKPOINT_OWNER)
            .expression_attribute_values(":next", n(next))
            .expression_attribute_values(":cur", n(lease.lease_counter))
            .expression_attribute_values(":me", s(me));
        if switching {
            req = req
                .expression_attribute_names("#sw", attr::OWNER_SWITCHES)
                .expression_attribute_values(":one", n(1));
        }
        req.send_fenced(lease).await?;
        let mut taken = lease.clone();
        taken.lease_owner = Some(me.to_string());
        taken.lease_counter = next;
        taken.checkpoint_owner = None;
        if switching {
            taken.owner_switches_since_checkpoint += 1;
        }
        Ok(taken)
    }

    /// Gives `lease` up at once (graceful shutdown), so another worker can take it without
    /// waiting for it to expire. The KCL leaves leases to expire instead.
    pub async fn release(&self, lease: &Lease, me: &str) -> Result<(), StoreError> {
        self.fenced_update(lease, me)
            .update_expression("SET #c = :next REMOVE #o")
            .send_fenced(lease)
            .await
            .map(|_| ())
    }

    /// Records a checkpoint, fenced by owner and counter (a worker that lost the lease gets
    /// `Conflict`). Clears any pending checkpoint, resets the owner-switch count. Returns the new
    /// counter.
    pub async fn checkpoint(
        &self,
        lease: &Lease,
        me: &str,
        at: &Checkpoint,
    ) -> Result<u64, StoreError> {
        self.fenced_update(lease, me)
            .update_expression(
                "SET #cp = :cp, #cps = :cps, #sw = :zero, #c = :next REMOVE #p, #ps, #pst",
            )
            .expression_attribute_names("#cp", attr::CHECKPOINT)
            .expression_attribute_names("#cps", attr::CHECKPOINT_SUB)
            .expression_attribute_names("#sw", attr::OWNER_SWITCHES)
            .expression_attribute_names("#p", attr::PENDING_CHECKPOINT)
            .expression_attribute_names("#ps", attr::PENDING_CHECKPOINT_SUB)
            .expression_attribute_names("#pst", attr::PENDING_CHECKPOINT_STATE)
            .expression_attribute_values(":cp", s(at.as_str()))
            .expression_attribute_values(":cps", n(at.sub_sequence_number()))
            .expression_attribute_values(":zero", n(0))
            .send_fenced(lease)
            .await
    }

    /// Stores a prepared checkpoint (and optional application state) without moving the
    /// checkpoint. Returns the new counter.
    pub async fn prepare_checkpoint(
        &self,
        lease: &Lease,
        me: &str,
        at: &Checkpoint,
        state: Option<&[u8]>,
    ) -> Result<u64, StoreError> {
        let mut update = "SET #p = :p, #ps = :ps, #c = :next".to_string();
        let mut req = self.fenced_update(lease, me);
        if let Some(st) = state {
            update.push_str(", #pst = :pst");
            req = req
                .expression_attribute_names("#pst", attr::PENDING_CHECKPOINT_STATE)
                .expression_attribute_values(":pst", AttributeValue::B(st.to_vec().into()));
        }
        req.update_expression(update)
            .expression_attribute_names("#p", attr::PENDING_CHECKPOINT)
            .expression_attribute_names("#ps", attr::PENDING_CHECKPOINT_SUB)
            .expression_attribute_values(":p", s(at.as_str()))
            .expression_attribute_values(":ps", n(at.sub_sequence_number()))
            .send_fenced(lease)
            .await
    }

    /// Records a finished shard's children (fenced like a checkpoint). Returns the new counter.
    pub async fn set_children(
        &self,
        lease: &Lease,
        me: &str,
        children: &[String],
    ) -> Result<u64, StoreError> {
        if children.is_empty() {
            return Ok(lease.lease_counter);
        }
        self.fenced_update(lease, me)
            .update_expression("SET #ch = :ch, #c = :next")
            .expression_attribute_names("#ch", attr::CHILD_SHARD_IDS)
            .expression_attribute_values(":ch", AttributeValue::Ss(children.to_vec()))
            .send_fenced(lease)
            .await
    }

    /// Deletes a finished lease (checkpoint SHARD_END); `Ok(false)` if it was not finished.
    pub async fn delete_finished(&self, key: &str) -> Result<bool, StoreError> {
        let r = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(attr::LEASE_KEY, s(key))
            .condition_expression("#cp = :end")
            .expression_attribute_names("#cp", attr::CHECKPOINT)
            .expression_attribute_values(":end", s("SHARD_END"))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) => match conditional("DeleteItem", key, e) {
                StoreError::Conflict(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Operator's reset: moves the checkpoint to `at` and frees the lease (whoever holds it), so
    /// the next worker to take it starts there. Fenced by the counter only: a worker that renewed,
    /// took or checkpointed since `lease` was read makes this `Conflict`, and a worker that held
    /// it loses it at its next fenced write. Clears any pending checkpoint and the owner-switch
    /// count. Returns the new counter.
    pub async fn reset_checkpoint(
        &self,
        lease: &Lease,
        at: &Checkpoint,
    ) -> Result<u64, StoreError> {
        self.counter_fenced(lease)
            .update_expression(
                "SET #cp = :cp, #cps = :cps, #sw = :zero, #c = :next \
                 REMOVE #o, #co, #p, #ps, #pst",
            )
            .expression_attribute_names("#cp", attr::CHECKPOINT)
            .expression_attribute_names("#cps", attr::CHECKPOINT_SUB)
            .expression_attribute_names("#sw", attr::OWNER_SWITCHES)
            .expression_attribute_names("#o", attr::LEASE_OWNER)
            .expression_attribute_names("#co", attr::CHECKPOINT_OWNER)
            .expression_attribute_names("#p", attr::PENDING_CHECKPOINT)
            .expression_attribute_names("#ps", attr::PENDING_CHECKPOINT_SUB)
            .expression_attribute_names("#pst", attr::PENDING_CHECKPOINT_STATE)
            .expression_attribute_values(":cp", s(at.as_str()))
            .expression_attribute_values(":cps", n(at.sub_sequence_number()))
            .expression_attribute_values(":zero", n(0))
            .send_fenced(lease)
            .await
    }

    /// Operator's release (the KCL's `evictLease`): frees the lease whoever holds it, fenced by
    /// the counter only (`Conflict` if it changed since `lease` was read). Returns the new
    /// counter.
    pub async fn evict(&self, lease: &Lease) -> Result<u64, StoreError> {
        self.counter_fenced(lease)
            .update_expression("SET #c = :next REMOVE #o, #co")
            .expression_attribute_names("#o", attr::LEASE_OWNER)
            .expression_attribute_names("#co", attr::CHECKPOINT_OWNER)
            .send_fenced(lease)
            .await
    }

    /// Deletes the lease table (DynamoDB offers no condition on DeleteTable: callers check the
    /// leases first). `NotFound` from DynamoDB when there is no such table.
    pub async fn delete_table(&self) -> Result<(), StoreError> {
        self.client
            .delete_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| AwsError::new("DeleteTable", e))?;
        Ok(())
    }

    /// An UpdateItem on `lease` that applies only if its counter is still the one we read, and
    /// bumps it (`:next`); the owner is not checked. Callers add an update expression that
    /// `SET #c = :next`.
    fn counter_fenced(
        &self,
        lease: &Lease,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(attr::LEASE_KEY, s(&lease.lease_key))
            .condition_expression("#c = :cur")
            .expression_attribute_names("#c", attr::LEASE_COUNTER)
            .expression_attribute_values(":next", n(lease.lease_counter + 1))
            .expression_attribute_values(":cur", n(lease.lease_counter))
    }

    /// The raw items (for tests and `kinesis leases`), unparsed.
    pub async fn raw_items(&self) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            out.extend(
                page.map_err(|e| AwsError::new("Scan", e))?
                    .items()
                    .iter()
                    .cloned(),
            );
        }
        Ok(out)
    }
}

fn key(name: &str, kt: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kt)
        .build()
        .map_err(|e| AwsError::other("CreateTable", ErrorKind::Invalid, e).into())
}

fn def(name: &str) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| AwsError::other("CreateTable", ErrorKind::Invalid, e).into())
}

/// The end of every fenced write: a failed condition is `Conflict` (the lease moved on), and
/// success yields the lease's new counter.
trait SendFenced {
    async fn send_fenced(self, lease: &Lease) -> Result<u64, StoreError>;
}

impl SendFenced for aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
    async fn send_fenced(self, lease: &Lease) -> Result<u64, StoreError> {
        self.send()
            .await
            .map_err(|e| conditional("UpdateItem", &lease.lease_key, e))?;
        Ok(lease.lease_counter + 1)
    }
}
