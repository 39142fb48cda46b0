//! The actions as users meet them, over an etcd in this process ([`MemoryEtcd`]): who may do
//! what to whose cluster (owner, another user, an administrator, an account waiting for
//! approval, a locked one), quotas and capacity under concurrent creates, idempotent
//! creates and drains. No root, no testbed: seconds.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::daemon::Notifier;
use crate::master::actions::images::{ImagePatch, ImageView, SaveImageRequest};
use crate::master::actions::ports::MapPortRequest;
use crate::master::actions::system_images::SystemImageUpdateRequest;
use crate::master::{Master, now_secs};
use crate::model::account::AccountStatus;
use crate::model::host::{Capacity, HostRecord};
use crate::model::vcluster::CreateClusterRequest;
use crate::store::memory_etcd::{MemoryEtcd, TestSite};
use crate::sys::pam::FakePam;

const GIB: u64 = 1 << 30;

/// A site: the in-process etcd after `init`, hosts tb1 and tb2 (8 cores and `memory_gib`
/// each) registered with image `base`, PAM users alice, bob and carol, and a master on it.
struct Site {
    master: Arc<Master>,
    store: crate::store::EtcdStore,
    _etcd: MemoryEtcd,
    _dir: tempfile::TempDir,
}

async fn site(memory_gib: u64) -> Site {
    let TestSite {
        etcd,
        store,
        config,
        dir,
    } = TestSite::new().await;
    crate::master::init::init_cluster(
        &store,
        "docklet",
        "test",
        false,
        &dir.path().join("password"),
        now_secs(),
    )
    .await
    .unwrap();
    for name in ["tb1", "tb2"] {
        let record = HostRecord {
            name: name.into(),
            addresses: vec![],
            capacity: Capacity {
                cpus: 8,
                memory_bytes: memory_gib * GIB,
                disk_free_bytes: 1000 * GIB,
            },
            version: "test".into(),
            images: vec!["base".into()],
            image_versions: Default::default(),
            registered_at: now_secs(),
        };
        store
            .register_host(&record, Duration::from_secs(3600))
            .await
            .unwrap();
    }
    let mut master = Master::new(config, "tb1".into(), Notifier::from_env());
    master.pam = Arc::new(FakePam {
        accounts: ["alice", "bob", "carol"]
            .map(|u| (u.to_owned(), format!("{u}-password-1")))
            .to_vec(),
    });
    master.store.send_replace(Some(store.clone()));
    Site {
        master: Arc::new(master),
        store,
        _etcd: etcd,
        _dir: dir,
    }
}

impl Site {
    /// A PAM user's session token (the account is made at the first login).
    async fn login(&self, name: &str) -> String {
        self.master
            .login(name, &format!("{name}-password-1"), "127.0.0.1")
            .await
            .unwrap()
            .token
    }

    /// The caller a PAM user is once logged in.
    async fn user(&self, name: &str) -> Caller {
        let token = self.login(name).await;
        self.master.authenticate(&token).await.unwrap()
    }

    fn root(&self) -> Caller {
        Caller::local_admin()
    }

    async fn set_status(&self, user: &str, status: AccountStatus) {
        let patch = UserPatch {
            status: Some(status),
            ..UserPatch::default()
        };
        self.master
            .update_user(&self.root(), user, &patch, "127.0.0.1")
            .await
            .unwrap();
    }

    async fn create(&self, caller: &Caller, name: &str, size: u32) -> Result<Created, ApiError> {
        let request = CreateClusterRequest {
            name: name.into(),
            size: Some(size),
            image: None,
            cpu_millis: None,
            memory_bytes: None,
            disk_bytes: None,
        };
        self.master.create_cluster(caller, &request, None).await
    }

    /// The hosts of a cluster's nodes, in node order.
    async fn hosts_of(&self, owner: &str, name: &str) -> Vec<String> {
        let cluster = self
            .master
            .show_cluster(&self.root(), Some(owner), name)
            .await
            .unwrap();
        cluster.nodes.into_iter().map(|n| n.host).collect()
    }
}

