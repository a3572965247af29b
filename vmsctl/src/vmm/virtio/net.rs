// SPDX-License-Identifier: GPL-2.0

//! virtio-net (virtio 1.2, section 5.1) over a tap device: one receive and
//! one transmit queue, a MAC address in the configuration space, no
//! offloads (no checksum or segmentation features: every frame is whole
//! and checksummed by the guest, at most 1514 bytes).
//!
//! Frames move between the queues and a *link*: anything that carries
//! Ethernet frames one per `read`/`write` on a non-blocking file
//! descriptor. A tap device (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`,
//! [`super::tap::Tap`]) is the link of a VM; a `SOCK_DGRAM` socket pair is one in
//! the tests.
//!
//! Every frame on a queue starts with the 12-byte `virtio_net_hdr_v1`
//! (with `VIRTIO_F_VERSION_1` it always has `num_buffers`). The device
//! writes it zeroed, with `num_buffers` 1, in front of each received
//! frame, and drops it from each frame the driver transmits.
//!
//! `vmsctl run --bridge` gives a VM one, on a tap of its own
//! ([`super::tap`]); an I/O thread moves the frames (`devices.rs`).

use std::io::{Read, Write};
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::VirtioDevice;

/// Descriptors per queue, at most.
pub const QUEUE_SIZE: u16 = 256;
/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
pub const HEADER: usize = 12;
/// The longest frame without offloads: 1500 bytes of payload, the
/// 14-byte Ethernet header and a VLAN tag (no FCS on a tap).
pub const MAX_FRAME: usize = 1518;
/// The receive queue's index, and the transmit queue's.
pub const RX: usize = 0;
pub const TX: usize = 1;

/// A link that carries one Ethernet frame per `read` or `write`, without
/// blocking.
pub trait Link: Read + Write + AsFd + Send {}
impl<T: Read + Write + AsFd + Send> Link for T {}

/// Frames of each outcome, for statistics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Received frames dropped: longer than the driver's buffer.
    pub rx_dropped: u64,
    /// Transmitted frames dropped: malformed, or the link refused them.
    pub tx_dropped: u64,
}

/// The virtio-net device.
pub struct Net {
    link: Box<dyn Link>,
    mac: [u8; 6],
    /// A frame read from the link that waits for a receive buffer.
    pending: Option<Vec<u8>>,
    counters: NetCounters,
    /// Off the link: frames the driver sends are dropped, none are
    /// received. A clone starts so, until its guest has its own MAC and
    /// address: until then it would speak as its parent.
    muted: bool,
    /// The link failed (its interface went away): the device carries on
    /// as a NIC without a cable.
    link_down: bool,
    /// Where frames are read into.
    buf: Vec<u8>,
}

impl Net {
    pub fn new(link: Box<dyn Link>, mac: [u8; 6]) -> Self {
        Self {
            link,
            mac,
            pending: None,
            counters: NetCounters::default(),
            muted: false,
            link_down: false,
            buf: vec![0u8; 65536],
        }
    }

    /// Takes the device off its link, or puts it back.
    pub fn set_muted(&mut self, muted: bool) {
        self.muted = muted;
    }

    /// A reset VM's device: off its link until its guest has its
    /// identity again, as a clone's is at its start, and without a frame
    /// that waited for the old guest's receive buffer.
    pub fn reset(&mut self) {
        self.muted = true;
        self.pending = None;
    }

    /// The link may be read: the device is on it, it works, and no frame
    /// waits for a receive buffer.
    pub fn link_ready(&self) -> bool {
        !self.muted && !self.link_down && self.pending.is_none()
    }

