// SPDX-License-Identifier: GPL-2.0

//! `vmsctl image`: create, inspect, list and delete images.
//!
//! One module per subcommand; this file holds what they share: the report
//! of one image and its two layouts (key-value lines and a table row).

pub mod create;
pub mod delete;
pub mod info;
pub mod list;

use std::io::{self, Write};

use clap::{Args, Subcommand};
use serde::Serialize;
use vms_uapi::VmsImageStats;

use crate::args::{format_size, PAGE_SIZE};

const LONG_ABOUT: &str = "\
Create, inspect, list and delete images.

An image is a guest memory dump in a file, registered in the vms module
under a name. Guest-physical page N is the 4096 bytes at file offset
OFFSET + N * 4096. The module reads a page from the file the first time a
clone needs it and keeps it in the image's cache, where every clone of the
image shares it; all-zero pages share one zero page and cost no memory.
The module keeps the file open and reads it until the image is deleted;
meanwhile nobody can write or truncate the file (ETXTBSY, as for a running
executable), so every clone reads the bytes the image was made of.

Images live in the module, not in a process: they stay until `vmsctl image
delete` or until the module is unloaded. Creating and deleting images needs
CAP_SYS_ADMIN.";

/// Arguments of `vmsctl image`.
#[derive(Debug, Args)]
#[command(about = "Create, inspect, list and delete images", long_about = LONG_ABOUT)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

/// The subcommands of `vmsctl image`.
#[derive(Debug, Subcommand)]
enum ImageCommand {
    Create(create::CreateArgs),
    Info(info::InfoArgs),
    List(list::ListArgs),
    Delete(delete::DeleteArgs),
}