/// What an action answered, as the HTTP API would say it.
fn status<T>(result: &Result<T, ApiError>) -> u16 {
    result.as_ref().map_or_else(ApiError::status, |_| 200)
}

#[tokio::test]
async fn a_create_spreads_its_nodes_and_is_written_whole() {
    let site = site(8).await;
    let alice = site.user("alice").await;
    let created = site.create(&alice, "c1", 3).await.unwrap();
    assert!(!created.replayed);
    assert_eq!(created.operation.operation.nodes.len(), 3);
    let hosts = site.hosts_of("alice", "c1").await;
    let on_tb1 = hosts.iter().filter(|h| *h == "tb1").count();
    assert!(
        on_tb1 == 1 || on_tb1 == 2,
        "spread over both hosts: {hosts:?}"
    );
    let me = site.master.me(&alice).await.unwrap();
    assert_eq!(me.usage.vnodes, 3);
    // Each node has an address of alice's network, all different.
    let cluster = site.master.show_cluster(&alice, None, "c1").await.unwrap();
    let mut addresses: Vec<_> = cluster.nodes.iter().map(|n| n.address.unwrap()).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 3);
    // The same name again is a conflict, and nothing more is reserved.
    assert_eq!(status(&site.create(&alice, "c1", 1).await), 409);
    assert_eq!(site.master.me(&alice).await.unwrap().usage.vnodes, 3);
    // Over the quota (4 cores by default) is refused as such, before anything is placed.
    assert_eq!(status(&site.create(&alice, "c2", 2).await), 422);
    assert_eq!(site.master.me(&alice).await.unwrap().usage.vnodes, 3);
}

#[tokio::test]
async fn who_may_do_what_to_a_cluster() {
    let site = site(8).await;
    let (alice, bob, root) = (
        site.user("alice").await,
        site.user("bob").await,
        site.root(),
    );
    let op = site
        .create(&alice, "c1", 2)
        .await
        .unwrap()
        .operation
        .operation
        .id;
    let carol = site.login("carol").await;
    site.set_status("carol", AccountStatus::Applying).await;
    let carol_applying = site.master.authenticate(&carol).await.unwrap();

    // (who, acting on alice's cluster with ?user=alice, expected status of each action)
    let master = &site.master;
    for (who, caller, expected, port) in [
        ("the owner", &alice, 200, 22),
        ("another user", &bob, 403, 23),
        ("an administrator", &root, 200, 24),
        ("an account waiting for approval", &carol_applying, 403, 25),
    ] {
        let owner = Some("alice");
        let scaled_out = status(&master.scale_out(caller, owner, "c1").await);
        let cluster = master.show_cluster(&root, owner, "c1").await.unwrap();
        let last = cluster.nodes.last().unwrap().index;
        let map = MapPortRequest {
            port,
            public_port: None,
        };
        let answers = [
            (
                "show",
                status(&master.show_cluster(caller, owner, "c1").await),
            ),
            ("list", status(&master.list_clusters(caller, owner).await)),
            (
                "stop",
                status(&master.set_cluster_state(caller, owner, "c1", false).await),
            ),
            (
                "start",
                status(&master.set_cluster_state(caller, owner, "c1", true).await),
            ),
            ("scale out", scaled_out),
            (
                "scale in",
                status(&master.scale_in(caller, owner, "c1", last).await),
            ),
            (
                "map a port",
                status(&master.map_port(caller, owner, "c1", 0, &map, None).await),
            ),
            (
                "list ports",
                status(&master.list_ports(caller, owner, None).await),
            ),
        ];
        for (action, answer) in answers {
            assert_eq!(answer, expected, "{who}: {action}");
        }
    }
    // Without ?user=, another user's cluster is simply not there, and neither is its
    // operation; the owner and administrators see it.
    assert_eq!(status(&master.show_cluster(&bob, None, "c1").await), 404);
    assert!(master.list_clusters(&bob, None).await.unwrap().is_empty());
    let wait = Duration::ZERO;
    assert_eq!(status(&master.operation(&bob, &op, wait).await), 404);
    assert_eq!(status(&master.operation(&alice, &op, wait).await), 200);
    assert_eq!(status(&master.operation(&root, &op, wait).await), 200);
    // Only administrators drain hosts, list everyone's vnodes or see the hosts.
    assert_eq!(status(&master.drain(&alice, "tb1", true).await), 403);
    assert_eq!(status(&master.list_vnodes(&alice).await), 403);
    assert_eq!(status(&master.hosts(&bob).await), 403);
    assert_eq!(status(&master.hosts(&root).await), 200);
    // An account waiting for approval creates nothing; once approved it may.
    assert_eq!(status(&site.create(&carol_applying, "c9", 1).await), 403);
    site.set_status("carol", AccountStatus::Normal).await;
    let carol = site.master.authenticate(&carol).await.unwrap();
    assert_eq!(status(&site.create(&carol, "c9", 1).await), 200);
    // Another user deletes nothing of alice's; the owner does (with force while it runs).
    assert_eq!(
        status(&master.delete_cluster(&bob, Some("alice"), "c1", true).await),
        403
    );
    assert_eq!(
        status(&master.delete_cluster(&bob, None, "c1", true).await),
        404
    );
    assert_eq!(
        status(&master.delete_cluster(&alice, None, "c1", true).await),
        200
    );
}

