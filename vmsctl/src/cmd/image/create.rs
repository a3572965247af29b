// SPDX-License-Identifier: GPL-2.0

//! `vmsctl image create`: register a file as an image.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

use clap::Args;
use thiserror::Error;

use crate::args::{format_size, parse_size, plural, ImageName, PAGE_SIZE};
use crate::cmd::Cause;
use crate::dev::{DevError, Errno, Vms};

const LONG_ABOUT: &str = "\
Create image NAME from FILE: guest-physical address 0 is at byte OFFSET of
the file, and the image holds SIZE bytes of guest memory.

FILE is opened read-only and handed to the module, which keeps it open and
reads pages from it on demand until the image is deleted. It must be a
regular file; holes read as zero pages. Clones share its page-cache pages,
so nothing may write it: the module refuses a file that is open for
writing, and until the image is deleted, opening the file for writing or
truncating it fails with ETXTBSY (text file busy), as for a running
program. Replacing it (a new file renamed over it) leaves the image on the
old one.

SIZE and OFFSET are bytes, with an optional suffix K, M or G (powers of
1024), and multiples of 4096. SIZE defaults to the file's length minus
OFFSET, rounded down to 4096.

NAME: 1 to 31 letters, digits, '-', '_' or '.'; unique among images.
Needs CAP_SYS_ADMIN.

Prints the image's name and size.

Example: vmsctl image create base --file guest.mem";

/// Arguments of `vmsctl image create`.
#[derive(Debug, Args)]
#[command(about = "Create an image from a guest memory file", long_about = LONG_ABOUT)]
pub struct CreateArgs {
    /// Name of the new image.
    name: ImageName,
    /// The guest memory file (a raw dump of guest-physical memory).
    #[arg(long, value_name = "PATH")]
    file: PathBuf,
    /// Bytes of guest memory [default: file length - OFFSET, rounded down
    /// to 4096].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: Option<u64>,
    /// Where guest-physical address 0 is in the file.
    #[arg(long, value_name = "OFF", value_parser = parse_size, default_value = "0")]
    offset: u64,
}