/// What `vmsctl image` can fail with: the error of its subcommand.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// `vmsctl image create` failed.
    #[error(transparent)]
    Create(#[from] create::CreateError),
    /// `vmsctl image info` failed.
    #[error(transparent)]
    Info(#[from] info::InfoError),
    /// `vmsctl image list` failed.
    #[error(transparent)]
    List(#[from] list::ListError),
    /// `vmsctl image delete` failed.
    #[error(transparent)]
    Delete(#[from] delete::DeleteError),
}

/// Runs `vmsctl image`.
pub fn run(args: &ImageArgs) -> Result<(), ImageError> {
    match &args.command {
        ImageCommand::Create(a) => create::run(a)?,
        ImageCommand::Info(a) => info::run(a)?,
        ImageCommand::List(a) => list::run(a)?,
        ImageCommand::Delete(a) => delete::run(a)?,
    }
    Ok(())
}

/// One image and its counters (`struct vms_image_stats`), as `--json`
/// prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageReport {
    /// The image's name.
    pub name: String,
    /// Bytes of guest memory.
    pub size: u64,
    /// Clones that use the image now.
    pub clones: u64,
    /// Pages held in the image's cache.
    pub cached_pages: u64,
    /// Of those, the file's own page-cache pages (no copy).
    pub file_pages: u64,
    /// Copies of such pages held for VMMs' mappings.
    pub vmm_copies: u64,
    /// Pages given back under memory pressure.
    pub dropped: u64,
    /// Pages taken back from clones that mapped them, under pressure.
    pub unmapped: u64,
    /// Pages found all-zero.
    pub zero_pages: u64,
    /// Pages read from the file since creation.
    pub streamed: u64,
    /// Failed reads of the file.
    pub read_errors: u64,
    /// 0 for a base image, parent's + 1 for a live image.
    pub generation: u64,
    /// Live images layered on this one.
    pub children: u64,
    /// The image a live image is layered on.
    pub parent: Option<String>,
}

impl ImageReport {
    /// The report of image `name` with counters `s`.
    pub fn new(name: String, s: &VmsImageStats) -> Self {
        Self {
            name,
            size: s.size,
            clones: s.clones,
            cached_pages: s.cached_pages,
            file_pages: s.file_pages,
            vmm_copies: s.vmm_copies,
            dropped: s.dropped,
            unmapped: s.unmapped,
            zero_pages: s.zero_pages,
            streamed: s.streamed,
            read_errors: s.read_errors,
            generation: s.generation,
            children: s.children,
            parent: vms_uapi::name_bytes(&s.parent)
                .filter(|b| !b.is_empty())
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        }
    }

    /// Writes the report as `key value` lines, keys as in `vms.h`.
    pub fn write_info(&self, out: &mut impl Write) -> io::Result<()> {
        let pages = |n: u64| format!("{n} ({})", format_size(n.saturating_mul(PAGE_SIZE)));
        let rows = [
            (
                "size",
                format!(
                    "{} ({} bytes, {} pages)",
                    format_size(self.size),
                    self.size,
                    self.size / PAGE_SIZE
                ),
            ),
            ("clones", self.clones.to_string()),
            ("cached_pages", pages(self.cached_pages)),
            ("file_pages", pages(self.file_pages)),
            ("vmm_copies", pages(self.vmm_copies)),
            ("dropped", self.dropped.to_string()),
            ("unmapped", self.unmapped.to_string()),
            ("zero_pages", self.zero_pages.to_string()),
            ("streamed", self.streamed.to_string()),
            ("read_errors", self.read_errors.to_string()),
            ("generation", self.generation.to_string()),
            ("children", self.children.to_string()),
            ("parent", self.parent.clone().unwrap_or_else(|| "-".into())),
        ];
        writeln!(out, "image {}", self.name)?;
        for (key, value) in rows {
            writeln!(out, "{key:<13} {value}")?;
        }
        Ok(())
    }
}

/// Writes `images` as a table, one row each, or `no images`.
pub fn write_table(out: &mut impl Write, images: &[ImageReport]) -> io::Result<()> {
    if images.is_empty() {
        return writeln!(out, "no images");
    }
    const HEAD: [&str; 9] = [
        "NAME",
        "SIZE",
        "CLONES",
        "CACHED",
        "ZERO",
        "STREAMED",
        "READ-ERRORS",
        "GEN",
        "PARENT",
    ];
    let rows: Vec<[String; 9]> = images
        .iter()
        .map(|i| {
            [
                i.name.clone(),
                format_size(i.size),
                i.clones.to_string(),
                i.cached_pages.to_string(),
                i.zero_pages.to_string(),
                i.streamed.to_string(),
                i.read_errors.to_string(),
                i.generation.to_string(),
                i.parent.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut width = HEAD.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    // The name is left-aligned, the numbers right-aligned.
    let mut line = |cells: [&str; 9]| -> io::Result<()> {
        write!(out, "{:<w$}", cells[0], w = width[0])?;
        for (cell, w) in cells.iter().zip(width).skip(1) {
            write!(out, "  {cell:>w$}")?;
        }
        writeln!(out)
    };
    line(HEAD)?;
    for row in &rows {
        line(row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, size: u64, cached: u64) -> ImageReport {
        ImageReport {
            name: name.to_owned(),
            size,
            clones: 1,
            cached_pages: cached,
            file_pages: cached - 1,
            vmm_copies: 1,
            dropped: 0,
            unmapped: 0,
            zero_pages: 0,
            streamed: cached,
            read_errors: 0,
            generation: 0,
            children: 0,
            parent: None,
        }
    }

    #[test]
    fn table_aligns_columns() {
        let mut out = Vec::new();
        let images = [report("base", 1 << 30, 12345), report("b", 8192, 2)];
        write_table(&mut out, &images).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\
NAME  SIZE  CLONES  CACHED  ZERO  STREAMED  READ-ERRORS  GEN  PARENT
base    1G       1   12345     0     12345            0    0       -
b       8K       1       2     0         2            0    0       -
"
        );
    }

    #[test]
    fn empty_table_says_so() {
        let mut out = Vec::new();
        write_table(&mut out, &[]).unwrap();
        assert_eq!(out, b"no images\n");
    }

    #[test]
    fn info_names_fields_as_vms_h() {
        let mut out = Vec::new();
        report("base", 1 << 20, 3).write_info(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\
image base
size          1M (1048576 bytes, 256 pages)
clones        1
cached_pages  3 (12K)
file_pages    2 (8K)
vmm_copies    1 (4K)
dropped       0
unmapped      0
zero_pages    0
streamed      3
read_errors   0
generation    0
children      0
parent        -
"
        );
    }
}
