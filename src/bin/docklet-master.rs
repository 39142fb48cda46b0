//! `docklet-master`: the portal, API and control plane. Normally socket-activated by
//! `docklet-master.socket`; run by hand it binds `proxy_port` itself.

fn main() -> std::process::ExitCode {
    docklet::daemon::daemon_main(
        docklet::daemon::MASTER,
        docklet::master::prepare_dirs,
        docklet::master::run,
    )
}
