//! Setting a site up: `init`, the site's certificates and identities, hosts joining and
//! leaving, and etcd's server certificate.

use anyhow::Result;
use docklet::dbus_api::{BusError, Master1Proxy};

use crate::bus::*;
use docklet::sys::systemd::SystemdManagerProxy;

/// The portal's certificate: the configured one, or the site CA and certificate `init`
/// makes in /etc/docklet/tls when none is configured. Returns what to tell the administrator.
pub(crate) fn site_certificate() -> Result<String, Failure> {
    use docklet::master::tls::{self, Outcome};
    let config = admin_config()?;
    let host = docklet::daemon::host_name();
    let group = master_group();
    match tls::ensure_site_certificate(&config, &host, group) {
        Ok(Outcome::Present { cert }) => Ok(format!("{} (kept)", cert.display())),
        Ok(Outcome::Made { ca, cert }) => Ok(format!(
            "{} for {}, signed by a new site CA: give browsers {} (or configure a real certificate: tls_cert, tls_key)",
            cert.display(),
            tls::site_names(&config, &host).join(", "),
            ca.display()
        )),
        Err(e) => Err(Failure {
            code: 1,
            message: format!("the portal's certificate: {e}"),
        }),
    }
}

/// The site CA and this host's master and worker identities in /etc/docklet/pki (made when
/// missing). Returns what to tell the administrator and whether anything was made.
pub(crate) fn site_identities() -> Result<(String, bool), Failure> {
    use docklet::pki::{self, PKI_DIR};
    let config = admin_config()?;
    let host = docklet::daemon::host_name();
    let group = master_group();
    let dir = std::path::Path::new(PKI_DIR);
    let (_, outcome) =
        pki::ensure_local(dir, &config.cluster_name, &host, group).map_err(|e| Failure {
            code: 1,
            message: format!("the site CA: {e}"),
        })?;
    let made = outcome.made_ca || !outcome.issued.is_empty();
    let text = format!(
        "{} ({}), this host's identities {}",
        pki::ca_cert_file(dir).display(),
        if outcome.made_ca {
            "new; its key stays on this host, root's alone"
        } else {
            "kept"
        },
        if outcome.issued.is_empty() {
            "kept".to_owned()
        } else {
            format!(
                "made for {}",
                outcome
                    .issued
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" and ")
            )
        }
    );
    Ok((text, made))
}

/// The master's group, which may read the master's keys.
pub(crate) fn master_group() -> Option<nix::unistd::Gid> {
    nix::unistd::Group::from_name(docklet::master::MASTER_USER)
        .ok()
        .flatten()
        .map(|g| g.gid)
}

