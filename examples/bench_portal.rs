//! The measuring half of `tools/bench-portal` (issue 6). Subcommands:
//!
//! - `render`: every portal page, requested one after another with a logged-in browser's
//!   session cookie (as a browser sends it), `--rounds` times each after `--warmup` unmeasured
//!   requests; latency is from sending the request to the last byte of the page, over a
//!   kept-alive connection, so it is the master's whole work for the page (authentication,
//!   the etcd reads of its actions, rendering) plus one network round trip. Every answer must
//!   be 200 and HTML, or the run fails.
//!
//! - `keystroke`: the web terminal's round trip. A WebSocket to the master's terminal of a
//!   node (as the browser opens it), and, as the baseline, one straight to the node's worker
//!   agent (what the master relays to); on each, once the shell's prompt is there, `--rounds`
//!   times: one key (`x`) sent as a binary frame, timed until its echo comes back; the line
//!   is cleared (Ctrl-U) every 50 keys.
//! - `sessions`: `--count` terminals opened at once through the master (spread over the
//!   cluster's nodes), each running `echo ready` and waiting for it, then each ended with
//!   `exit`; the master's and the workers' resident memory is read (by `tools/bench-portal`,
//!   through the testbed) before, with all open, and after.
//!
//! - `exec`: a command's round trip (`true` in node 0, `--rounds` times each): through the API
//!   (this machine → master → agent, the master dialling the agent over mutual TLS for each
//!   command), straight to the agent as a master with a new TLS connection each time (what
//!   the master does), over one kept-alive connection (the command alone), and the TLS
//!   handshake alone (a new connection, no request): what mutual TLS adds to a command.
//!
//! Prints Markdown on stdout and progress on stderr. Run through `tools/bench-portal`.

use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use docklet::master::tls::{self, HttpsConnector};

#[derive(Parser)]
#[command(about = "Measurements of tools/bench-portal (issue 6)")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Times each page; prints one Markdown table.
    Render {
        /// The portal, e.g. https://portal.docklet.test:8000
        #[arg(long)]
        portal: String,
        /// A session token (the value of the __Host-docklet_session cookie).
        #[arg(long)]
        session: String,
        /// Paths to time, e.g. / /clusters/bench /account
        #[arg(required = true)]
        paths: Vec<String>,
        #[arg(long, default_value_t = 200)]
        rounds: usize,
        #[arg(long, default_value_t = 20)]
        warmup: usize,
    },
    /// Key-to-echo round trips through the master and straight to the agent.
    Keystroke {
        /// wss://.../api/v1/clusters/NAME/nodes/0/terminal
        #[arg(long)]
        master_url: String,
        /// The user's bearer token.
        #[arg(long)]
        token: String,
        /// The host running the node (its agent is dialled as a master dials it).
        #[arg(long)]
        agent_host: String,
        /// IP:8001 of that host's agent.
        #[arg(long)]
        agent_address: String,
        /// The node's vnode id.
        #[arg(long)]
        vnode: String,
        /// A directory with a master's identity (ca.pem, master.pem, master.key).
        #[arg(long)]
        agent_identity: std::path::PathBuf,
        #[arg(long, default_value_t = 500)]
        rounds: usize,
    },
    /// Times commands through the API and straight to the agent.
    Exec {
        /// The portal, e.g. https://portal.docklet.test:8000
        #[arg(long)]
        portal: String,
        /// The user's bearer token.
        #[arg(long)]
        token: String,
        /// The user's cluster whose node 0 runs the commands.
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        agent_host: String,
        #[arg(long)]
        agent_address: String,
        /// Node 0's vnode id.
        #[arg(long)]
        vnode: String,
        /// A directory with a master's identity (ca.pem, master.pem, master.key).
        #[arg(long)]
        agent_identity: std::path::PathBuf,
        #[arg(long, default_value_t = 200)]
        rounds: usize,
    },
    /// Opens `count` terminals at once over the given URLs, then ends them.
    Sessions {
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// Terminal URLs, one per node; sessions are spread over them in turn.
        #[arg(required = true)]
        urls: Vec<String>,
        /// A command to run (and wait for) with every session open, e.g. to read memory.
        #[arg(long)]
        while_open: Option<String>,
    },
}

