//! Facts about the machine a worker runs on: CPUs, memory, free disk, addresses.

use std::io;
use std::path::Path;

use crate::model::host::Capacity;

pub trait HostProbe: Send + Sync {
    /// CPUs, memory and free space under `local_dir`.
    fn capacity(&self, local_dir: &Path) -> io::Result<Capacity>;
    /// `ADDR/PREFIX` of every IPv4 and IPv6 address on `device`; `auto` = the device of the
    /// default route.
    fn addresses(&self, device: &str) -> io::Result<Vec<String>>;
}

/// Reads the running system.
pub struct LocalHost;

impl HostProbe for LocalHost {
    fn capacity(&self, local_dir: &Path) -> io::Result<Capacity> {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let memory_bytes = parse_mem_total(&meminfo).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "no MemTotal in /proc/meminfo")
        })?;
        let stat = nix::sys::statvfs::statvfs(local_dir).map_err(io::Error::from)?;
        let disk_free_bytes = stat.blocks_available() as u64 * stat.fragment_size() as u64;
        Ok(Capacity {
            cpus,
            memory_bytes,
            disk_free_bytes,
        })
    }

    fn addresses(&self, device: &str) -> io::Result<Vec<String>> {
        let device = if device == "auto" {
            match parse_default_route_device(&std::fs::read_to_string("/proc/net/route")?) {
                Some(dev) => dev,
                None => return Ok(Vec::new()),
            }
        } else {
            device.to_owned()
        };
        let mut out = Vec::new();
        for ifaddr in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
            if ifaddr.interface_name != device {
                continue;
            }
            let (Some(addr), Some(mask)) = (ifaddr.address, ifaddr.netmask) else {
                continue;
            };
            if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                out.push(format!("{}/{}", a.ip(), u32::from(m.ip()).count_ones()));
            } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6())
                && !a.ip().is_unicast_link_local()
            {
                out.push(format!("{}/{}", a.ip(), u128::from(m.ip()).count_ones()));
            }
        }
        Ok(out)
    }
}

/// `MemTotal` from /proc/meminfo, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// The interface of the IPv4 default route in /proc/net/route.
pub fn parse_default_route_device(route: &str) -> Option<String> {
    route.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000")
            .then(|| fields[0].to_owned())
    })
}

/// Fixed answers, for unit tests.
pub struct FakeHost {
    pub capacity: Capacity,
    pub addresses: Vec<String>,
}

impl HostProbe for FakeHost {
    fn capacity(&self, _local_dir: &Path) -> io::Result<Capacity> {
        Ok(self.capacity.clone())
    }
    fn addresses(&self, _device: &str) -> io::Result<Vec<String>> {
        Ok(self.addresses.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let meminfo = "MemTotal:       24570572 kB\nMemFree:        23000000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(24570572 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn default_route_device_is_found() {
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     host0\t00D50D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_default_route_device(route).as_deref(), Some("eth0"));
        assert_eq!(parse_default_route_device("Iface\n"), None);
    }

    #[test]
    fn local_host_reports_plausible_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let capacity = LocalHost.capacity(dir.path()).unwrap();
        assert!(capacity.cpus >= 1);
        assert!(capacity.memory_bytes > 64 * 1024 * 1024);
        assert!(capacity.disk_free_bytes > 0);
        assert!(
            LocalHost
                .addresses("lo")
                .unwrap()
                .iter()
                .any(|a| a == "127.0.0.1/8")
        );
    }
}
