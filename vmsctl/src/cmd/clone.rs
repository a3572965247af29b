// SPDX-License-Identifier: GPL-2.0

//! `vmsctl clone`: create a clone of an image, touch its pages as a VMM
//! would, and show what the module did.

use std::io::{self, Write};

use clap::{Args, Subcommand};
use serde::Serialize;
use thiserror::Error;
use vms_uapi::VmsCloneStats;

use crate::args::{format_size, plural, ImageName, PAGE_SIZE};
use crate::cmd::{explain_named, Cause};
use crate::dev::{DevError, Errno, Vms};
use crate::sys::{self, Release};

const LONG_ABOUT: &str = "\
Work with clones.

A clone is one VM's memory, created from an image: it starts as the image
and shares all of the image's pages; the first write to a page, by the
guest or through the VMM's mapping, gives the clone a private copy of that
page. The VMM mmap()s the clone's file descriptor and attaches it to
memslots of its KVM VM (VMS_CLONE_ATTACH).

A clone lives while its file descriptor (or a mapping of it) is open, or
while it has a name: `vmsctl clone create IMAGE --name NAME` gives it the
device /dev/vms-clone/NAME, whose open(2) returns a file of the clone.
That is how a VMM that takes guest memory by path uses a clone, e.g.
QEMU's `-object memory-backend-file,id=ram,mem-path=/dev/vms-clone/NAME,
share=on,size=SIZE -machine memory-backend=ram`: vms.ko claims the
memslots QEMU makes on that mapping, and KVM asks the clone for each page
at stage-2 fault time (shared reads, copy on the first write); see
docs/QEMU.md. vmsctl makes /dev/vms-clone a read-only mount when it names
a clone, so that a mistyped name fails in QEMU instead of becoming a file
QEMU creates and runs on. `vmsctl clone list` shows the named clones,
`vmsctl clone delete NAME` removes a name; the clone goes once no file or
mapping of it is open.
Without a name, the clone goes when the process that holds it exits:
`vmsctl clone create` holds it only for as long as it runs.";

/// Arguments of `vmsctl clone`.
#[derive(Debug, Args)]
#[command(about = "Create a clone of an image and touch its pages", long_about = LONG_ABOUT)]
pub struct CloneArgs {
    #[command(subcommand)]
    command: CloneCommand,
}

/// The subcommands of `vmsctl clone`.
#[derive(Debug, Subcommand)]
enum CloneCommand {
    Create(CreateArgs),
    List(ListArgs),
    Delete(DeleteArgs),
}

/// Arguments of `vmsctl clone list`.
#[derive(Debug, Args)]
#[command(
    about = "List the named clones (/dev/vms-clone/NAME)",
    long_about = "List the named clones: each name, its device, its image (after a live \
image of it, that live image), its size and its private pages (VMS_CLONE_STATS, \
read through the device)."
)]
pub struct ListArgs {
    /// Print one JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `vmsctl clone delete`.
#[derive(Debug, Args)]
#[command(
    about = "Remove a clone's name (VMS_CLONE_UNNAME)",
    long_about = "Remove the name NAME and its device /dev/vms-clone/NAME \
(VMS_CLONE_UNNAME). A VMM that has the clone open or mapped keeps it; it goes, with \
its private pages, when the last file and mapping of it are gone."
)]
pub struct DeleteArgs {
    /// The clone's name.
    name: ImageName,
}

const CREATE_LONG_ABOUT: &str = "\
Create a clone of IMAGE (VMS_CLONE_CREATE) and map it as a VMM would
(mmap, MAP_SHARED, read-write, the image's size). Then read the first byte
of each of the first N pages (--read N), write a byte to each of the first
N pages (--write N, writing back the byte that is there, so the content
stays the image's), and print the clone's counters (VMS_CLONE_STATS),
named as in struct vms_clone_stats of vms.h:

  size           bytes of guest memory
  faults         stage-2 (EPT/NPT) faults served (0 here: no VM runs)
  mmap_faults    faults of the mapping served
  shared_maps    faults answered with the image's shared page
  zero_maps      faults answered with the shared zero page
  streamed       image pages this clone caused to be read from the file
  cow_copies     private copies made on first write
  private_pages  private pages the clone holds now
  io_errors      faults that failed because the image could not be read
  resets         VMS_CLONE_RESET calls that succeeded on this clone

With --reset, the clone is reset after the reads and writes
(VMS_CLONE_RESET): its private pages go, every page reads the image's
bytes again, and private_pages is 0 in the counters.

The clone lives only while vmsctl holds its file descriptor: without
--hold it is gone when vmsctl exits. With --hold, vmsctl keeps it until
standard input is closed (Ctrl-D, or the end of a pipe) or SIGINT/SIGTERM
arrives, so `vmsctl stats` in another shell shows it among the image's
clones. In a script, keep standard input open, e.g.
`sleep infinity | vmsctl clone create base --hold &`; with standard input
from /dev/null the hold ends at once.

If the module cannot read a page from the image file, touching it raises
SIGBUS; vmsctl then names the page and exits with status 1.";

/// Arguments of `vmsctl clone create`.
#[derive(Debug, Args)]
#[command(
    about = "Create a clone, touch its first pages and show its counters",
    long_about = CREATE_LONG_ABOUT
)]
pub struct CreateArgs {
    /// The image to clone.
    image: ImageName,
    /// Read the first N pages of the clone.
    #[arg(long, value_name = "N", default_value_t = 0)]
    read: u64,
    /// Write to the first N pages of the clone (after reading).
    #[arg(long, value_name = "N", default_value_t = 0)]
    write: u64,
    /// After the reads and writes, drop the clone's private pages
    /// (VMS_CLONE_RESET): it reads its image again.
    #[arg(long)]
    reset: bool,
    /// Keep the clone until stdin closes or SIGINT/SIGTERM.
    #[arg(long, conflicts_with = "name")]
    hold: bool,
    /// Name the clone (VMS_CLONE_NAME): the device /dev/vms-clone/NAME
    /// keeps it after vmsctl exits, until `vmsctl clone delete NAME`.
    /// Names follow the image names' rules and may not start with '.'.
    #[arg(long, value_name = "NAME")]
    name: Option<ImageName>,
    /// With --name: the device's owner (a user name or uid; mode stays
    /// 0600), e.g. the user QEMU runs as (libvirt's libvirt-qemu). The
    /// directory is a read-only mount, so chown(1) there fails: use this.
    #[arg(long, value_name = "USER", requires = "name")]
    owner: Option<String>,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

/// What can make `vmsctl clone create` fail.
#[derive(Debug, Error)]
pub enum CloneError {
    /// `/dev/vms` could not be opened or speaks another ABI.
    #[error(transparent)]
    Dev(#[from] DevError),
    /// The image's size could not be read.
    #[error("image \"{image}\": reading its size")]
    Info {
        /// The image.
        image: ImageName,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// `--read` or `--write` asks for more pages than the image has.
    #[error(
        "image \"{image}\": --{flag} {asked}: the image has only {}",
        plural(*pages, "page", "pages")
    )]
    TooManyPages {
        /// The image.
        image: ImageName,
        /// `read` or `write`.
        flag: &'static str,
        /// How many pages the flag asks for.
        asked: u64,
        /// How many pages the image has.
        pages: u64,
    },
    /// The module did not create the clone.
    #[error("image \"{image}\": creating a clone")]
    Create {
        /// The image.
        image: ImageName,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// The clone could not be mapped.
    #[error("clone of image \"{image}\": mapping it")]
    Map {
        /// The image.
        image: ImageName,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// The clone could not be reset.
    #[error("clone of image \"{image}\": resetting it")]
    Reset {
        /// The image.
        image: ImageName,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// The clone's counters could not be read.
    #[error("clone of image \"{image}\": reading its counters")]
    Stats {
        /// The image.
        image: ImageName,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// The `SIGBUS` report could not be set up.
    #[error("setting up the SIGBUS report")]
    Signal(#[source] io::Error),
    /// Waiting for the release of a held clone failed.
    #[error("clone of image \"{image}\": holding it")]
    Hold {
        /// The image.
        image: ImageName,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The clone could not be named.
    #[error("clone of image \"{image}\": naming it \"{name}\"")]
    Name {
        /// The image.
        image: ImageName,
        /// The name.
        name: ImageName,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// A name could not be removed.
    #[error("clone \"{name}\": deleting its name")]
    Unname {
        /// The name.
        name: ImageName,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// A named clone could not be read.
    #[error("clone \"{name}\"")]
    Named {
        /// The name.
        name: String,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// Writing the report failed.
    #[error("writing the output")]
    Output(#[from] io::Error),
    /// Encoding the JSON report failed.
    #[error("encoding the report as JSON")]
    Json(#[from] serde_json::Error),
}

/// Runs `vmsctl clone`.
pub fn run(args: &CloneArgs) -> Result<(), CloneError> {
    match &args.command {
        CloneCommand::Create(a) => create(a),
        CloneCommand::List(a) => list(a),
        CloneCommand::Delete(a) => delete(a),
    }
}

/// Explains the errnos of `VMS_CLONE_NAME`.
fn explain_name(errno: Errno) -> Option<String> {
    match errno.0 {
        libc::EEXIST => Some("another clone has that name".to_owned()),
        libc::EBUSY => Some("the clone has a name already".to_owned()),
        libc::EINVAL => Some("the module refused the name (names may not start with '.')".to_owned()),
        _ => None,
    }
}

/// One named clone, as `vmsctl clone list` shows it.
#[derive(Debug, Serialize)]
struct NamedRow {
    name: String,
    device: String,
    image: String,
    size: u64,
    private_pages: u64,
    /// Stage-2 faults the clone served as the VM's page provider.
    faults: u64,
    /// Faults of mappings of the clone (a VMM's, or KVM's through them).
    mmap_faults: u64,
    cow_copies: u64,
}

/// Runs `vmsctl clone list`.
/// Warns of files in the named clones' directory that are not clones.
/// QEMU creates its `mem-path` when nothing has that name, and then runs
/// its guest on ordinary shared memory of the devtmpfs, without vms:
/// a mistyped or deleted clone name is not an error to QEMU.
fn warn_strays() {
    use std::os::unix::fs::FileTypeExt;
    let Ok(dir) = std::fs::read_dir(crate::dev::NAMED_CLONE_DIR) else { return };
    for e in dir.flatten() {
        if e.file_type().is_ok_and(|t| !t.is_char_device()) {
            eprintln!(
                "vmsctl: {} is not a vms clone but a file a program made there (QEMU creates a mem-path that names \
                 no clone, and runs its guest on ordinary memory instead): remove it once nothing uses it",
                e.path().display()
            );
        }
    }
}

fn list(args: &ListArgs) -> Result<(), CloneError> {
    let mut rows = Vec::new();
    for name in crate::dev::named_clones() {
        let named = |e| CloneError::Named { name: name.clone(), cause: Cause::new(e, |_| None) };
        // Named a moment ago, unnamed since: not listed.
        let clone = match crate::dev::CloneFd::open_named(&name) {
            Ok(c) => c,
            Err(e) if e.errno().map(|e| e.0) == Some(libc::ENOENT) => continue,
            Err(e) => return Err(named(e)),
        };
        let s = clone.stats().map_err(named)?;
        rows.push(NamedRow {
            device: format!("{}/{name}", crate::dev::NAMED_CLONE_DIR),
            image: vms_uapi::name_bytes(&s.image).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default(),
            size: s.size,
            private_pages: s.private_pages,
            faults: s.faults,
            mmap_faults: s.mmap_faults,
            cow_copies: s.cow_copies,
            name,
        });
    }
    warn_strays();
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &rows)?;
        writeln!(out)?;
    } else if rows.is_empty() {
        writeln!(out, "no named clones (vmsctl clone create IMAGE --name NAME makes one)")?;
    } else {
        writeln!(out, "{:<24} {:<24} {:>10} {:>10}  DEVICE", "NAME", "IMAGE", "SIZE", "PRIVATE")?;
        for r in &rows {
            writeln!(
                out,
                "{:<24} {:<24} {:>10} {:>10}  {}",
                r.name,
                r.image,
                format_size(r.size),
                format_size(r.private_pages * PAGE_SIZE),
                r.device
            )?;
        }
    }
    Ok(())
}

/// Runs `vmsctl clone delete`.
fn delete(args: &DeleteArgs) -> Result<(), CloneError> {
    let (vms, _) = Vms::open_checked()?;
    vms.clone_unname(&args.name.to_abi()).map_err(|e| CloneError::Unname {
        name: args.name.clone(),
        cause: Cause::new(e, |errno| (errno.0 == libc::ENOENT).then(|| "no clone has that name".to_owned())),
    })?;
    println!(
        "deleted the name {} (the clone goes once no file or mapping of it is open)",
        args.name
    );
    Ok(())
}

/// The report of `vmsctl clone create`, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Report {
    image: String,
    read_pages: u64,
    written_pages: u64,
    size: u64,
    faults: u64,
    mmap_faults: u64,
    shared_maps: u64,
    zero_maps: u64,
    streamed: u64,
    cow_copies: u64,
    private_pages: u64,
    io_errors: u64,
    resets: u64,
}

impl Report {
    fn new(image: &ImageName, read: u64, written: u64, s: &VmsCloneStats) -> Self {
        Self {
            image: image.to_string(),
            read_pages: read,
            written_pages: written,
            size: s.size,
            faults: s.faults,
            mmap_faults: s.mmap_faults,
            shared_maps: s.shared_maps,
            zero_maps: s.zero_maps,
            streamed: s.streamed,
            cow_copies: s.cow_copies,
            private_pages: s.private_pages,
            io_errors: s.io_errors,
            resets: s.resets,
        }
    }

    /// Writes the report as `key value` lines, keys as in `vms.h`.
    fn write_info(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "clone of image {}: read {}, wrote {}",
            self.image,
            plural(self.read_pages, "page", "pages"),
            plural(self.written_pages, "page", "pages"),
        )?;
        let rows = [
            (
                "size",
                format!("{} ({} bytes)", format_size(self.size), self.size),
            ),
            ("faults", self.faults.to_string()),
            ("mmap_faults", self.mmap_faults.to_string()),
            ("shared_maps", self.shared_maps.to_string()),
            ("zero_maps", self.zero_maps.to_string()),
            ("streamed", self.streamed.to_string()),
            ("cow_copies", self.cow_copies.to_string()),
            ("private_pages", self.private_pages.to_string()),
            ("io_errors", self.io_errors.to_string()),
            ("resets", self.resets.to_string()),
        ];
        for (key, value) in rows {
            writeln!(out, "{key:<14} {value}")?;
        }
        Ok(())
    }
}

/// Explains the errnos `vms.h` lists for `VMS_CLONE_CREATE`.
fn explain_create(errno: Errno) -> Option<String> {
    match errno.0 {
        libc::EMFILE => Some("vmsctl has too many open files".to_owned()),
        _ => explain_named(errno),
    }
}

/// Explains the errnos of `mmap(2)` of a clone.
fn explain_map(errno: Errno) -> Option<String> {
    match errno.0 {
        libc::ENODEV => Some("the module does not support mapping clones".to_owned()),
        libc::EINVAL => Some("the module rejected the mapping".to_owned()),
        libc::ENOMEM => Some("not enough address space for the image".to_owned()),
        _ => None,
    }
}

/// Runs `vmsctl clone create`.
fn create(args: &CreateArgs) -> Result<(), CloneError> {
    let image = &args.image;
    let name = image.to_abi();
    let (vms, _) = Vms::open_checked()?;
    let size = vms
        .image_info(&name)
        .map_err(|e| CloneError::Info {
            image: image.clone(),
            cause: Cause::new(e, explain_named),
        })?
        .size;
    let pages = size / PAGE_SIZE;
    for (flag, asked) in [("read", args.read), ("write", args.write)] {
        if asked > pages {
            return Err(CloneError::TooManyPages {
                image: image.clone(),
                flag,
                asked,
                pages,
            });
        }
    }

    let clone = vms.clone_create(&name).map_err(|e| CloneError::Create {
        image: image.clone(),
        cause: Cause::new(e, explain_create),
    })?;
    if let Some(n) = &args.name {
        vms.clone_name(&n.to_abi(), &clone).map_err(|e| CloneError::Name {
            image: image.clone(),
            name: n.clone(),
            cause: Cause::new(e, explain_name),
        })?;
        crate::dev::guard_named_dir();
        if let Some(owner) = &args.owner {
            if let Err(e) = crate::dev::chown_named(&n.to_string(), owner) {
                let _ = vms.clone_unname(&n.to_abi());
                eprintln!("vmsctl: giving /dev/vms-clone/{n} to {owner}: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let map = clone.map(size).map_err(|e| CloneError::Map {
        image: image.clone(),
        cause: Cause::new(e, explain_map),
    })?;

    sys::report_sigbus().map_err(CloneError::Signal)?;
    // `pages` fits in usize: the whole image is mapped.
    let offset = |page: u64| (page * PAGE_SIZE) as usize;
    for page in 0..args.read {
        sys::touching(page, false);
        map.read_byte(offset(page));
    }
    for page in 0..args.write {
        sys::touching(page, true);
        let byte = map.read_byte(offset(page));
        map.write_byte(offset(page), byte);
    }
    sys::touched();
    if args.reset {
        clone.reset().map_err(|e| CloneError::Reset {
            image: image.clone(),
            cause: Cause::new(e, |errno| {
                (errno.0 == libc::ENOTTY)
                    .then(|| "the loaded vms module predates VMS_CLONE_RESET: load this tree's".to_owned())
            }),
        })?;
    }

    let stats = clone.stats().map_err(|e| CloneError::Stats {
        image: image.clone(),
        cause: Cause::new(e, |_| None),
    })?;
    let report = Report::new(image, args.read, args.write, &stats);
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        report.write_info(&mut out)?;
    }
    if let Some(n) = &args.name {
        if !args.json {
            writeln!(
                out,
                "named {n}: {}/{n}, which keeps the clone until `vmsctl clone delete {n}`",
                crate::dev::NAMED_CLONE_DIR
            )?;
        }
    }
    out.flush()?;
    drop(out);

    if args.hold {
        eprintln!(
            "vmsctl: holding the clone of image {image}: close stdin (Ctrl-D) or \
             press Ctrl-C to release it"
        );
        let release = sys::wait_for_release().map_err(|source| CloneError::Hold {
            image: image.clone(),
            source,
        })?;
        let why = match release {
            Release::Eof => "stdin closed".to_owned(),
            Release::Signal(libc::SIGINT) => "SIGINT".to_owned(),
            Release::Signal(libc::SIGTERM) => "SIGTERM".to_owned(),
            Release::Signal(n) => format!("signal {n}"),
        };
        eprintln!("vmsctl: releasing the clone of image {image} ({why})");
    }
    // The clone ends here: unmap, then close its descriptor.
    drop(map);
    drop(clone);
    Ok(())
}