/// A connection for a WebSocket: TLS to the portal (`wss://`), plain TCP to an agent (`ws://`).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Socket = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// The portal's connector, verifying its certificate against `$DOCKLET_CA` (default the
/// testbed's site CA).
fn connector() -> anyhow::Result<HttpsConnector> {
    let ca = std::env::var_os("DOCKLET_CA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/lib/docklet-testbed/site-ca.pem".into());
    let config =
        tls::client_config(&ca).context("the CA to verify the portal with ($DOCKLET_CA)")?;
    Ok(HttpsConnector::new(config))
}

/// Who opens a terminal: a user with a token (through the portal), or a master with its
/// identity, straight to the agent of `host` at `address`.
enum Opener<'a> {
    Token(&'a str),
    Master {
        identity: &'a std::path::Path,
        host: &'a str,
        address: &'a str,
    },
}

async fn open_terminal(url: &str, opener: &Opener<'_>) -> anyhow::Result<Socket> {
    let mut request = url.into_client_request()?;
    if let Opener::Token(token) = opener {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let uri = request.uri().clone();
    let host = uri.host().unwrap_or_default().to_owned();
    let stream: Box<dyn Io> = if let Opener::Master {
        identity,
        host,
        address,
    } = opener
    {
        let config = docklet::pki::agent_client_files(identity)
            .current()
            .map_err(|e| anyhow!("{}: {e}", identity.display()))?;
        let tcp = tokio::net::TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        let name =
            rustls::pki_types::ServerName::try_from(docklet::pki::Role::Worker.dns_name(host))?;
        Box::new(
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?,
        )
    } else if uri.scheme_str() == Some("wss") {
        let port = uri.port_u16().unwrap_or(443);
        Box::new(connector()?.connect(&host, port).await?)
    } else {
        let port = uri.port_u16().unwrap_or(80);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        Box::new(tcp)
    };
    let (socket, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(socket)
}

/// Reads frames until the terminal's output (binary frames) contains `wanted`.
async fn read_until(socket: &mut Socket, wanted: &[u8]) -> anyhow::Result<()> {
    let mut seen: Vec<u8> = Vec::new();
    let limit = std::time::Duration::from_secs(30);
    loop {
        let frame = tokio::time::timeout(limit, socket.next())
            .await
            .map_err(|_| anyhow!("no {:?} within 30 s", String::from_utf8_lossy(wanted)))?
            .ok_or_else(|| anyhow!("the terminal closed"))??;
        match frame {
            Message::Binary(data) => {
                seen.extend_from_slice(&data);
                if seen.windows(wanted.len()).any(|w| w == wanted) {
                    return Ok(());
                }
                // Keep only what could still start a match.
                if seen.len() > 4096 {
                    seen.drain(..seen.len() - wanted.len());
                }
            }
            Message::Text(text) if text.contains("\"exit\"") => bail!("the shell ended: {text}"),
            Message::Close(_) => bail!("the terminal closed"),
            _ => {}
        }
    }
}

/// Round trips of one key on a fresh terminal at `url`, sorted, in ms.
async fn key_round_trips(
    url: &str,
    opener: &Opener<'_>,
    rounds: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut socket = open_terminal(url, opener).await?;
    // A prompt of our own, so its arrival is unmistakable.
    socket
        .send(Message::Binary(b"PS1='rea''dy> '\n".to_vec().into()))
        .await?;
    read_until(&mut socket, b"ready> ").await?;
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        if round % 50 == 49 {
            socket.send(Message::Binary(vec![0x15].into())).await?; // Ctrl-U
        }
        let start = Instant::now();
        socket.send(Message::Binary(b"x".to_vec().into())).await?;
        read_until(&mut socket, b"x").await?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = socket
        .send(Message::Binary(b"\x15exit\n".to_vec().into()))
        .await;
    let _ = socket.close(None).await;
    times.sort_by(f64::total_cmp);
    Ok(times)
}

async fn keystroke(
    master_url: &str,
    token: &str,
    agent: Opener<'_>,
    vnode: &str,
    rounds: usize,
) -> anyhow::Result<()> {
    println!("| path | keys | p50 ms | p95 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let agent_url = format!("wss://agent/agent/v1/vnodes/{vnode}/pty");
    for (label, url, opener) in [
        (
            "browser → master → agent → pty (the web terminal)",
            master_url,
            Opener::Token(token),
        ),
        (
            "straight to the agent → pty, as a master (baseline)",
            agent_url.as_str(),
            agent,
        ),
    ] {
        eprintln!("keystroke: {label}");
        let t = key_round_trips(url, &opener, rounds).await?;
        println!(
            "| {label} | {rounds} | {:.2} | {:.2} | {:.2} | {:.2} |",
            pct(&t, 50.0),
            pct(&t, 95.0),
            pct(&t, 99.0),
            t.last().copied().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

async fn sessions(
    token: &str,
    count: usize,
    urls: &[String],
    while_open: Option<&str>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let opened = futures_util::future::join_all((0..count).map(|i| {
        let url = urls[i % urls.len()].clone();
        async move {
            let mut socket = open_terminal(&url, &Opener::Token(token)).await?;
            socket
                .send(Message::Binary(b"echo rea''dy\n".to_vec().into()))
                .await?;
            read_until(&mut socket, b"ready").await?;
            anyhow::Ok(socket)
        }
    }))
    .await;
    let mut sockets = Vec::new();
    for result in opened {
        sockets.push(result?);
    }
    let open_secs = start.elapsed().as_secs_f64();
    eprintln!("sessions: {count} open after {open_secs:.1} s");
    if let Some(command) = while_open {
        let status = std::process::Command::new("sh")
            .args(["-c", command])
            .status()?;
        if !status.success() {
            bail!("{command}: {status}");
        }
    }
    let start = Instant::now();
    let ended = futures_util::future::join_all(sockets.into_iter().map(|mut socket| async move {
        socket
            .send(Message::Binary(b"exit\n".to_vec().into()))
            .await?;
        // The last frame names the exit status; then the socket closes.
        while let Some(frame) = socket.next().await {
            if let Message::Text(text) = frame?
                && text.contains("\"exit\"")
            {
                break;
            }
        }
        anyhow::Ok(())
    }))
    .await;
    for result in ended {
        result?;
    }
    println!(
        "{count} sessions opened (each until its first output) in {open_secs:.2} s, ended in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

type HttpClient = Client<HttpsConnector, Full<Bytes>>;

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn get_page(client: &HttpClient, url: &str, session: &str) -> anyhow::Result<(f64, usize)> {
    let request = hyper::Request::get(url)
        .header("cookie", format!("__Host-docklet_session={session}"))
        .header("accept", "text/html")
        .body(Full::new(Bytes::new()))?;
    let start = Instant::now();
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let html = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    let body = response.into_body().collect().await?.to_bytes();
    let elapsed = start.elapsed().as_secs_f64() * 1000.0;
    if status != 200 || !html {
        bail!(
            "{url} answered {status} ({}): {}",
            if html { "html" } else { "not html" },
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
    Ok((elapsed, body.len()))
}

async fn render(
    portal: &str,
    session: &str,
    paths: &[String],
    rounds: usize,
    warmup: usize,
) -> anyhow::Result<()> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector()?);
    println!("| page | p50 ms | p95 ms | p99 ms | max ms | bytes |");
    println!("|---|---:|---:|---:|---:|---:|");
    for path in paths {
        let url = format!("{}{path}", portal.trim_end_matches('/'));
        eprintln!("render: {path}");
        for _ in 0..warmup {
            get_page(&client, &url, session)
                .await
                .with_context(|| format!("warming up {path}"))?;
        }
        let mut times = Vec::with_capacity(rounds);
        let mut size = 0;
        for _ in 0..rounds {
            let (ms, bytes) = get_page(&client, &url, session).await?;
            times.push(ms);
            size = bytes;
        }
        times.sort_by(f64::total_cmp);
        println!(
            "| `{path}` | {:.1} | {:.1} | {:.1} | {:.1} | {size} |",
            pct(&times, 50.0),
            pct(&times, 95.0),
            pct(&times, 99.0),
            times.last().copied().unwrap_or(f64::NAN),
        );
    }
    Ok(())
}

/// What a command through an agent needs: where, and who asks.
struct AgentTarget<'a> {
    host: &'a str,
    address: &'a str,
    identity: &'a std::path::Path,
}

type AgentSender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl AgentTarget<'_> {
    /// A new mutual-TLS connection to the agent, as a master opens one.
    async fn connect(
        &self,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let config = docklet::pki::agent_client_files(self.identity)
            .current()
            .map_err(|e| anyhow!("{}: {e}", self.identity.display()))?;
        let tcp = tokio::net::TcpStream::connect(self.address).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(
            docklet::pki::Role::Worker.dns_name(self.host),
        )?;
        Ok(tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?)
    }

    async fn sender(&self) -> anyhow::Result<AgentSender> {
        let stream = self.connect().await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }
}

async fn agent_exec(sender: &mut AgentSender, vnode: &str) -> anyhow::Result<()> {
    let request = hyper::Request::post(format!("/agent/v1/vnodes/{vnode}/exec"))
        .header("host", "agent")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"argv":["true"]}"#)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != 200 || !body.starts_with(br#"{"exit_code":0"#) {
        bail!(
            "the agent answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

async fn exec(
    portal: &str,
    token: &str,
    cluster: &str,
    agent: AgentTarget<'_>,
    vnode: &str,
    rounds: usize,
) -> anyhow::Result<()> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector()?);
    let url = format!(
        "{}/api/v1/clusters/{cluster}/nodes/0/exec",
        portal.trim_end_matches('/')
    );
    println!("| path | commands | p50 ms | p95 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    let report = |label: &str, mut times: Vec<f64>| {
        times.sort_by(f64::total_cmp);
        println!(
            "| {label} | {rounds} | {:.2} | {:.2} | {:.2} |",
            pct(&times, 50.0),
            pct(&times, 95.0),
            times.last().copied().unwrap_or(f64::NAN)
        );
    };
    // The paths take turns round by round, so a slow spell of the machine hits them alike.
    let mut api = Vec::new();
    let mut fresh = Vec::new();
    let mut kept = Vec::new();
    let mut handshake = Vec::new();
    let mut kept_sender = agent.sender().await?;
    for round in 0..rounds + 5 {
        let start = Instant::now();
        let request = hyper::Request::post(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"argv":["true"]}"#)))?;
        let response = client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != 200 {
            bail!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let t_api = start.elapsed().as_secs_f64() * 1000.0;

        let start = Instant::now();
        let mut sender = agent.sender().await?;
        agent_exec(&mut sender, vnode).await?;
        let t_fresh = start.elapsed().as_secs_f64() * 1000.0;

        let start = Instant::now();
        agent_exec(&mut kept_sender, vnode).await?;
        let t_kept = start.elapsed().as_secs_f64() * 1000.0;

        let start = Instant::now();
        drop(agent.connect().await?);
        let t_handshake = start.elapsed().as_secs_f64() * 1000.0;
        // The first rounds warm caches and connections up.
        if round >= 5 {
            api.push(t_api);
            fresh.push(t_fresh);
            kept.push(t_kept);
            handshake.push(t_handshake);
        }
    }
    report(
        "API → master → agent (new mutual-TLS connection) → exec unit",
        api,
    );
    report(
        "straight to the agent, new mutual-TLS connection (as the master)",
        fresh,
    );
    report("straight to the agent, one kept-alive connection", kept);
    report("mutual-TLS handshake alone (no request)", handshake);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Render {
            portal,
            session,
            paths,
            rounds,
            warmup,
        } => render(&portal, &session, &paths, rounds, warmup).await,
        Command::Keystroke {
            master_url,
            token,
            agent_host,
            agent_address,
            vnode,
            agent_identity,
            rounds,
        } => {
            let agent = Opener::Master {
                identity: &agent_identity,
                host: &agent_host,
                address: &agent_address,
            };
            keystroke(&master_url, &token, agent, &vnode, rounds).await
        }
        Command::Exec {
            portal,
            token,
            cluster,
            agent_host,
            agent_address,
            vnode,
            agent_identity,
            rounds,
        } => {
            let agent = AgentTarget {
                host: &agent_host,
                address: &agent_address,
                identity: &agent_identity,
            };
            exec(&portal, &token, &cluster, agent, &vnode, rounds).await
        }
        Command::Sessions {
            token,
            count,
            urls,
            while_open,
        } => sessions(&token, count, &urls, while_open.as_deref()).await,
    }
}
