//! `docklet-worker`: registers this host in the cluster and runs its vnodes. Started by
//! `docklet-worker.service`, as root.

fn main() -> std::process::ExitCode {
    docklet::daemon::daemon_main(
        docklet::daemon::WORKER,
        |config| std::fs::create_dir_all(config.local_dir()),
        |config| docklet::worker::run(config, std::sync::Arc::new(docklet::sys::host::LocalHost)),
    )
}
