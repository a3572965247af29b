// SPDX-License-Identifier: GPL-2.0

//! The host end of a VM's network: a tap device, made for the VM and put
//! on a bridge (`vmsctl run --bridge`), or one an administrator made for
//! the user (`--tap`).
//!
//! Written here on the kernel's interfaces directly (TUNSETIFF, and the
//! `SIOC*` ioctls a bridge and an interface take), a few lines each: the
//! crates that wrap them (rtnetlink, tun-tap) bring an async runtime or
//! nothing this needs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{bail, ensure, Context, Result};

/// `struct ifreq`: the interface's name and a 24-byte union (flags, an
/// index or a `struct sockaddr`).
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }

    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }

    fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    /// The IPv4 address of a `struct sockaddr_in` in the union.
    fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.data[4], self.data[5], self.data[6], self.data[7])
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
/// `SIOCBRADDIF` (linux/sockios.h): add the interface whose index is in
/// the request to the bridge it names.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Checks an interface name as the kernel takes it.
fn check_name(what: &str, name: &str) -> Result<()> {
    ensure!(
        !name.is_empty() && name.len() < libc::IFNAMSIZ && !name.contains(['/', ' ', '\0', ':']),
        "{what} name {name:?}: 1 to {} characters, no '/', ':' or spaces",
        libc::IFNAMSIZ - 1
    );
    Ok(())
}