    /// The link's descriptor, for an I/O thread to wait on.
    pub fn link_fd(&self) -> BorrowedFd<'_> {
        self.link.as_fd()
    }

    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// The next frame from the link, if one is waiting.
    fn next_frame(&mut self) -> Result<Option<Vec<u8>>> {
        if let Some(f) = self.pending.take() {
            return Ok(Some(f));
        }
        if self.muted || self.link_down {
            return Ok(None);
        }
        match self.link.read(&mut self.buf) {
            Ok(n) => Ok(Some(self.buf[..n].to_vec())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(None),
            // Not the driver's fault: the device stays usable, offline.
            Err(e) => {
                eprintln!("vmsctl: virtio-net: the link failed ({e}); the device is offline now");
                self.link_down = true;
                Ok(None)
            }
        }
    }

    /// Moves frames from the link into the driver's receive buffers while
    /// both last.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool> {
        let mut used = false;
        loop {
            let Some(frame) = self.next_frame()? else { break };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // No buffer: the frame waits for the driver's next kick.
                self.pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            let len = match chain.writer(mem) {
                Ok(mut w) if w.available_bytes() >= HEADER + frame.len() => {
                    let mut hdr = [0u8; HEADER];
                    hdr[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
                    match w.write_all(&hdr).and_then(|()| w.write_all(&frame)) {
                        Ok(()) => {
                            self.counters.rx_frames += 1;
                            HEADER + frame.len()
                        }
                        Err(_) => {
                            self.counters.rx_dropped += 1;
                            0
                        }
                    }
                }
                _ => {
                    self.counters.rx_dropped += 1;
                    0
                }
            };
            queue
                .add_used(mem, head, len as u32)
                .map_err(|e| anyhow::anyhow!("virtio-net: adding to the used ring: {e:?}"))?;
            used = true;
        }
        Ok(used)
    }

    /// Sends every frame the driver made available.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool> {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut frame = Vec::new();
            let ok = match chain.reader(mem) {
                Ok(mut r) if r.available_bytes() > HEADER && r.available_bytes() <= HEADER + MAX_FRAME => {
                    r.read_to_end(&mut frame).is_ok()
                }
                _ => false,
            };
            if ok && !self.muted && !self.link_down {
                match self.link.write(&frame[HEADER..]) {
                    // A datagram link takes a frame whole or not at all.
                    Ok(n) if n == frame.len() - HEADER => self.counters.tx_frames += 1,
                    Ok(_) => self.counters.tx_dropped += 1,
                    // A full link queue or a link that is down: dropped,
                    // as a NIC drops what its wire cannot take.
                    Err(_) => self.counters.tx_dropped += 1,
                }
            } else {
                self.counters.tx_dropped += 1;
            }
            queue
                .add_used(mem, head, 0)
                .map_err(|e| anyhow::anyhow!("virtio-net: adding to the used ring: {e:?}"))?;
            used = true;
        }
        Ok(used)
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_NET_F_MAC
    }

    /// The configuration space: `mac` (6 bytes); the rest reads as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.mac.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool> {
        match index {
            RX => self.receive(queue, mem),
            TX => self.transmit(queue, mem),
            _ => Ok(false),
        }
    }

    fn reset(&mut self) {
        self.pending = None;
    }
}

/// A VM's network as `vmsctl run` set it up, and as a live image keeps
/// it for its clones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The host bridge the VM's own tap (`vms<pid>`) joins.
    pub bridge: Option<String>,
    /// Or a tap made for the VM by an administrator.
    pub tap: Option<String>,
    /// The device's MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The guest's IPv4 address with its prefix length, `10.0.2.2/24`,
    /// which the guest sets itself (`vms-net`); `None`: left to the guest.
    pub address: Option<String>,
    /// The guest's default route.
    pub gateway: Option<String>,
}

/// The first host number of a subnet that clones take: clone `id` gets
/// `network + CLONE_HOST_BASE + id`, below it the bridge and booted VMs.
pub const CLONE_HOST_BASE: u32 = 16;

impl NetConfig {
    /// The network of a booting VM: on `bridge` or `tap`, MAC `mac`
    /// (random by default), address `ip` (`ADDR/PREFIX[,GATEWAY]`, or
    /// `none`); by default on a bridge with an IPv4 address, the
    /// subnet's host 2 (3 if the bridge is 2), the bridge as gateway.
    pub fn for_boot(bridge: Option<&str>, tap: Option<&str>, mac: Option<&str>, ip: Option<&str>) -> Result<Self> {
        let mac = match mac {
            Some(m) => parse_mac(m)?,
            None => random_mac()?,
        };
        let (address, gateway) = match (ip, bridge) {
            (Some("none"), _) => (None, None),
            (Some(spec), _) => parse_ip_spec(spec)?,
            (None, Some(br)) => match super::tap::bridge_ipv4(br)? {
                Some((addr, prefix)) => {
                    let bridge_host = u32::from(addr) - u32::from(network(addr, prefix));
                    let host: u64 = if bridge_host == 2 { 3 } else { 2 };
                    let a = host_address(addr, prefix, host)
                        .with_context(|| format!("bridge {br}: its /{prefix} has no room for a VM; give --ip"))?;
                    (Some(format!("{a}/{prefix}")), Some(addr.to_string()))
                }
                None => (None, None),
            },
            (None, None) => (None, None),
        };
        Ok(Self {
            bridge: bridge.map(str::to_owned),
            tap: tap.map(str::to_owned),
            mac: format_mac(mac),
            address,
            gateway,
        })
    }

