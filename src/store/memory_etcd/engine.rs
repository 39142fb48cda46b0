//! The in-memory etcd's data and its rules: keys with their create and mod revisions and
//! versions, one revision per write, transactions' compares and ops, leases and the keys
//! bound to them. No IO: the services in [`super`] lock it and call in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use etcd_client::proto::{
    PbCompare, PbDeleteRequest, PbDeleteResponse, PbEvent, PbKeyValue, PbPutRequest, PbPutResponse,
    PbRangeRequest, PbRangeResponse, PbResponseHeader, PbResponseOp, PbTargetUnion, PbTxnOpRequest,
    PbTxnOpResponse, PbTxnRequest, PbTxnResponse,
};
use tokio::time::Instant;
use tonic::Status;

#[derive(Default)]
pub(super) struct Engine {
    pub(super) revision: i64,
    pub(super) kvs: BTreeMap<Vec<u8>, PbKeyValue>,
    /// Every write's events, oldest first (tests are short: nothing is compacted).
    pub(super) history: Vec<Arc<Vec<PbEvent>>>,
    pub(super) leases: HashMap<i64, Lease>,
    pub(super) next_lease: i64,
}

pub(super) struct Lease {
    pub(super) granted_ttl: i64,
    pub(super) deadline: Instant,
    pub(super) keys: HashSet<Vec<u8>>,
}

/// The events of one write, all at one revision.
pub(super) struct Writes {
    pub(super) revision: i64,
    pub(super) events: Vec<PbEvent>,
}

pub(super) const EVENT_PUT: i32 = 0;
pub(super) const EVENT_DELETE: i32 = 1;

/// Is `key` in etcd's range `[start, end)` (`end` empty: `start` alone; `\0`: every key from
/// `start` on)?
pub(super) fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        _ => key >= start && key < end,
    }
}

impl Engine {
    pub(super) fn header(&self) -> Option<PbResponseHeader> {
        Some(PbResponseHeader {
            cluster_id: 1,
            member_id: 1,
            revision: self.revision,
            raft_term: 1,
        })
    }

