//! Integration tests: the real server on port 0 with a fresh SQLite file,
//! driven through the project's client crate. One test binary, one module
//! per area.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod abuse;
mod accounts;
mod admin;
mod backup;
mod bench;
mod blocks;
mod browser;
mod changes;
mod cluster;
mod config;
mod crash;
mod errors;
mod fuzz;
mod helpers;
mod history;
mod lifecycle;
mod messaging;
mod nginx;
mod openapi;
mod postgres;
mod presence;
mod session;
mod terminal;
mod tls;
mod upgrade;