/// The configuration `docklet-admin` reads (`DOCKLET_CONFIG`, else the default path; the
/// defaults when there is no file).
pub(crate) fn admin_config() -> Result<docklet::config::Config, Failure> {
    let path = std::env::var_os("DOCKLET_CONFIG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| docklet::config::DEFAULT_PATH.into());
    if path.exists() {
        docklet::config::Config::load(&path).map_err(|e| usage(e.to_string()))
    } else {
        Ok(docklet::config::Config::default())
    }
}

pub(crate) async fn init(force: bool, yes: bool) -> Result<(), Failure> {
    if force && !yes {
        confirm_wipe()?;
    }
    // The certificate first: a master started without one serves HTTPS from the moment
    // its files appear.
    let certificate = site_certificate()?;
    let (identities, made) = site_identities()?;
    let conn = connect().await?;
    if made {
        // systemd hands the master the CA's key at its start (LoadCredential=).
        let systemd = SystemdManagerProxy::new(&conn)
            .await
            .map_err(|e| failure(e.into(), "systemd"))?;
        if let Err(e) = systemd.try_restart_unit(MASTER_UNIT, "replace").await {
            eprintln!(
                "docklet-admin: cannot restart {MASTER_UNIT} ({e}); restart it to let it sign joins"
            );
        }
    }
    let master = Master1Proxy::new(&conn)
        .await
        .map_err(|e| failure(e.into(), "master"))?;
    let result = match master.init(force).await {
        Ok((result,)) => result,
        // An existing site from before identities: making them was the work to do.
        Err(BusError::AlreadyInitialized(_)) if made => {
            println!("Cluster already initialized.");
            println!("Identities:      {identities}");
            println!(
                "Other hosts:     `docklet-admin host add NAME` here, then `docklet-admin join TOKEN` there"
            );
            return Ok(());
        }
        Err(e) => return Err(failure(e, "master")),
    };
    println!("Cluster initialized.");
    println!("Portal:          {}", result.portal_url);
    println!("Certificate:     {certificate}");
    println!("Identities:      {identities}");
    println!(
        "Other hosts:     `docklet-admin host add NAME` here, then `docklet-admin join TOKEN` there"
    );
    println!("Administrator:   {}", result.admin_user);
    println!(
        "Password file:   {} (readable by root only)",
        result.password_file
    );
    // The package installs every unit disabled: this host is the site's first one now, so
    // its master (and the socket), and its worker, start at boot from here on.
    report_host_units(&conn, &[SOCKET_UNIT, MASTER_UNIT, WORKER_UNIT]).await;
    Ok(())
}

pub(crate) const MASTER_UNIT: &str = "docklet-master.service";
pub(crate) const SOCKET_UNIT: &str = "docklet-master.socket";
pub(crate) const WORKER_UNIT: &str = "docklet-worker.service";

/// Enables `units` and starts them (`systemctl enable --now`), saying what was done or what
/// the administrator must do instead.
async fn report_host_units(conn: &zbus::Connection, units: &[&str]) {
    match enable_and_start(conn, units).await {
        Ok(()) => println!("Services:        {} enabled and started", units.join(", ")),
        Err(e) => eprintln!(
            "docklet-admin: cannot enable and start the services ({e}); run `systemctl enable --now {}`",
            units.join(" ")
        ),
    }
}

async fn enable_and_start(conn: &zbus::Connection, units: &[&str]) -> zbus::Result<()> {
    let systemd = SystemdManagerProxy::new(conn).await?;
    systemd.enable_unit_files(units, false, false).await?;
    systemd.reload().await?;
    for unit in units {
        systemd.start_unit(unit, "replace").await?;
    }
    Ok(())
}

/// `host add NAME`: prints the join token.
pub(crate) async fn host_add(name: &str, valid_for: &str) -> Result<(), Failure> {
    let seconds = parse_seconds(valid_for).ok_or_else(|| {
        usage(format!(
            "--valid-for {valid_for:?}: give seconds, or a number with s, m, h or d (like 1h)"
        ))
    })?;
    let conn = connect().await?;
    let token = master_proxy(&conn)
        .await?
        .add_host(name, seconds)
        .await
        .map_err(|e| failure(e, "master"))?;
    eprintln!("Join token for host {name}, valid {valid_for}, usable once. On {name}, run:");
    println!("docklet-admin join {token}");
    Ok(())
}

/// `60`, `90s`, `30m`, `1h`, `7d` in seconds.
pub(crate) fn parse_seconds(text: &str) -> Option<u64> {
    let (number, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let factor = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

pub(crate) async fn host_remove(name: &str) -> Result<(), Failure> {
    let conn = connect().await?;
    master_proxy(&conn)
        .await?
        .remove_host(name)
        .await
        .map_err(|e| failure(e, "master"))?;
    println!("Host {name} removed: etcd refuses its certificates now, the agents within seconds.");
    Ok(())
}

/// `etcd-certificate`: etcd's server key and certificate from the site CA, and the settings
/// that use them.
pub(crate) fn etcd_certificate(
    addresses: &[std::net::IpAddr],
    names: &[String],
) -> Result<(), Failure> {
    use docklet::pki::{self, PKI_DIR};
    if addresses.is_empty() && names.is_empty() {
        return Err(usage(
            "give the addresses (--address IP) or names (--name DNS) etcd's clients dial".into(),
        ));
    }
    let (identities, _) = site_identities()?;
    let dir = std::path::Path::new(PKI_DIR);
    let ca = pki::SiteCa::load(dir).map_err(|e| Failure {
        code: 1,
        message: format!("the site CA: {e}"),
    })?;
    // Debian's etcd runs as the user etcd.
    let etcd_group = nix::unistd::Group::from_name("etcd")
        .ok()
        .flatten()
        .map(|g| g.gid);
    let (cert, key) =
        pki::write_etcd_server(dir, &ca, names, addresses, etcd_group).map_err(|e| Failure {
            code: 1,
            message: format!("etcd's certificate: {e}"),
        })?;
    let urls: Vec<String> = addresses
        .iter()
        .map(|ip| match ip {
            std::net::IpAddr::V4(v4) => format!("https://{v4}:2379"),
            std::net::IpAddr::V6(v6) => format!("https://[{v6}]:2379"),
        })
        .chain(names.iter().map(|name| format!("https://{name}:2379")))
        .collect();
    eprintln!("Site CA:      {identities}");
    eprintln!(
        "Certificate:  {} and {} for {}",
        cert.display(),
        key.display(),
        addresses
            .iter()
            .map(|ip| ip.to_string())
            .chain(names.iter().cloned())
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("Set these in etcd's environment (/etc/default/etcd) and restart etcd:");
    println!("ETCD_CERT_FILE=\"{}\"", cert.display());
    println!("ETCD_KEY_FILE=\"{}\"", key.display());
    println!(
        "ETCD_TRUSTED_CA_FILE=\"{}\"",
        pki::ca_cert_file(dir).display()
    );
    println!("ETCD_CLIENT_CERT_AUTH=\"true\"");
    let listen: Vec<&str> = urls
        .iter()
        .filter(|u| !names.iter().any(|n| u.contains(n.as_str())))
        .map(String::as_str)
        .collect();
    if !listen.is_empty() {
        println!("ETCD_LISTEN_CLIENT_URLS=\"{}\"", listen.join(","));
    }
    println!("ETCD_ADVERTISE_CLIENT_URLS=\"{}\"", urls.join(","));
    eprintln!(
        "Then on every host, in /etc/docklet/docklet.toml: [etcd] endpoints = [{}]",
        urls.iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `join TOKEN`: this host's keys, signed by the site's CA through the portal.
pub(crate) async fn join(token: &str) -> Result<(), Failure> {
    use docklet::pki::join::{JoinRequest, JoinToken, exchange};
    use docklet::pki::{self, PKI_DIR, Role};
    use rcgen::PublicKeyData;
    let failed = |message: String| Failure { code: 1, message };
    let token = JoinToken::decode(token).map_err(|e| usage(e.to_string()))?;
    let host = docklet::daemon::host_name();
    if token.host != host {
        return Err(usage(format!(
            "this token is for host {}, and this host is {host}: make one with `docklet-admin host add {host}`",
            token.host
        )));
    }
    if docklet::daemon::now_secs() >= token.expires_at {
        return Err(failed(
            "this token has expired: make a new one with `docklet-admin host add`".into(),
        ));
    }
    let keys = [
        rcgen::KeyPair::generate().map_err(|e| failed(e.to_string()))?,
        rcgen::KeyPair::generate().map_err(|e| failed(e.to_string()))?,
    ];
    let spki = |key: &rcgen::KeyPair| data_encoding::BASE64.encode(&key.subject_public_key_info());
    let request = JoinRequest::new(&token, spki(&keys[0]), spki(&keys[1]));
    println!("joining through {} ...", token.portal);
    let response = exchange(&token, &request)
        .await
        .map_err(|e| failed(format!("join: {e}")))?;
    let dir = std::path::Path::new(PKI_DIR);
    let group = master_group();
    std::fs::create_dir_all(dir).map_err(|e| failed(format!("{PKI_DIR}: {e}")))?;
    let write = || -> Result<(), pki::PkiError> {
        pki::write_file(&pki::ca_cert_file(dir), &response.ca, 0o644, None)?;
        pki::write_identity(
            dir,
            Role::Master,
            &response.master,
            &keys[0].serialize_pem(),
            group,
        )?;
        pki::write_identity(
            dir,
            Role::Worker,
            &response.worker,
            &keys[1].serialize_pem(),
            group,
        )
    };
    write().map_err(|e| failed(format!("writing {PKI_DIR}: {e}")))?;
    println!(
        "Host {host} joined: its identities are in {PKI_DIR} (the agent and the master use them within seconds)."
    );
    // The package installs every unit disabled: this host runs a worker, and a master that
    // its socket starts on the first portal connection.
    let conn = connect().await?;
    report_host_units(&conn, &[SOCKET_UNIT, WORKER_UNIT]).await;
    Ok(())
}

/// `init --force` without `--yes`: on a terminal, the administrator types `wipe`; elsewhere it
/// is refused, so that no script wipes a site by accident.
fn confirm_wipe() -> Result<(), Failure> {
    use std::io::IsTerminal;
    let refused = |message: &str| Failure {
        code: 2,
        message: message.to_owned(),
    };
    if !std::io::stdin().is_terminal() {
        return Err(refused(
            "init --force wipes every user, cluster and image of the site: add --yes to do it \
             without a terminal",
        ));
    }
    eprint!(
        "init --force wipes every user, cluster, image and port mapping of the site.\nType \
         wipe to go on: "
    );
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| refused(&format!("reading the answer: {e}")))?;
    if answer.trim() != "wipe" {
        return Err(refused("nothing wiped"));
    }
    Ok(())
}
