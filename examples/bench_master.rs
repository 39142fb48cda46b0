//! The measuring half of `tools/bench-master` (issue 5). Two subcommands:
//!
//! - `load`: an open-loop HTTP client that sends GETs at a fixed rate (200 requests/s by
//!   default) for a fixed time and reports latency percentiles. Requests are sent on schedule
//!   whether or not earlier ones have answered (one task per request, connections pooled and
//!   kept alive), so a slow answer cannot lower the offered rate. Latency is the service time,
//!   from sending the request to the last byte of the answer; how late each send was against
//!   its schedule is reported too, to show that the client held the rate.
//! - `scale`: the scheduler at scale. On an etcd holding nothing for the configured cluster
//!   name and a `docklet-master` already running on it: writes the cluster record, simulated
//!   hosts under one lease, users and API tokens with the crate's own store API; fills the
//!   cluster with vnodes through the master's API (`POST /clusters`, the real create path);
//!   then times, at that scale, the scheduler step of a create in this process (the same etcd
//!   reads as `place_and_write` and `placement::place`) and whole creates through the API, and
//!   reads the master's memory from /proc.
//!
//! Prints Markdown on stdout and progress on stderr. Run through `tools/bench-master`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use docklet::config::Config;
use docklet::master::actions::host_load;
use docklet::master::init;
use docklet::master::tls::{self, HttpsConnector};
use docklet::model::account::{self, Account, TokenKind, TokenRecord};
use docklet::model::host::{Capacity, HostRecord};
use docklet::model::placement::{self, HostLoad};
use docklet::model::quota::{Group, NodeSize, Quota};
use docklet::store::EtcdStore;

const GIB: u64 = 1 << 30;

#[derive(Parser)]
#[command(about = "Measurements of tools/bench-master (issue 5)")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// GET one URL at a fixed rate; prints one Markdown table row.
    Load {
        /// Full URL: https:// (verified against $DOCKLET_CA, default the testbed's site CA)
        /// or http://.
        url: String,
        /// Bearer token for the Authorization header.
        #[arg(long)]
        token: Option<String>,
        /// Requests per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Seconds of measured load.
        #[arg(long, default_value_t = 30)]
        secs: u32,
        /// Seconds of load before, not counted (connections, caches).
        #[arg(long, default_value_t = 2)]
        warmup: u32,
        /// First column of the row.
        #[arg(long, default_value = "GET")]
        label: String,
    },
    /// The scheduler at scale (see the file's header).
    Scale {
        /// The configuration the master runs with (its etcd and cluster name).
        #[arg(long)]
        config: PathBuf,
        /// The master's API, e.g. https://localhost:18090/api/v1
        #[arg(long)]
        api: String,
        /// The master's pid, for VmRSS and VmHWM.
        #[arg(long)]
        master_pid: u32,
        #[arg(long, default_value_t = 1000)]
        hosts: u32,
        #[arg(long, default_value_t = 10_000)]
        vnodes: u32,
        /// Vnodes per user while filling (clusters of `fill_size`).
        #[arg(long, default_value_t = 40)]
        per_user: u32,
        /// Nodes per cluster while filling.
        #[arg(long, default_value_t = 4)]
        fill_size: u32,
        /// Rounds of the in-process scheduler step.
        #[arg(long, default_value_t = 200)]
        rounds: u32,
        /// Creates through the API at scale, for each of the sizes 1 and 4.
        #[arg(long, default_value_t = 100)]
        creates: u32,
        /// Rate and seconds of each read burst at scale.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        burst_secs: u32,
    },
}

type HttpClient = Client<HttpsConnector, Full<Bytes>>;