    /// The network of clone `id` of a live image whose VM had this one:
    /// the same bridge (or `bridge`, or `tap`, if given), MAC
    /// [`mac_for`]`(id)` and host `CLONE_HOST_BASE + id` of the VM's
    /// subnet, unless `mac` or `ip` say otherwise.
    pub fn for_clone(
        &self,
        id: u32,
        bridge: Option<&str>,
        tap: Option<&str>,
        mac: Option<&str>,
        ip: Option<&str>,
    ) -> Result<Self> {
        let other_bridge = bridge.filter(|b| Some(*b) != self.bridge.as_deref());
        let (bridge, tap) = match (bridge, tap) {
            (None, None) => (self.bridge.clone(), None),
            (b, t) => (b.map(str::to_owned), t.map(str::to_owned)),
        };
        ensure!(
            bridge.is_some() || tap.is_some(),
            "the live image's VM used tap {}: give each clone a tap of its own (--tap) or a bridge (--bridge)",
            self.tap.as_deref().unwrap_or("?")
        );
        let mac = match mac {
            Some(m) => parse_mac(m)?,
            None => mac_for(id),
        };
        let (address, gateway) = match (ip, &self.address) {
            (Some("none"), _) => (None, None),
            (Some(spec), _) => parse_ip_spec(spec)?,
            (None, None) => (None, None),
            (None, Some(parent)) => {
                // On another bridge with an address: that bridge's subnet,
                // the bridge as gateway; else the live image's VM's.
                let other = match other_bridge {
                    Some(br) => super::tap::bridge_ipv4(br)?,
                    None => None,
                };
                let (addr, prefix, gateway) = match other {
                    Some((a, p)) => (a, p, Some(a)),
                    None => {
                        let (a, p) = parse_cidr(parent)?;
                        let gw = match &self.gateway {
                            Some(g) => Some(g.parse::<Ipv4Addr>().with_context(|| {
                                format!("the live image's gateway {g:?} is not an IPv4 address")
                            })?),
                            None => None,
                        };
                        (a, p, gw)
                    }
                };
                let host = u64::from(CLONE_HOST_BASE) + u64::from(id);
                let a = host_address(addr, prefix, host).with_context(|| {
                    format!(
                        "clone id {id}: its address would be host {host} of {addr}/{prefix}, past the \
                         subnet's end; give the clone --ip, or use smaller ids"
                    )
                })?;
                ensure!(
                    a != addr && Some(a) != gateway,
                    "clone id {id}: its address {a} is the live image's VM's or the gateway's; give it --ip"
                );
                (Some(format!("{a}/{prefix}")), gateway.map(|g| g.to_string()))
            }
        };
        Ok(Self { bridge, tap, mac: format_mac(mac), address, gateway })
    }

    /// The host's name of the VM's tap: its own, `vms<pid>`, on the
    /// bridge, or the one named.
    pub fn host_tap(&self) -> String {
        self.tap.clone().unwrap_or_else(|| format!("vms{}", std::process::id()))
    }

    /// Opens the VM's tap ([`host_tap`](Self::host_tap)), putting its own
    /// on the bridge.
    pub fn open_link(&self) -> Result<super::tap::Tap> {
        match (&self.bridge, &self.tap) {
            (_, Some(t)) => super::tap::Tap::open_existing(t),
            (Some(br), None) => super::tap::Tap::on_bridge(&self.host_tap(), br),
            (None, None) => anyhow::bail!("a network needs a bridge or a tap"),
        }
    }

    /// What the guest's `vms-net` takes (and `vms.net=` on the command
    /// line): `ADDR/PREFIX[,GATEWAY]`, if the guest gets an address.
    pub fn guest_spec(&self) -> Option<String> {
        let addr = self.address.as_ref()?;
        Some(match &self.gateway {
            Some(gw) => format!("{addr},{gw}"),
            None => addr.clone(),
        })
    }

