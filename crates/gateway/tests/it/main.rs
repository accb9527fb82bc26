//! Integration tests: a real `sluice` process between real clients (psql, pgbench,
//! tokio-postgres, raw sockets) and a real PostgreSQL started for this test run.
#![allow(clippy::unwrap_used)]

mod access;
mod audit;
mod auth;
mod aws;
mod bad_input;
mod clients;
mod console;
mod evasion;
mod http_api;
mod identity;
mod masking;
mod mcp;
mod policy;
mod reviews;
mod support;
mod tokio_pg;
mod tunnel;
