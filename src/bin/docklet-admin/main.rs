//! `docklet-admin`: local administration of Docklet, over D-Bus only (the system bus policy
//! and the daemons admit root and group `docklet-admin`).
//!
//! Exit codes: [`cli::EXIT_CODES`] (in `--help` and the man page); `exec` exits with the
//! command's own status once the command ran.

mod accounts;
mod bus;
mod cli;
mod config_manual;
mod images;
mod manuals;
mod site;
mod status;
mod tables;
mod vnodes;

use std::process::ExitCode;

use clap::Parser;

use crate::accounts::*;
use crate::bus::*;
use crate::cli::*;
use crate::images::*;
use crate::site::*;
use crate::status::*;
use crate::tables::*;
use crate::vnodes::*;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match args.command {
            Command::Status { json } => status(json).await,
            Command::Wait { daemons, timeout } => status::wait(&daemons, &timeout).await,
            Command::Hosts { json } => hosts(json).await,
            Command::Init { force, yes } => init(force, yes).await,
            Command::Host { action } => match action {
                HostAction::Add { name, valid_for } => host_add(&name, &valid_for).await,
                HostAction::Remove { name } => host_remove(&name).await,
            },
            Command::Join { token } => join(&token).await,
            Command::EtcdCertificate { addresses, names } => etcd_certificate(&addresses, &names),
            Command::Vnodes { all, json } => vnodes(all, json).await,
            Command::Vnode { action } => vnode(action).await,
            Command::Network { user } => network(&user).await,
            Command::Quota(quota) => accounts::quota(quota).await,
            Command::Ports { user, json } => {
                let conn = connect().await?;
                let master = master_proxy(&conn).await?;
                print_listing(
                    master.ports(user.as_deref().unwrap_or("")).await,
                    json,
                    ports_table,
                )
            }
            Command::Jobs { user, ended, json } => {
                let conn = connect().await?;
                let master = master_proxy(&conn).await?;
                print_listing(
                    master.jobs(user.as_deref().unwrap_or(""), ended).await,
                    json,
                    jobs_table,
                )
            }
            Command::Job { action } => job(action).await,
            Command::Users { json } => {
                let conn = connect().await?;
                let master = master_proxy(&conn).await?;
                print_listing(master.users().await, json, users_table)
            }
            Command::User { action } => user(action).await,
            Command::Image { action } => image(action).await,
            Command::SystemImage { action } => system_image(action).await,
            Command::SystemImages { json } => {
                let conn = connect().await?;
                let master = master_proxy(&conn).await?;
                print_listing(master.system_images().await, json, system_images_table)
            }
            Command::Images { json } => {
                let conn = connect().await?;
                let master = master_proxy(&conn).await?;
                print_listing(master.images().await, json, images_table)
            }
            Command::Groups { json } => accounts::groups(json).await,
            Command::Group { action } => group(action).await,
            Command::Drain { host, off, no_wait } => drain(&host, off, no_wait).await,
            Command::GenerateManuals { out } => manuals::generate(&out),
            Command::Exec { user, id, command } => {
                return exec(user, id, command).await.map(ExitCode::from);
            }
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("docklet-admin: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn job(action: JobAction) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = master_proxy(&conn).await?;
    let (reply, done) = match action {
        JobAction::Cancel { id } => (master.cancel_job(id).await, format!("Job {id} cancelled.")),
        JobAction::Hold { id } => (master.hold_job(id, true).await, format!("Job {id} held.")),
        JobAction::Release { id } => (
            master.hold_job(id, false).await,
            format!("Job {id} released."),
        ),
    };
    let job: docklet::master::actions::jobs::JobSummary =
        from_single(reply.map_err(|e| failure(e, "master"))?)?;
    print!("{}", jobs_table(&[job]));
    println!("{done}");
    Ok(())
}
