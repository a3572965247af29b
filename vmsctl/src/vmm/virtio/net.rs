// SPDX-License-Identifier: GPL-2.0

//! virtio-net (virtio 1.2, section 5.1) over a tap device: one receive and
//! one transmit queue, a MAC address in the configuration space, no
//! offloads (no checksum or segmentation features: every frame is whole
//! and checksummed by the guest, at most 1514 bytes).
//!
//! Frames move between the queues and a *link*: anything that carries
//! Ethernet frames one per `read`/`write` on a non-blocking file
//! descriptor. A tap device (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`,
//! [`Tap`]) is the link of a VM; a `SOCK_DGRAM` socket pair is one in
//! the tests.
//!
//! Every frame on a queue starts with the 12-byte `virtio_net_hdr_v1`
//! (with `VIRTIO_F_VERSION_1` it always has `num_buffers`). The device
//! writes it zeroed, with `num_buffers` 1, in front of each received
//! frame, and drops it from each frame the driver transmits.
//!
//! Status: the device model and the tap are tested on the host (frames
//! both ways over a socket pair and a real tap); `vmsctl run` does not
//! offer it yet: the test VM's kernel has no tun driver and our guest
//! kernel no network stack, so no guest has used it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use anyhow::{bail, ensure, Context, Result};
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
/// The longest frame without offloads: 1500 bytes of payload and the
/// 14-byte Ethernet header (no FCS on a tap).
pub const MAX_FRAME: usize = 1514;
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
}

impl Net {
    pub fn new(link: Box<dyn Link>, mac: [u8; 6]) -> Self {
        Self { link, mac, pending: None, counters: NetCounters::default() }
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
        let mut buf = vec![0u8; 65536];
        match self.link.read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e).context("virtio-net: reading from the link"),
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
            if ok {
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

/// A tap device: a network interface of the host whose frames a process
/// reads and writes.
pub struct Tap {
    file: File,
    name: String,
}

/// `struct ifreq` as TUNSETIFF takes it: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

impl Tap {
    /// Opens (or creates, with CAP_NET_ADMIN) the tap interface `name`,
    /// non-blocking, without packet information.
    pub fn open(name: &str) -> Result<Self> {
        ensure!(
            !name.is_empty() && name.len() < libc::IFNAMSIZ && !name.contains(['/', ' ', '\0']),
            "tap name {name:?}: 1 to {} characters, no '/' or spaces",
            libc::IFNAMSIZ - 1
        );
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun (is the tun module loaded?)")?;
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which
        // `req` is laid out as, and which outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                bail!("tap {name}: permission denied (creating a tap needs CAP_NET_ADMIN, or a tap made for this user with `ip tuntap add {name} mode tap user USER`)");
            }
            return Err(e).with_context(|| format!("tap {name}: TUNSETIFF"));
        }
        Ok(Self { file, name: name.to_owned() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

use std::os::unix::fs::OpenOptionsExt;

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
        assert!(Tap::open("no/slash").is_err());
    }

    /// A real tap, where the host allows one (root with /dev/net/tun).
    #[test]
    fn a_tap_carries_frames() {
        let name = format!("vmst{}", std::process::id() % 100000);
        let mut tap = match Tap::open(&name) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIP: no tap here: {e:#}");
                return;
            }
        };
        assert_eq!(tap.name(), name);
        // Down, the interface takes no frames from the host; reading
        // finds none (non-blocking).
        let mut buf = [0u8; 2048];
        assert_eq!(tap.read(&mut buf).unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
    }
}