    /// Claims the MAC, and the address on the bridge, for this process
    /// among the VMs whose run directory's `net` is `dir`: fails if a
    /// running VM holds either (two clones of one id, two VMs booted on a
    /// bridge with the default address). Held until the claims drop.
    pub fn claim(&self, dir: &Path) -> Result<NetClaims> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut claims = NetClaims(Vec::new());
        let mac_file = format!("mac-{}", self.mac.replace(':', "-"));
        claims.take(dir, &mac_file).with_context(|| {
            format!("MAC {} is in use by another VM of this host (give --mac, or another --id)", self.mac)
        })?;
        if let (Some(addr), Some(br)) = (&self.address, &self.bridge) {
            let ip = addr.split('/').next().unwrap_or(addr);
            claims.take(dir, &format!("ip-{br}-{ip}")).with_context(|| {
                format!("address {ip} on bridge {br} is in use by another VM (give --ip, or another --id)")
            })?;
        }
        Ok(claims)
    }

    /// The MAC as bytes (checked when the config was made).
    pub fn mac_bytes(&self) -> Result<[u8; 6]> {
        parse_mac(&self.mac)
    }
}

/// A VM's claims on its MAC and address: files in the run directory's
/// `net`, each held with `flock` by the VM's process, removed when it
/// drops. A file whose lock can be taken is a dead VM's, and is taken
/// over.
pub struct NetClaims(Vec<(PathBuf, File)>);

impl NetClaims {
    fn take(&mut self, dir: &Path, name: &str) -> Result<()> {
        let path = dir.join(name);
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    anyhow::bail!("{} is held by a running VM", path.display());
                }
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
            // The holder may have removed the file between our open and
            // our lock: then the lock is on a file nobody else will see.
            let same = std::fs::metadata(&path)
                .map(|m| m.ino() == file.metadata().map(|f| f.ino()).unwrap_or(0))
                .unwrap_or(false);
            if same {
                let _ = writeln!(&file, "{}", std::process::id());
                self.0.push((path, file));
                return Ok(());
            }
        }
    }
}