/// What can make `vmsctl image create` fail.
#[derive(Debug, Error)]
pub enum CreateError {
    /// `/dev/vms` could not be opened or speaks another ABI.
    #[error(transparent)]
    Dev(#[from] DevError),
    /// The file could not be opened or examined.
    #[error("image \"{name}\": file {}: {} ({errno})", path.display(), errno.text())]
    File {
        /// The image.
        name: ImageName,
        /// The file.
        path: PathBuf,
        /// Why.
        errno: Errno,
    },
    /// The file, size and offset do not make an image.
    #[error("image \"{name}\": {why}")]
    Layout {
        /// The image.
        name: ImageName,
        /// What is wrong.
        why: String,
    },
    /// The module refused to create the image.
    #[error("image \"{name}\": creating")]
    Create {
        /// The image.
        name: ImageName,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// Writing the report failed.
    #[error("writing the output")]
    Output(#[from] io::Error),
}

/// The image's size: `size` if given, else what the file holds after
/// `offset`, rounded down to a page; checked against the length `file_len`
/// of the file `file` and the alignment rules of `vms.h`.
fn image_size(size: Option<u64>, offset: u64, file: &str, file_len: u64) -> Result<u64, String> {
    if !offset.is_multiple_of(PAGE_SIZE) {
        return Err(format!("offset {offset} is not a multiple of {PAGE_SIZE}"));
    }
    match size {
        None => {
            let size = file_len.saturating_sub(offset) / PAGE_SIZE * PAGE_SIZE;
            if size == 0 {
                return Err(format!(
                    "file {file} ({file_len} bytes) holds less than one page \
                     ({PAGE_SIZE} bytes) after offset {offset}"
                ));
            }
            Ok(size)
        }
        Some(0) => Err("size must not be 0".to_owned()),
        Some(size) if !size.is_multiple_of(PAGE_SIZE) => {
            Err(format!("size {size} is not a multiple of {PAGE_SIZE}"))
        }
        Some(size) => match offset.checked_add(size) {
            Some(end) if end <= file_len => Ok(size),
            _ => Err(format!(
                "file {file} ({file_len} bytes) is shorter than offset + size \
                 ({offset} + {size})"
            )),
        },
    }
}

/// Explains the errnos `vms.h` lists for `VMS_IMAGE_CREATE`.
fn explain(errno: Errno) -> Option<String> {
    Some(
        match errno.0 {
            libc::EEXIST => "an image with this name exists",
            libc::EACCES => "the file is not open for reading",
            libc::EBADF => "the module did not get an open file",
            libc::ETXTBSY => {
                "the file is open for writing (by any process, or through a shared writable \
                 mapping); close every writer first: the file cannot be written while an \
                 image uses it"
            }
            libc::EINVAL => {
                "the module rejected the name, size, offset or file; the file must be a \
                 regular file holding offset + size bytes"
            }
            _ => return None,
        }
        .to_owned(),
    )
}

/// Runs `vmsctl image create`.
pub fn run(args: &CreateArgs) -> Result<(), CreateError> {
    let name = &args.name;
    let file_err = |e: io::Error| CreateError::File {
        name: name.clone(),
        path: args.file.clone(),
        errno: Errno::of(&e),
    };
    let file = File::open(&args.file).map_err(file_err)?;
    let meta = file.metadata().map_err(file_err)?;
    if !meta.is_file() {
        return Err(CreateError::Layout {
            name: name.clone(),
            why: format!("file {} is not a regular file", args.file.display()),
        });
    }
    let path = args.file.display().to_string();
    let size = image_size(args.size, args.offset, &path, meta.len()).map_err(|why| {
        CreateError::Layout {
            name: name.clone(),
            why,
        }
    })?;

    let (vms, _) = Vms::open_checked()?;
    vms.image_create(&name.to_abi(), file.as_fd(), size, args.offset)
        .map_err(|e| CreateError::Create {
            name: name.clone(),
            cause: Cause::new(e, explain),
        })?;

    let mut out = io::stdout().lock();
    writeln!(
        out,
        "image {name}: {} ({} bytes, {}) from {} at offset {}",
        format_size(size),
        size,
        plural(size / PAGE_SIZE, "page", "pages"),
        args.file.display(),
        args.offset
    )?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_defaults_to_whole_pages_after_offset() {
        assert_eq!(image_size(None, 0, "f", 8192), Ok(8192));
        assert_eq!(image_size(None, 0, "f", 8191), Ok(4096));
        assert_eq!(image_size(None, 4096, "f", 3 * 4096 + 5), Ok(8192));
    }

    #[test]
    fn default_size_needs_a_page() {
        assert!(image_size(None, 0, "f", 4095).is_err());
        assert!(image_size(None, 0, "f", 0).is_err());
        assert!(image_size(None, 8192, "f", 4096).is_err());
        assert!(image_size(None, 4096, "f", 8191).is_err());
    }

    #[test]
    fn explicit_size_must_fit_the_file() {
        assert_eq!(image_size(Some(4096), 4096, "f", 8192), Ok(4096));
        let e = image_size(Some(8192), 4096, "f", 8192).unwrap_err();
        assert!(e.contains("shorter than offset + size"), "{e}");
        assert!(image_size(Some(!4095), 4096, "f", 8192).is_err());
    }

    #[test]
    fn sizes_and_offsets_are_page_aligned() {
        assert!(image_size(Some(0), 0, "f", 8192).is_err());
        assert!(image_size(Some(100), 0, "f", 8192).is_err());
        assert!(image_size(None, 100, "f", 8192).is_err());
        assert!(image_size(Some(4096), 100, "f", 8192).is_err());
    }
}
