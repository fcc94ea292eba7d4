//! The integration tests, as one test binary: each module is one suite, and the operator is
//! linked once instead of once per suite (on two cores, linking dominated the build).
//!
//! `cargo test --test it` runs them all; `cargo test --test it -- leader::` runs one suite.
//! The suites share this process: the suites that run an operator each get a control plane of
//! their own ([`support::Plane`]), environment changes go through [`support::LIBC_ENV`], and
//! processes started by a suite's fixtures live until the whole binary exits.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

mod adoption;
mod argocd_health;
mod bad_input;
mod control_plane;
mod crd_validation;
mod gcp_auth;
mod gcp_engine;
mod helm;
mod ilb;
mod image;
mod leader;
mod operator;
mod policy;
mod pools;
mod reliability;
mod security;
mod sharding;