impl Drop for NetClaims {
    fn drop(&mut self) {
        // Removed while still locked, so no one takes over a file that is
        // about to go.
        for (path, _) in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `ADDR/PREFIX[,GATEWAY]`.
fn parse_ip_spec(spec: &str) -> Result<(Option<String>, Option<String>)> {
    let (cidr, gw) = match spec.split_once(',') {
        Some((c, g)) => (c, Some(g)),
        None => (spec, None),
    };
    let (addr, prefix) = parse_cidr(cidr)?;
    let gw = match gw {
        Some(g) => Some(
            g.parse::<Ipv4Addr>()
                .with_context(|| format!("--ip {spec:?}: gateway {g:?} is not an IPv4 address"))?
                .to_string(),
        ),
        None => None,
    };
    Ok((Some(format!("{addr}/{prefix}")), gw))
}

/// `ADDR/PREFIX`, an IPv4 address and a prefix length of 1 to 32.
fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (a, p) = s
        .split_once('/')
        .with_context(|| format!("IPv4 address {s:?}: ADDR/PREFIX, e.g. 10.0.2.2/24"))?;
    let addr: Ipv4Addr = a.parse().with_context(|| format!("{a:?} is not an IPv4 address"))?;
    let prefix: u8 = p.parse().with_context(|| format!("prefix length {p:?} is not a number"))?;
    ensure!((1..=32).contains(&prefix), "prefix length {prefix}: 1 to 32");
    Ok((addr, prefix))
}

/// Host number `host` of `addr/prefix`'s subnet, if it is one: neither
/// the network's address (0) nor its broadcast address.
fn host_address(addr: Ipv4Addr, prefix: u8, host: u64) -> Result<Ipv4Addr> {
    ensure!(prefix <= 30, "a /{prefix} has no room for hosts");
    let size = 1u64 << (32 - prefix);
    ensure!(host >= 1 && host < size - 1, "host {host} is not in a /{prefix}");
    Ok(Ipv4Addr::from(u32::from(network(addr, prefix)) + host as u32))
}

/// The network address of `addr/prefix`.
fn network(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    Ipv4Addr::from(u32::from(addr) & mask)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A random locally administered unicast MAC address.
fn random_mac() -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    super::rng::fill_random(&mut mac).context("a random MAC address")?;
    mac[0] = (mac[0] & 0xfc) | 0x02;
    Ok(mac)
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`; refuses multicast ones (a
/// NIC's own address is unicast).
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<_> = s.split(':').collect();
    ensure!(parts.len() == 6, "MAC address {s:?}: six hex bytes separated by ':'");
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(&parts) {
        ensure!(p.len() == 2, "MAC address {s:?}: each byte is two hex digits");
        *m = u8::from_str_radix(p, 16).with_context(|| format!("MAC address {s:?}: {p:?} is not hex"))?;
    }
    ensure!(mac[0] & 1 == 0, "MAC address {s}: a multicast address (the first byte is odd)");
    Ok(mac)
}

/// A locally administered MAC address for VM `id`: 52:54:00 (the prefix
/// QEMU uses) would collide with QEMU's guests, so 06:76:6d ("vm") and
/// the id's low 24 bits.
pub fn mac_for(id: u32) -> [u8; 6] {
    let b = id.to_be_bytes();
    [0x06, 0x76, 0x6d, b[1], b[2], b[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    struct Dgram(UnixDatagram);
    impl Read for Dgram {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.0.recv(b)
        }
    }
    impl Write for Dgram {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.send(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl AsFd for Dgram {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.0.as_fd()
        }
    }

    fn pair() -> (Net, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Net::new(Box::new(Dgram(a)), mac_for(7)), b)
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn frames_go_both_ways() {
        let (mut net, peer) = pair();
        let m = mem();
        // Transmit: one chain, header then frame.
        let txq = MockSplitQueue::new(&m, 16);
        let frame: Vec<u8> = (0..60u8).collect();
        m.write_slice(&[0u8; HEADER], GuestAddress(0x8_0000)).unwrap();
        m.write_slice(&frame, GuestAddress(0x8_0000 + HEADER as u64)).unwrap();
        let d = [RawDescriptor::from(Descriptor::new(0x8_0000, (HEADER + frame.len()) as u32, 0, 0))];
        txq.build_desc_chain(&d).unwrap();
        let mut q: Queue = txq.create_queue().unwrap();
        assert!(net.process_queue(TX, &mut q, &m).unwrap());
        let mut got = [0u8; 2048];
        let n = peer.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &frame[..], "the link gets the frame without the header");
        // Receive: a frame from the link into a buffer of the driver's.
        peer.send(&[0xab; 100]).unwrap();
        let rxq = MockSplitQueue::new(&m, 16);
        let d = [RawDescriptor::from(Descriptor::new(0x9_0000, 1526, VRING_DESC_F_WRITE as u16, 0))];
        rxq.build_desc_chain(&d).unwrap();
        let mut q: Queue = rxq.create_queue().unwrap();
        assert!(net.process_queue(RX, &mut q, &m).unwrap());
        let mut hdr = [0u8; HEADER];
        m.read_slice(&mut hdr, GuestAddress(0x9_0000)).unwrap();
        assert_eq!(hdr[10], 1, "num_buffers");
        let mut body = [0u8; 100];
        m.read_slice(&mut body, GuestAddress(0x9_0000 + HEADER as u64)).unwrap();
        assert_eq!(body, [0xab; 100]);
        assert_eq!(net.counters().rx_frames, 1);
        assert_eq!(net.counters().tx_frames, 1);
        // Another frame with no buffer waits; it is not lost.
        peer.send(&[0xcd; 10]).unwrap();
        assert!(!net.process_queue(RX, &mut q, &m).unwrap());
        assert!(net.pending.is_some());
    }

    #[test]
    fn a_frame_too_long_for_the_buffer_is_dropped() {
        let (mut net, peer) = pair();
        let m = mem();
        peer.send(&[1u8; 200]).unwrap();
        let rxq = MockSplitQueue::new(&m, 16);
        let d = [RawDescriptor::from(Descriptor::new(0x9_0000, 64, VRING_DESC_F_WRITE as u16, 0))];
        rxq.build_desc_chain(&d).unwrap();
        let mut q: Queue = rxq.create_queue().unwrap();
        assert!(net.process_queue(RX, &mut q, &m).unwrap());
        assert_eq!(net.counters().rx_dropped, 1);
    }

    #[test]
    fn config_space_and_macs() {
        let (net, _peer) = pair();
        let mut b = [0u8; 8];
        net.read_config(0, &mut b);
        assert_eq!(b, [0x06, 0x76, 0x6d, 0, 0, 7, 0, 0]);
        assert_eq!(parse_mac("06:76:6d:00:00:01").unwrap(), mac_for(1));
        assert!(parse_mac("01:00:5e:00:00:01").is_err(), "multicast");
        assert!(parse_mac("06:76:6d:00:00").is_err());
        assert!(parse_mac("06:76:6d:00:00:zz").is_err());
        assert_eq!(format_mac(mac_for(0x010203)), "06:76:6d:01:02:03");
        let r = random_mac().unwrap();
        assert_eq!(r[0] & 3, 2, "locally administered unicast");
    }

    #[test]
    fn a_mac_or_address_is_held_by_one_vm_at_a_time() {
        let dir = std::env::temp_dir().join(format!("vms-claims-{}", std::process::id()));
        let a = NetConfig::for_boot(Some("br9"), None, Some("06:00:00:00:00:01"), Some("10.9.0.2/24")).unwrap();
        let held = a.claim(&dir).unwrap();
        let e = a.claim(&dir).err().expect("a second claim of the same MAC fails");
        assert!(format!("{e:#}").contains("MAC 06:00:00:00:00:01 is in use"), "{e:#}");
        let mut b = a.clone();
        b.mac = "06:00:00:00:00:02".into();
        let e = b.claim(&dir).err().expect("the same address on the same bridge fails");
        assert!(format!("{e:#}").contains("address 10.9.0.2 on bridge br9 is in use"), "{e:#}");
        b.bridge = Some("br8".into());
        let other = b.claim(&dir).expect("the same address on another bridge is fine");
        drop((held, other));
        let again = a.claim(&dir).expect("free again once dropped");
        drop(again);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "the files go with the claims");
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn addresses_of_a_vm_and_its_clones() {
        let vm = NetConfig::for_boot(None, Some("tap0"), Some("06:00:00:00:00:01"), Some("10.0.2.2/24,10.0.2.1")).unwrap();
        assert_eq!(vm.guest_spec().as_deref(), Some("10.0.2.2/24,10.0.2.1"));
        let c = vm.for_clone(3, None, Some("tap3"), None, None).unwrap();
        assert_eq!(c.address.as_deref(), Some("10.0.2.19/24"));
        assert_eq!(c.gateway.as_deref(), Some("10.0.2.1"));
        assert_eq!(c.mac, "06:76:6d:00:00:03");
        assert_eq!(c.tap.as_deref(), Some("tap3"));
        // Another bridge must exist (its subnet gives the address).
        let e = vm.for_clone(3, Some("vmsnobr9"), None, None, None).unwrap_err();
        assert!(format!("{e:#}").contains("no bridge named vmsnobr9"), "{e:#}");
        // A clone of a tap VM needs a link of its own.
        assert!(vm.for_clone(3, None, None, None, None).is_err());
        // Past the subnet's end.
        let small = NetConfig::for_boot(None, Some("t"), None, Some("10.0.2.2/28")).unwrap();
        assert!(small.for_clone(1, None, Some("t1"), None, None).is_err());
        // Overrides, and none.
        let c = vm.for_clone(3, None, Some("t3"), Some("06:00:00:00:00:09"), Some("none")).unwrap();
        assert_eq!((c.address.as_deref(), c.guest_spec(), c.mac.as_str()), (None, None, "06:00:00:00:00:09"));
        // The broadcast address is no host's.
        assert_eq!(host_address(Ipv4Addr::new(10, 0, 2, 1), 30, 2).unwrap(), Ipv4Addr::new(10, 0, 2, 2));
        assert!(host_address(Ipv4Addr::new(10, 0, 2, 1), 30, 3).is_err());
        assert!(host_address(Ipv4Addr::new(255, 255, 255, 254), 31, 1).is_err());
        assert!(host_address(Ipv4Addr::new(10, 0, 0, 1), 8, 16 + (1 << 24)).is_err());
        // A gateway a live image file brings in is checked.
        let mut forged = vm.clone();
        forged.gateway = Some("1.2.3.4; reboot".into());
        assert!(forged.for_clone(1, None, Some("t1"), None, None).is_err());
        for bad in ["10.0.2.2", "10.0.2.2/33", "10.0.2/24", "10.0.2.2/24,gw"] {
            assert!(NetConfig::for_boot(None, Some("t"), None, Some(bad)).is_err(), "{bad}");
        }
    }
}
