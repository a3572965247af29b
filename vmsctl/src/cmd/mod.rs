// SPDX-License-Identifier: GPL-2.0

//! One module per subcommand: its clap arguments, its typed error and its
//! `run`. `main.rs` dispatches and adds context.

pub mod version;
