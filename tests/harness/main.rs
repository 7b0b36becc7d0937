//! The one integration-test binary: runs the real built `podspawn` against a fake
//! `docker` (see `support` and `testdata/fake-docker`).

mod support;

mod add_user;
mod audit;
mod auth_keys;
mod cli;
mod client;
mod config;
mod doctor;
mod e2e;
mod fake_docker;
mod install;
mod list_cleanup;
mod real_engine;
mod remove_user;
mod server_setup;
mod services;
mod spawn;
