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

A clone lives only while its file descriptor (or a mapping of it) is open:
there is no command to delete one, and when the process that holds it
exits, the clone and its private pages are gone. `vmsctl clone create`
therefore holds a clone only for as long as it runs.";

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
    #[arg(long)]
    hold: bool,
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
    }
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
