//! bias_transfer_rs: reproducible bias-transfer experiments on a Rust training core.
//!
//! The core (configs, recipes, data, noise, training, storage, the runner) builds and tests
//! without Python; the `python` feature adds the bindings in [`python`].

pub mod config;
pub mod data;
pub mod noise;
pub mod pinning;
pub mod recipe;
pub mod runner;
pub mod store;
pub mod train;

#[cfg(feature = "python")]
pub mod python;

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit this build was made from (`unknown` outside a git checkout), with
/// `-dirty` appended when the tree had uncommitted changes.
pub const GIT_COMMIT: &str = env!("BT_GIT_COMMIT");