/// An `AF_INET` datagram socket: what the interface ioctls are made on.
fn socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is checked, then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    ensure!(fd >= 0, "a socket for interface ioctls: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Interface ioctl `op` on `req`.
fn ifreq_ioctl(sock: &OwnedFd, op: libc::c_ulong, req: &mut IfReq) -> std::io::Result<()> {
    // SAFETY: every op used here reads and writes a `struct ifreq`, which
    // `req` is laid out as and which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), op as _, req as *mut IfReq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A tap device: a network interface of the host whose Ethernet frames
/// this process reads and writes, one per call, without blocking. It
/// goes away when dropped (it is not persistent), and with it its place
/// on a bridge.
pub struct Tap {
    file: File,
}

impl Tap {
    /// Opens the tap interface `name` (IFF_TAP | IFF_NO_PI), creating it
    /// if it does not exist (that needs CAP_NET_ADMIN; a tap made for
    /// this user with `ip tuntap add NAME mode tap user USER` does not).
    pub fn open(name: &str) -> Result<Self> {
        check_name("tap", name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun (is the tun module loaded?)")?;
        let mut req = IfReq::new(name);
        req.set_short(IFF_TAP | IFF_NO_PI);
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req`
        // is laid out as, and which outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                bail!(
                    "tap {name}: permission denied (making a tap, or using another user's, needs \
                     CAP_NET_ADMIN; without it, use a tap made for this user: ip tuntap add NAME mode tap \
                     user $USER, then --tap NAME)"
                );
            }
            if e.raw_os_error() == Some(libc::EBUSY) {
                bail!("tap {name}: in use by another process");
            }
            return Err(e).with_context(|| format!("tap {name}: TUNSETIFF"));
        }
        Ok(Self { file })
    }

    /// Opens tap `name`, which must exist (made by an administrator, for
    /// this user); warns if it is down (frames would be dropped).
    pub fn open_existing(name: &str) -> Result<Self> {
        check_name("tap", name)?;
        let sys = format!("/sys/class/net/{name}");
        ensure!(
            std::path::Path::new(&sys).exists(),
            "no tap named {name}; make one: ip tuntap add {name} mode tap user $USER && ip link set {name} up \
             (and put it on a bridge: ip link set {name} master BRIDGE)"
        );
        let tap = Self::open(name)?;
        let flags = std::fs::read_to_string(format!("{sys}/flags")).unwrap_or_default();
        let up = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).is_ok_and(|f| f & libc::IFF_UP as u32 != 0);
        if !up {
            eprintln!("vmsctl: tap {name} is down: the VM's frames are dropped until it is up (ip link set {name} up)");
        }
        Ok(tap)
    }

    /// Makes a tap named `name` and puts it, up, on bridge `bridge`.
    pub fn on_bridge(name: &str, bridge: &str) -> Result<Self> {
        // A clear error for a missing bridge before a tap is made.
        bridge_ipv4(bridge)?;
        let tap = Self::open(name)?;
        let sock = socket()?;
        let mut req = IfReq::new(name);
        ifreq_ioctl(&sock, libc::SIOCGIFINDEX as _, &mut req).with_context(|| format!("tap {name}: its index"))?;
        let index = req.int();
        let mut req = IfReq::new(bridge);
        req.set_int(index);
        ifreq_ioctl(&sock, SIOCBRADDIF, &mut req).map_err(|e| match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => {
                anyhow::anyhow!("{bridge} is not a bridge ({e}); make one: ip link add {bridge} type bridge")
            }
            _ => anyhow::Error::new(e).context(format!("adding tap {name} to bridge {bridge}")),
        })?;
        set_up(&sock, name)?;
        Ok(tap)
    }
}

/// Sets interface `name` up.
fn set_up(sock: &OwnedFd, name: &str) -> Result<()> {
    let mut req = IfReq::new(name);
    ifreq_ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req).with_context(|| format!("{name}: reading its flags"))?;
    req.set_short(req.short() | libc::IFF_UP as i16);
    ifreq_ioctl(sock, libc::SIOCSIFFLAGS as _, &mut req).with_context(|| format!("{name}: setting it up"))?;
    Ok(())
}

/// The IPv4 address and prefix length of bridge `bridge`, `None` if it
/// has none. Fails with advice if there is no such interface.
pub fn bridge_ipv4(bridge: &str) -> Result<Option<(Ipv4Addr, u8)>> {
    check_name("bridge", bridge)?;
    let sock = socket()?;
    let mut req = IfReq::new(bridge);
    if let Err(e) = ifreq_ioctl(&sock, libc::SIOCGIFINDEX as _, &mut req) {
        if e.raw_os_error() == Some(libc::ENODEV) {
            bail!(
                "no bridge named {bridge} on this host; make one: ip link add {bridge} type bridge && \
                 ip addr add 10.0.2.1/24 dev {bridge} && ip link set {bridge} up"
            );
        }
        return Err(e).with_context(|| format!("bridge {bridge}"));
    }
    ensure!(
        std::path::Path::new(&format!("/sys/class/net/{bridge}/bridge")).exists(),
        "{bridge} is not a bridge; make one: ip link add NAME type bridge"
    );
    let mut req = IfReq::new(bridge);
    match ifreq_ioctl(&sock, libc::SIOCGIFADDR as _, &mut req) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("bridge {bridge}: its address")),
    }
    let addr = req.ipv4();
    let mut req = IfReq::new(bridge);
    ifreq_ioctl(&sock, libc::SIOCGIFNETMASK as _, &mut req).with_context(|| format!("bridge {bridge}: its netmask"))?;
    let prefix = u32::from(req.ipv4()).leading_ones() as u8;
    Ok(Some((addr, prefix)))
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(Tap::open("no/slash").is_err());
        assert!(Tap::open("").is_err());
        assert!(Tap::open("sixteen-chars-xx").is_err());
        assert!(bridge_ipv4("a b").is_err());
    }

    #[test]
    fn a_missing_bridge_gets_advice() {
        let e = bridge_ipv4("vmsnobr0").unwrap_err();
        assert!(format!("{e:#}").contains("ip link add vmsnobr0 type bridge"), "{e:#}");
        // Not a bridge: the loopback interface exists everywhere.
        let e = bridge_ipv4("lo").unwrap_err();
        assert!(format!("{e:#}").contains("not a bridge"), "{e:#}");
    }

    /// A tap of our own on a real bridge, where the host allows both
    /// (root, /dev/net/tun, bridge support, `ip`).
    #[test]
    fn a_tap_joins_a_bridge_and_leaves_with_its_fd() {
        let br = format!("vmsb{}", std::process::id() % 100000);
        let ip = |args: &[&str]| {
            std::process::Command::new("ip").args(args).status().map(|s| s.success()).unwrap_or(false)
        };
        if !ip(&["link", "add", &br, "type", "bridge"]) {
            eprintln!("SKIP: cannot make a bridge here");
            return;
        }
        assert!(ip(&["addr", "add", "10.78.0.1/20", "dev", &br]));
        assert_eq!(bridge_ipv4(&br).unwrap(), Some((Ipv4Addr::new(10, 78, 0, 1), 20)));
        let name = format!("vmsu{}", std::process::id() % 100000);
        let tap = Tap::on_bridge(&name, &br);
        let master = std::fs::read_link(format!("/sys/class/net/{name}/master"));
        let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags"));
        let made = tap.map(drop);
        let gone = !std::path::Path::new(&format!("/sys/class/net/{name}")).exists();
        ip(&["link", "del", &br]);
        made.unwrap();
        assert!(master.unwrap().ends_with(&br), "the tap is the bridge's port");
        let flags = u32::from_str_radix(flags.unwrap().trim().trim_start_matches("0x"), 16).unwrap();
        assert_eq!(flags & libc::IFF_UP as u32, libc::IFF_UP as u32, "the tap is up");
        assert!(gone, "the tap went away with its descriptor");
    }

    /// A real tap, where the host allows one (root with /dev/net/tun).
    #[test]
    fn a_tap_carries_no_frames_while_down() {
        let name = format!("vmst{}", std::process::id() % 100000);
        let mut tap = match Tap::open(&name) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIP: no tap here: {e:#}");
                return;
            }
        };
        let mut buf = [0u8; 2048];
        assert_eq!(tap.read(&mut buf).unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
    }
}