#[tokio::test]
async fn a_locked_account_is_out_at_once() {
    let site = site(8).await;
    let token = site.login("alice").await;
    let alice = site.master.authenticate(&token).await.unwrap();
    site.create(&alice, "c1", 1).await.unwrap();
    site.set_status("alice", AccountStatus::Locked).await;
    // Its session token no longer opens anything, and it cannot log in again.
    assert_eq!(status(&site.master.authenticate(&token).await), 401);
    let login = site
        .master
        .login("alice", "alice-password-1", "127.0.0.1")
        .await;
    assert_eq!(status(&login), 403);
}

#[tokio::test]
async fn concurrent_creates_never_exceed_the_quota() {
    let site = site(64).await;
    let alice = site.user("alice").await;
    // Her network exists after a first node, so that the creates below run in step
    // (a first create also claims the network, which staggers them).
    site.create(&alice, "first", 1).await.unwrap();
    // The default group allows 4 cores: of five creates of one 1-core node at once, exactly
    // three fit.
    let creates = (0..5).map(|i| {
        let site = &site;
        let alice = alice.clone();
        async move { site.create(&alice, &format!("q{i}"), 1).await }
    });
    let results = futures_util::future::join_all(creates).await;
    let statuses: Vec<u16> = results.iter().map(status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 422),
        "the others are refused for the quota: {statuses:?}"
    );
    let me = site.master.me(&alice).await.unwrap();
    assert_eq!(me.usage.vnodes, 4);
    assert_eq!(me.usage.cpu_millis, 4000);
    assert_eq!(
        site.master.list_clusters(&alice, None).await.unwrap().len(),
        4
    );
}

#[tokio::test]
async fn hosts_fill_up_and_drains_move_new_nodes_away() {
    // Two hosts of 2 GiB: four nodes of the default 1 GiB fit, then no more (memory is not
    // overcommitted by default).
    let site = site(2).await;
    let root = site.root();
    let alice = site.user("alice").await;
    site.master.drain(&root, "tb1", true).await.unwrap();
    site.create(&alice, "d1", 2).await.unwrap();
    assert_eq!(site.hosts_of("alice", "d1").await, ["tb2", "tb2"]);
    site.master.drain(&root, "tb1", false).await.unwrap();
    let bob = site.user("bob").await;
    site.create(&bob, "b1", 2).await.unwrap();
    assert_eq!(site.hosts_of("bob", "b1").await, ["tb1", "tb1"]);
    let refused = site.create(&bob, "b2", 1).await;
    assert_eq!(status(&refused), 422, "{:?}", refused.err());
    assert!(matches!(refused, Err(ApiError::NoCapacity(_))));
}

