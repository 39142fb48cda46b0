//! Root tests of the vnode filesystem seams on this machine (tier 2): a sized disk on a loop
//! device, the idmapped image, the overlay on top, and a persistent network namespace — each
//! in a throwaway directory, undone at the end. `tools/test` runs them as root.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use docklet::sys::mounts;

const BASE: u32 = 524_288 + 7 * 65_536;

fn need_root() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "root tests need root: run tools/test as root"
    );
}

/// Unmounts what a test mounted, even when it fails half-way.
struct Mounted<'a>(Vec<&'a Path>);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        for path in self.0.iter().rev() {
            let _ = mounts::unmount_all(path);
        }
    }
}

#[test]
#[ignore = "root: mounts and loop devices; run tools/test"]
fn a_vnode_rootfs_is_an_idmapped_image_under_an_overlay_on_a_sized_disk() {
    need_root();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");
    std::fs::create_dir_all(image.join("etc")).unwrap();
    std::fs::write(image.join("etc/os-release"), "ID=test\n").unwrap();
    let (disk_image, disk, lower, rootfs) = (
        dir.path().join("disk.img"),
        dir.path().join("disk"),
        dir.path().join("lower"),
        dir.path().join("rootfs"),
    );
    for d in [&disk, &lower, &rootfs] {
        std::fs::create_dir(d).unwrap();
    }
    let mut mounted = Mounted(Vec::new());

    // The disk: 64 MiB, sparse, a real ext4 on a loop device.
    mounts::make_disk_image(&disk_image, 64 << 20).unwrap();
    assert_eq!(std::fs::metadata(&disk_image).unwrap().len(), 64 << 20);
    assert!(
        std::fs::metadata(&disk_image).unwrap().blocks() * 512 < 16 << 20,
        "the disk image is not sparse"
    );
    mounts::mount_disk_image(&disk_image, &disk).unwrap();
    mounted.0.push(&disk);
    assert!(mounts::is_mount_point(&disk));
    let (upper, work) = (disk.join("upper"), disk.join("work"));
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&work).unwrap();
    nix::unistd::chown(
        &upper,
        Some(nix::unistd::Uid::from_raw(BASE)),
        Some(nix::unistd::Gid::from_raw(BASE)),
    )
    .unwrap();

    // The image, owned by root here, appears owned by BASE through the idmapped mount.
    let userns = mounts::userns_fd(BASE, 65_536).unwrap();
    mounts::mount_idmapped(&image, &lower, &userns).unwrap();
    mounted.0.push(&lower);
    let seen = std::fs::metadata(lower.join("etc/os-release")).unwrap();
    assert_eq!((seen.uid(), seen.gid()), (BASE, BASE));
    assert_eq!(
        std::fs::metadata(image.join("etc/os-release"))
            .unwrap()
            .uid(),
        0
    );
    assert!(
        std::fs::write(lower.join("etc/x"), "x").is_err(),
        "the image view must be read-only"
    );

    mounts::mount_overlay(&[&lower], &upper, &work, &rootfs).unwrap();
    mounted.0.push(&rootfs);
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/os-release")).unwrap(),
        "ID=test\n"
    );
    // Changes go to the vnode's disk, never to the image.
    std::fs::write(rootfs.join("etc/os-release"), "ID=changed\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(image.join("etc/os-release")).unwrap(),
        "ID=test\n"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/os-release")).unwrap(),
        "ID=changed\n"
    );
    assert_eq!(
        std::fs::metadata(upper.join("etc/os-release"))
            .unwrap()
            .uid(),
        BASE,
        "copied-up files keep the vnode's owner"
    );

    // The disk size is the limit: writing past it fails with ENOSPC.
    let big = vec![0u8; 1 << 20];
    let mut file = std::fs::File::create(rootfs.join("fill")).unwrap();
    let mut error = None;
    for _ in 0..100 {
        if let Err(e) = std::io::Write::write_all(&mut file, &big) {
            error = Some(e);
            break;
        }
    }
    let error = error.expect("wrote 100 MiB on a 64 MiB disk");
    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
    drop(file);
    assert!(mounts::used_bytes(&disk).unwrap() > 32 << 20);

    // Unmounting releases everything, loop device included (autoclear).
    drop(mounted);
    for path in [&rootfs, &lower, &disk] {
        assert!(
            !mounts::is_mount_point(path),
            "{} still mounted",
            path.display()
        );
    }
    let loops = std::process::Command::new("losetup")
        .args(["-n", "-O", "BACK-FILE", "-l"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&loops.stdout).contains(&*disk_image.to_string_lossy()),
        "the loop device outlived the unmount"
    );
}

#[test]
#[ignore = "root: network namespaces; run tools/test"]
fn a_vnode_netns_outlives_its_creator_with_loopback_up_and_goes_away_cleanly() {
    need_root();
    let dir = tempfile::tempdir().unwrap();
    let netns = dir.path().join("netns/test");
    mounts::create_netns(&netns).unwrap();
    assert!(mounts::is_mount_point(&netns));
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let output = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "sh",
            "-c",
            "readlink /proc/self/ns/net; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; \
             ip -o link show | cut -d' ' -f2,3",
        ])
        .output()
        .unwrap();
    // (Not /sys/class/net: sysfs shows the namespace it was mounted in.)
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_ne!(
        lines[0],
        ours.to_string_lossy(),
        "not a namespace of its own"
    );
    assert_eq!(lines[1], "0", "low ports are not open to the vnode's users");
    assert!(
        lines[2].starts_with("lo: <LOOPBACK,UP"),
        "only loopback, up: {text}"
    );
    mounts::remove_netns(&netns).unwrap();
    assert!(!netns.exists());
    // Removing twice is fine (a restart may repeat a cleanup).
    mounts::remove_netns(&netns).unwrap();
}