/// A client for `https://` URLs verified against the CA of `$DOCKLET_CA` (default the
/// testbed's site CA), and plain `http://` ones. With `$DOCKLET_CLIENT_CERT` and
/// `$DOCKLET_CLIENT_KEY` (PEM files) it presents that certificate, as etcd requires.
fn client() -> HttpClient {
    let ca = std::env::var_os("DOCKLET_CA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/docklet-testbed/site-ca.pem"));
    let config = match (
        std::env::var_os("DOCKLET_CLIENT_CERT"),
        std::env::var_os("DOCKLET_CLIENT_KEY"),
    ) {
        (Some(cert), Some(key)) => with_client_certificate(&ca, cert.as_ref(), key.as_ref())
            .unwrap_or_else(|e| panic!("the client certificate ($DOCKLET_CLIENT_CERT): {e:#}")),
        _ => tls::client_config(&ca)
            .unwrap_or_else(|e| panic!("the CA to verify the portal with ($DOCKLET_CA): {e}")),
    };
    Client::builder(TokioExecutor::new()).build(HttpsConnector::new(config))
}

/// A TLS client configuration that trusts `ca` and logs in with `cert` and `key`.
fn with_client_certificate(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).with_context(|| ca.display().to_string())? {
        roots.add(c?)?;
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| cert.display().to_string())?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| key.display().to_string())?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// One request: status and body.
async fn call(
    client: &HttpClient,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, Bytes)> {
    let mut request = hyper::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(json) => {
            request = request.header("content-type", "application/json");
            Full::new(Bytes::from(serde_json::to_vec(json)?))
        }
        None => Full::new(Bytes::new()),
    };
    let response = client.request(request.body(body)?).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// "p50 | p90 | p99 | max" of milliseconds.
fn summary(values: &[f64]) -> String {
    let s = sorted(values.to_vec());
    format!(
        "{:.2} | {:.2} | {:.2} | {:.2}",
        pct(&s, 0.5),
        pct(&s, 0.9),
        pct(&s, 0.99),
        s.last().copied().unwrap_or(f64::NAN)
    )
}

struct LoadResult {
    /// Service times of the measured requests, ms.
    latencies: Vec<f64>,
    /// Non-2xx answers and transport errors among the measured requests.
    errors: usize,
    first_error: Option<String>,
    /// How late each measured send was against its schedule, ms.
    lateness: Vec<f64>,
    /// Measured requests / measured wall time.
    achieved: f64,
}

