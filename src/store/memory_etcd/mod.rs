//! An etcd inside this process, for tests: etcd's v3 KV, watch and lease API (the part
//! [`EtcdStore`] uses) over an in-memory map, served over gRPC on a loopback port. Every
//! function of the store runs unchanged against it with etcd's semantics: one revision per
//! write (a transaction's writes share it), compare-and-swap on versions and revisions,
//! keys bound to leases that expire, watches from a past revision. So the master's actions
//! are tested without root, a testbed or an etcd binary, and no test needs a second
//! implementation of the store that could drift from the real one.
//!
//! Not served: authentication, historical reads (`revision` in a range), compaction.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::proto::{
    PbDeleteRequest, PbDeleteResponse, PbEvent, PbKvServer, PbKvService, PbLeaseGrantRequest,
    PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse, PbLeaseLeasesRequest,
    PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse, PbLeaseServer,
    PbLeaseService, PbLeaseStatus, PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
    PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse, PbResponseHeader, PbTxnRequest,
    PbTxnResponse, PbWatchRequest, PbWatchRequestUnion, PbWatchResponse, PbWatchServer,
    PbWatchService,
};
use futures_util::{Stream, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::{EtcdStore, StoreError};
use crate::config::Config;

mod engine;

use engine::{EVENT_DELETE, EVENT_PUT, Engine, Lease, Writes, in_range};

/// How often expired leases are looked for.
const LEASE_TICK: Duration = Duration::from_millis(50);

/// A running in-process etcd; it stops when dropped.
pub struct MemoryEtcd {
    endpoint: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MemoryEtcd {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl MemoryEtcd {
    /// Serves a new, empty etcd on a free loopback port.
    pub async fn start() -> std::io::Result<MemoryEtcd> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            engine: Mutex::new(Engine {
                revision: 1,
                next_lease: 0x1000,
                ..Engine::default()
            }),
            events,
        });
        tokio::spawn(expire_leases(Arc::downgrade(&shared)));
        let service = Service(shared.clone());
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(PbKvServer::new(service.clone()))
                .add_service(PbWatchServer::new(service.clone()))
                .add_service(PbLeaseServer::new(service))
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(MemoryEtcd {
            endpoint,
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A store of the cluster `config` names, on this etcd.
    pub async fn connect(&self, config: &Config) -> Result<EtcdStore, StoreError> {
        let mut config = config.clone();
        config.etcd.endpoints = vec![self.endpoint.clone()];
        config.etcd.cert_file = None;
        config.etcd.key_file = None;
        config.etcd.ca_file = None;
        EtcdStore::connect(&config, None, None).await
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.shared.engine.lock().unwrap().revision
    }
}

/// A site for tests: the in-process etcd, a store of cluster `docklet` on it, and the
/// configuration, whose files (`fs_prefix`) are in a temporary directory.
pub struct TestSite {
    pub etcd: MemoryEtcd,
    pub store: EtcdStore,
    pub config: Config,
    pub dir: tempfile::TempDir,
}

impl TestSite {
    pub async fn new() -> TestSite {
        let etcd = MemoryEtcd::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            fs_prefix: dir.path().to_owned(),
            ..Config::default()
        };
        let store = etcd.connect(&config).await.unwrap();
        TestSite {
            etcd,
            store,
            config,
            dir,
        }
    }
}

struct Shared {
    engine: Mutex<Engine>,
    /// Every committed write's events, in revision order.
    events: broadcast::Sender<Arc<Vec<PbEvent>>>,
}

impl Shared {
    /// Runs `write` on the engine at the next revision and publishes its events.
    fn write<T>(&self, write: impl FnOnce(&mut Engine, &mut Writes) -> T) -> T {
        let mut engine = self.engine.lock().unwrap();
        let mut writes = Writes {
            revision: engine.revision + 1,
            events: Vec::new(),
        };
        let answer = write(&mut engine, &mut writes);
        if !writes.events.is_empty() {
            engine.revision = writes.revision;
            let events = Arc::new(writes.events);
            engine.history.push(events.clone());
            let _ = self.events.send(events);
        }
        answer
    }
}

async fn expire_leases(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(LEASE_TICK).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let expired: Vec<i64> = {
            let engine = shared.engine.lock().unwrap();
            engine
                .leases
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in expired {
            shared.write(|engine, writes| engine.revoke(id, writes));
        }
    }
}

#[derive(Clone)]
struct Service(Arc<Shared>);

type Answer<T> = Result<Response<T>, Status>;
type Boxed<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl PbKvService for Service {
    async fn range(&self, request: Request<PbRangeRequest>) -> Answer<PbRangeResponse> {
        let engine = self.0.engine.lock().unwrap();
        engine.range(request.get_ref()).map(Response::new)
    }

    async fn put(&self, request: Request<PbPutRequest>) -> Answer<PbPutResponse> {
        self.0
            .write(|engine, writes| engine.put(request.get_ref(), writes))
            .map(|mut response| {
                if let Some(h) = response.header.as_mut() {
                    h.revision = self.0.engine.lock().unwrap().revision;
                }
                Response::new(response)
            })
    }

    async fn delete_range(&self, request: Request<PbDeleteRequest>) -> Answer<PbDeleteResponse> {
        let mut response = self
            .0
            .write(|engine, writes| engine.delete(request.get_ref(), writes));
        if let Some(h) = response.header.as_mut() {
            h.revision = self.0.engine.lock().unwrap().revision;
        }
        Ok(Response::new(response))
    }

    async fn txn(&self, request: Request<PbTxnRequest>) -> Answer<PbTxnResponse> {
        self.0
            .write(|engine, writes| engine.txn(request.get_ref(), writes))
            .map(Response::new)
    }

    type RangeStreamStream = Boxed<etcd_client::proto::PbRangeStreamResponse>;

    async fn range_stream(&self, _: Request<PbRangeRequest>) -> Answer<Self::RangeStreamStream> {
        Err(Status::unimplemented(
            "no streamed ranges in the memory etcd",
        ))
    }

    async fn compact(
        &self,
        _: Request<etcd_client::proto::PbCompactionRequest>,
    ) -> Answer<etcd_client::proto::PbCompactionResponse> {
        Err(Status::unimplemented("no compaction in the memory etcd"))
    }
}

#[tonic::async_trait]
impl PbLeaseService for Service {
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Answer<PbLeaseGrantResponse> {
        let r = request.into_inner();
        let mut engine = self.0.engine.lock().unwrap();
        let id = if r.id != 0 {
            r.id
        } else {
            engine.next_lease += 1;
            engine.next_lease
        };
        if engine.leases.contains_key(&id) {
            return Err(Status::failed_precondition(
                "etcdserver: lease already exists",
            ));
        }
        let ttl = r.ttl.max(1);
        engine.leases.insert(
            id,
            Lease {
                granted_ttl: ttl,
                deadline: Instant::now() + Duration::from_secs(ttl as u64),
                keys: HashSet::new(),
            },
        );
        Ok(Response::new(PbLeaseGrantResponse {
            header: engine.header(),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<PbLeaseRevokeRequest>,
    ) -> Answer<PbLeaseRevokeResponse> {
        let id = request.get_ref().id;
        if !self.0.write(|engine, writes| engine.revoke(id, writes)) {
            return Err(Status::not_found("etcdserver: requested lease not found"));
        }
        let engine = self.0.engine.lock().unwrap();
        Ok(Response::new(PbLeaseRevokeResponse {
            header: engine.header(),
        }))
    }

    type LeaseKeepAliveStream = Boxed<PbLeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Answer<Self::LeaseKeepAliveStream> {
        let shared = self.0.clone();
        let answers = request.into_inner().map(move |r| {
            let id = r?.id;
            let mut engine = shared.engine.lock().unwrap();
            let header = engine.header();
            let ttl = match engine.leases.get_mut(&id) {
                Some(lease) => {
                    lease.deadline = Instant::now() + Duration::from_secs(lease.granted_ttl as u64);
                    lease.granted_ttl
                }
                None => 0,
            };
            Ok(PbLeaseKeepAliveResponse { header, id, ttl })
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Answer<PbLeaseTimeToLiveResponse> {
        let r = request.into_inner();
        let engine = self.0.engine.lock().unwrap();
        let (ttl, granted_ttl, keys) = match engine.leases.get(&r.id) {
            Some(lease) => (
                lease
                    .deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs() as i64,
                lease.granted_ttl,
                if r.keys {
                    lease.keys.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            ),
            None => (-1, 0, Vec::new()),
        };
        Ok(Response::new(PbLeaseTimeToLiveResponse {
            header: engine.header(),
            id: r.id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _: Request<PbLeaseLeasesRequest>,
    ) -> Answer<PbLeaseLeasesResponse> {
        let engine = self.0.engine.lock().unwrap();
        Ok(Response::new(PbLeaseLeasesResponse {
            header: engine.header(),
            leases: engine
                .leases
                .keys()
                .map(|id| PbLeaseStatus { id: *id })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl PbWatchService for Service {
    type WatchStream = Boxed<PbWatchResponse>;

    async fn watch(
        &self,
        request: Request<Streaming<PbWatchRequest>>,
    ) -> Answer<Self::WatchStream> {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(serve_watches(self.0.clone(), request.into_inner(), tx));
        let answers = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|answer| (answer, rx))
        });
        Ok(Response::new(Box::pin(answers)))
    }
}

/// One watch stream: its creates and cancels, and a task per watch that sends its events.
async fn serve_watches(
    shared: Arc<Shared>,
    mut requests: Streaming<PbWatchRequest>,
    tx: mpsc::Sender<Result<PbWatchResponse, Status>>,
) {
    let mut watches: HashMap<i64, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut next_id = 0;
    while let Some(Ok(request)) = requests.next().await {
        match request.request_union {
            Some(PbWatchRequestUnion::CreateRequest(create)) => {
                let id = if create.watch_id != 0 {
                    create.watch_id
                } else {
                    next_id += 1;
                    next_id
                };
                // Subscribed before the history is read: nothing falls between the two.
                let live = shared.events.subscribe();
                let (past, header) = {
                    let engine = shared.engine.lock().unwrap();
                    let start = create.start_revision;
                    let past: Vec<Arc<Vec<PbEvent>>> = if start > 0 {
                        engine
                            .history
                            .iter()
                            .filter(|events| revision_of(events) >= start)
                            .cloned()
                            .collect()
                    } else {
                        Vec::new()
                    };
                    (past, engine.header())
                };
                let created = PbWatchResponse {
                    header,
                    watch_id: id,
                    created: true,
                    ..PbWatchResponse::default()
                };
                if tx.send(Ok(created)).await.is_err() {
                    break;
                }
                let last = header.map_or(0, |h| h.revision);
                let watch = Watch {
                    id,
                    key: create.key,
                    range_end: create.range_end,
                    prev_kv: create.prev_kv,
                    no_put: create.filters.contains(&0),
                    no_delete: create.filters.contains(&1),
                };
                watches.insert(id, tokio::spawn(watch.run(past, last, live, tx.clone())));
            }
            Some(PbWatchRequestUnion::CancelRequest(cancel)) => {
                if let Some(task) = watches.remove(&cancel.watch_id) {
                    task.abort();
                }
                let canceled = PbWatchResponse {
                    watch_id: cancel.watch_id,
                    canceled: true,
                    ..PbWatchResponse::default()
                };
                let _ = tx.send(Ok(canceled)).await;
            }
            _ => {}
        }
    }
    for task in watches.into_values() {
        task.abort();
    }
}

fn revision_of(events: &[PbEvent]) -> i64 {
    events
        .first()
        .and_then(|e| e.kv.as_ref())
        .map_or(0, |kv| kv.mod_revision)
}

struct Watch {
    id: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
}

impl Watch {
    async fn run(
        self,
        past: Vec<Arc<Vec<PbEvent>>>,
        last: i64,
        mut live: broadcast::Receiver<Arc<Vec<PbEvent>>>,
        tx: mpsc::Sender<Result<PbWatchResponse, Status>>,
    ) {
        for events in past {
            if !self.send(&events, &tx).await {
                return;
            }
        }
        loop {
            let events = match live.recv().await {
                Ok(events) => events,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let lost = PbWatchResponse {
                        watch_id: self.id,
                        canceled: true,
                        cancel_reason: "the watcher fell behind".into(),
                        ..PbWatchResponse::default()
                    };
                    let _ = tx.send(Ok(lost)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if revision_of(&events) <= last {
                continue;
            }
            if !self.send(&events, &tx).await {
                return;
            }
        }
    }

    /// Sends the events of one revision that this watch wants; false when the stream is gone.
    async fn send(
        &self,
        events: &[PbEvent],
        tx: &mpsc::Sender<Result<PbWatchResponse, Status>>,
    ) -> bool {
        let mut wanted: Vec<PbEvent> = events
            .iter()
            .filter(|e| {
                e.kv.as_ref()
                    .is_some_and(|kv| in_range(&kv.key, &self.key, &self.range_end))
            })
            .filter(|e| !(e.r#type == EVENT_PUT && self.no_put))
            .filter(|e| !(e.r#type == EVENT_DELETE && self.no_delete))
            .cloned()
            .collect();
        if wanted.is_empty() {
            return true;
        }
        if !self.prev_kv {
            for e in &mut wanted {
                e.prev_kv = None;
            }
        }
        let revision = revision_of(&wanted);
        let answer = PbWatchResponse {
            header: Some(PbResponseHeader {
                cluster_id: 1,
                member_id: 1,
                revision,
                raft_term: 1,
            }),
            watch_id: self.id,
            events: wanted,
            ..PbWatchResponse::default()
        };
        tx.send(Ok(answer)).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};

    async fn client(etcd: &MemoryEtcd) -> etcd_client::Client {
        etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn transactions_compare_and_swap_on_revisions() {
        let etcd = MemoryEtcd::start().await.unwrap();
        let mut kv = client(&etcd).await.kv_client();
        kv.put("/a/1", "one", None).await.unwrap();
        let got = kv.get("/a/1", None).await.unwrap();
        let rev = got.kvs()[0].mod_revision();
        assert_eq!(got.kvs()[0].value_str().unwrap(), "one");

        // Guarded on the revision read: the first write wins, the second sees it changed.
        let guarded = |value: &'static str| {
            Txn::new()
                .when(vec![Compare::mod_revision("/a/1", CompareOp::Equal, rev)])
                .and_then(vec![
                    TxnOp::put("/a/1", value, None),
                    TxnOp::put("/a/2", value, None),
                ])
        };
        assert!(kv.txn(guarded("two")).await.unwrap().succeeded());
        assert!(!kv.txn(guarded("three")).await.unwrap().succeeded());
        let all = kv
            .get("/a/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let values: Vec<&str> = all.kvs().iter().map(|kv| kv.value_str().unwrap()).collect();
        assert_eq!(values, ["two", "two"]);
        // Both writes of the transaction share one revision; a missing key has revision 0.
        assert_eq!(all.kvs()[0].mod_revision(), all.kvs()[1].mod_revision());
        let absent = Txn::new()
            .when(vec![Compare::create_revision("/a/3", CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put("/a/3", "new", None)]);
        assert!(kv.txn(absent.clone()).await.unwrap().succeeded());
        assert!(!kv.txn(absent).await.unwrap().succeeded());
        let count = kv
            .get(
                "/a/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert_eq!(count.count(), 3);
    }

    #[tokio::test]
    async fn watches_see_changes_from_a_revision_and_leases_take_their_keys() {
        let etcd = MemoryEtcd::start().await.unwrap();
        let client = client(&etcd).await;
        let mut kv = client.kv_client();
        let before = kv.put("/w/early", "1", None).await.unwrap();
        let from = before.header().unwrap().revision();
        let mut watch = client
            .watch_client()
            .watch(
                "/w/",
                Some(WatchOptions::new().with_prefix().with_start_revision(from)),
            )
            .await
            .unwrap();
        let created = watch.message().await.unwrap().unwrap();
        assert!(created.created());
        let early = watch.message().await.unwrap().unwrap();
        assert_eq!(
            early.events()[0].kv().unwrap().key_str().unwrap(),
            "/w/early"
        );

        let lease = client.lease_client().grant(1, None).await.unwrap().id();
        kv.put("/w/leased", "x", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
        let put = watch.message().await.unwrap().unwrap();
        assert_eq!(
            put.events()[0].kv().unwrap().key_str().unwrap(),
            "/w/leased"
        );
        // Not kept alive, the lease expires and its key goes with it.
        let gone = tokio::time::timeout(Duration::from_secs(3), watch.message())
            .await
            .expect("the lease expires")
            .unwrap()
            .unwrap();
        assert_eq!(
            gone.events()[0].event_type(),
            etcd_client::EventType::Delete
        );
        assert!(kv.get("/w/leased", None).await.unwrap().kvs().is_empty());
    }
}
