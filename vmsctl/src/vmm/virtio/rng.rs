// SPDX-License-Identifier: GPL-2.0

//! virtio-rng (virtio 1.2, section 5.4): one queue of buffers the driver
//! wants filled with random bytes. The bytes come from the host kernel's
//! CRNG (`getrandom(2)`), which never blocks once the host has booted.
//!
//! Linux's driver (`virtio_rng`, `hw_random`) feeds what it reads into the
//! guest's entropy pool; a clone that resumes with its parent's pool gets
//! fresh host entropy the next time the guest asks (issue 16's identity
//! part; the VM generation ID is what forces a reseed at once).

use anyhow::{Context, Result};
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::VirtioDevice;

/// Descriptors in the queue, at most.
pub const QUEUE_SIZE: u16 = 256;
/// The most bytes one request gets (Linux asks for at most a page or so).
const MAX_REQUEST: usize = 64 << 10;

/// The virtio-rng device.
#[derive(Default)]
pub struct Rng {
    /// Bytes handed to the guest, for statistics and tests.
    bytes: u64,
}

impl Rng {
    pub fn new() -> Self {
        Self::default()
    }

    /// Random bytes given to the driver since the device was created.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Fill `buf` from the host's CRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes to `rest`,
        // which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("getrandom");
        }
        done += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    /// virtio-rng has no configuration space.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool> {
        let mut used = false;
        let mut buf = Vec::new();
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            // A chain the driver got wrong (read-only buffers, addresses
            // outside memory) is completed with nothing written rather
            // than stalling the queue.
            let written = match chain.writer(mem) {
                Ok(mut w) => {
                    let n = w.available_bytes().min(MAX_REQUEST);
                    buf.resize(n, 0);
                    fill_random(&mut buf)?;
                    match std::io::Write::write_all(&mut w, &buf) {
                        Ok(()) => n,
                        Err(_) => w.bytes_written(),
                    }
                }
                Err(_) => 0,
            };
            self.bytes += written as u64;
            queue
                .add_used(mem, head, written as u32)
                .map_err(|e| anyhow::anyhow!("virtio-rng: adding to the used ring: {e:?}"))?;
            used = true;
        }
        Ok(used)
    }
}