/// GETs `url` at `rate`/s for `warmup + secs` seconds; the first `warmup` seconds are not counted.
async fn fixed_rate(
    client: &HttpClient,
    url: &str,
    token: Option<&str>,
    rate: u32,
    secs: u32,
    warmup: u32,
) -> LoadResult {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let skip = (rate * warmup) as usize;
    let total = skip + (rate * secs) as usize;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    let mut lateness = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + period * i as u32;
        tokio::time::sleep_until(due).await;
        let late = tokio::time::Instant::now() - due;
        if i >= skip {
            lateness.push(ms(late));
        }
        let (client, url, token) = (client.clone(), url.to_owned(), token.map(str::to_owned));
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let result = call(&client, "GET", &url, token.as_deref(), None).await;
            let took = t0.elapsed();
            (t0, took, result)
        }));
    }
    let mut latencies = Vec::with_capacity(total - skip);
    let mut errors = 0;
    let mut first_error = None;
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for (i, task) in tasks.into_iter().enumerate() {
        let (t0, took, result) = task.await.expect("request task");
        if i < skip {
            continue;
        }
        first = Some(first.map_or(t0, |f| f.min(t0)));
        last = Some(last.map_or(t0, |l| l.max(t0)));
        latencies.push(ms(took));
        let failure = match result {
            Ok((status, _)) if (200..300).contains(&status) => None,
            Ok((status, body)) => Some(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(f) = failure {
            errors += 1;
            first_error.get_or_insert(f);
        }
    }
    let span = match (first, last) {
        (Some(f), Some(l)) if l > f => (l - f).as_secs_f64(),
        _ => f64::NAN,
    };
    let n = latencies.len();
    LoadResult {
        latencies,
        errors,
        first_error,
        lateness,
        // n sends span (n - 1) periods
        achieved: (n.saturating_sub(1)) as f64 / span,
    }
}

/// "| label | requests | errors | rate | p50 | p90 | p99 | max | sends late > 5 ms |"
fn load_row(label: &str, r: &LoadResult) -> String {
    let late = r.lateness.iter().filter(|l| **l > 5.0).count();
    format!(
        "| {label} | {} | {} | {:.1} | {} | {late} (max {:.1} ms) |",
        r.latencies.len(),
        r.errors,
        r.achieved,
        summary(&r.latencies),
        r.lateness.iter().copied().fold(0.0, f64::max)
    )
}

const LOAD_HEADER: &str = "| request | measured | errors | req/s | p50 ms | p90 ms | p99 ms | max ms | sends late > 5 ms |\n|---|---|---|---|---|---|---|---|---|";

/// VmRSS and VmHWM of a process, kB.
fn rss_kb(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Simulated host `i`: three shapes (16, 32 and 64 cores, 4 GiB a core, 1 TB disk free a
/// 16 cores), all with image `base`.
fn sim_host(i: u32, now: u64) -> HostRecord {
    let cpus = 16 << (i % 3);
    HostRecord {
        name: format!("sim{i:04}"),
        addresses: vec![format!(
            "10.{}.{}.{}/8",
            100 + i / 65536,
            (i / 256) % 256,
            i % 256
        )],
        capacity: Capacity {
            cpus,
            memory_bytes: u64::from(cpus) * 4 * GIB,
            disk_free_bytes: u64::from(cpus / 16) * 1000 * 1000 * 1000 * 1000,
        },
        version: docklet::VERSION.to_owned(),
        images: vec!["base".into()],
        image_versions: Default::default(),
        registered_at: now,
    }
}

fn now_secs() -> u64 {
    docklet::master::now_secs()
}

async fn create_cluster(
    client: &HttpClient,
    api: &str,
    token: &str,
    name: &str,
    size: u32,
) -> anyhow::Result<Duration> {
    let body = serde_json::json!({"name": name, "size": size});
    let t0 = Instant::now();
    let (status, answer) = call(
        client,
        "POST",
        &format!("{api}/clusters"),
        Some(token),
        Some(&body),
    )
    .await?;
    let took = t0.elapsed();
    if status != 202 {
        bail!(
            "create {name} (size {size}): HTTP {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(took)
}

struct Scale {
    config: PathBuf,
    api: String,
    master_pid: u32,
    hosts: u32,
    vnodes: u32,
    per_user: u32,
    fill_size: u32,
    rounds: u32,
    creates: u32,
    rate: u32,
    burst_secs: u32,
}

fn rss_line(what: &str, pid: u32) -> anyhow::Result<String> {
    let (rss, hwm) = rss_kb(pid)?;
    Ok(format!(
        "| {what} | {:.1} MiB | {:.1} MiB |",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    ))
}

async fn scale(s: Scale) -> anyhow::Result<()> {
    let config = Config::load(&s.config)?;
    let store = EtcdStore::connect(&config, None, None).await?;
    let client = client();
    let mut rss = vec![rss_line("master started, etcd empty", s.master_pid)?];

    // ---- set up: cluster record, group, users and tokens, hosts ----
    let now = now_secs();
    if store.cluster_info().await?.is_some() {
        bail!(
            "cluster {} already exists in this etcd: start from an empty one",
            config.cluster_name
        );
    }
    init::init_cluster(
        &store,
        &config.cluster_name,
        docklet::VERSION,
        false,
        &config.local_dir().join("generated_password.txt"),
        now,
    )
    .await?;
    let per_user = s.per_user.max(s.fill_size);
    let group = Group {
        name: "benchscale".into(),
        admin: false,
        quota: Quota {
            cpu_millis: 1000 * 1000,
            memory_bytes: 1024 * GIB,
            disk_bytes: 1024 * 1024 * GIB,
            // room for the measured creates (1 + 4 each) on top of the fill
            vnodes: per_user + 8,
            images: 10,
            image_bytes: 64 * GIB,
            port_mappings: 8,
            idle_secs: 0,
        },
        defaults: NodeSize {
            cpu_millis: 1000,
            memory_bytes: GIB,
            disk_bytes: 4 * GIB,
        },
        egress_allow: Vec::new(),
        batch: Default::default(),
    };
    store.put_group(&group, false).await?;
    let clusters_per_user = per_user / s.fill_size;
    let users = s.vnodes.div_ceil(clusters_per_user * s.fill_size);
    let mut tokens = Vec::new();
    let make_token = |user: &str| {
        let secret = format!(
            "{}{}",
            account::TOKEN_PREFIX,
            docklet::pki::random_secret(32)
        );
        let digest = account::token_digest(&secret);
        let record = TokenRecord {
            id: account::token_id(&digest),
            user: user.to_owned(),
            kind: TokenKind::Api,
            name: "bench".into(),
            created_at: now,
            last_used_at: Some(now),
            expires_at: None,
            parent: None,
        };
        (secret, digest, record)
    };
    for u in 0..users {
        let name = format!("benchs{u:04}");
        store
            .create_account(&Account::pam(&name, &group.name, now))
            .await?;
        let (secret, digest, record) = make_token(&name);
        store.put_token(&digest, &record).await?;
        tokens.push(secret);
    }
    let (admin_token, digest, record) = make_token(init::ADMIN_USER);
    store.put_token(&digest, &record).await?;
    let lease = store
        .register_host(&sim_host(0, now), Duration::from_secs(7200))
        .await?;
    for i in 1..s.hosts {
        store.put_host(&sim_host(i, now), lease).await?;
    }
    let listed = store.list_hosts().await?.len();
    eprintln!(
        "bench_master: {listed} hosts, {users} users of {per_user} vnodes; filling to {} vnodes",
        s.vnodes
    );
    rss.push(rss_line(
        &format!("{listed} hosts and {users} users written, no vnode"),
        s.master_pid,
    )?);

    // ---- fill through the API ----
    let mut fill: Vec<(u32, f64)> = Vec::new(); // (vnodes before, ms)
    let mut made = 0u32;
    let started = Instant::now();
    'fill: for c in 0..clusters_per_user {
        for token in &tokens {
            if made >= s.vnodes {
                break 'fill;
            }
            let size = s.fill_size.min(s.vnodes - made);
            let took = create_cluster(&client, &s.api, token, &format!("f{c}"), size).await?;
            fill.push((made, ms(took) / f64::from(size)));
            made += size;
            if made % 1000 < size {
                eprintln!(
                    "bench_master: {made} vnodes after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    let fill_secs = started.elapsed().as_secs_f64();
    rss.push(rss_line(
        &format!("after filling to {made} vnodes ({} creates)", fill.len()),
        s.master_pid,
    )?);

    // ---- the scheduler step in this process, at scale ----
    let size = group.defaults;
    let (mut reads, mut build, mut place1, mut place4) = (vec![], vec![], vec![], vec![]);
    let mut view_reads = vec![];
    let existing = HashMap::new();
    let mut chosen_hosts = 0;
    // The master's path: its watched copy of hosts and allocations (drains read fresh).
    let view = docklet::store::placement_view::PlacementView::default();
    let follower = {
        let (view, store) = (view.clone(), store.clone());
        tokio::spawn(async move { view.follow(&store).await })
    };
    while !view.is_current() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..s.rounds {
        // Without the copy: one transaction at one revision.
        let t = Instant::now();
        store.placement_snapshot().await?;
        view_reads.push(ms(t.elapsed()));
        let t0 = Instant::now();
        let docklet::store::clusters::PlacementSnapshot {
            hosts,
            drained,
            allocations,
        } = view.snapshot(&store).await?;
        let t1 = Instant::now();
        let loads: Vec<HostLoad> = hosts
            .iter()
            .filter(|h| h.images.iter().any(|i| i == "base"))
            .map(|h| host_load(h, &allocations, &drained, &existing))
            .collect();
        let t2 = Instant::now();
        let one = placement::place(&loads, &[size], config.overcommit)?;
        let t3 = Instant::now();
        let four = placement::place(&loads, &[size; 4], config.overcommit)?;
        let t4 = Instant::now();
        chosen_hosts = one.len() + four.len();
        reads.push(ms(t1 - t0));
        build.push(ms(t2 - t1));
        place1.push(ms(t3 - t2));
        place4.push(ms(t4 - t3));
    }
    follower.abort();
    assert_eq!(chosen_hosts, 5);
    let allocated: u32 = store.allocations().await?.values().map(|u| u.vnodes).sum();

    // ---- whole creates through the API, at scale: sizes 1 and 4 alternating ----
    let (mut api1, mut api4) = (vec![], vec![]);
    for i in 0..s.creates as usize {
        let token = &tokens[i % tokens.len()];
        let round = i / tokens.len();
        let one = create_cluster(&client, &s.api, token, &format!("m{round}a"), 1).await?;
        let four = create_cluster(&client, &s.api, token, &format!("m{round}b"), 4).await?;
        api1.push(ms(one));
        api4.push(ms(four));
    }
    let after_creates: u32 = store.allocations().await?.values().map(|u| u.vnodes).sum();
    rss.push(rss_line(
        &format!(
            "after {} more creates ({after_creates} vnodes)",
            2 * s.creates
        ),
        s.master_pid,
    )?);

    // ---- reads at scale: one at a time (service time), then bursts at the rate ----
    let user_token = tokens[0].clone();
    let user_clusters = clusters_per_user + 2;
    let reads_at_scale = [
        (
            format!("GET /clusters (a user with {user_clusters} clusters)"),
            "/clusters",
            &user_token,
        ),
        ("GET /me".to_owned(), "/me", &user_token),
        (
            format!("GET /hosts (administrator, {listed} hosts)"),
            "/hosts",
            &admin_token,
        ),
    ];
    let mut single = Vec::new();
    for (label, path, token) in &reads_at_scale {
        let url = format!("{}{path}", s.api);
        let mut times = Vec::new();
        for _ in 0..50 {
            let t0 = Instant::now();
            let (status, _) = call(&client, "GET", &url, Some(token), None).await?;
            times.push(ms(t0.elapsed()));
            if status != 200 {
                bail!("{label}: HTTP {status}");
            }
        }
        single.push(format!("| {label} | {} |", summary(&times)));
    }
    let mut bursts = Vec::new();
    for (label, path, token) in &reads_at_scale {
        let url = format!("{}{path}", s.api);
        let r = fixed_rate(&client, &url, Some(token), s.rate, s.burst_secs, 1).await;
        if let Some(e) = &r.first_error {
            eprintln!("bench_master: {label}: {} errors, first: {e}", r.errors);
        }
        bursts.push(load_row(label, &r));
    }
    rss.push(rss_line(
        &format!(
            "after the read bursts (3 × {} req/s × {} s)",
            s.rate, s.burst_secs
        ),
        s.master_pid,
    )?);
    tokio::time::sleep(Duration::from_secs(10)).await;
    rss.push(rss_line("10 s later", s.master_pid)?);

    // ---- report ----
    let per = |v: &[f64], n: f64| v.iter().map(|x| x / n).collect::<Vec<_>>();
    println!(
        "Scale: {listed} hosts (lease-bound records, 16/32/64 cores), {made} vnodes filled by {} \
         creates of {} nodes ({users} users) in {fill_secs:.0} s; {allocated} vnodes allocated \
         when the scheduler step was timed.",
        fill.len(),
        s.fill_size
    );
    println!();
    println!("#### Scheduler step in-process, {} rounds (ms)", s.rounds);
    println!();
    println!("| step | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|");
    println!(
        "| without the watched copy: hosts, drains and allocations read in one transaction | {} |",
        summary(&view_reads)
    );
    println!(
        "| the master's path: watched copy of hosts and allocations, drains read | {} |",
        summary(&reads)
    );
    println!(
        "| HostLoad snapshot ({listed} hosts) | {} |",
        summary(&build)
    );
    println!("| `place`, 1 node | {} |", summary(&place1));
    println!("| `place`, 4 nodes | {} |", summary(&place4));
    println!(
        "| `place`, 4 nodes, per vnode | {} |",
        summary(&per(&place4, 4.0))
    );
    let step1: Vec<f64> = (0..reads.len())
        .map(|i| reads[i] + build[i] + place1[i])
        .collect();
    let step4: Vec<f64> = (0..reads.len())
        .map(|i| (reads[i] + build[i] + place4[i]) / 4.0)
        .collect();
    println!(
        "| **reads + snapshot + `place`, per vnode, 1-node cluster** | {} |",
        summary(&step1)
    );
    println!(
        "| **reads + snapshot + `place`, per vnode, 4-node cluster** | {} |",
        summary(&step4)
    );
    println!();
    println!(
        "#### Whole create through the API at scale: `POST /clusters` → 202, {} of each size, alternating (ms)",
        s.creates
    );
    println!();
    println!("| create | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|");
    println!("| 1-node cluster (= per vnode) | {} |", summary(&api1));
    println!("| 4-node cluster | {} |", summary(&api4));
    println!(
        "| **4-node cluster, per vnode** | {} |",
        summary(&per(&api4, 4.0))
    );
    println!();
    println!(
        "#### Filling: `POST /clusters` of {} nodes, per vnode, as the cluster grows (ms)",
        s.fill_size
    );
    println!();
    println!("| vnodes already there | creates | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    let step = (s.vnodes / 5).max(1);
    let mut from = 0;
    while from < made {
        let bucket: Vec<f64> = fill
            .iter()
            .filter(|(before, _)| *before >= from && *before < from + step)
            .map(|(_, t)| *t)
            .collect();
        println!(
            "| {from}–{} | {} | {} |",
            from + step,
            bucket.len(),
            summary(&bucket)
        );
        from += step;
    }
    println!();
    println!("#### Reads at scale, one at a time: 50 of each (ms)");
    println!();
    println!("| request | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|");
    for row in &single {
        println!("{row}");
    }
    println!();
    println!(
        "#### Reads at scale: {} req/s for {} s each, after 1 s unmeasured",
        s.rate, s.burst_secs
    );
    println!();
    println!("{LOAD_HEADER}");
    for row in &bursts {
        println!("{row}");
    }
    println!();
    println!("#### docklet-master memory (/proc/PID/status)");
    println!();
    println!("| when | VmRSS | VmHWM (peak) |");
    println!("|---|---|---|");
    for line in &rss {
        println!("{line}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Load {
            url,
            token,
            rate,
            secs,
            warmup,
            label,
        } => {
            let r = fixed_rate(&client(), &url, token.as_deref(), rate, secs, warmup).await;
            if let Some(e) = &r.first_error {
                eprintln!("bench_master: {label}: {} errors, first: {e}", r.errors);
            }
            println!("{}", load_row(&label, &r));
        }
        Command::Scale {
            config,
            api,
            master_pid,
            hosts,
            vnodes,
            per_user,
            fill_size,
            rounds,
            creates,
            rate,
            burst_secs,
        } => {
            scale(Scale {
                config,
                api,
                master_pid,
                hosts,
                vnodes,
                per_user,
                fill_size,
                rounds,
                creates,
                rate,
                burst_secs,
            })
            .await?
        }
    }
    Ok(())
}