#[tokio::test]
async fn a_retried_create_returns_the_first_operation() {
    let site = site(8).await;
    let alice = site.user("alice").await;
    let request = CreateClusterRequest {
        name: "idem".into(),
        size: Some(2),
        image: None,
        cpu_millis: None,
        memory_bytes: None,
        disk_bytes: None,
    };
    let first = site
        .master
        .create_cluster(&alice, &request, Some("key-1"))
        .await
        .unwrap();
    let again = site
        .master
        .create_cluster(&alice, &request, Some("key-1"))
        .await
        .unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.operation.operation.id, again.operation.operation.id);
    assert_eq!(site.master.me(&alice).await.unwrap().usage.vnodes, 2);
    let bad_key = site
        .master
        .create_cluster(&alice, &request, Some("no spaces"))
        .await;
    assert_eq!(status(&bad_key), 400);
    // The key is the user's own: bob's same key makes bob's cluster.
    let bob = site.user("bob").await;
    let bobs = site
        .master
        .create_cluster(&bob, &request, Some("key-1"))
        .await
        .unwrap();
    assert!(!bobs.replayed);
    assert!(site.store.cluster("bob", "idem").await.unwrap().is_some());
}

#[tokio::test]
async fn accounts_are_administered_by_administrators_only() {
    let site = site(8).await;
    let (alice, bob, root) = (
        site.user("alice").await,
        site.user("bob").await,
        site.root(),
    );
    let master = &site.master;
    let dave = NewUser {
        name: "dave".into(),
        password: Some("Dave-Secret-4417-q".into()),
        group: None,
        auth: None,
    };
    assert_eq!(status(&master.create_user(&bob, &dave).await), 403);
    assert_eq!(status(&master.list_users(&bob).await), 403);
    assert_eq!(status(&master.show_user(&bob, "alice").await), 403);
    assert_eq!(status(&master.show_user(&bob, "bob").await), 200);
    let lock = UserPatch {
        status: Some(AccountStatus::Locked),
        ..UserPatch::default()
    };
    assert_eq!(
        status(&master.update_user(&bob, "alice", &lock, "127.0.0.1").await),
        403
    );
    // Not even their own group or status: only a local password is theirs to change.
    let promote = UserPatch {
        group: Some("admin".into()),
        ..UserPatch::default()
    };
    assert_eq!(
        status(&master.update_user(&bob, "bob", &promote, "127.0.0.1").await),
        403
    );
    assert!(
        !master
            .me(&site
                .master
                .authenticate(&site.login("bob").await)
                .await
                .unwrap())
            .await
            .unwrap()
            .admin
    );
    assert_eq!(status(&master.delete_user(&bob, "alice").await), 403);
    assert_eq!(status(&master.delete_group(&alice, "primary").await), 403);
    // An administrator does all of it.
    assert_eq!(master.create_user(&root, &dave).await.unwrap().user, "dave");
    let names: Vec<String> = master
        .list_users(&root)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user)
        .collect();
    for name in ["root", "alice", "bob", "dave"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    let to_primary = UserPatch {
        group: Some("primary".into()),
        ..UserPatch::default()
    };
    let alice_now = master
        .update_user(&root, "alice", &to_primary, "127.0.0.1")
        .await
        .unwrap();
    assert_eq!(alice_now.group, "primary");
    assert_eq!(status(&master.delete_user(&root, "dave").await), 200);
    assert_eq!(status(&master.show_user(&root, "dave").await), 404);
}

