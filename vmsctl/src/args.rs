// SPDX-License-Identifier: GPL-2.0

//! The values users type and read: image names and byte sizes.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;
use vms_uapi::{set_name, VMS_NAME_LEN};

/// The page size of images and clones: sizes and offsets in `vms.h` are
/// multiples of it.
pub const PAGE_SIZE: u64 = 4096;

/// An image name as `vms.h` allows it: 1 to 31 bytes of ASCII letters,
/// digits, `-`, `_` and `.`.
///
/// # Invariants
///
/// The string is 1 to `VMS_NAME_LEN - 1` bytes of those characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName(String);

/// Why a string is not an image name.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    /// The string is empty.
    #[error("an image name needs at least one character")]
    Empty,
    /// The string is longer than a name field holds.
    #[error("an image name has at most {max} bytes, this one has {0}", max = VMS_NAME_LEN - 1)]
    TooLong(usize),
    /// The string has a character names do not allow.
    #[error("{0:?} is not allowed in an image name (letters, digits, '-', '_' and '.' are)")]
    BadChar(char),
}

impl ImageName {
    /// The name as a NUL-terminated `vms.h` name field.
    pub fn to_abi(&self) -> [u8; VMS_NAME_LEN] {
        let mut field = [0; VMS_NAME_LEN];
        let fits = set_name(&mut field, self.0.as_bytes());
        // The type's invariant (at most 31 bytes, no NUL) makes it fit.
        assert!(fits, "ImageName {:?} does not fit", self.0);
        field
    }
}

impl FromStr for ImageName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        if let Some(c) = s
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(NameError::BadChar(c));
        }
        match s.len() {
            0 => Err(NameError::Empty),
            // INVARIANT: 1..=31 allowed characters.
            n if n < VMS_NAME_LEN => Ok(Self(s.to_owned())),
            n => Err(NameError::TooLong(n)),
        }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a string is not a size.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    /// The string is empty.
    #[error("a size needs digits, e.g. 4096, 64K, 512M or 2G")]
    Empty,
    /// The string does not start with a decimal number.
    #[error("{0:?} is not a size: digits, then optionally K, M or G (e.g. 512M)")]
    NotNumber(String),
    /// The suffix is not one of K, M, G.
    #[error("unknown suffix {0:?}: use K, M or G (powers of 1024)")]
    Suffix(String),
    /// The size does not fit in 64 bits.
    #[error("{0:?} is too large")]
    Overflow(String),
}

/// Parses a byte count: decimal digits, then optionally `K`, `M` or `G`
/// (either case) for 2^10, 2^20 or 2^30.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    if digits.is_empty() {
        return Err(SizeError::NotNumber(s.to_owned()));
    }
    let shift = match suffix {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => return Err(SizeError::Suffix(suffix.to_owned())),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| SizeError::Overflow(s.to_owned()))
}

/// [`parse_size`] for clap's `value_parser`.
pub fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// Prints a byte count the way [`parse_size`] reads it: with the largest
/// suffix that divides it exactly, so `1073741824` is `1G` and `12288` is
/// `12K`, and with no suffix otherwise.
pub fn format_size(bytes: u64) -> String {
    for (shift, suffix) in [(30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `n` followed by `one` or `many`: `1 page`, `2 pages`.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("G"), Err(SizeError::NotNumber("G".into())));
        assert_eq!(parse_size("-1"), Err(SizeError::NotNumber("-1".into())));
        assert_eq!(parse_size("1T"), Err(SizeError::Suffix("T".into())));
        assert_eq!(parse_size("1KB"), Err(SizeError::Suffix("KB".into())));
        assert_eq!(parse_size("1 K"), Err(SizeError::Suffix(" K".into())));
        assert_eq!(parse_size("0x10"), Err(SizeError::Suffix("x10".into())));
        assert_eq!(
            parse_size("18446744073709551616"),
            Err(SizeError::Overflow("18446744073709551616".into()))
        );
        assert_eq!(
            parse_size("17179869184G"),
            Err(SizeError::Overflow("17179869184G".into()))
        );
    }

    #[test]
    fn sizes_format_as_they_parse() {
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(4095), "4095");
        assert_eq!(format_size(4096), "4K");
        assert_eq!(format_size(12288), "12K");
        assert_eq!(format_size(3 << 20), "3M");
        assert_eq!(format_size((1 << 30) + 4096), "1048580K");
        assert_eq!(format_size(1 << 30), "1G");
        for n in [1, 4096, 5 << 20, 7 << 30, u64::MAX] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
    }

    #[test]
    fn names_take_letters_digits_dash_underscore_dot() {
        for ok in [
            "a",
            "base",
            "Base-2",
            "ubuntu_24.04",
            "...",
            "-",
            &"x".repeat(31),
        ] {
            let name: ImageName = ok.parse().unwrap();
            assert_eq!(name.to_string(), ok);
            let field = name.to_abi();
            assert_eq!(vms_uapi::name_bytes(&field), Some(ok.as_bytes()));
        }
    }

    #[test]
    fn bad_names_are_rejected() {
        assert_eq!("".parse::<ImageName>(), Err(NameError::Empty));
        assert_eq!(
            "x".repeat(32).parse::<ImageName>(),
            Err(NameError::TooLong(32))
        );
        assert_eq!("a b".parse::<ImageName>(), Err(NameError::BadChar(' ')));
        assert_eq!("a/b".parse::<ImageName>(), Err(NameError::BadChar('/')));
        assert_eq!("a\0".parse::<ImageName>(), Err(NameError::BadChar('\0')));
        assert_eq!("é".parse::<ImageName>(), Err(NameError::BadChar('é')));
    }

    #[test]
    fn plurals() {
        assert_eq!(plural(0, "page", "pages"), "0 pages");
        assert_eq!(plural(1, "page", "pages"), "1 page");
        assert_eq!(plural(2, "clone", "clones"), "2 clones");
    }
}