    pub(super) fn matching(&self, start: &[u8], end: &[u8]) -> Vec<PbKeyValue> {
        if end.is_empty() {
            return self.kvs.get(start).cloned().into_iter().collect();
        }
        self.kvs
            .range(start.to_vec()..)
            .take_while(|(k, _)| end == [0] || k.as_slice() < end)
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    pub(super) fn range(&self, r: &PbRangeRequest) -> Result<PbRangeResponse, Status> {
        if r.revision > 0 && r.revision != self.revision {
            return Err(Status::unimplemented(
                "no historical reads in the memory etcd",
            ));
        }
        let mut kvs = self.matching(&r.key, &r.range_end);
        let count = kvs.len() as i64;
        let mut more = false;
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.count_only {
            kvs.clear();
        } else if r.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(PbRangeResponse {
            header: self.header(),
            kvs,
            more,
            count,
        })
    }

    pub(super) fn put(
        &mut self,
        r: &PbPutRequest,
        writes: &mut Writes,
    ) -> Result<PbPutResponse, Status> {
        if r.lease != 0 && !self.leases.contains_key(&r.lease) {
            return Err(Status::not_found("etcdserver: requested lease not found"));
        }
        let prev = self.kvs.get(&r.key).cloned();
        if let Some(old) = prev.as_ref().filter(|old| old.lease != 0)
            && let Some(lease) = self.leases.get_mut(&old.lease)
        {
            lease.keys.remove(&r.key);
        }
        if let Some(lease) = self.leases.get_mut(&r.lease) {
            lease.keys.insert(r.key.clone());
        }
        let kv = PbKeyValue {
            key: r.key.clone(),
            create_revision: prev.as_ref().map_or(writes.revision, |p| p.create_revision),
            mod_revision: writes.revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: r.value.clone(),
            lease: r.lease,
        };
        self.kvs.insert(r.key.clone(), kv.clone());
        writes.events.push(PbEvent {
            r#type: EVENT_PUT,
            kv: Some(kv),
            prev_kv: prev.clone(),
        });
        Ok(PbPutResponse {
            header: self.header(),
            prev_kv: prev.filter(|_| r.prev_kv),
        })
    }

    pub(super) fn delete(&mut self, r: &PbDeleteRequest, writes: &mut Writes) -> PbDeleteResponse {
        let gone = self.matching(&r.key, &r.range_end);
        for kv in &gone {
            self.remove(&kv.key, writes);
        }
        PbDeleteResponse {
            header: self.header(),
            deleted: gone.len() as i64,
            prev_kvs: if r.prev_kv { gone } else { Vec::new() },
        }
    }

    pub(super) fn remove(&mut self, key: &[u8], writes: &mut Writes) {
        let Some(prev) = self.kvs.remove(key) else {
            return;
        };
        if let Some(lease) = self.leases.get_mut(&prev.lease) {
            lease.keys.remove(key);
        }
        writes.events.push(PbEvent {
            r#type: EVENT_DELETE,
            kv: Some(PbKeyValue {
                key: key.to_vec(),
                mod_revision: writes.revision,
                ..PbKeyValue::default()
            }),
            prev_kv: Some(prev),
        });
    }

    pub(super) fn holds(&self, c: &PbCompare) -> bool {
        let kvs = self.matching(&c.key, &c.range_end);
        let is_value = matches!(c.target_union, Some(PbTargetUnion::Value(_)));
        if kvs.is_empty() {
            return !is_value && compare(c, &PbKeyValue::default());
        }
        kvs.iter().all(|kv| compare(c, kv))
    }

    pub(super) fn txn(
        &mut self,
        r: &PbTxnRequest,
        writes: &mut Writes,
    ) -> Result<PbTxnResponse, Status> {
        let succeeded = r.compare.iter().all(|c| self.holds(c));
        let ops = if succeeded { &r.success } else { &r.failure };
        // As etcd does, refuse the whole transaction before any write of it is made.
        for op in ops {
            if let Some(PbTxnOpRequest::RequestPut(put)) = &op.request
                && put.lease != 0
                && !self.leases.contains_key(&put.lease)
            {
                return Err(Status::not_found("etcdserver: requested lease not found"));
            }
        }
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(PbTxnOpRequest::RequestRange(r)) => {
                    PbTxnOpResponse::ResponseRange(self.range(r)?)
                }
                Some(PbTxnOpRequest::RequestPut(r)) => {
                    PbTxnOpResponse::ResponsePut(self.put(r, writes)?)
                }
                Some(PbTxnOpRequest::RequestDeleteRange(r)) => {
                    PbTxnOpResponse::ResponseDeleteRange(self.delete(r, writes))
                }
                Some(PbTxnOpRequest::RequestTxn(r)) => {
                    PbTxnOpResponse::ResponseTxn(self.txn(r, writes)?)
                }
                None => return Err(Status::invalid_argument("an empty transaction op")),
            };
            responses.push(PbResponseOp {
                response: Some(response),
            });
        }
        let mut header = self.header();
        if let Some(h) = header.as_mut()
            && !writes.events.is_empty()
        {
            h.revision = writes.revision;
        }
        Ok(PbTxnResponse {
            header,
            succeeded,
            responses,
        })
    }

    pub(super) fn revoke(&mut self, id: i64, writes: &mut Writes) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        let mut keys: Vec<Vec<u8>> = lease.keys.into_iter().collect();
        keys.sort();
        for key in keys {
            self.remove(&key, writes);
        }
        true
    }
}

/// etcd's comparison of one key's record with a compare's target.
fn compare(c: &PbCompare, kv: &PbKeyValue) -> bool {
    use std::cmp::Ordering;
    let ordering = match &c.target_union {
        Some(PbTargetUnion::Version(v)) => kv.version.cmp(v),
        Some(PbTargetUnion::CreateRevision(v)) => kv.create_revision.cmp(v),
        Some(PbTargetUnion::ModRevision(v)) => kv.mod_revision.cmp(v),
        Some(PbTargetUnion::Value(v)) => kv.value.as_slice().cmp(v.as_slice()),
        Some(PbTargetUnion::Lease(v)) => kv.lease.cmp(v),
        None => return false,
    };
    // EQUAL, GREATER, LESS, NOT_EQUAL
    match c.result {
        0 => ordering == Ordering::Equal,
        1 => ordering == Ordering::Greater,
        2 => ordering == Ordering::Less,
        3 => ordering != Ordering::Equal,
        _ => false,
    }
}