#[tokio::test]
async fn a_local_password_changes_only_with_the_current_one_and_ends_other_sessions() {
    let site = site(8).await;
    let master = &site.master;
    let old = "Dave-Secret-4417-q";
    let dave = NewUser {
        name: "dave".into(),
        password: Some(old.into()),
        group: None,
        auth: None,
    };
    master.create_user(&site.root(), &dave).await.unwrap();
    let first = master.login("dave", old, "127.0.0.1").await.unwrap().token;
    let second = master.login("dave", old, "127.0.0.2").await.unwrap().token;
    let caller = master.authenticate(&first).await.unwrap();
    let change = |current: Option<&str>| UserPatch {
        password: Some("Dave-Newer-9921-z".into()),
        current_password: current.map(str::to_owned),
        ..UserPatch::default()
    };
    // A session alone cannot take the account: the current password is asked for.
    assert_eq!(
        status(
            &master
                .update_user(&caller, "dave", &change(None), "127.0.0.1")
                .await
        ),
        422
    );
    let wrong = master
        .update_user(&caller, "dave", &change(Some("not-it")), "127.0.0.1")
        .await;
    assert!(
        matches!(&wrong, Err(ApiError::Input(e)) if e.code == "wrong_password"),
        "a wrong current password is refused as such: {:?}",
        wrong.err()
    );
    master
        .update_user(&caller, "dave", &change(Some(old)), "127.0.0.1")
        .await
        .unwrap();
    // The old password opens nothing; the other session has ended, this one goes on.
    assert_eq!(status(&master.login("dave", old, "127.0.0.1").await), 401);
    assert_eq!(status(&master.authenticate(&second).await), 401);
    assert_eq!(status(&master.authenticate(&first).await), 200);
    assert_eq!(
        status(&master.login("dave", "Dave-Newer-9921-z", "127.0.0.1").await),
        200
    );
    // A PAM account's password is the system's: not changed here.
    let alice = site.user("alice").await;
    let pam = master
        .update_user(
            &alice,
            "alice",
            &change(Some("alice-password-1")),
            "127.0.0.1",
        )
        .await;
    assert_eq!(status(&pam), 422);
}

#[tokio::test]
async fn api_tokens_belong_to_their_owner() {
    let site = site(8).await;
    let (alice, bob) = (site.user("alice").await, site.user("bob").await);
    let master = &site.master;
    let token = master.create_api_token(&alice, "ci").await.unwrap();
    assert_eq!(
        master.authenticate(&token.token).await.unwrap().name(),
        "alice"
    );
    let listed = master.list_tokens(&alice).await.unwrap();
    assert!(listed.iter().any(|t| t.id == token.record.id));
    assert!(
        !master
            .list_tokens(&bob)
            .await
            .unwrap()
            .iter()
            .any(|t| t.id == token.record.id)
    );
    // Another user cannot revoke it (nor learn that it exists).
    assert_eq!(
        status(&master.revoke_token(&bob, &token.record.id).await),
        404
    );
    assert_eq!(status(&master.authenticate(&token.token).await), 200);
    master.revoke_token(&alice, &token.record.id).await.unwrap();
    assert_eq!(status(&master.authenticate(&token.token).await), 401);
}

#[tokio::test]
async fn concurrent_creates_never_overfill_a_host() {
    // Two hosts of 2 GiB hold four nodes of the default 1 GiB. Three users have one each;
    // then each asks for one more at once, and only one of them fits.
    let site = site(2).await;
    let mut users = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let caller = site.user(name).await;
        site.create(&caller, "first", 1).await.unwrap();
        users.push(caller);
    }
    let creates = users.iter().map(|caller| site.create(caller, "second", 1));
    let results = futures_util::future::join_all(creates).await;
    let statuses: Vec<u16> = results.iter().map(status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    for refused in results.iter().filter(|r| r.is_err()) {
        assert!(
            matches!(refused, Err(ApiError::NoCapacity(_))),
            "refused for room, not anything else: {:?}",
            refused.as_ref().err()
        );
    }
    let allocations = site.store.allocations().await.unwrap();
    for host in ["tb1", "tb2"] {
        assert_eq!(
            allocations[host].memory_bytes,
            2 * GIB,
            "{host}: {allocations:?}"
        );
        assert_eq!(allocations[host].vnodes, 2, "{host}: {allocations:?}");
    }
}

