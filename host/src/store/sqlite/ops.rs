//! [`WriteOp`]: one write, as a caller asked for it, and the one
//! statement that runs it.

use rusqlite::{Connection, params};

use super::is_primary_key_violation;
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use crate::store::Provenance;
use crate::store::provenance::unix_millis_now as now_millis;

/// One write, as the caller asked for it.
#[derive(Debug)]
pub(crate) enum WriteOp {
    /// `put_text`.
    Put {
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: JsonText,
        provenance: Option<Box<Provenance>>,
    },
    /// `put_global_text`.
    PutGlobal { key: String, value: JsonText },
    /// `upsert_global_text`.
    UpsertGlobal { key: String, value: JsonText },
    /// `RunIndex::record`.
    #[cfg(feature = "async")]
    Record(Box<super::runs::RecordOp>),
    /// One `RunIndex::remove` batch.
    #[cfg(feature = "async")]
    Remove(Box<super::runs::RemoveOp>),
}

impl WriteOp {
    /// Whether the write may commit without waiting for the disk when it
    /// is alone in its transaction: a gc removal batch (a removal lost to
    /// a power cut is redone by the next gc; the commit after it, which
    /// does wait, makes it durable with itself).
    pub(crate) fn may_skip_sync(&self) -> bool {
        #[cfg(feature = "async")]
        if let Self::Remove(_) = self {
            return true;
        }
        false
    }

    /// Runs the write's one statement on `conn` (inside a transaction or
    /// on its own).
    pub(crate) fn execute(&self, conn: &Connection) -> Result<(), ContextStoreError> {
        let result = match self {
            #[cfg(feature = "async")]
            Self::Record(op) => return op.execute(conn).map_err(ContextStoreError::from),
            #[cfg(feature = "async")]
            Self::Remove(op) => return op.execute(conn).map_err(ContextStoreError::from),
            Self::Put {
                flow_run_id,
                node_id,
                value,
                provenance: None,
            } => conn
                .prepare_cached(
                    "INSERT INTO outputs (flow_run_id, node_id, value, written_at) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    flow_run_id.as_bytes(),
                    node_id.as_bytes(),
                    value.as_str(),
                    now_millis()
                ]),
            Self::Put {
                flow_run_id,
                node_id,
                value,
                provenance: Some(p),
            } => conn
                .prepare_cached(
                    "INSERT INTO outputs (flow_run_id, node_id, value, written_at, component_hash,
                         params_hash, upstream_hash, attempt, host, started_at, ended_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    flow_run_id.as_bytes(),
                    node_id.as_bytes(),
                    value.as_str(),
                    now_millis(),
                    p.component_hash,
                    p.params_hash,
                    p.upstream_hash,
                    p.attempt,
                    p.host,
                    p.started_at,
                    p.ended_at
                ]),
            Self::PutGlobal { key, value } => conn
                .prepare_cached("INSERT INTO globals (key, value, written_at) VALUES (?1, ?2, ?3)")?
                .execute(params![key, value.as_str(), now_millis()]),
            Self::UpsertGlobal { key, value } => conn
                .prepare_cached(
                    "INSERT INTO globals (key, value, written_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, written_at = excluded.written_at",
                )?
                .execute(params![key, value.as_str(), now_millis()]),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_primary_key_violation(&e) => Err(match self {
                Self::Put {
                    flow_run_id,
                    node_id,
                    ..
                } => ContextStoreError::AlreadyExists {
                    flow_run_id: *flow_run_id,
                    node_id: *node_id,
                },
                Self::PutGlobal { key, .. } | Self::UpsertGlobal { key, .. } => {
                    ContextStoreError::GlobalAlreadyExists { key: key.clone() }
                }
                #[cfg(feature = "async")]
                Self::Record(_) | Self::Remove(_) => ContextStoreError::StorageError(e.to_string()),
            }),
            Err(e) => Err(e.into()),
        }
    }
}
