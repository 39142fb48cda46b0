//! The measuring half of `tools/bench-portal` (issue 6). Subcommands:
//!
//! - `render`: every portal page, requested one after another with a logged-in browser's
//!   session cookie (as a browser sends it), `--rounds` times each after `--warmup` unmeasured
//!   requests; latency is from sending the request to the last byte of the page, over a
//!   kept-alive connection, so it is the master's whole work for the page (authentication,
//!   the etcd reads of its actions, rendering) plus one network round trip. Every answer must
//!   be 200 and HTML, or the run fails.
//!
//! Prints Markdown on stdout and progress on stderr. Run through `tools/bench-portal`.

use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

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
        /// The portal, e.g. http://10.213.0.11:8000
        #[arg(long)]
        portal: String,
        /// A session token (the value of the docklet_session cookie).
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
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

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
        .header("cookie", format!("docklet_session={session}"))
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
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
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
    }
}