#[tokio::test]
async fn who_may_do_what_to_images_ports_and_system_images() {
    let site = site(8).await;
    let (alice, bob, root) = (
        site.user("alice").await,
        site.user("bob").await,
        site.root(),
    );
    site.create(&alice, "c1", 1).await.unwrap();
    let carol = site.login("carol").await;
    site.set_status("carol", AccountStatus::Applying).await;
    let carol = site.master.authenticate(&carol).await.unwrap();
    let master = &site.master;
    let save = |name: &str| SaveImageRequest {
        cluster: "c1".into(),
        node: 0,
        name: name.into(),
        description: String::new(),
        force: false,
    };
    let alice_s = Some("alice");
    // Saving alice's node: hers and administrators' to do, nobody else's.
    assert_eq!(
        status(&master.save_image(&bob, alice_s, &save("b")).await),
        403
    );
    assert_eq!(
        status(&master.save_image(&carol, alice_s, &save("c")).await),
        403
    );
    assert_eq!(
        status(&master.save_image(&bob, None, &save("b")).await),
        404
    );
    assert_eq!(
        status(&master.save_image(&alice, None, &save("mine")).await),
        200
    );
    assert_eq!(
        status(&master.save_image(&root, alice_s, &save("root")).await),
        200
    );
    // A private image is seen by its owner and administrators only.
    let names = |images: Vec<ImageView>| -> Vec<String> {
        images.into_iter().map(|i| i.reference).collect()
    };
    let seen = names(master.list_images(&bob, false).await.unwrap());
    assert!(!seen.contains(&"alice/mine".to_owned()), "{seen:?}");
    let wait = Duration::ZERO;
    assert_eq!(
        status(&master.show_image(&bob, "alice", "mine", wait).await),
        404
    );
    assert_eq!(status(&master.list_images(&bob, true).await), 403);
    assert_eq!(status(&master.list_images(&root, true).await), 200);
    // Only the owner (or an administrator) shares, describes or deletes it.
    let share = ImagePatch {
        public: Some(true),
        description: None,
    };
    assert_eq!(
        status(&master.update_image(&bob, "alice", "mine", &share).await),
        403
    );
    assert_eq!(
        status(&master.delete_image(&bob, "alice", "mine").await),
        403
    );
    let shared = master.update_image(&alice, "alice", "mine", &share).await;
    assert!(shared.unwrap().record.public);
    // System images are the administrators' to update.
    let update = SystemImageUpdateRequest {
        from: "alice/mine".into(),
    };
    assert_eq!(
        status(&master.update_system_image(&alice, "base", &update).await),
        403
    );
    assert_ne!(
        status(&master.update_system_image(&root, "base", &update).await),
        403
    );
    // Port mappings: nobody unmaps another user's.
    let map = MapPortRequest {
        port: 22,
        public_port: None,
    };
    let mapped = master
        .map_port(&alice, None, "c1", 0, &map, None)
        .await
        .unwrap();
    let public_port = mapped.mapping.public_port;
    assert_eq!(
        status(&master.unmap_port(&bob, alice_s, public_port).await),
        403
    );
    // Without ?user=, bob unmaps his own port of that number, of which he has none.
    let _ = master.unmap_port(&bob, None, public_port).await;
    let left = master.list_ports(&alice, None, None).await.unwrap();
    assert_eq!(left.len(), 1, "alice's mapping stays: {left:?}");
    assert_eq!(
        status(&master.unmap_port(&alice, None, public_port).await),
        200
    );
}
