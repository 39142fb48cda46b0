//! `docklet-worker`: registers this host in the cluster and runs its vnodes. Started by
//! `docklet-worker.service`, as root.

fn main() -> std::process::ExitCode {
    docklet::daemon::daemon_main(
        "docklet-worker",
        "Docklet worker: registers this host and runs its vnodes",
        |config| docklet::worker::run(config, Box::new(docklet::sys::host::LocalHost)),
    )
}
